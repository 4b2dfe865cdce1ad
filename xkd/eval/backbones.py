"""Which encoders an evaluation runs: a backbone file (`xkd export`, `xkd import-weights`), one or
both of an export folder's backbones (by role), or a preset's encoders at random initialisation
(the baseline every score is read against). Each is checked against the evaluation config before
any decoding: a backbone whose geometry the config's clips do not fit is refused, naming the
mismatch."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from xkd.backbone_io import backbone_paths, load_backbone, read_backbone_meta
from xkd.config import ExperimentConfig, to_dict

ROLES = ("teacher", "student")


class BackboneMismatch(ValueError):
    """A backbone that cannot be evaluated as asked (wrong modality, size or geometry), or is missing."""


@dataclass
class EvalBackbone:
    modality: str
    encoder: torch.nn.Module
    info: dict  # provenance recorded in features.json: kind, path, role, sha256, encoder, input


def weights_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """SHA-256 of the weights themselves (names, dtypes, shapes, values in name order), not of the
    file: safetensors writes its metadata in no fixed order, so equal weights can differ in bytes."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def check_fits(meta: dict, cfg: ExperimentConfig, where: str) -> None:
    """Refuse a backbone (its metadata) whose encoder or patch geometry differs from the config's,
    or whose position table was made for another clip length or mel-bin count. The frame size may
    differ (the position table is resized, as the authors do at 224 px) if it cuts into whole patches."""
    modality, enc, inp = meta["modality"], meta["encoder"], meta["input"]
    model, data = cfg.model, cfg.data
    want_enc = to_dict(model.encoder)
    problems = [f"encoder {name} is {enc.get(name)} in the backbone but {want_enc[name]} in config {cfg.name}"
                for name in ("embed_dim", "depth", "num_heads") if enc.get(name) != want_enc[name]]
    if modality == "video":
        want = to_dict(model.video)
        problems += [f"video {name} is {inp.get(name)} in the backbone but {want[name]} in config {cfg.name}"
                     for name in ("tubelet_size", "patch_size", "in_chans") if inp.get(name) != want[name]]
        if inp.get("num_frames") != data.clip_frames:
            problems.append(f"the backbone takes {inp.get('num_frames')} frames but config {cfg.name}'s clips have "
                            f"{data.clip_frames} (data.clip_seconds x data.fps)")
        if data.eval_size % inp.get("patch_size", 1):
            problems.append(f"data.eval_size={data.eval_size} is not a whole number of {inp.get('patch_size')}-px patches")
    else:
        want = to_dict(model.audio)
        problems += [f"audio {name} is {inp.get(name)} in the backbone but {want[name]} in config {cfg.name}"
                     for name in ("patch_freq", "patch_time", "in_chans") if inp.get(name) != want[name]]
        _, bins, frames = data.global_audio_shape
        if inp.get("mel_bins") != bins:
            problems.append(f"the backbone takes {inp.get('mel_bins')} mel bins but config {cfg.name} makes {bins}")
        if inp.get("num_frames") != frames:
            problems.append(f"the backbone takes {inp.get('num_frames')} log-mel frames but config {cfg.name}'s "
                            f"clips have {frames}")
    if problems:
        raise BackboneMismatch(f"{where}: does not fit the evaluation config: " + "; ".join(problems))


def _read_meta(path: Path) -> dict:
    """A backbone's metadata, once both of its files are known to be there."""
    for needed in backbone_paths(path):
        if not needed.exists():
            raise BackboneMismatch(f"{needed}: backbone file not found")
    try:
        return read_backbone_meta(path)
    except ValueError as error:
        raise BackboneMismatch(str(error)) from None


def _from_file(path: Path, cfg: ExperimentConfig, role: str | None) -> EvalBackbone:
    weights = backbone_paths(path)[0]
    meta = _read_meta(path)
    check_fits(meta, cfg, str(weights))
    encoder, meta = load_backbone(path)
    info = {"kind": "file", "path": str(weights.resolve()), "sha256": weights_sha256(encoder.state_dict()), "role": role,
            "modality": meta["modality"], "encoder": meta["encoder"], "input": meta["input"],
            "source": meta.get("source", {})}
    return EvalBackbone(meta["modality"], encoder.eval(), info)


def _random_init(cfg: ExperimentConfig, modality: str, seed: int) -> EvalBackbone:
    from xkd.models.encoders import build_encoder

    torch.manual_seed(seed)
    encoder = build_encoder(modality, cfg.model, drop_path=0.0)
    info = {"kind": "random-init", "preset": cfg.name, "seed": seed, "modality": modality,
            "encoder": to_dict(cfg.model.encoder), "input": to_dict(getattr(cfg.model, modality))}
    return EvalBackbone(modality, encoder.eval(), info)


def resolve_backbones(source: str | None, modality: str, cfg: ExperimentConfig, *, role: str = "teacher",
                      seed: int = 0) -> list[EvalBackbone]:
    """The encoders to evaluate for `modality` ('video', 'audio' or 'both').

    source: a backbone (NAME, NAME.safetensors or NAME.json), an `xkd export` folder (its
    {modality}_{role} backbones), or None for random initialisation of `cfg`'s encoders."""
    wanted = ("video", "audio") if modality == "both" else (modality,)
    if source is None:
        return [_random_init(cfg, m, seed) for m in wanted]
    path = Path(source)
    if path.is_dir():
        found = [_from_file(path / f"{m}_{role}", cfg, role) for m in wanted
                 if backbone_paths(path / f"{m}_{role}")[0].exists()]
        if len(found) != len(wanted):
            missing = [f"{m}_{role}.safetensors" for m in wanted if m not in {b.modality for b in found}]
            raise BackboneMismatch(f"{path}: no {', '.join(missing)} (is it a folder written by `xkd export`?)")
        return found
    backbone = _from_file(path, cfg, None)
    if modality == "both" or backbone.modality != modality:
        article = "an" if backbone.modality == "audio" else "a"
        raise BackboneMismatch(f"{backbone_paths(path)[0]}: {article} {backbone.modality} backbone, but --modality is "
                               f"{modality} (a single backbone file gives its own modality; both needs an export folder)")
    return [backbone]


def backbone_label(backbones: list[EvalBackbone]) -> str:
    """A short name for result tables: the export folder and role, the file, or the preset at random init."""
    info = backbones[0].info
    if info["kind"] == "random-init":
        return f"random-init {info['preset']} (seed {info['seed']})"
    path = Path(info["path"])
    return f"{path.parent.name} {info['role']}" if info.get("role") else path.stem


def default_modality(source: str | None, shards_have_video: bool = True) -> str:
    """A backbone file's own modality; for an export folder or random init, 'both' (or 'audio' for
    audio-only shards)."""
    if source is None or Path(source).is_dir():
        return "both" if shards_have_video else "audio"
    return _read_meta(Path(source))["modality"]
