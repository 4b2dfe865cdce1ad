"""Per-iteration (or per-epoch) schedules as plain numpy arrays, DINO style (docs/method.md §Schedules)."""
from __future__ import annotations

import numpy as np


def cosine_scheduler(base_value: float, final_value: float, epochs: int, iters_per_epoch: int,
                     warmup_epochs: int = 0, start_warmup_value: float = 0.0) -> np.ndarray:
    """Linear warm-up from start_warmup_value to base_value, then a cosine from base to final.

    One value per iteration, length epochs * iters_per_epoch.
    """
    warmup_iters = warmup_epochs * iters_per_epoch
    warmup = np.linspace(start_warmup_value, base_value, warmup_iters) if warmup_iters > 0 else np.array([])
    steps = np.arange(epochs * iters_per_epoch - warmup_iters)
    cosine = final_value + 0.5 * (base_value - final_value) * (1 + np.cos(np.pi * steps / max(len(steps), 1)))
    schedule = np.concatenate((warmup, cosine))
    assert len(schedule) == epochs * iters_per_epoch
    return schedule


def ema_momentum_schedule(epochs: int, iters_per_epoch: int, base: float = 0.997, final: float = 1.0) -> np.ndarray:
    """Teacher EMA momentum per iteration: cosine from 0.997 to 1, no warm-up (docs/method.md §Schedules)."""
    return cosine_scheduler(base, final, epochs, iters_per_epoch)


def teacher_temperature(epoch: int, warmup_value: float, final_value: float, warmup_epochs: int) -> float:
    """Teacher temperature of an epoch: np.linspace(warmup, final, warmup_epochs), then final."""
    if epoch < warmup_epochs:
        return float(np.linspace(warmup_value, final_value, warmup_epochs)[epoch])
    return float(final_value)


def teacher_temperature_schedule(warmup_value: float, final_value: float, warmup_epochs: int, epochs: int,
                                 iters_per_epoch: int = 1) -> np.ndarray:
    """The per-epoch teacher temperature repeated for every iteration of the epoch."""
    per_epoch = np.array([teacher_temperature(e, warmup_value, final_value, warmup_epochs) for e in range(epochs)])
    return np.repeat(per_epoch, iters_per_epoch)


class TrainSchedules:
    """LR, weight decay and EMA momentum for every optimiser step of a run (docs/method.md §Schedules).

    The peak LR is train.base_lr x total batch / train.lr_reference_batch (the authors' 1e-4 at 256).
    """

    def __init__(self, train, iters_per_epoch: int, total_batch: int):
        if train.warmup_epochs > train.epochs:
            raise ValueError(f"train.warmup_epochs {train.warmup_epochs} > train.epochs {train.epochs}")
        self.peak_lr = train.base_lr * total_batch / train.lr_reference_batch
        self.iters_per_epoch = iters_per_epoch
        self.lr = cosine_scheduler(self.peak_lr, train.min_lr, train.epochs, iters_per_epoch, train.warmup_epochs)
        self.weight_decay = cosine_scheduler(train.weight_decay, train.weight_decay_end, train.epochs, iters_per_epoch)
        self.momentum = ema_momentum_schedule(train.epochs, iters_per_epoch, train.ema_momentum, train.ema_momentum_end)

    def __len__(self) -> int:
        return len(self.lr)

    def at(self, step: int) -> dict[str, float]:
        i = min(step, len(self.lr) - 1)
        return {"lr": float(self.lr[i]), "weight_decay": float(self.weight_decay[i]), "momentum": float(self.momentum[i])}


class FinetuneSchedules:
    """The fine-tuning LR for every optimiser step: the peak is train.base_lr x total batch /
    train.lr_reference_batch; 'cosine': linear warm-up from 0, then a per-iteration cosine to
    train.min_lr; 'constant': the peak throughout. Each optimizer group scales it by its layer's
    `lr_scale` (docs/method.md §Fine-tuning)."""

    def __init__(self, train, iters_per_epoch: int, total_batch: int):
        self.peak_lr = train.base_lr * total_batch / train.lr_reference_batch
        if train.lr_schedule == "constant":
            self.lr = np.full(train.epochs * iters_per_epoch, self.peak_lr)
        else:
            self.lr = cosine_scheduler(self.peak_lr, train.min_lr, train.epochs, iters_per_epoch, train.warmup_epochs)

    def __len__(self) -> int:
        return len(self.lr)

    def at(self, step: int) -> dict[str, float]:
        return {"lr": float(self.lr[min(step, len(self.lr) - 1)])}
