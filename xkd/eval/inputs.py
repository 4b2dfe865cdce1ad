"""The training and test feature sets a classifier compares, loaded and checked against each other.

Every refusal is a FeatureFileError that names the file at fault (the commands exit with status 2):
different widths or backbones, unlabelled videos, single- against multi-label, class lists that
differ, test classes that the training split never shows."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xkd.eval.feature_file import MODALITIES, FeatureFileError, FeatureSet, load_features
from xkd.eval.modalities import concatenate_modalities

MODALITY_CHOICES = (*MODALITIES, "both")
# features.json backbone fields that identify the weights themselves (a copy elsewhere is the same backbone)


@dataclass
class EvalPair:
    """What every classifier takes: TRAIN and TEST rows of one modality (or both joined)."""
    train: FeatureSet
    test: FeatureSet
    modality: str  # video | audio | both
    num_classes: int
    class_names: list[str] | None

    @property
    def multi_label(self) -> bool:
        return self.train.multi_label

    @property
    def train_classes(self) -> int:
        """Classes with a training example: the most any classifier can tell apart (top-5 needs > 5)."""
        labels = self.train.labels
        return int(labels.any(axis=0).sum()) if self.multi_label else len(np.unique(labels))


def load_modality(location: str | os.PathLike, modality: str | None) -> tuple[FeatureSet, str]:
    """(features, modality) of a feature folder or a MODALITY.npz; `both` joins a folder's two files."""
    location = Path(location)
    if not location.exists() and location.suffix != ".npz":  # a missing .npz: load_features says so
        raise FeatureFileError(f"{location}: not found")
    if modality == "both":
        if location.suffix == ".npz":
            raise FeatureFileError(f"{location}: --modality both needs a feature folder holding video.npz and "
                                   f"audio.npz")
        return concatenate_modalities(load_features(location, "video"), load_features(location, "audio")), "both"
    if location.suffix == ".npz" and modality and location.stem in MODALITIES and location.stem != modality:
        raise FeatureFileError(f"{location}: holds {location.stem} features, not {modality} (--modality)")
    features = load_features(location, modality)
    return features, modality or Path(features.path).stem


def backbone_identity(features: FeatureSet) -> str | None:
    """What must agree between TRAIN and TEST: the SHA-256 of the backbone's weights (a random-init
    backbone: its preset, seed and geometry) as features.json records it for this file's modality;
    None without a features.json."""
    modality = Path(features.path).stem
    info = (features.meta.get("backbones") or {}).get(modality)
    if not info:
        return None
    return info.get("sha256") or json.dumps({k: v for k, v in info.items() if k != "path"}, sort_keys=True)


def load_pair(train_location: str | os.PathLike, test_location: str | os.PathLike,
              modality: str | None = None) -> EvalPair:
    train, train_modality = load_modality(train_location, modality)
    test, test_modality = load_modality(test_location, modality)
    if train_modality != test_modality:
        raise FeatureFileError(f"{test.path}: holds {test_modality} features but {train.path} holds "
                               f"{train_modality} (name one with --modality)")
    num_classes, names = check_pair(train, test)
    return EvalPair(train, test, train_modality, num_classes, names)


def check_pair(train: FeatureSet, test: FeatureSet) -> tuple[int, list[str] | None]:
    """Refuse a TRAIN/TEST pair no classifier can compare; returns (number of classes, class names)."""
    for fs in (train, test):
        if not fs.multi_label and (fs.labels < 0).any():
            raise FeatureFileError(f"{fs.path}: {int((fs.labels < 0).sum())} of {len(fs.labels)} videos are "
                                   f"unlabelled (label -1); classifiers need shards made with labels")
    if train.multi_label != test.multi_label:
        kinds = {True: "multi-label", False: "single-label"}
        raise FeatureFileError(f"{test.path}: {kinds[test.multi_label]} features, but {train.path} is "
                               f"{kinds[train.multi_label]}")
    if train.dim != test.dim:
        raise FeatureFileError(f"{test.path}: {test.dim}-d features, but {train.path} has {train.dim}-d: "
                               f"not from the same backbone")
    train_backbone, test_backbone = backbone_identity(train), backbone_identity(test)
    if train_backbone and test_backbone and train_backbone != test_backbone:
        raise FeatureFileError(f"{test.path}: extracted with another backbone than {train.path} "
                               f"(the weights in their features.json differ)")
    names = _class_names(train, test)
    if train.multi_label:
        if train.labels.shape[1] != test.labels.shape[1]:
            raise FeatureFileError(f"{test.path}: {test.labels.shape[1]} classes, but {train.path} has "
                                   f"{train.labels.shape[1]}")
        num_classes = train.labels.shape[1]
        test_classes, train_classes = np.flatnonzero(test.labels.any(0)), np.flatnonzero(train.labels.any(0))
    else:
        num_classes = max(len(names or ()), int(train.labels.max()) + 1, int(test.labels.max()) + 1)
        test_classes, train_classes = np.unique(test.labels), np.unique(train.labels)
    if names is not None and num_classes > len(names):
        raise FeatureFileError(f"{test.path}: labels go up to {num_classes - 1}, but features.json lists "
                               f"{len(names)} classes")
    absent = np.setdiff1d(test_classes, train_classes)
    if len(absent):
        shown = ", ".join(names[c] if names else str(c) for c in absent[:5]) + (" ..." if len(absent) > 5 else "")
        raise FeatureFileError(f"{test.path}: {len(absent)} test classes never occur in the training split "
                               f"{train.path}: {shown}")
    return num_classes, names


def _class_names(train: FeatureSet, test: FeatureSet) -> list[str] | None:
    train_names, test_names = _name_list(train.meta.get("classes")), _name_list(test.meta.get("classes"))
    if train_names and test_names and train_names != test_names:
        raise FeatureFileError(f"{test.path}: its class list (features.json) differs from that of {train.path}")
    return train_names or test_names


def _name_list(classes) -> list[str] | None:
    """features.json "classes": a list of names, or a shard manifest's {name: id}."""
    if not classes:
        return None
    if isinstance(classes, dict):
        return [name for name, _ in sorted(classes.items(), key=lambda item: item[1])]
    return [str(name) for name in classes]
