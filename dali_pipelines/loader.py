"""Entry points: a pretraining or evaluation loader over a shard set, on the GPU when one is given."""
from __future__ import annotations

import tempfile
from functools import partial

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


def epoch_seed(seed: int, rank: int, epoch: int, part: int = 0) -> int:
    """The DALI seed of one rank's pipeline (`part` of its pipelines_per_device) for one epoch: a
    function of these alone, so the epoch can be rebuilt identically on resume."""
    entropy = [seed, rank, epoch] + ([part] if part else [])  # part 0: the seed of a lone pipeline
    return int(np.random.SeedSequence(entropy).generate_state(1)[0] % 2**31)


def build_parts(make, cfg: DataConfig, *, rank: int, world_size: int, epoch: int, seed: int, device_id,
                **options) -> list:
    """The built pipelines of one rank's epoch, `make(shard_id=..., num_shards=..., ...)` each: the
    rank's share (rotating with the epoch) split into cfg.pipelines_per_device parts, each read by
    its own pipeline with its part of the batch and of the threads. Shares of equal index split the
    same samples whatever the part count (DALI's readers cut a set into contiguous runs)."""
    parts = cfg.pipelines_per_device
    share = (rank + epoch) % world_size
    built = []
    for part in range(parts):
        pipeline = make(shard_id=share * parts + part, num_shards=world_size * parts, gpu=device_id is not None,
                        batch_size=cfg.batch_size // parts, num_threads=max(1, cfg.num_threads // parts),
                        device_id=device_id, seed=epoch_seed(seed, rank, epoch, part), prefetch_queue_depth=2,
                        **options)
        pipeline.build()
        built.append(pipeline)
    return built


def pretrain_loader(shards: str | ShardSet, cfg: DataConfig, *, rank: int = 0, world_size: int = 1,
                    device=None, seed: int = 0, drop_last: bool = True, skip_bad: bool = False,
                    dtype: torch.dtype = torch.float32) -> PipelineEpochs:
    """TrainingBatches of XKD views in `dtype`; rank `rank` of `world_size` reads its own share of the samples
    (shares rotate between ranks from epoch to epoch). Each epoch gets fresh pipelines seeded by
    (seed, rank, epoch), so `state_dict()` / `load_state_dict()` resume mid-epoch exactly.
    skip_bad: a sample that does not decode is named and left out instead of stopping the run.
    cfg.pipelines_per_device > 1 (training only, drop_last): several pipelines make each batch
    (`build_parts`)."""
    shards = shards if isinstance(shards, ShardSet) else ShardSet.from_path(shards)
    device_id = _device_index(device)
    scratch = tempfile.mkdtemp(prefix="xkd-skip-") if skip_bad else None
    parts = cfg.pipeline_parts(drop_last)

    def build(excluded, epoch):
        current = shards.without(excluded, scratch) if excluded else shards
        return build_parts(partial(pretrain_pipeline, current, cfg), cfg, rank=rank, world_size=world_size,
                           epoch=epoch, seed=seed, device_id=device_id, dtype=dtype)

    batches = shards.batches_per_rank(world_size * parts, cfg.batch_size // parts) if drop_last else None
    return PipelineEpochs(build, output_names(cfg), batches, drop_last, torch_cast(dtype), skip_bad)
