"""The four backbones of a run (video / audio x student / teacher) out of a checkpoint, as
safetensors + json (xkd/backbone_io.py), plus the run's resolved config."""
from __future__ import annotations

from pathlib import Path

import torch
import yaml

from xkd.config import to_dict
from xkd.train.checkpoint import find_checkpoint, read_marker
from xkd.train.state import TrainingState

BACKBONES = [(modality, role) for role in ("student", "teacher") for modality in ("video", "audio")]


class ExportError(RuntimeError):
    pass


def _student_state(folder: Path, zero_stage: int, states: dict) -> dict:
    """fp32 student weights: gathered from the ZeRO partitions (stage >= 1), else the module's own.
    Tensors the optimiser does not hold (frozen weight_g, buffers) come from the module state."""
    module = {k: v.float() if v.is_floating_point() else v for k, v in states["module"].items()}
    if zero_stage == 0:
        return module
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    state = dict(get_fp32_state_dict_from_zero_checkpoint(str(folder.parent), tag=folder.name))
    for key, value in module.items():
        if key not in state and value.numel() > 0:  # ZeRO-3 leaves empty placeholders here
            state[key] = value
    return state


def _with_tied_names(state: dict, module: torch.nn.Module) -> dict:
    """ZeRO's consolidation keeps one name per shared tensor (the tied DINO-head LayerNorms, the
    shared block stack of MAS / MATS); give every other name of that tensor its value too."""
    names_by_tensor: dict[int, list[str]] = {}
    for name, tensor in list(module.named_parameters(remove_duplicate=False)) + \
            list(module.named_buffers(remove_duplicate=False)):
        names_by_tensor.setdefault(id(tensor), []).append(name)
    state = dict(state)
    for names in names_by_tensor.values():
        present = [n for n in names if n in state]
        for name in names:
            if name not in state and present:
                state[name] = state[present[0]]
    return state


def load_run_model(run_dir: str | Path, which: str = "auto"):
    """(XKD model on CPU with the checkpoint's students and teachers, config, checkpoint folder)."""
    from xkd.models import build_xkd

    folder = find_checkpoint(run_dir, which)
    if folder is None:
        raise ExportError(f"{run_dir}: no complete checkpoint (is it the --out of an `xkd pretrain` run?)")
    marker = read_marker(folder)
    # rank 0's model states hold the client_state (ZeRO-3 names the file after the partition)
    names = ["mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_model_states.pt"]
    found = [folder / n for n in names if (folder / n).is_file()]
    if not found:
        raise ExportError(f"{folder}: none of {names} is there; is the checkpoint complete?")
    states = torch.load(found[0], map_location="cpu", weights_only=False)
    cfg = TrainingState.saved_config(states)
    model = build_xkd(cfg)
    model.students.load_state_dict(_with_tied_names(_student_state(folder, marker["zero_stage"], states),
                                                    model.students))
    TrainingState(cfg, model).load_state_dict(states)  # teachers and KD centres
    return model, cfg, folder


def export_backbones(run_dir: str | Path, out: str | Path, which: str = "auto") -> list[Path]:
    from xkd.backbone_io import save_backbone

    model, cfg, folder = load_run_model(run_dir, which)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for modality, role in BACKBONES:
        encoder = getattr(model.students if role == "student" else model.teachers, modality)
        weights, _ = save_backbone(out / f"{modality}_{role}", encoder, modality, cfg.model,
                                   source={"run": str(Path(run_dir).resolve()), "checkpoint": folder.name,
                                           "network": f"{modality} {role}", "variant": cfg.model.variant})
        written.append(weights)
    (out / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    return written
