"""Gradient clipping as the authors do it: every student backbone / head parameter on its own
(DINO's clip_gradients), applied to the full (reduced) gradient however ZeRO holds it.

Three ways, from fastest to most general:
* every parameter has its full gradient in `.grad` (no ZeRO, or ZeRO-0 with DeepSpeed's fp16/bf16
  wrapper): foreach norms and scaling on the local tensors;
* ZeRO-1/2 (DeepSpeed's ZeRO optimizer): each rank holds fragments of the reduced gradients; the
  squared norms of the fragments are summed over ranks in one small all-reduce, then each rank
  scales its own fragments;
* anything else (ZeRO-3, the bf16 ZeRO-1 wrapper): DeepSpeed's `safe_update_full_grad_vectorized`,
  which assembles each parameter's full gradient.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from deepspeed.utils import safe_update_full_grad_vectorized

EPS = 1e-6  # as DINO: g * max_norm / (||g|| + 1e-6)


def loss_scale(engine) -> float:
    """fp16 gradients are still multiplied by the loss scale until the optimiser step."""
    if not engine.fp16_enabled():
        return 1.0
    for name in ("loss_scale", "cur_scale"):
        value = getattr(engine.optimizer, name, None)
        if value is not None:
            return float(value)
    return 1.0


def _factors(norms: torch.Tensor, limit: float, eps: float) -> list[float]:
    return (limit / (norms.float() + eps)).clamp(max=1.0).tolist()  # one device sync


def _clip_full_grads(grads: list[torch.Tensor], limit: float, eps: float) -> None:
    factors = _factors(torch.stack(torch._foreach_norm(grads)), limit, eps)
    torch._foreach_mul_(grads, factors)


def _zero_fragments(params: list[torch.nn.Parameter]) -> list[torch.Tensor | None] | None:
    """Each parameter's fragment of the reduced gradient on this rank (None: not on this rank), or
    None when the parameters are not held by DeepSpeed's ZeRO-1/2 optimizer."""
    if not params or not all(hasattr(p, "_hp_mapping") and hasattr(p, "_index_in_param_group") for p in params):
        return None
    if any(getattr(p, "_hp_grad", None) is not None for p in params):  # the bf16 ZeRO-1 wrapper
        return None
    return [p._hp_mapping.get_lp_grad_fragment(p._index_in_param_group) if p._hp_mapping is not None else None
            for p in params]


def _clip_fragments(params, fragments, limit: float, eps: float) -> None:
    held = [i for i, f in enumerate(fragments) if f is not None and f.numel() > 0]
    device = next((fragments[i].device for i in held), params[0].device)
    squares = torch.zeros(len(params), dtype=torch.float32, device=device)
    if held:
        local = torch.stack(torch._foreach_norm([fragments[i] for i in held])).float()
        squares[held] = local * local
    group = getattr(params[0], "_dp_group", None)
    if dist.is_initialized() and dist.get_world_size(group) > 1:
        dist.all_reduce(squares, group=group)
    factors = _factors(squares.sqrt(), limit, eps)
    if held:
        torch._foreach_mul_([fragments[i] for i in held], [factors[i] for i in held])


def clip_per_parameter(params: list[torch.nn.Parameter], max_norm: float, scale: float = 1.0) -> None:
    """g <- g * min(1, max_norm / (||g|| + 1e-6)) for each parameter's full gradient, on unscaled
    norms (`scale`: the fp16 loss scale the gradients still carry)."""
    params = [p for p in params if p.requires_grad]
    limit, eps = max_norm * scale, EPS * scale
    grads = [p.grad for p in params]
    if params and all(g is not None for g in grads):
        _clip_full_grads(grads, limit, eps)
        return
    fragments = _zero_fragments(params)
    if fragments is not None:
        _clip_fragments(params, fragments, limit, eps)
        return

    def clip(grad: torch.Tensor, _param) -> torch.Tensor:
        factor = (limit / (grad.float().norm() + eps)).clamp(max=1.0)
        return grad * factor.to(grad.dtype)

    safe_update_full_grad_vectorized(params, clip)
