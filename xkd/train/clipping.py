"""Gradient clipping as the authors do it: every student backbone / head parameter on its own
(DINO's clip_gradients), applied to the full (reduced) gradient however ZeRO partitions it."""
from __future__ import annotations

import torch
from deepspeed.utils import safe_update_full_grad_vectorized


def loss_scale(engine) -> float:
    """fp16 gradients are still multiplied by the loss scale until the optimiser step."""
    if not engine.fp16_enabled():
        return 1.0
    for name in ("loss_scale", "cur_scale"):
        value = getattr(engine.optimizer, name, None)
        if value is not None:
            return float(value)
    return 1.0


def clip_per_parameter(params: list[torch.nn.Parameter], max_norm: float, scale: float = 1.0) -> None:
    """g <- g * min(1, max_norm / (||g|| + 1e-6)) for each parameter, on unscaled norms."""
    limit, eps = max_norm * scale, 1e-6 * scale

    def clip(grad: torch.Tensor, _param) -> torch.Tensor:
        factor = (limit / (grad.float().norm() + eps)).clamp(max=1.0)
        return grad * factor.to(grad.dtype)

    safe_update_full_grad_vectorized(params, clip)
