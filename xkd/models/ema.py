"""Exponential moving average of student parameters into teacher parameters."""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn


def paired_parameters(pairs: Iterable[tuple[nn.Module, nn.Module]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(student param, teacher param) for each (student module, teacher module) pair, in order.

    Each teacher tensor appears once even when a block stack is shared (XKD-MATS), so it is averaged
    once per step with momentum m, not twice (m^2) as in the authors' code (docs/method.md B10).
    """
    out, seen = [], set()
    for student, teacher in pairs:
        s_params, t_params = list(student.parameters()), list(teacher.parameters())
        if len(s_params) != len(t_params):
            raise ValueError("student and teacher modules have different parameter lists")
        for s, t in zip(s_params, t_params):
            if s.shape != t.shape:
                raise ValueError(f"EMA shape mismatch {tuple(s.shape)} vs {tuple(t.shape)}")
            if id(t) not in seen:
                seen.add(id(t))
                out.append((s, t))
    return out


@torch.no_grad()
def ema_update(pairs: list[tuple[torch.Tensor, torch.Tensor]], momentum: float) -> None:
    """teacher <- m * teacher + (1 - m) * student, in the teacher's dtype (fp32)."""
    if not pairs:
        return
    teachers = [t for _, t in pairs]
    students = [s.detach().to(t.dtype) for s, t in pairs]
    torch._foreach_mul_(teachers, momentum)
    torch._foreach_add_(teachers, students, alpha=1.0 - momentum)
