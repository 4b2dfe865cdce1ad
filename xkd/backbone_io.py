"""Every backbone file read or written: our backbone format, shared by `xkd import-weights`,
`xkd export` and evaluation, and the authors' released `.pth.tar` files that `xkd import-weights`
reads (their key names are mapped onto ours by `xkd/weights.py`).

A backbone is two files side by side:
  NAME.safetensors  the encoder's state_dict (our key names: patch_embed.proj.*, cls_token, pos_embed,
                    blocks.i.*, norm.*)
  NAME.json         {"format": "xkd-backbone", "version": 1, "modality": "video" | "audio",
                     "encoder": EncoderConfig fields, "input": VideoConfig | AudioConfig fields,
                     "source": free-form provenance}
Both are written atomically (`shards/atomic.py`), so no half-written backbone is left.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shards.atomic import atomic_write, atomic_write_text

if TYPE_CHECKING:
    from xkd.config import ModelConfig

FORMAT = "xkd-backbone"
VERSION = 1


def backbone_paths(path: str | Path) -> tuple[Path, Path]:
    """(weights, metadata) paths for OUT, OUT.safetensors or OUT.json."""
    path = Path(path)
    if path.suffix in (".safetensors", ".json"):
        path = path.with_suffix("")
    return path.with_name(path.name + ".safetensors"), path.with_name(path.name + ".json")


def save_backbone(path: str | Path, encoder_or_state_dict, modality: str, model_cfg,
                  source: dict[str, Any] | None = None) -> tuple[Path, Path]:
    """Write an encoder (module or state_dict with our key names) and its config. Returns both paths.

    model_cfg: a ModelConfig (its encoder and the modality's input geometry are recorded).
    """
    import torch
    from safetensors.torch import save_file

    from xkd.config import to_dict

    if modality not in ("video", "audio"):
        raise ValueError(f"modality must be 'video' or 'audio', got {modality!r}")
    state = encoder_or_state_dict
    if isinstance(state, torch.nn.Module):
        state = state.state_dict()
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    meta = {"format": FORMAT, "version": VERSION, "modality": modality,
            "encoder": to_dict(model_cfg.encoder), "input": to_dict(getattr(model_cfg, modality)),
            "source": source or {}}
    weights_path, meta_path = backbone_paths(path)
    weights_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(weights_path, lambda p: save_file(tensors, p, metadata={"format": FORMAT, "modality": modality}))
    atomic_write_text(meta_path, json.dumps(meta, indent=2) + "\n")
    return weights_path, meta_path


def read_backbone_meta(path: str | Path) -> dict:
    _, meta_path = backbone_paths(path)
    if not meta_path.exists():
        raise FileNotFoundError(f"backbone metadata {meta_path} not found")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{meta_path} is not an {FORMAT} file (format={meta.get('format')!r})")
    return meta


def load_backbone(path: str | Path, device: str = "cpu"):
    """Build the encoder described by NAME.json and load NAME.safetensors into it (strict).

    Returns (encoder, meta).
    """
    from safetensors.torch import load_file

    from xkd.config import AudioConfig, EncoderConfig, ModelConfig, VideoConfig, from_dict
    from xkd.models.encoders import build_encoder

    meta = read_backbone_meta(path)
    modality = meta["modality"]
    input_cls = VideoConfig if modality == "video" else AudioConfig
    model_cfg = ModelConfig(encoder=from_dict(EncoderConfig, meta["encoder"], "encoder"),
                            **{modality: from_dict(input_cls, meta["input"], "input")})
    encoder = build_encoder(modality, model_cfg)
    weights_path, _ = backbone_paths(path)
    encoder.load_state_dict(load_file(str(weights_path), device="cpu"), strict=True)
    return encoder.to(device), meta


def load_official_file(path: str, part: str | None = None):
    """The state_dict in an authors' .pth.tar (unwrapped; one network's backbone of a full training
    checkpoint with `part`); WeightImportError if it cannot be read as one."""
    import torch

    from xkd.weights import WeightImportError, select_part, unwrap_state_dict

    if os.path.isfile(path) and os.path.getsize(path) == 0:
        raise WeightImportError("the file is empty")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # empty, cut, not a torch file, or pickled objects weights_only refuses
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise WeightImportError(f"cannot be read as a PyTorch file ({type(err).__name__}: {first_line})") from None
    return select_part(unwrap_state_dict(obj), part)


def load_official_backbone(path: str, part: str | None = None, base: ModelConfig | None = None,
                           num_heads: int | None = None):
    """Read an authors' .pth.tar into one of our encoders. Returns (encoder, modality, model_cfg)."""
    from xkd.models.encoders import build_encoder
    from xkd.weights import convert_official_backbone

    modality, model_cfg, state = convert_official_backbone(load_official_file(path, part), base, num_heads)
    encoder = build_encoder(modality, model_cfg)
    encoder.load_state_dict(state, strict=True)
    return encoder, modality, model_cfg
