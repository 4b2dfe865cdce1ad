"""Entry points: a pretraining or evaluation loader over a shard set, on the GPU when one is given."""
from __future__ import annotations

import tempfile

import torch

from dali_pipelines.config import DataConfig
from dali_pipelines.iterator import BatchIterator
from dali_pipelines.pretrain import output_names, pretrain_pipeline
from dali_pipelines.shardset import ShardSet


def _device_index(device) -> int | None:
    device = torch.device(device) if device is not None else torch.device("cpu")
    return (device.index or 0) if device.type == "cuda" else None


def pretrain_loader(shards: str | ShardSet, cfg: DataConfig, *, rank: int = 0, world_size: int = 1,
                    device=None, seed: int = 0, drop_last: bool = True, skip_bad: bool = False) -> BatchIterator:
    """Batch dicts of XKD views; rank `rank` of `world_size` reads its own share of the samples.
    skip_bad: a sample that does not decode is named and left out instead of stopping the run."""
    shards = shards if isinstance(shards, ShardSet) else ShardSet.from_path(shards)
    device_id = _device_index(device)
    scratch = tempfile.mkdtemp(prefix="xkd-skip-") if skip_bad else None

    def build(excluded):
        current = shards.without(excluded, scratch) if excluded else shards
        pipeline = pretrain_pipeline(current, cfg, shard_id=rank, num_shards=world_size, gpu=device_id is not None,
                                     batch_size=cfg.batch_size, num_threads=cfg.num_threads, device_id=device_id,
                                     seed=seed * 1000 + rank, prefetch_queue_depth=2)
        pipeline.build()
        return pipeline

    per_rank = shards.samples_per_rank(world_size)
    batches = per_rank // cfg.batch_size if drop_last else None
    if drop_last and batches == 0:
        raise ValueError(f"{per_rank} samples per rank cannot fill one batch of {cfg.batch_size}")
    return BatchIterator(build, output_names(cfg), batches, drop_last, cfg.output_dtype, skip_bad)
