"""Experiment configuration: YAML presets shipped in `xkd/configs/`, read into typed dataclasses.

A preset may start from another one with the reserved top-level key `inherit: <preset name>`; its
own keys are merged on top. Unknown keys are refused (with the dotted path of the key), values are
type-checked, and `load_config(name, ["model.encoder.depth=2"])` applies dotted overrides before
validation. Later issues add sections (`data`, `train`) by adding fields to `ExperimentConfig`.
"""
from __future__ import annotations

import dataclasses
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from dali_pipelines.config import DataConfig

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
INHERIT_KEY = "inherit"


class ConfigError(ValueError):
    """A config file or override that does not fit the schema."""


# --------------------------------------------------------------------------------------------
# Schema. Defaults are the paper's ViT-B XKD (docs/method.md §Model, §Losses).
# --------------------------------------------------------------------------------------------


@dataclass
class EncoderConfig:
    """Transformer shared by the video and audio ViTs (one per modality unless the variant shares)."""

    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = False  # the authors' blocks have no qkv bias (needed to load their weights)
    drop_path: float = 0.0


@dataclass
class DecoderConfig:
    """MAE decoder (one per modality; no final norm, as in the authors' code)."""

    embed_dim: int = 384
    depth: int = 4
    num_heads: int = 12
    mlp_ratio: float = 4.0


@dataclass
class HeadConfig:
    """DINO projection head: MLP -> L2 norm -> weight-normalised prototypes -> non-affine LayerNorm."""

    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    out_dim: int = 8192
    num_layers: int = 3
    norm_last_layer: bool = True  # weight_g frozen at 1


@dataclass
class VideoConfig:
    """Global video view geometry; other sizes (local views, 224 px) interpolate the position table."""

    num_frames: int = 32
    image_size: int = 112
    in_chans: int = 3
    tubelet_size: int = 4
    patch_size: int = 16
    mask_ratio: float = 0.85


@dataclass
class AudioConfig:
    """Global log-mel view geometry (frequency bins x time frames); patches are 4 freq x 16 time."""

    mel_bins: int = 80
    num_frames: int = 448
    in_chans: int = 1
    patch_freq: int = 4
    patch_time: int = 16
    mask_ratio: float = 0.80


@dataclass
class ModelConfig:
    variant: Literal["xkd", "xkd_mas", "xkd_mats"] = "xkd"
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    video: VideoConfig = field(default_factory=VideoConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    norm_pix_loss: bool = True
    # Index into the view lists fed to the teachers. 1 = first local view, as in the authors' code
    # (docs/method.md B1); 0 = the global view, as drawn in the paper.
    teacher_view: int = 1
    # Student global representation for KD: 'masked' = mean of the visible tokens of the MAE pass
    # (authors, docs/method.md B11); 'unmasked' = an extra unmasked pass over the global view.
    student_global: Literal["masked", "unmasked"] = "masked"


@dataclass
class LossConfig:
    align_coeff: float = 1.0
    cmkd_coeff: float = 1.0
    recon_coeff: float = 5.0
    student_temp_video: float = 0.1
    student_temp_audio: float = 0.1
    # Teacher temperatures warm up linearly per epoch from *_warmup to the final value (docs/method.md §Schedules).
    teacher_temp_video: float = 0.1
    teacher_temp_video_warmup: float = 0.1
    teacher_temp_audio: float = 0.07
    teacher_temp_audio_warmup: float = 0.07
    teacher_temp_warmup_epochs: int = 30
    center_momentum: float = 0.9
    mmd_gammas: list[float] = field(default_factory=lambda: [1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1e3])
    # The teacher-teacher MMD has no gradient (docs/method.md B3); kept by default so logged values match.
    mmd_teacher_term: bool = True
    # Cross-modal attention refinement of teacher tokens (docs/method.md §Refinement): 'mean' (authors), 'softmax',
    # or 'none' (plain mean pooling, the paper's "without refinement" ablation).
    refine_mode: Literal["mean", "softmax", "none"] = "mean"


# torch.compile modes (xkd.models.transformer.COMPILE_MODES), "none" for eager
CompileMode = Literal["none", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]


@dataclass
class TrainConfig:
    """Optimisation, schedules and run control for `xkd pretrain` (docs/method.md §Schedules, §Training step).

    The batch per process is data.batch_size; the total batch is data.batch_size x grad_accumulation
    x processes. DeepSpeed's batch, accumulation and clipping fields are filled from here.
    """

    epochs: int = 800
    grad_accumulation: int = 1
    # LR = base_lr x total batch / lr_reference_batch. The authors use 1e-4 at their total batch of 256,
    # so a 256 batch gets their LR exactly; warm-up from 0, then a per-iteration cosine to min_lr.
    base_lr: float = 1.0e-4
    lr_reference_batch: int = 256
    min_lr: float = 0.0
    warmup_epochs: int = 30
    weight_decay: float = 0.3  # cosine from weight_decay to weight_decay_end (constant in the paper)
    weight_decay_end: float = 0.3
    decay_tokens: bool = True  # cls / pos / mask tokens decayed too (authors, docs/method.md B8)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1.0e-8
    ema_momentum: float = 0.997  # per-iteration cosine to ema_momentum_end, no warm-up
    ema_momentum_end: float = 1.0
    # Authors: each student backbone / head parameter's gradient is clipped to norm 0.3 on its own
    # (DINO style). 'global' clips the norm of all gradients together (DeepSpeed gradient_clipping).
    clip_grad: float = 0.3  # 0 turns clipping off
    clip_mode: Literal["per_parameter", "global"] = "per_parameter"
    seed: int = 0
    loader: Literal["dali", "reference"] = "dali"
    reference_workers: int = 4  # DataLoader workers per process with loader: reference
    skip_bad_samples: bool = True  # a sample that does not decode is named and left out
    max_steps: int = 0  # stop after this many optimiser steps (0: run every epoch); schedules still span `epochs`
    checkpoint_every_steps: int = 1000
    keep_checkpoints: int = 3
    log_every_steps: int = 10
    max_nonfinite_in_a_row: int = 5  # a non-finite loss skips its step; this many in a row stop the run
    # torch.compile of every transformer block, students and teachers (xkd.models.compile_blocks): a
    # torch.compile mode, or "none". Not with ZeRO-3, whose parameter hooks compiled blocks would skip.
    compile: CompileMode = "none"
    # kNN monitor (xkd/train/knn_monitor.py), off at 0: every this many epochs, the teachers' pooled
    # features of knn_train_shards and knn_test_shards (evaluation shard sets, labelled), weighted cosine
    # kNN top-1 per modality into metrics.jsonl and TensorBoard
    knn_every_epochs: int = 0
    knn_train_shards: str = ""
    knn_test_shards: str = ""
    knn_k: int = 20
    knn_temperature: float = 0.07
    knn_clips: int = 1  # clips per video (one centre crop each)


@dataclass
class ExperimentConfig:
    name: str = "xkd_base"
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# --------------------------------------------------------------------------------------------
# Building dataclasses from plain dicts, with validation.
# --------------------------------------------------------------------------------------------


def _check_value(value: Any, annotation: Any, path: str) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if dataclasses.is_dataclass(annotation):
        return from_dict(annotation, value, path)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{path}: {value!r} is not one of {list(args)}")
        return value
    if origin is Union:  # Optional[X]
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _check_value(value, inner[0], path)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        return [_check_value(v, args[0], f"{path}[{i}]") for i, v in enumerate(value)]
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true/false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    return value


def from_dict(cls, data: Any, path: str = ""):
    """Build dataclass `cls` from a nested dict, refusing unknown keys and wrong types."""
    where = path or "config"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        full = [f"{path}.{k}" if path else str(k) for k in unknown]
        raise ConfigError(f"unknown config key(s): {', '.join(full)} (allowed under {where}: {sorted(fields)})")
    kwargs = {k: _check_value(_onto_default(fields[k], v), hints[k], f"{path}.{k}" if path else k)
              for k, v in data.items()}
    return cls(**kwargs)


def _onto_default(f: dataclasses.Field, value: Any) -> Any:
    """A partial mapping for a nested section merged onto that field's own default, not its class's:
    `data.local_video.frames=4` keeps the local view's crop and blur, not a global view's."""
    if isinstance(value, dict) and f.default_factory is not dataclasses.MISSING:
        default = f.default_factory()
        if dataclasses.is_dataclass(default):
            return _deep_merge(dataclasses.asdict(default), value)
    return value


def to_dict(cfg) -> dict:
    """Plain nested dict of a config (for saving the resolved config beside a checkpoint)."""
    return dataclasses.asdict(cfg)


def _deep_merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _resolve_path(name_or_path: str | Path, folder: Path = CONFIG_DIR) -> Path:
    """A YAML file, else the name of a preset in `folder`; a path with a folder in it is never taken
    for a preset."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    if "/" in str(name_or_path) or os.sep in str(name_or_path):
        what = "not a .yaml file" if path.exists() else "no such config file"
        raise ConfigError(f"{name_or_path}: {what} (presets are named without a folder: "
                          f"{', '.join(available_presets(folder))})")
    candidate = folder / f"{path.stem}.yaml"
    if candidate.exists():
        return candidate
    raise ConfigError(f"no config file {name_or_path!r}; presets: {', '.join(available_presets(folder))}")


def _parse_yaml(text: str, where: str):
    """YAML text, or a ConfigError naming `where`, the line and the problem."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{where}: not valid YAML{at}: {getattr(error, 'problem', None) or error}") from None


def available_presets(folder: Path = CONFIG_DIR) -> list[str]:
    return sorted(p.stem for p in folder.glob("*.yaml"))


def read_yaml_tree(name_or_path: str | Path, folder: Path = CONFIG_DIR, seen: tuple = ()) -> dict:
    """A preset (of `folder`) or YAML file as a dict, merged onto the preset it inherits from."""
    path = _resolve_path(name_or_path, folder)
    if path in seen:
        raise ConfigError(f"inheritance cycle through {path}")
    data = _parse_yaml(path.read_text(), str(path)) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    parent = data.pop(INHERIT_KEY, None)
    if parent is not None:
        data = _deep_merge(read_yaml_tree(parent, folder, seen + (path,)), data)
    return data


_SCIENTIFIC = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def apply_override(data: dict, override: str) -> dict:
    """Set `a.b.c=value` (value parsed as a YAML scalar/list) in a nested dict, returning a new dict."""
    if "=" not in override:
        raise ConfigError(f"override {override!r} must look like key.sub=value")
    dotted, raw = override.split("=", 1)
    keys = dotted.strip().split(".")
    if not all(keys):
        raise ConfigError(f"override {override!r}: empty key")
    value = _parse_yaml(raw, f"override {override!r}") if raw.strip() else None
    if isinstance(value, str) and _SCIENTIFIC.match(value.strip()):
        value = float(value)  # YAML 1.1 reads 1e-4 (no dot) as a string
    nested: Any = value
    for key in reversed(keys):
        nested = {key: nested}
    return _deep_merge(data, nested)


def load_config(name_or_path: str | Path = "xkd_base", overrides: Optional[list[str]] = None) -> ExperimentConfig:
    """Read a preset name (e.g. 'xkd_tiny') or a YAML path, apply overrides, validate."""
    data = read_yaml_tree(name_or_path)
    for override in overrides or []:
        data = apply_override(data, override)
    cfg = from_dict(ExperimentConfig, data)
    check_geometry(cfg.model, cfg.data)
    check_pipeline_parts(cfg.data)
    return cfg


def check_pipeline_parts(data: DataConfig) -> None:
    try:
        data.pipeline_parts()
    except ValueError as error:
        raise ConfigError(str(error)) from None


# --------------------------------------------------------------------------------------------
# The model's input geometry against the data section.
# --------------------------------------------------------------------------------------------


def check_geometry(model: ModelConfig, data: DataConfig) -> None:
    """Refuse a model whose input sizes are not the views the data section makes.

    The model keeps its own sizes and is checked, not derived: it is also built without a data
    section (backbones exported and imported with their own geometry, benchmarks), and its sizes
    fix the position tables a checkpoint holds; the data section says how the views are cut. Local
    views may differ from the global ones (the encoders interpolate their position tables), but
    must cut into whole tubelets / patches."""
    v, a = model.video, model.audio
    clip = f"data.clip_seconds x data.fps = {data.clip_seconds:g} x {data.fps}"
    mel = f"data.mel.hop={data.mel.hop} at data.mel.sample_rate={data.mel.sample_rate}"
    _, clip_frames, size, _ = data.global_video_shape
    channels, bins, mel_frames = data.global_audio_shape
    _, local_frames, local_size, _ = data.local_video_shape
    local_mel_frames = data.local_audio_shape[2]
    problems = [
        (v.num_frames != clip_frames, f"model.video.num_frames={v.num_frames} but {clip} = {clip_frames} frames"),
        (data.global_video.frames != clip_frames, f"data.global_video.frames={data.global_video.frames} but "
         f"{clip} = {clip_frames} frames (the global view is the whole clip)"),
        (v.image_size != size, f"model.video.image_size={v.image_size} but data.global_video.size={size}"),
        (v.in_chans != data.global_video_shape[0],
         f"model.video.in_chans={v.in_chans} but the video views have {data.global_video_shape[0]} channels (RGB)"),
        (a.mel_bins != bins, f"model.audio.mel_bins={a.mel_bins} but data.mel.mel_bins={bins}"),
        (a.num_frames != mel_frames, f"model.audio.num_frames={a.num_frames} but data.clip_seconds="
         f"{data.clip_seconds:g} s with {mel} = {mel_frames} mel frames"),
        (data.global_audio.seconds != data.clip_seconds, f"data.global_audio.seconds={data.global_audio.seconds:g} "
         f"but data.clip_seconds={data.clip_seconds:g} (the global view is the whole clip)"),
        (a.in_chans != channels, f"model.audio.in_chans={a.in_chans} but the audio views have {channels} channel"),
        (local_frames % v.tubelet_size, f"data.local_video.frames={local_frames} is not a whole number of "
         f"model.video.tubelet_size={v.tubelet_size} frames"),
        (local_frames > clip_frames, f"data.local_video.frames={local_frames} but the clip has {clip_frames} frames"),
        (local_size % v.patch_size, f"data.local_video.size={local_size} is not a whole number of "
         f"model.video.patch_size={v.patch_size} pixels"),
        (data.eval_size % v.patch_size, f"data.eval_size={data.eval_size} is not a whole number of "
         f"model.video.patch_size={v.patch_size} pixels"),
        (local_mel_frames % a.patch_time, f"data.local_audio.seconds={data.local_audio.seconds:g} s with {mel} = "
         f"{local_mel_frames} mel frames, not a whole number of model.audio.patch_time={a.patch_time}"),
        (data.local_audio.seconds > data.clip_seconds, f"data.local_audio.seconds={data.local_audio.seconds:g} "
         f"but data.clip_seconds={data.clip_seconds:g}"),
    ]
    found = [message for failed, message in problems if failed]
    if found:
        raise ConfigError("the model's input geometry contradicts the data section: " + "; ".join(found))
