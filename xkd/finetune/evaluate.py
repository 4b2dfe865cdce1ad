"""A classifier scored on an evaluation shard set: every clip (and crop) of every video through the
DALI evaluation pipeline, the clip scores averaged per video (xkd/eval/scoring.py), then top-1 /
top-5, or macro mAP for a multi-label set (docs/method.md §Fine-tuning). Single-label sets average
the softmax, as the authors; multi-label sets the logits, as their FSD50K fine-tuning does. Each
rank scores its share of the videos; `gather` joins the shares."""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, replace

import numpy as np
import torch

from dali_pipelines.shardset import ShardSet
from xkd.eval.extract import FORWARD_CLIPS
from xkd.eval.scoring import average_per_video, mean_average_precision, topk_accuracy
from xkd.finetune.augment import multi_hot


@dataclass
class VideoScores:
    keys: list[str]
    scores: np.ndarray  # (V, C)
    labels: np.ndarray  # (V,) class ids, or (V, C) multi-hot

    def __len__(self) -> int:
        return len(self.keys)


def _clip_scores(model: torch.nn.Module, clips: torch.Tensor, device: torch.device, multi_label: bool) -> torch.Tensor:
    """(n, C) float32 scores of n clips: in pieces on the CPU, under bf16 autocast on a GPU."""
    on_gpu = device.type == "cuda"
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if on_gpu else nullcontext()
    pieces = [clips] if on_gpu else clips.split(FORWARD_CLIPS)
    with torch.inference_mode(), autocast:
        logits = torch.cat([model(piece.to(device)).float() for piece in pieces])
    return (logits if multi_label else logits.softmax(dim=1)).cpu()


def score_videos(model: torch.nn.Module, shards: ShardSet, data_cfg, modality: str, device: torch.device, *,
                 num_classes: int, multi_label: bool, clips: int, crops: int, rank: int = 0,
                 world_size: int = 1) -> VideoScores:
    """This rank's share of `shards`, `clips` clips x `crops` crops per video, scored by `model` (eval mode)."""
    from dali_pipelines.evaluation import eval_loader

    cfg = replace(data_cfg, eval_clips=clips, eval_crops=crops if modality == "video" else 1)
    loader = eval_loader(shards, cfg, modality=modality, rank=rank, world_size=world_size,
                         device=device if device.type == "cuda" else None)
    was_training = model.training
    model.eval()
    keys, labels, rows, row_video = [], [], [], []
    for batch in loader:
        if modality == "video":  # (B, N, crops, 3, T, S, S): N x crops rows per video
            per_video, flat = batch.video_clips.shape[1] * batch.video_clips.shape[2], batch.video_clips.flatten(0, 2)
        else:  # (B, N, 1, mel_bins, frames): N rows per video
            per_video, flat = batch.audio_clips.shape[1], batch.audio_clips.flatten(0, 1)
        rows.append(_clip_scores(model, flat, device, multi_label).numpy())
        row_video.append(np.repeat(np.arange(len(keys), len(keys) + len(batch)), per_video))
        keys += batch.key
        labels.append(multi_hot(batch.label_sets, num_classes, "cpu").numpy().astype(np.uint8) if multi_label
                      else batch.label.cpu().numpy())
    model.train(was_training)
    if not keys:
        return VideoScores([], np.zeros((0, num_classes)), np.zeros((0, num_classes) if multi_label else (0,)))
    videos, scores = average_per_video(np.concatenate(rows).astype(np.float64), np.concatenate(row_video))
    return VideoScores(keys, scores, np.concatenate(labels)[videos])


def gather(scores: VideoScores) -> VideoScores:
    """Every rank's share, joined (a world of one: unchanged)."""
    from xkd.train.distributed import all_gather_objects

    shares = [s for s in all_gather_objects(scores) if len(s)]
    if len(shares) <= 1:
        return shares[0] if shares else scores
    return VideoScores([k for s in shares for k in s.keys], np.concatenate([s.scores for s in shares]),
                       np.concatenate([s.labels for s in shares]))


def metrics(scores: VideoScores, multi_label: bool) -> dict:
    """{"top1", "top5"} (percent; top-5 None with 5 classes or fewer) or {"map", "map_classes"}."""
    if multi_label:
        value, counted = mean_average_precision(scores.scores, scores.labels)
        return {"map": value, "map_classes": counted}
    return {"top1": topk_accuracy(scores.scores, scores.labels, 1), "top5": topk_accuracy(scores.scores, scores.labels, 5)}
