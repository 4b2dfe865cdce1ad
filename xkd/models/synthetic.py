"""Random TrainingBatches in the pipelines' layout, for tests and benchmarks."""
from __future__ import annotations

import torch

from dali_pipelines.batch import TrainingBatch

from xkd.config import ModelConfig


def local_view_shapes(cfg: ModelConfig) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(C, T, H, W) of a local video view and (C, F, T) of a local audio view.

    The pipelines' ratios (1 s of 4 s, 112 // 1.16 = 96 px), rounded down to whole patches:
    (3, 8, 96, 96) and (1, 80, 112) for the paper's geometry.
    """
    v, a = cfg.video, cfg.audio

    def whole(size: float, patch: int) -> int:
        return max(patch, int(size) // patch * patch)

    video = (v.in_chans, whole(v.num_frames // 4, v.tubelet_size), whole(v.image_size // 1.16, v.patch_size),
             whole(v.image_size // 1.16, v.patch_size))
    audio = (a.in_chans, a.mel_bins, whole(a.num_frames // 4, a.patch_time))
    return video, audio


def synthetic_batch(cfg: ModelConfig, batch_size: int, video_local_views: int = 1, audio_local_views: int = 1,
                    device: str | torch.device = "cpu", generator: torch.Generator | None = None) -> TrainingBatch:
    """A TrainingBatch of normal noise: every view of the model's geometry, labels -1."""
    v, a = cfg.video, cfg.audio
    local_video, local_audio = local_view_shapes(cfg)

    def noise(*shape):
        return torch.randn(batch_size, *shape, generator=generator).to(device)

    video = [noise(v.in_chans, v.num_frames, v.image_size, v.image_size)]
    video += [noise(*local_video) for _ in range(video_local_views)]
    audio = [noise(a.in_chans, a.mel_bins, a.num_frames)] + [noise(*local_audio) for _ in range(audio_local_views)]
    return TrainingBatch(video, audio, torch.full((batch_size,), -1, dtype=torch.long, device=device),
                         [f"synthetic_{i}" for i in range(batch_size)])
