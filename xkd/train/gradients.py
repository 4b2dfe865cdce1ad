"""The reduced student gradients between backward and the optimiser step, however DeepSpeed holds
them: one check per step that every one is finite, and per-parameter clipping as the authors do
(DINO's clip_gradients: g <- g * min(1, max_norm / (||g|| + 1e-6)), each parameter on its own).

A rank sees its share of each parameter's reduced gradient in one of three layouts:
* "full": the whole gradient in `.grad`, the same on every rank (ZeRO-0 without DeepSpeed's bf16
  wrapper);
* "fragments": DeepSpeed's ZeRO-1/2 optimizer and its bf16 wrapper: the piece of each parameter
  that falls in this rank's partition (nothing, for most parameters);
* "zero3": this rank's partition of every parameter.

One all-reduce per step sums the pieces' squared norms into every parameter's full norm on every
rank. A non-finite piece anywhere makes that norm non-finite everywhere, so all ranks agree to skip
the step; the same all-reduce checks that all ranks use one layout (ranks that did not would issue
different collectives and hang).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist

EPS = 1e-6  # as DINO: g * max_norm / (||g|| + 1e-6)
LAYOUTS = ("full", "fragments", "zero3")


@dataclass
class GradientCheck:
    finite: bool  # every gradient of every rank
    layout: str
    clipped: int  # parameters whose gradient was scaled down


def loss_scale(engine) -> float:
    """fp16 gradients are still multiplied by the loss scale until the optimiser step."""
    if not engine.fp16_enabled():
        return 1.0
    for name in ("loss_scale", "cur_scale"):
        value = getattr(engine.optimizer, name, None)
        if value is not None:
            return float(value)
    return 1.0


def _layout(params: list[torch.nn.Parameter]) -> str:
    if all(hasattr(p, "_hp_mapping") for p in params):  # DeepSpeed linked each to an fp32 partition
        return "fragments"
    if any(hasattr(p, "ds_id") for p in params):
        return "zero3"
    return "full"


def _fragment(param: torch.nn.Parameter) -> torch.Tensor | None:
    """The piece of the parameter's reduced gradient in this rank's partition (None: not here)."""
    mapping = param._hp_mapping
    if mapping is None:
        return None
    grad = mapping.get_lp_grad_fragment(param._index_in_param_group).view(-1)
    if grad.numel() == param.numel():  # the bf16 wrapper keeps the whole gradient: take this rank's part
        address = mapping.lp_fragment_address
        grad = grad.narrow(0, address.start, address.numel)
    return grad


def _local_pieces(params: list[torch.nn.Parameter], layout: str) -> list[torch.Tensor | None]:
    if layout == "full":
        if all(p.grad is None for p in params):  # else a layout this code does not know would pass unchecked
            raise RuntimeError("no parameter has a gradient in .grad, and DeepSpeed's ZeRO layouts were not found")
        return [p.grad for p in params]  # None: no gradient this step (an unused parameter)
    if layout == "fragments":
        return [_fragment(p) for p in params]
    from deepspeed.accelerator import get_accelerator
    from deepspeed.utils import safe_get_local_grad

    get_accelerator().synchronize()  # ZeRO-3 reduces into the partitions on a side stream
    return [safe_get_local_grad(p) for p in params]


def _global_norms(pieces: list[torch.Tensor | None], layout: str, device: torch.device
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Every parameter's full gradient norm, on every rank, in one all-reduce; and whether every rank
    uses this layout (a 0-d bool tensor)."""
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    code = float(LAYOUTS.index(layout))
    summed = torch.zeros(len(pieces) + 2, dtype=torch.float32, device=device)
    held = [i for i, piece in enumerate(pieces) if piece is not None and piece.numel() > 0]
    if held:
        norms = torch.stack(torch._foreach_norm([pieces[i] for i in held])).float().to(device)
        summed[held] = norms * norms
    if layout == "full":
        summed[:-2] /= world  # every rank holds the whole gradient: each adds an equal share
    summed[-2], summed[-1] = code, code * code
    if world > 1:
        dist.all_reduce(summed)
    # the ranks' layout codes c are all equal exactly when W * sum(c^2) == (sum c)^2
    same_layout = world * summed[-1] == summed[-2] * summed[-2]
    return summed[:-2].sqrt(), same_layout


def check_and_clip(params: list[torch.nn.Parameter], clip: torch.Tensor | list[bool] | None, max_norm: float = 0.0,
                   scale: float = 1.0) -> GradientCheck:
    """Checks that every gradient of `params` (the trainable ones) is finite on every rank; when so and
    `clip` is given (one flag per parameter; a bool tensor on the gradients' device spares a copy per
    step), clips the flagged ones per parameter to `max_norm` of the unscaled norm (`scale`: the fp16
    loss scale the gradients still carry). Every rank must call it together, with the same parameters."""
    layout = _layout(params)
    pieces = _local_pieces(params, layout)
    device = next((p.device for p in pieces if p is not None), params[0].device)
    norms, same_layout = _global_norms(pieces, layout, device)
    factors = (max_norm * scale / (norms + EPS * scale)).clamp(max=1.0)
    if clip is None:
        factors = torch.ones_like(factors)
    else:
        factors = torch.where(torch.as_tensor(clip, device=device), factors, 1.0)
    flags = torch.stack([same_layout.float(), torch.isfinite(norms).all().float()])
    agreed, finite, *factors = torch.cat([flags, factors]).tolist()  # the step's one device sync
    if not agreed:
        raise RuntimeError(f"the processes hold their gradients in different layouts (this one: {layout}): "
                           "a ZeRO setting differs between them")
    scaled = [i for i, f in enumerate(factors) if f < 1.0 and pieces[i] is not None]
    if finite and scaled:
        torch._foreach_mul_([pieces[i] for i in scaled], [factors[i] for i in scaled])
        if layout == "zero3":  # write back, in case the partition was handed out as a copy
            from deepspeed.utils import safe_set_local_grad

            for i in scaled:
                safe_set_local_grad(params[i], pieces[i])
    return GradientCheck(bool(finite), layout, sum(f < 1.0 for f in factors) if finite else 0)


@contextmanager
def optimizer_step_skipped(optimizer: torch.optim.Optimizer):
    """Turns the torch optimizer's step() into a no-op for one engine step. DeepSpeed's wrappers call
    it (ZeRO-1/2 once per parameter group) between their own bookkeeping, which goes on as after any
    step (gradients cleared, the unchanged fp32 weights copied back): the weights and the optimizer
    state stay exactly as they were."""
    optimizer.step = lambda *args, **kwargs: None
    try:
        yield
    finally:
        del optimizer.step
