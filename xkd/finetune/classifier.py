"""The fine-tuned network: a backbone encoder at the fine-tuning input size, its pooled feature (the
mean of the patch tokens after the final norm, as every evaluation here reads a backbone), dropout,
and a linear head (docs/method.md §Fine-tuning). Its optimizer groups carry BEiT-style layer-wise
LR scales (timm's `param_groups_layer_decay`), and it is saved as a classifier file pair:

  NAME.safetensors  the state_dict (encoder.*, head.*)
  NAME.json         {"format": "xkd-classifier", "version": 1, "modality", "encoder", "input",
                     "num_classes", "multi_label", "classes", "head", "source"}

written atomically (`shards/atomic.py`)."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from shards.atomic import atomic_write, atomic_write_text
from xkd.backbone_io import backbone_paths
from xkd.config import AudioConfig, EncoderConfig, ModelConfig, VideoConfig, from_dict, to_dict
from xkd.models.encoders import ViTEncoder, build_encoder
from xkd.models.pos_embed import resize_pos_embed

FORMAT = "xkd-classifier"
VERSION = 1
NO_WEIGHT_DECAY = ("encoder.cls_token", "encoder.pos_embed")  # with every bias and 1-D tensor (the authors')


class ClassifierFileError(ValueError):
    """A classifier file pair that is missing or not ours."""


class Classifier(nn.Module):
    def __init__(self, encoder: ViTEncoder, num_classes: int, dropout: float = 0.0, init: str = "orthogonal",
                 init_std: float = 0.01):
        super().__init__()
        self.encoder = encoder
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(encoder.embed_dim, num_classes)
        if init == "orthogonal":  # the authors' video head
            nn.init.orthogonal_(self.head.weight)
        else:  # their audio head
            nn.init.normal_(self.head.weight, std=init_std)
        nn.init.zeros_(self.head.bias)

    @property
    def modality(self) -> str:
        return self.encoder.modality

    @property
    def num_classes(self) -> int:
        return self.head.out_features

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) video or (B, 1, mel_bins, frames) log-mel -> logits (B, num_classes)."""
        return self.head(self.dropout(self.encoder.pooled(clips)))

    def group_matcher(self, coarse: bool = False) -> dict:
        """timm's layer grouping: the embeddings are layer 0, block i is layer i + 1, the final norm
        and the head the last layer (BEiT's layer ids, which the authors use)."""
        return {"stem": r"^encoder\.(?:cls_token|pos_embed|patch_embed)", "blocks": r"^encoder\.blocks\.(\d+)\."}


def layer_decay_groups(model: Classifier, weight_decay: float, layer_decay: float) -> list[dict]:
    """Optimizer groups, each with its `lr_scale` = layer_decay^(depth + 1 - layer id) and its
    weight decay (none on biases, 1-D tensors, the CLS token and the position table)."""
    from timm.optim import param_groups_layer_decay

    return param_groups_layer_decay(model, weight_decay=weight_decay, no_weight_decay_list=NO_WEIGHT_DECAY,
                                    layer_decay=layer_decay)


def model_config_at(encoder: dict, input_geometry: dict, modality: str, frame_size: int | None = None,
                    drop_path: float = 0.0) -> ModelConfig:
    """A ModelConfig of a backbone's encoder and input (its metadata), at another frame size (video)."""
    encoder_cfg = replace(from_dict(EncoderConfig, encoder, "encoder"), drop_path=drop_path)
    if modality == "video":
        video = from_dict(VideoConfig, input_geometry, "input")
        if frame_size is not None:
            video = replace(video, image_size=frame_size)
        return ModelConfig(encoder=encoder_cfg, video=video)
    return ModelConfig(encoder=encoder_cfg, audio=from_dict(AudioConfig, input_geometry, "input"))


def encoder_at(backbone: ViTEncoder, model_cfg: ModelConfig) -> ViTEncoder:
    """A new encoder of `model_cfg` holding the backbone's weights, its position table resized (as the
    encoder resizes it on the fly, docs/method.md B17) once to the new token grid, where it then
    trains at full resolution as the authors' does."""
    encoder = build_encoder(backbone.modality, model_cfg)
    state = dict(backbone.state_dict())
    state["pos_embed"] = resize_pos_embed(state["pos_embed"], backbone.native_grid, encoder.native_grid,
                                          backbone.interpolation_mode, backbone.fixed_axes).detach().clone()
    encoder.load_state_dict(state, strict=True)
    return encoder


def save_classifier(path: str | Path, model: Classifier | dict, meta: dict[str, Any]) -> tuple[Path, Path]:
    """Write a classifier's weights (a module or a state_dict) and metadata (`classifier_meta`)."""
    from safetensors.torch import save_file

    state = model.state_dict() if isinstance(model, nn.Module) else model
    tensors = {k: v.detach().to("cpu").float().contiguous().clone() for k, v in state.items()}
    weights_path, meta_path = backbone_paths(path)
    weights_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(weights_path, lambda p: save_file(tensors, p, metadata={"format": FORMAT}))
    atomic_write_text(meta_path, json.dumps({"format": FORMAT, "version": VERSION, **meta}, indent=2) + "\n")
    return weights_path, meta_path


def classifier_meta(model_cfg: ModelConfig, modality: str, num_classes: int, multi_label: bool,
                    classes: list[str] | None, head: dict, source: dict) -> dict:
    return {"modality": modality, "encoder": to_dict(model_cfg.encoder), "input": to_dict(getattr(model_cfg, modality)),
            "num_classes": num_classes, "multi_label": multi_label, "classes": classes, "head": head, "source": source}


def load_classifier(path: str | Path, device: str | torch.device = "cpu") -> tuple[Classifier, dict]:
    """(classifier in eval mode, its metadata) from NAME, NAME.safetensors or NAME.json."""
    from safetensors.torch import load_file

    weights_path, meta_path = backbone_paths(path)
    for needed in (weights_path, meta_path):
        if not needed.is_file():
            raise ClassifierFileError(f"{needed}: classifier file not found")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != FORMAT:
        raise ClassifierFileError(f"{meta_path}: not an {FORMAT} file (format={meta.get('format')!r})")
    model_cfg = model_config_at(meta["encoder"], meta["input"], meta["modality"])
    model = Classifier(build_encoder(meta["modality"], model_cfg), meta["num_classes"], meta["head"].get("dropout", 0.0))
    model.load_state_dict(load_file(str(weights_path), device="cpu"), strict=True)
    return model.to(device).eval(), meta
