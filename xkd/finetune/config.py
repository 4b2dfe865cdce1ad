"""The fine-tuning config: YAML presets in `xkd/configs/finetune/` (one per dataset family, each
naming where its values come from), read into typed dataclasses as the pretraining presets are
(`xkd/config.py`: `inherit:`, unknown keys refused, `--set` overrides, types checked).

Sections: `data` (the pretraining pipelines' `DataConfig`: the training view is `global_video` /
`global_audio`, the test clips `eval_*`), `head`, `augment`, `train`. The backbone brings its own
encoder; `backbone_preset` names the pretraining preset whose encoder and input geometry it must
have (a backbone of another size is refused), and the clip geometry of `data` must fit it too.
Cross-section contradictions are refused at load time, naming both values."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from dali_pipelines.config import DataConfig
from xkd.config import (CONFIG_DIR, CompileMode, ConfigError, apply_override, check_pipeline_parts, from_dict,
                        read_yaml_tree)

FINETUNE_CONFIG_DIR = CONFIG_DIR / "finetune"


@dataclass
class ClassifierHeadConfig:
    """Pooled encoder feature (mean of the patch tokens after the final norm) -> dropout -> Linear."""

    dropout: float = 0.5
    # 'orthogonal': the authors' video head; 'normal': N(0, init_std), the authors' audio head. Bias 0.
    init: Literal["orthogonal", "normal"] = "orthogonal"
    init_std: float = 0.01


@dataclass
class AugmentConfig:
    """Batch-level augmentation on the device (the per-clip crop / flip / volume / resize-crop are
    the DALI training view's, `data.global_video` / `data.global_audio`)."""

    # timm Mixup / CutMix: alpha 0 turns each off; label smoothing goes into the (mixed) targets
    mixup: float = 0.8
    cutmix: float = 1.0
    mixup_prob: float = 1.0
    switch_prob: float = 0.5
    label_smoothing: float = 0.1
    # RandAugment on the decoded video frames (DALI's rand_augment, one draw per clip); n 0 turns it off
    rand_augment_n: int = 0
    rand_augment_m: int = 7  # of 10, as timm's `rand-m7`
    # timm RandomErasing of one box per clip (the same box in every frame), probability 0 turns it off
    random_erasing: float = 0.0
    # SpecAugment-style masking of log-mel clips (torchaudio), widths drawn in [0, width)
    freq_masks: int = 2
    freq_mask_width: int = 10
    time_masks: int = 2
    time_mask_width: int = 20


@dataclass
class FinetuneTrainConfig:
    """Optimisation and run control. The batch per process is data.batch_size; the total batch is
    that x grad_accumulation x processes; the peak LR is base_lr x total batch / lr_reference_batch."""

    epochs: int = 100
    grad_accumulation: int = 1
    base_lr: float = 5.0e-4
    lr_reference_batch: int = 256
    min_lr: float = 1.0e-6
    warmup_epochs: int = 5
    lr_schedule: Literal["cosine", "constant"] = "cosine"  # constant: the peak throughout, no warm-up
    weight_decay: float = 0.05  # not on biases, 1-D tensors, the CLS token or the position table
    layer_decay: float = 0.75  # LR x layer_decay^(depth + 1 - layer id), BEiT style
    drop_path: float = 0.0  # the encoder's stochastic depth, rising linearly to this in the last block
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1.0e-8
    clip_grad: float = 0.0  # 0: no clipping (the authors')
    clip_mode: Literal["global", "per_parameter"] = "global"
    seed: int = 0
    skip_bad_samples: bool = True
    max_steps: int = 0  # stop after this many optimiser steps (0: every epoch); schedules still span `epochs`
    checkpoint_every_steps: int = 1000
    keep_checkpoints: int = 3
    log_every_steps: int = 10
    max_nonfinite_in_a_row: int = 5
    # torch.compile of the encoder's blocks (xkd.models.compile_blocks), or "none"; not with ZeRO-3
    compile: CompileMode = "none"
    eval_every_epochs: int = 1  # validation on --val after every this many epochs (and after the last)
    val_clips: int = 1  # clips per video in the validation; the final test uses data.eval_clips x eval_crops
    val_crops: int = 1


@dataclass
class FinetuneConfig:
    name: str = "finetune"
    modality: Literal["video", "audio"] = "video"
    backbone_preset: str = "xkd_base"  # the pretraining preset a backbone must match in size and geometry
    num_classes: int = 0  # 0: the shards' manifest says; otherwise it must agree with it
    data: DataConfig = field(default_factory=DataConfig)
    head: ClassifierHeadConfig = field(default_factory=ClassifierHeadConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: FinetuneTrainConfig = field(default_factory=FinetuneTrainConfig)

    @property
    def mixes(self) -> bool:
        """Whether batches are mixed (mixup or cutmix)."""
        return self.augment.mixup > 0 or self.augment.cutmix > 0


def available_finetune_presets() -> list[str]:
    return sorted(p.stem for p in FINETUNE_CONFIG_DIR.glob("*.yaml"))


def load_finetune_config(name_or_path: str | Path, overrides: list[str] | None = None) -> FinetuneConfig:
    """A fine-tuning preset's name (e.g. 'ft_ucf101') or a YAML path, with dotted overrides, validated."""
    data = read_yaml_tree(name_or_path, FINETUNE_CONFIG_DIR)
    for override in overrides or []:
        data = apply_override(data, override)
    cfg = from_dict(FinetuneConfig, data)
    check_finetune_config(cfg)
    check_pipeline_parts(cfg.data)
    return cfg


def check_finetune_config(cfg: FinetuneConfig) -> None:
    """Contradictions between sections, each named with both values."""
    train, augment, data = cfg.train, cfg.augment, cfg.data
    problems = [
        (train.warmup_epochs > train.epochs, f"train.warmup_epochs={train.warmup_epochs} > train.epochs={train.epochs}"),
        (not 0 < train.layer_decay <= 1, f"train.layer_decay={train.layer_decay} must be in (0, 1]"),
        (cfg.mixes and data.batch_size % 2, f"augment.mixup={augment.mixup} / augment.cutmix={augment.cutmix} mix "
         f"each batch with its reverse, which needs an even data.batch_size (it is {data.batch_size})"),
        (train.val_crops not in (1, 3), f"train.val_crops={train.val_crops}: 1 or 3"),
        (data.eval_crops not in (1, 3), f"data.eval_crops={data.eval_crops}: 1 or 3"),
        (min(train.val_clips, data.eval_clips, train.eval_every_epochs) < 1,
         "train.val_clips, data.eval_clips and train.eval_every_epochs must be at least 1"),
        (cfg.num_classes < 0, f"num_classes={cfg.num_classes} must be 0 (from the shards) or positive"),
        (not 0 <= cfg.head.dropout < 1, f"head.dropout={cfg.head.dropout} must be in [0, 1)"),
        (not 0 <= augment.label_smoothing < 1, f"augment.label_smoothing={augment.label_smoothing} must be in [0, 1)"),
        (not 0 <= augment.rand_augment_m <= 10, f"augment.rand_augment_m={augment.rand_augment_m} must be in 0..10"),
    ]
    found = [message for failed, message in problems if failed]
    if found:
        raise ConfigError("the fine-tuning config contradicts itself: " + "; ".join(found))
