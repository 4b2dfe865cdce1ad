"""The feature file: what `xkd eval features` writes and every classifier reads.

One file per modality, `MODALITY.npz` (numpy's zip of arrays), beside a `features.json` that says
which backbone, config and shards made it. Rows are one clip in one crop of one video:

  features     (R, D) float32   the pooled backbone output of each row
  video_index  (R,)   int64     which video (an index into `keys` and `labels`)
  clip_index   (R,)   int64     which of the video's N clips (0..N-1)
  crop_index   (R,)   int64     which crop of that clip (0..crops-1; audio rows: 0)
  keys         (V,)   str       the shard sample keys, one per video
  labels       (V,)   int64     the class id (-1: unlabelled)
               or (V, C) uint8  multi-hot, for multi-label sets (FSD50K)

`features.json` = {"format": "xkd-features", "version": 1, "modalities": [...], "backbone": {...},
"config": {...}, "shards": {...}, "classes": [names] or null, "multi_label": bool, "clips": N,
"crops": K, "dim": {modality: D}, "rows": {modality: R}, "videos": V}.

Every problem with a file is a `FeatureFileError` naming it (the commands turn it into exit 2)."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

FORMAT = "xkd-features"
VERSION = 1
MODALITIES = ("video", "audio")
META_NAME = "features.json"


class FeatureFileError(ValueError):
    """A feature file that is missing, empty, malformed or does not fit the others."""


@dataclass
class FeatureSet:
    features: np.ndarray  # (R, D) float32
    video_index: np.ndarray  # (R,) int64
    clip_index: np.ndarray  # (R,) int64
    crop_index: np.ndarray  # (R,) int64
    keys: np.ndarray  # (V,) str
    labels: np.ndarray  # (V,) int64, or (V, C) uint8 multi-hot
    meta: dict = field(default_factory=dict)
    path: str = ""

    @property
    def multi_label(self) -> bool:
        return self.labels.ndim == 2

    @property
    def dim(self) -> int:
        return self.features.shape[1]

    def __len__(self) -> int:
        return len(self.features)

    def row_labels(self) -> np.ndarray:
        """The label of each row (its video's)."""
        return self.labels[self.video_index]


def feature_path(location: str | os.PathLike, modality: str | None = None) -> Path:
    """MODALITY.npz in a feature folder, or the .npz file itself."""
    location = Path(location)
    if location.suffix == ".npz":
        return location
    if modality is None:
        present = [m for m in MODALITIES if (location / f"{m}.npz").exists()]
        if len(present) != 1:
            found = ", ".join(present) or "none"
            raise FeatureFileError(f"{location}: name the modality (--modality); feature files found: {found}")
        modality = present[0]
    return location / f"{modality}.npz"


def read_meta(npz_path: Path) -> dict:
    meta_path = npz_path.with_name(META_NAME)
    if not meta_path.exists():
        return {}
    try:
        meta = json.loads(meta_path.read_text())
    except ValueError as error:
        raise FeatureFileError(f"{meta_path}: not valid JSON ({error})") from None
    if meta.get("format") != FORMAT:
        raise FeatureFileError(f"{meta_path}: not an {FORMAT} file (format={meta.get('format')!r})")
    return meta


def save_features(path: str | os.PathLike, features: FeatureSet) -> Path:
    """Write one modality's FeatureSet to PATH (a .npz), whole or not at all."""
    from shards.atomic import atomic_write

    path = Path(path)
    arrays = {"features": features.features.astype(np.float32, copy=False),
              "video_index": features.video_index.astype(np.int64, copy=False),
              "clip_index": features.clip_index.astype(np.int64, copy=False),
              "crop_index": features.crop_index.astype(np.int64, copy=False),
              "keys": np.asarray(features.keys, dtype=str), "labels": features.labels}

    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:  # a file object: np.savez would append .npz to a name
            np.savez(handle, **arrays)

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, write)
    return path


def load_features(location: str | os.PathLike, modality: str | None = None) -> FeatureSet:
    """Read MODALITY.npz (a folder and a modality, or the file); checks it is whole and consistent."""
    path = feature_path(location, modality)
    if not path.exists():
        raise FeatureFileError(f"{path}: feature file not found")
    if path.stat().st_size == 0:
        raise FeatureFileError(f"{path}: feature file is empty")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except Exception as error:  # zip or array damage: name the file, not numpy's internals
        raise FeatureFileError(f"{path}: cannot be read as a feature file ({type(error).__name__}: {error})") from None
    missing = {"features", "video_index", "clip_index", "crop_index", "keys", "labels"} - set(arrays)
    if missing:
        raise FeatureFileError(f"{path}: not a feature file, it lacks {', '.join(sorted(missing))}")
    features = FeatureSet(**arrays, meta=read_meta(path), path=str(path))
    _check_consistent(features)
    return features


def _check_consistent(fs: FeatureSet) -> None:
    where = fs.path
    if fs.features.ndim != 2 or len(fs.features) == 0:
        raise FeatureFileError(f"{where}: holds no features (shape {fs.features.shape})")
    rows = len(fs.features)
    for name in ("video_index", "clip_index", "crop_index"):
        if getattr(fs, name).shape != (rows,):
            raise FeatureFileError(f"{where}: {name} has shape {getattr(fs, name).shape}, expected ({rows},)")
    if len(fs.labels) != len(fs.keys):
        raise FeatureFileError(f"{where}: {len(fs.keys)} keys but {len(fs.labels)} labels")
    if fs.video_index.min() < 0 or fs.video_index.max() >= len(fs.keys):
        raise FeatureFileError(f"{where}: video_index out of range of its {len(fs.keys)} keys")
    if not np.isfinite(fs.features).all():
        raise FeatureFileError(f"{where}: holds non-finite features")
