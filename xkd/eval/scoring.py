"""From per-row scores to per-video metrics. A video's rows are its clips (and crops); its score is
the mean over them, as the authors do for the SVM's decision values, the linear head's softmax and
the multi-label head's sigmoid. Every metric is in percent."""
from __future__ import annotations

import numpy as np


def average_per_video(scores: np.ndarray, video_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(videos, per-video scores): the videos that have rows, in increasing index, and the mean of
    their rows' scores (R, C) -> (V', C)."""
    videos, row_to_video = np.unique(video_index, return_inverse=True)
    row_to_video = row_to_video.reshape(-1)
    sums = np.zeros((len(videos), scores.shape[1]), dtype=np.float64)
    np.add.at(sums, row_to_video, scores)
    return videos, sums / np.bincount(row_to_video)[:, None]


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, k: int, classes: int | None = None) -> float | None:
    """Percent of rows whose label is among the k highest scores; None when there are no more than k
    classes to choose from (`classes`, default the number of columns): every answer would count."""
    if (scores.shape[1] if classes is None else classes) <= k:
        return None
    ranked = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float(100.0 * (ranked == labels[:, None]).any(axis=1).mean())


def mean_average_precision(scores: np.ndarray, multi_hot: np.ndarray) -> tuple[float, int]:
    """(macro mAP in percent, number of classes counted): scikit-learn's average precision per class,
    averaged over the classes that have a positive among these videos (as the authors, who drop the
    others: their average precision is undefined)."""
    from sklearn.metrics import average_precision_score

    counted = multi_hot.any(axis=0)
    if not counted.any():
        raise ValueError("no class has a positive: mAP is undefined")
    value = average_precision_score(multi_hot[:, counted], scores[:, counted], average="macro")
    return float(100.0 * value), int(counted.sum())
