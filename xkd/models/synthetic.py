"""Random TrainingBatches in the pipelines' layout, for tests and benchmarks."""
from __future__ import annotations

import torch

from dali_pipelines.batch import TrainingBatch
from dali_pipelines.config import DataConfig


def synthetic_batch(data: DataConfig, batch_size: int, video_local_views: int = 1, audio_local_views: int = 1,
                    device: str | torch.device = "cpu", generator: torch.Generator | None = None) -> TrainingBatch:
    """A TrainingBatch of normal noise, labels -1, in the view shapes the pipelines make for `data`
    (which `load_config` has checked against the model)."""
    def noise(shape):
        return torch.randn(batch_size, *shape, generator=generator).to(device)

    video = [noise(data.global_video_shape)] + [noise(data.local_video_shape) for _ in range(video_local_views)]
    audio = [noise(data.global_audio_shape)] + [noise(data.local_audio_shape) for _ in range(audio_local_views)]
    return TrainingBatch(video, audio, torch.full((batch_size,), -1, dtype=torch.long, device=device),
                         [f"synthetic_{i}" for i in range(batch_size)])
