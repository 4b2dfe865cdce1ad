"""Weighted cosine k-nearest-neighbour classification, as DINO's kNN monitor (k=20, T=0.07).

Each test feature takes its k most cosine-similar training features; neighbour i votes for its class
with weight exp(similarity_i / T); the class with the largest sum wins. Features are L2-normalised
here, so callers may pass raw ones. Works on numpy arrays or torch tensors on any device and reads
no file: the pretraining kNN monitor calls `knn_top1` on the features it has in memory.

The evaluation command classifies videos, not rows: one feature per video, the mean of its clips'
and crops' features (`video_features`), because a test video's clips are near-copies of each other
and of nothing in TRAIN, and would otherwise each cast a vote."""
from __future__ import annotations

import numpy as np

from xkd.eval.feature_file import FeatureSet
from xkd.eval.modalities import l2_normalise
from xkd.eval.scoring import average_per_video

DEFAULT_K = 20
DEFAULT_TEMPERATURE = 0.07


def knn_votes(train_features, train_labels, test_features, k: int = DEFAULT_K,
              temperature: float = DEFAULT_TEMPERATURE, num_classes: int | None = None,
              chunk: int = 1024):
    """(N_test, num_classes) torch tensor of summed vote weights, on the training features' device;
    k is capped at the number of training features."""
    import torch

    train = torch.nn.functional.normalize(torch.as_tensor(train_features).float(), dim=1)
    labels = torch.as_tensor(train_labels, device=train.device).long()
    test = torch.nn.functional.normalize(torch.as_tensor(test_features).float().to(train.device), dim=1)
    num_classes = num_classes or int(labels.max()) + 1
    k = min(k, len(train))
    votes = torch.zeros(len(test), num_classes, device=train.device)
    for start in range(0, len(test), chunk):  # bounds the (chunk, N_train) similarity matrix
        similarity, neighbour = (test[start:start + chunk] @ train.T).topk(k, dim=1)
        weights = (similarity / temperature).exp()
        votes[start:start + chunk].scatter_add_(1, labels[neighbour], weights)
    return votes


def knn_top1(train_features, train_labels, test_features, test_labels, k: int = DEFAULT_K,
             temperature: float = DEFAULT_TEMPERATURE) -> float:
    """Top-1 accuracy in percent of the weighted kNN vote (labels: integer class ids)."""
    import torch

    test_labels = torch.as_tensor(test_labels).long()
    num_classes = int(max(torch.as_tensor(train_labels).max(), test_labels.max())) + 1
    votes = knn_votes(train_features, train_labels, test_features, k, temperature, num_classes)
    return float(100.0 * (votes.argmax(dim=1).cpu() == test_labels.cpu()).float().mean())


def video_features(fs: FeatureSet) -> tuple[np.ndarray, np.ndarray]:
    """(features, labels) with one row per video that has rows: the L2-normalised mean of its rows."""
    videos, means = average_per_video(fs.features, fs.video_index)
    return l2_normalise(means).astype(np.float32), fs.labels[videos]
