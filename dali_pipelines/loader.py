"""Entry points: a pretraining or evaluation loader over a shard set, on the GPU when one is given."""
from __future__ import annotations

import tempfile

import numpy as np
import torch

from dali_pipelines.config import DataConfig
from dali_pipelines.iterator import PipelineEpochs
from dali_pipelines.ops import torch_cast
from dali_pipelines.pretrain import output_names, pretrain_pipeline
from dali_pipelines.shardset import ShardSet


def _device_index(device) -> int | None:
    device = torch.device(device) if device is not None else torch.device("cpu")
    return (device.index or 0) if device.type == "cuda" else None


def epoch_seed(seed: int, rank: int, epoch: int) -> int:
    """The DALI seed of one rank's pipeline for one epoch: a function of the three alone, so the
    epoch can be rebuilt identically on resume."""
    return int(np.random.SeedSequence([seed, rank, epoch]).generate_state(1)[0] % 2**31)


def pretrain_loader(shards: str | ShardSet, cfg: DataConfig, *, rank: int = 0, world_size: int = 1,
                    device=None, seed: int = 0, drop_last: bool = True, skip_bad: bool = False,
                    dtype: torch.dtype = torch.float32) -> PipelineEpochs:
    """TrainingBatches of XKD views in `dtype`; rank `rank` of `world_size` reads its own share of the samples
    (shares rotate between ranks from epoch to epoch). Each epoch gets a fresh pipeline seeded by
    (seed, rank, epoch), so `state_dict()` / `load_state_dict()` resume mid-epoch exactly.
    skip_bad: a sample that does not decode is named and left out instead of stopping the run."""
    shards = shards if isinstance(shards, ShardSet) else ShardSet.from_path(shards)
    device_id = _device_index(device)
    scratch = tempfile.mkdtemp(prefix="xkd-skip-") if skip_bad else None

    def build(excluded, epoch):
        current = shards.without(excluded, scratch) if excluded else shards
        pipeline = pretrain_pipeline(current, cfg, shard_id=(rank + epoch) % world_size, num_shards=world_size,
                                     gpu=device_id is not None, batch_size=cfg.batch_size,
                                     num_threads=cfg.num_threads, device_id=device_id,
                                     seed=epoch_seed(seed, rank, epoch), prefetch_queue_depth=2, dtype=dtype)
        pipeline.build()
        return pipeline

    batches = shards.batches_per_rank(world_size, cfg.batch_size) if drop_last else None
    return PipelineEpochs(build, output_names(cfg), batches, drop_last, torch_cast(dtype), skip_bad)
