"""The kNN monitor of `xkd pretrain`: a cheap reading of what the backbones learn, while they learn.

Every `train.knn_every_epochs` epochs (at an epoch's end), the EMA teachers' pooled features of two
labelled evaluation shard sets (`train.knn_train_shards`, `train.knn_test_shards`; one centre crop
of `train.knn_clips` clips per video) are extracted, each rank its share of the videos, gathered, and
scored by weighted cosine kNN (DINO's k=20, T=0.07; xkd/eval/knn.py): `knn_top1_video` and
`knn_top1_audio` in metrics.jsonl and TensorBoard. Teachers are used because every rank holds them
whole (students may be partitioned by ZeRO-3) and DINO monitors its teacher the same way.

It changes nothing the training reads: the teachers are only read, the random generators are
restored afterwards, and the training pipeline is untouched, so a run with the monitor computes the
same steps as one without it, and resumes exactly."""
from __future__ import annotations

import copy
import time

import numpy as np
import torch

from dali_pipelines.shardset import ShardSet, ShardSetError
from xkd.config import ExperimentConfig
from xkd.eval.backbones import EvalBackbone
from xkd.eval.extract import extract_in_memory
from xkd.eval.scoring import average_per_video
from xkd.train.distributed import all_gather_objects


class KnnMonitorError(ValueError):
    """The monitor cannot run as configured (its message says why)."""


class KnnMonitor:
    def __init__(self, cfg: ExperimentConfig, teachers: torch.nn.Module, device: torch.device, rank: int,
                 world_size: int):
        train = cfg.train
        self.every, self.teachers, self.device = train.knn_every_epochs, teachers, device
        self.rank, self.world_size = rank, world_size
        self.k, self.temperature = train.knn_k, train.knn_temperature
        if not self.enabled:
            return
        missing = [name for name in ("knn_train_shards", "knn_test_shards") if not getattr(train, name)]
        if missing:
            raise KnnMonitorError(f"train.knn_every_epochs={self.every} needs {' and '.join('train.' + m for m in missing)}")
        try:
            self.sets = {split: ShardSet.from_path(getattr(train, f"knn_{split}_shards"))
                         for split in ("train", "test")}
        except ShardSetError as error:
            raise KnnMonitorError(f"kNN monitor: {error}") from None
        self.modalities = ["video", "audio"] if all(s.has_video for s in self.sets.values()) else ["audio"]
        self.data = copy.deepcopy(cfg.data)
        self.data.eval_clips, self.data.eval_crops = train.knn_clips, 1

    @property
    def enabled(self) -> bool:
        return self.every > 0

    def due(self, finished_epoch: int) -> bool:
        """After epoch `finished_epoch` (counted from 0) has ended."""
        return self.enabled and (finished_epoch + 1) % self.every == 0

    def _video_features(self, shards: ShardSet) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """modality -> (keys, labels, per-video features) of all ranks' shares, gathered."""
        backbones = [EvalBackbone(m, getattr(self.teachers, m), {}) for m in self.modalities]
        sets = extract_in_memory(backbones, shards, self.data, self.device, rank=self.rank,
                                 world_size=self.world_size)
        local = {}
        for modality, fs in sets.items():
            videos, means = average_per_video(fs.features, fs.video_index)
            local[modality] = (fs.keys[videos], fs.labels[videos], means)
        gathered = all_gather_objects(local)
        out = {}
        for modality in self.modalities:
            keys = np.concatenate([g[modality][0] for g in gathered])
            _, first = np.unique(keys, return_index=True)  # a padded last batch may repeat a video
            out[modality] = tuple(np.concatenate([g[modality][i] for g in gathered])[first] for i in range(3))
        return out

    def run(self) -> dict[str, float]:
        """{'knn_top1_video': ..., 'knn_top1_audio': ... (percent), 'knn_seconds': ...}, on every rank."""
        from xkd.eval.knn import knn_top1

        started = time.perf_counter()
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            train, test = (self._video_features(self.sets[split]) for split in ("train", "test"))
        record = {}
        for modality in self.modalities:
            _, train_labels, train_feats = train[modality]
            _, test_labels, test_feats = test[modality]
            record[f"knn_top1_{modality}"] = knn_top1(train_feats, train_labels, test_feats, test_labels,
                                                      k=self.k, temperature=self.temperature)
        record["knn_videos_train"], record["knn_videos_test"] = len(train_labels), len(test_labels)
        record["knn_seconds"] = time.perf_counter() - started
        return record
