"""The batches that join the loaders to the model, and the one error for a sample that does not decode.

Pretraining loaders (the DALI pipeline, the reference loader, synthetic batches) make
`TrainingBatch`es; the fine-tuning pipeline makes `LabelledBatch`es (one clip per sample, with its
labels); the evaluation pipeline makes `EvaluationBatch`es, whose clips have another shape and so
other field names. `sample_labels` reads a sample's labels out of its JSON member the
same way for every loader."""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace

import torch


def sample_labels(meta: dict) -> tuple[int, tuple[int, ...]]:
    """(label, label set) of a sample's JSON: a single-label sample (id, (id,)); a sample of a
    multi-label set such as FSD50K (-1, its ids ascending); an unlabelled one (-1, ())."""
    if meta.get("label_ids") is not None:
        return -1, tuple(meta["label_ids"])
    label = meta.get("label_id")
    return (-1, ()) if label is None else (label, (label,))


class SampleDecodeError(RuntimeError):
    """A shard member that does not decode, named by shard and key (both loaders raise it)."""

    def __init__(self, tar: str, key: str, extension: str, detail: str = ""):
        super().__init__(f"{os.path.basename(tar)}: sample {key}: member .{extension} does not decode"
                         f"{': ' + detail if detail else ''} (shard {tar}; find every bad member with "
                         f"`xkd shards verify`)")
        self.tar, self.key, self.extension = tar, key, extension


@dataclass
class TrainingBatch:
    """The XKD views of B clips, each view a (B, ...) tensor:
    video: [global (B, 3, T, H, W), local_1 (B, 3, t, h, w), ...]
    audio: [global (B, 1, mel_bins, frames), local_1 (B, 1, mel_bins, f), ...]
    label: (B,) int64, -1 when unlabelled;  key: B sample keys
    skipped: the samples left out since the previous batch (they did not decode), named."""

    video: list[torch.Tensor]
    audio: list[torch.Tensor]
    label: torch.Tensor
    key: list[str]
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.key)

    def to(self, device: torch.device | str, non_blocking: bool = True) -> "TrainingBatch":
        def move(t: torch.Tensor) -> torch.Tensor:
            return t.to(device, non_blocking=non_blocking)

        return replace(self, video=[move(v) for v in self.video], audio=[move(a) for a in self.audio],
                       label=move(self.label))


@dataclass
class LabelledBatch:
    """One augmented clip of each of B labelled videos (or soundtracks), for supervised training
    (fine-tuning; `dali_pipelines/labelled.py`):
    clips: (B, 3, T, S, S) video or (B, 1, mel_bins, frames) log-mel
    label: (B,) int64, the class id; -1 for every sample of a multi-label set
    label_sets: B tuples of class ids, ascending (see `EvaluationBatch.label_sets`)
    key: B sample keys;  skipped: the samples left out since the previous batch, named."""

    clips: torch.Tensor
    label: torch.Tensor
    label_sets: list[tuple[int, ...]]
    key: list[str]
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.key)

    def to(self, device: torch.device | str, non_blocking: bool = True) -> "LabelledBatch":
        return replace(self, clips=self.clips.to(device, non_blocking=non_blocking),
                       label=self.label.to(device, non_blocking=non_blocking))


@dataclass
class EvaluationBatch:
    """N clips of each of B videos (or soundtracks), each clip in 1 or 3 crops:
    video_clips: (B, N, crops, 3, T, S, S) or None (audio only)
    audio_clips: (B, N, 1, mel_bins, frames) or None (video only)
    label: (B,) int64, the class id; -1 when unlabelled and for every sample of a multi-label set
    key: B sample keys
    clip_index: (N,);  crop_index: (crops,)  (which clip and crop each position is)
    label_sets: B tuples of class ids, ascending: all of a multi-label sample's (FSD50K), (label,)
        for a single-label one, () when unlabelled. A multi-hot (B, C) is
        `torch.zeros(B, C, dtype=torch.uint8)` with row i set at label_sets[i]; C is the shard
        manifest's `num_classes`."""

    video_clips: torch.Tensor | None
    audio_clips: torch.Tensor | None
    label: torch.Tensor
    key: list[str]
    clip_index: torch.Tensor
    crop_index: torch.Tensor
    label_sets: list[tuple[int, ...]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.key)
