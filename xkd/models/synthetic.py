"""Random batches in the pipelines' batch-dict layout, for tests and benchmarks."""
from __future__ import annotations

import torch

from dali_pipelines.config import DataConfig


def synthetic_batch(data: DataConfig, batch_size: int, video_local_views: int = 1, audio_local_views: int = 1,
                    device: str | torch.device = "cpu", generator: torch.Generator | None = None) -> dict:
    """{"video": [global, local_1, ...], "audio": [...], "label": (B,), "key": [...]} of normal noise, in the
    view shapes the pipelines make for `data` (which `load_config` has checked against the model)."""
    def noise(shape):
        return torch.randn(batch_size, *shape, generator=generator).to(device)

    video = [noise(data.global_video_shape)] + [noise(data.local_video_shape) for _ in range(video_local_views)]
    audio = [noise(data.global_audio_shape)] + [noise(data.local_audio_shape) for _ in range(audio_local_views)]
    return {"video": video, "audio": audio, "label": torch.zeros(batch_size, dtype=torch.long, device=device),
            "key": [f"synthetic_{i}" for i in range(batch_size)]}
