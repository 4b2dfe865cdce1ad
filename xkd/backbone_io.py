"""The backbone file format shared by `xkd import-weights`, `xkd export` and evaluation.

A backbone is two files side by side:
  NAME.safetensors  the encoder's state_dict (our key names: patch_embed.proj.*, cls_token, pos_embed,
                    blocks.i.*, norm.*)
  NAME.json         {"format": "xkd-backbone", "version": 1, "modality": "video" | "audio",
                     "encoder": EncoderConfig fields, "input": VideoConfig | AudioConfig fields,
                     "source": free-form provenance}
Both are written to temporary names first and then renamed, so no half-written backbone is left.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

FORMAT = "xkd-backbone"
VERSION = 1


def backbone_paths(path: str | Path) -> tuple[Path, Path]:
    """(weights, metadata) paths for OUT, OUT.safetensors or OUT.json."""
    path = Path(path)
    if path.suffix in (".safetensors", ".json"):
        path = path.with_suffix("")
    return path.with_name(path.name + ".safetensors"), path.with_name(path.name + ".json")


def _atomic_write(final: Path, write) -> None:
    tmp = final.with_name(f".{final.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


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
    _atomic_write(weights_path, lambda p: save_file(tensors, str(p), metadata={"format": FORMAT,
                                                                             "modality": modality}))
    _atomic_write(meta_path, lambda p: p.write_text(json.dumps(meta, indent=2) + "\n"))
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
