"""Audio and video features joined into one feature per (video, clip): the Kinetics-Sound protocol
(`--modality both`, docs/method.md §Evaluation).

As the authors do, each modality's rows are L2-normalised, the crops of each clip are averaged (the
video has 1 or 3 crops per clip, the audio one), and the two are concatenated, video first. Rows are
matched by (shard key, clip index), never by position: the two files were written by separate passes
and need not list videos in the same order."""
from __future__ import annotations

import numpy as np

from xkd.eval.feature_file import FeatureFileError, FeatureSet


def l2_normalise(features: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.maximum(norms, 1e-12)


def average_crops(fs: FeatureSet) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features, video_index, clip_index) with one row per (video, clip): the mean over its crops."""
    pairs, row_to_pair = np.unique(np.stack([fs.video_index, fs.clip_index], axis=1), axis=0, return_inverse=True)
    row_to_pair = row_to_pair.reshape(-1)
    sums = np.zeros((len(pairs), fs.dim), dtype=np.float64)
    np.add.at(sums, row_to_pair, fs.features)
    counts = np.bincount(row_to_pair, minlength=len(pairs))[:, None]
    return (sums / counts).astype(np.float32), pairs[:, 0], pairs[:, 1]


def _rows_by_key_clip(fs: FeatureSet) -> tuple[dict[tuple[str, int], int], np.ndarray]:
    """{(key, clip): row} and the rows: L2-normalised per crop, then averaged over the clip's crops."""
    normalised = FeatureSet(l2_normalise(fs.features), fs.video_index, fs.clip_index, fs.crop_index, fs.keys, fs.labels)
    features, video_index, clip_index = average_crops(normalised)
    rows = {(str(fs.keys[v]), int(c)): row for row, (v, c) in enumerate(zip(video_index, clip_index))}
    return rows, features


def concatenate_modalities(video: FeatureSet, audio: FeatureSet) -> FeatureSet:
    """One FeatureSet of [video | audio] features per (video, clip), in the video file's row order.

    Refuses (FeatureFileError naming both files) files whose (key, clip) pairs or labels differ."""
    where = f"{video.path} and {audio.path}"
    if video.multi_label != audio.multi_label:
        raise FeatureFileError(f"{where}: one is multi-label and the other is not")
    video_rows, video_features = _rows_by_key_clip(video)
    audio_rows, audio_features = _rows_by_key_clip(audio)
    only_video = sorted(set(video_rows) - set(audio_rows))
    only_audio = sorted(set(audio_rows) - set(video_rows))
    if only_video or only_audio:
        key, clip, file = (*only_video[0], video.path) if only_video else (*only_audio[0], audio.path)
        raise FeatureFileError(f"{where}: the (key, clip) rows do not match: {len(only_video)} only in the video "
                               f"file, {len(only_audio)} only in the audio file; e.g. key {key!r} clip {clip} "
                               f"only in {file}")
    audio_video = {str(key): v for v, key in enumerate(audio.keys)}
    for v, key in enumerate(video.keys):
        if str(key) not in audio_video:  # a key with no rows in either file
            continue
        other = audio.labels[audio_video[str(key)]]
        if not np.array_equal(video.labels[v], other):
            raise FeatureFileError(f"{where}: key {str(key)!r} has label {video.labels[v].tolist()} in the video "
                                   f"file but {other.tolist()} in the audio file")
    pairs = sorted(video_rows, key=video_rows.get)  # the video file's order
    video_position = {str(key): v for v, key in enumerate(video.keys)}
    joined = np.concatenate([video_features[[video_rows[p] for p in pairs]],
                             audio_features[[audio_rows[p] for p in pairs]]], axis=1)
    meta = dict(video.meta, modalities=["video", "audio"])
    return FeatureSet(features=joined.astype(np.float32),
                      video_index=np.array([video_position[key] for key, _ in pairs], dtype=np.int64),
                      clip_index=np.array([clip for _, clip in pairs], dtype=np.int64),
                      crop_index=np.zeros(len(pairs), dtype=np.int64), keys=video.keys, labels=video.labels,
                      meta=meta, path=f"{video.path} + {audio.path}")
