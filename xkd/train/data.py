"""TrainingBatches by epoch, from the DALI pipeline or the reference loader, behind one interface:
`len()` batches per epoch (equal on every rank), `iter()` yields the next epoch, `epoch`,
`state_dict()` / `load_state_dict()` to resume mid-epoch. Each batch names the samples left out
before it (`TrainingBatch.skipped`). The views are float32 whatever the training precision: the MAE
targets and the teachers read them unrounded (bf16 rounding is about 18% noise on a flat patch's
normalised target)."""
from __future__ import annotations

import torch

from dali_pipelines.epochs import EpochStream
from dali_pipelines.loader import pretrain_loader
from dali_pipelines.reference import reference_loader
from dali_pipelines.shardset import ShardSet
from xkd.config import ExperimentConfig


class ReferenceEpochs(EpochStream):
    """The reference loader (PyAV + torchaudio in DataLoader workers) by epoch. Its ranks split by
    shard, so a rank whose share runs out before `len(self)` batches restarts its stream (with a new
    order) to fill the epoch; every rank then steps the same number of times."""

    def __init__(self, shards: ShardSet, cfg: ExperimentConfig, rank: int, world_size: int, seed: int):
        super().__init__(shards.batches_per_rank(world_size, cfg.data.batch_size))
        self.loader = reference_loader(shards, cfg.data, rank=rank, world_size=world_size, seed=seed,
                                       num_workers=cfg.train.reference_workers, drop_last=True,
                                       skip_bad=cfg.train.skip_bad_samples,
                                       persistent_workers=False)  # workers must see the epoch set below

    def _epoch(self, epoch: int, total: int | None):
        restart = 0
        while True:
            self.loader.dataset.epoch = epoch * 1000 + restart  # the dataset seeds its order by it
            empty = True
            for batch in self.loader:
                empty = False
                yield batch
            if empty:
                raise RuntimeError("the reference loader yielded no batch (more ranks x workers than shards?)")
            restart += 1


def training_batches(shards: ShardSet, cfg: ExperimentConfig, rank: int, world_size: int, device):
    seed = cfg.train.seed
    if cfg.train.loader == "reference":
        return ReferenceEpochs(shards, cfg, rank, world_size, seed)
    return pretrain_loader(shards, cfg.data, rank=rank, world_size=world_size, device=device, seed=seed,
                           drop_last=True, skip_bad=cfg.train.skip_bad_samples, dtype=torch.float32)
