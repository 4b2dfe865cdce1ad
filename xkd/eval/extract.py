"""Feature extraction: pooled backbone features of every clip and crop of an evaluation shard set,
through the DALI evaluation pipeline, written as feature files (`xkd/eval/feature_file.py`).

The pooled feature is the authors' (docs/method.md §Evaluation): the mean of the patch tokens after
the encoder's final LayerNorm. On a GPU the forward runs under bf16 autocast (the authors use
fp16 autocast), on the CPU in fp32.

Large sets are done in chunks of whole shards: each finished chunk is written to `OUT/.partial/`
and recorded in `OUT/.partial/progress.json`, so a re-run with the same backbone, shards and config
continues after the last finished chunk without decoding the earlier ones; the final files are
written only when every chunk is done. `features.json` is written last, so its presence means the
extraction is complete."""
from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from dali_pipelines.shardset import ShardSet
from shards.atomic import atomic_write_json
from shards.format import load_manifest
from xkd.config import ExperimentConfig, to_dict
from xkd.eval.backbones import EvalBackbone, backbone_label
from xkd.eval.feature_file import FORMAT, META_NAME, VERSION, FeatureSet, load_features, save_features

PARTIAL = ".partial"
PROGRESS = "progress.json"
FORWARD_CLIPS = 64  # clips per forward pass on the CPU (a batch of videos x clips x crops can be large)


class ExtractionConflict(ValueError):
    """OUT holds (partial) features of another extraction."""


def plan_chunks(shards: ShardSet, chunk_videos: int) -> list[ShardSet]:
    """Consecutive groups of whole shards of at least `chunk_videos` samples (the last may be smaller)."""
    chunks, start, count = [], 0, 0
    counts = shards.shard_samples()
    for end, samples in enumerate(counts, start=1):
        count += samples
        if count >= chunk_videos or end == len(counts):
            part = ShardSet(shards.tars[start:end], shards.indexes[start:end], count, shards.video_extension,
                            shards.has_video)
            chunks.append(part)
            start, count = end, 0
    return chunks


def pooled_features(encoder: torch.nn.Module, clips: torch.Tensor, device: torch.device) -> torch.Tensor:
    """(n, ...) clips -> (n, D) float32 pooled features, in pieces on the CPU, under bf16 autocast on a GPU."""
    on_gpu = device.type == "cuda"
    pieces = [clips] if on_gpu else clips.split(FORWARD_CLIPS)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if on_gpu else nullcontext()
    with torch.inference_mode(), autocast:
        return torch.cat([encoder.pooled(piece.to(device)).float() for piece in pieces]).cpu()


def _rows(batch, modality: str) -> tuple[torch.Tensor, np.ndarray, np.ndarray, np.ndarray]:
    """The clips of one modality flattened to rows, with each row's (video in batch, clip, crop)."""
    if modality == "video":
        clips = batch.video_clips  # (B, N, crops, 3, T, S, S)
    else:
        clips = batch.audio_clips.unsqueeze(2)  # (B, N, 1, 1, bins, frames): one "crop"
    b, n, crops = clips.shape[:3]
    video, clip, crop = np.meshgrid(np.arange(b), batch.clip_index.numpy(), np.arange(crops), indexing="ij")
    return clips.flatten(0, 2), video.ravel(), clip.ravel(), crop.ravel()


def extract_in_memory(backbones: list[EvalBackbone], shards: ShardSet, data_cfg, device: torch.device,
                      progress=None, rank: int = 0, world_size: int = 1,
                      multi_label_classes: int | None = None) -> dict[str, FeatureSet]:
    """The FeatureSet of each backbone's modality over `shards` (this rank's share of them), one
    evaluation pass; video_index counts from 0. multi_label_classes: C for a multi-label set, whose
    labels become (V, C) multi-hot rows."""
    from dali_pipelines.evaluation import eval_loader

    modalities = [b.modality for b in backbones]
    loader = eval_loader(shards, data_cfg, modality="both" if len(modalities) == 2 else modalities[0],
                         rank=rank, world_size=world_size, device=device if device.type == "cuda" else None)
    parts = {m: [] for m in modalities}
    keys, labels = [], []
    for batch in loader:
        first = len(keys)
        for backbone in backbones:
            clips, video, clip, crop = _rows(batch, backbone.modality)
            parts[backbone.modality].append((pooled_features(backbone.encoder, clips, device),
                                             video + first, clip, crop))
        keys += batch.key
        labels.append(batch.label.cpu().numpy() if multi_label_classes is None
                      else _multi_hot(batch.label_sets, multi_label_classes))
        if progress is not None:
            progress.update(len(batch))
    labels = np.concatenate(labels)
    return {m: FeatureSet(torch.cat([p[0] for p in rows]).numpy(),
                          *(np.concatenate([p[i] for p in rows]) for i in (1, 2, 3)),
                          keys=np.asarray(keys), labels=labels)
            for m, rows in parts.items()}


def _multi_hot(label_sets: list[tuple[int, ...]], classes: int) -> np.ndarray:
    rows = np.zeros((len(label_sets), classes), np.uint8)
    for row, ids in zip(rows, label_sets):
        row[list(ids)] = 1
    return rows


class FeatureExtraction:
    """One extraction: backbones x shard set x config -> OUT/{modality}.npz + OUT/features.json."""

    def __init__(self, backbones: list[EvalBackbone], shards_location: str, cfg: ExperimentConfig, out: str | Path,
                 *, device: torch.device, chunk_videos: int = 2048, log: Callable[[str], None] = print):
        self.backbones, self.cfg, self.out = backbones, cfg, Path(out)
        self.device, self.chunk_videos, self.log = device, chunk_videos, log
        self.modalities = [b.modality for b in backbones]
        for backbone in backbones:
            backbone.encoder.to(device)
        self.location = os.path.abspath(shards_location)
        needs = tuple(self.modalities)
        self.shards = ShardSet.from_path(shards_location, needs=needs)
        self.manifest = _manifest_or_none(shards_location)
        self.identity = self._identity()

    def _identity(self) -> dict:
        """What makes two extractions the same (a re-run may resume the other's chunks)."""
        data = to_dict(self.cfg.data)
        for irrelevant in ("batch_size", "num_threads", "shuffle_buffer"):
            data.pop(irrelevant)
        return {"backbones": {b.modality: {k: v for k, v in b.info.items() if k != "path"} for b in self.backbones},
                "shards": {"location": self.location, "tars": [os.path.basename(t) for t in self.shards.tars],
                           "samples": self.shards.samples},
                "data": data, "chunk_videos": self.chunk_videos}

    # ---- resume bookkeeping -------------------------------------------------------------------

    @property
    def partial(self) -> Path:
        return self.out / PARTIAL

    def _check_out(self) -> list[int]:
        """Chunks already done (resume), after refusing an OUT that holds another extraction's work."""
        meta_path = self.out / META_NAME
        if meta_path.exists():
            done = json.loads(meta_path.read_text())
            if done.get("identity") == self.identity:
                return [-1]  # complete already
            raise ExtractionConflict(f"{self.out}: holds features of another extraction ({meta_path}); "
                                     "choose another folder or remove it")
        progress = self.partial / PROGRESS
        if not progress.exists():
            return []
        record = json.loads(progress.read_text())
        if record.get("identity") != self.identity:
            raise ExtractionConflict(f"{self.out}: holds a partial extraction with another backbone, shard set or "
                                     f"config ({progress}); choose another folder or remove {self.partial}")
        return record["chunks_done"]

    def _chunk_file(self, index: int, modality: str) -> Path:
        return self.partial / f"{modality}-{index:06d}.npz"

    # ---- the work -----------------------------------------------------------------------------

    def run(self) -> dict:
        """Extract (or resume); returns the features.json record."""
        done = self._check_out()
        if done == [-1]:
            self.log(f"[features] {self.out}: already complete")
            return json.loads((self.out / META_NAME).read_text())
        chunks = plan_chunks(self.shards, self.chunk_videos)
        self.partial.mkdir(parents=True, exist_ok=True)
        remaining = sum(c.samples for i, c in enumerate(chunks) if i not in done)
        if done:
            self.log(f"[features] resuming: {len(done)} of {len(chunks)} chunks done, {remaining} videos left")
        progress = _progress_bar(remaining)
        for index, chunk in enumerate(chunks):
            if index in done:
                continue
            for modality, features in self._extract_chunk(chunk, progress).items():
                save_features(self._chunk_file(index, modality), features)
            done = sorted(done + [index])
            atomic_write_json(self.partial / PROGRESS, {"identity": self.identity, "chunks_done": done})
        progress.close()
        return self._finish(len(chunks))

    def _extract_chunk(self, chunk: ShardSet, progress) -> dict[str, FeatureSet]:
        manifest = self.manifest or {}
        classes = manifest.get("num_classes") if manifest.get("multi_label") else None
        return extract_in_memory(self.backbones, chunk, self.cfg.data, self.device, progress,
                                 multi_label_classes=classes)

    def _finish(self, chunk_count: int) -> dict:
        """Join the chunks into one file per modality, write features.json, drop the partial folder."""
        record = {"format": FORMAT, "version": VERSION, "modalities": self.modalities,
                  "backbone": backbone_label(self.backbones),
                  "backbones": {b.modality: b.info for b in self.backbones},
                  "config": {"name": self.cfg.name, "data": to_dict(self.cfg.data)},
                  "shards": {"location": self.location, "name": os.path.basename(self.location.rstrip("/")),
                             "tars": len(self.shards.tars), "samples": self.shards.samples},
                  "classes": _class_names(self.manifest),
                  "clips": self.cfg.data.eval_clips, "crops": self.cfg.data.eval_crops,
                  "device": str(self.device), "dtype": "bfloat16 autocast" if self.device.type == "cuda" else "float32",
                  "identity": self.identity, "dim": {}, "rows": {}}
        for modality in self.modalities:
            parts = [load_features(self._chunk_file(i, modality)) for i in range(chunk_count)]
            offsets = np.cumsum([0] + [len(p.keys) for p in parts[:-1]])
            for part, offset in zip(parts, offsets):
                part.video_index = part.video_index + offset
            joined = FeatureSet(*(np.concatenate([getattr(p, name) for p in parts]) for name in
                                  ("features", "video_index", "clip_index", "crop_index", "keys", "labels")))
            save_features(self.out / f"{modality}.npz", joined)
            record["dim"][modality], record["rows"][modality] = joined.dim, len(joined)
            record["videos"], record["multi_label"] = len(joined.keys), joined.multi_label
            if (joined.labels < 0).all():
                self.log(f"[features] warning: {self.location} has no labels; classifiers will refuse these features")
        atomic_write_json(self.out / META_NAME, record)
        shutil.rmtree(self.partial)
        self.log(f"[features] {record['videos']} videos -> " + ", ".join(
            f"{self.out / (m + '.npz')} ({record['rows'][m]} rows x {record['dim'][m]})" for m in self.modalities))
        return record


def _manifest_or_none(location: str) -> dict | None:
    try:
        return load_manifest(location) if os.path.isdir(location) else None
    except (FileNotFoundError, ValueError):
        return None


def _class_names(manifest: dict | None) -> list[str] | None:
    """Class names in id order (the manifest maps name -> id), or None for unlabelled shards."""
    classes = (manifest or {}).get("classes") or {}
    return [name for name, _ in sorted(classes.items(), key=lambda item: item[1])] or None


def _progress_bar(total: int):
    from tqdm import tqdm

    interactive = sys.stderr.isatty()
    return tqdm(total=total, unit="video", desc="features", file=sys.stderr, mininterval=0.5 if interactive else 10,
                dynamic_ncols=interactive)
