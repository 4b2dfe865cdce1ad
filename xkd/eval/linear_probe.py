"""A linear classifier trained on frozen features (docs/method.md §Evaluation).

Every row (one clip in one crop) is a training sample with its video's label. Single-label sets:
cross-entropy, and a test video's softmax averaged over its rows (as the authors' Kinetics-400
probe). Multi-label sets (labels (V, C) multi-hot, FSD50K): binary cross-entropy on the logits, the
sigmoid averaged over a video's rows, and macro mAP over the classes with a test positive (as the
authors). AdamW with a per-step cosine schedule after a short linear warm-up.

Departures, both because the authors' probe picks its epoch on the test set (B16): the result is the
last epoch's, and the features are standardised with the training split's mean and deviation (MAE's
probe does the same with a batch norm without affine terms), which lets one learning rate suit
backbones whose pooled features differ in scale; `standardise=False` feeds them raw, as the authors."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from xkd.eval.inputs import EvalPair
from xkd.eval.scoring import average_per_video, mean_average_precision, topk_accuracy
from xkd.schedules import cosine_scheduler


@dataclass
class LinearSettings:
    epochs: int = 30
    batch_size: int = 256
    lr: float = 1e-3  # the peak, after warm-up (the authors' FSD50K probe: AdamW at 1e-3)
    weight_decay: float = 1e-4
    warmup_epochs: int = 1
    standardise: bool = True
    seed: int = 0
    device: str = "auto"  # the GPU when there is one


@dataclass
class LinearOutcome:
    top1: float | None
    top5: float | None
    map: float | None
    map_classes: int | None  # classes counted in the mAP (those with a test positive)
    final_train_loss: float


def _device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def train_linear_head(features: np.ndarray, targets: np.ndarray, num_classes: int, multi_label: bool,
                      settings: LinearSettings, progress: Callable[[int], object] | None = None):
    """Train nn.Linear(D, num_classes) on (features, targets); returns (head, last epoch's mean loss)."""
    import torch

    device = _device(settings.device)
    generator = torch.Generator().manual_seed(settings.seed)
    x = torch.as_tensor(features, dtype=torch.float32, device=device)
    y = torch.as_tensor(targets, dtype=torch.float32 if multi_label else torch.long, device=device)
    head = torch.nn.Linear(x.shape[1], num_classes).to(device)
    with torch.no_grad():  # a small start (MAE's probe): the first steps follow the data, not the init
        head.weight.copy_(torch.nn.init.trunc_normal_(torch.empty_like(head.weight, device="cpu"), std=0.01,
                                                      generator=generator))
        head.bias.zero_()
    loss_fn = torch.nn.BCEWithLogitsLoss() if multi_label else torch.nn.CrossEntropyLoss()
    optimizer = torch.optim.AdamW(head.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    steps_per_epoch = -(-len(x) // settings.batch_size)
    lr = cosine_scheduler(settings.lr, 0.0, settings.epochs, steps_per_epoch,
                          min(settings.warmup_epochs, settings.epochs - 1))
    bar = progress(settings.epochs) if progress else None
    step, epoch_loss = 0, float("nan")
    for _ in range(settings.epochs):
        order = torch.randperm(len(x), generator=generator).to(device)
        total = torch.zeros((), device=device)
        for start in range(0, len(x), settings.batch_size):
            rows = order[start:start + settings.batch_size]
            for group in optimizer.param_groups:
                group["lr"] = float(lr[step])
            loss = loss_fn(head(x[rows]), y[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach() * len(rows)  # summed on the device: no sync per step
            step += 1
        epoch_loss = float(total) / len(x)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{epoch_loss:.4f}")
    if bar is not None:
        bar.close()
    return head, epoch_loss


def evaluate_linear(pair: EvalPair, settings: LinearSettings = LinearSettings(),
                    progress: Callable[[int], object] | None = None) -> LinearOutcome:
    import torch

    train_x, test_x = pair.train.features, pair.test.features
    if settings.standardise:
        mean, std = train_x.mean(axis=0), train_x.std(axis=0)
        std = np.where(std > 1e-6, std, 1.0)  # a constant dimension stays constant, not infinite
        train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    head, loss = train_linear_head(train_x, pair.train.row_labels(), pair.num_classes, pair.multi_label,
                                   settings, progress)
    with torch.no_grad():
        logits = head(torch.as_tensor(test_x, dtype=torch.float32, device=head.weight.device))
        probabilities = (logits.sigmoid() if pair.multi_label else logits.softmax(dim=1)).double().cpu().numpy()
    videos, per_video = average_per_video(probabilities, pair.test.video_index)
    labels = pair.test.labels[videos]
    if pair.multi_label:
        value, counted = mean_average_precision(per_video, labels)
        return LinearOutcome(top1=None, top5=None, map=value, map_classes=counted, final_train_loss=loss)
    return LinearOutcome(top1=topk_accuracy(per_video, labels, 1),
                         top5=topk_accuracy(per_video, labels, 5, pair.train_classes),
                         map=None, map_classes=None, final_train_loss=loss)
