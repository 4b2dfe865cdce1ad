"""Resizing a learnable position table (CLS row + a token grid) to another token grid.

The authors call F.interpolate with a *scale factor* of (target + 0.1) / native per axis rather
than a target size, and PyTorch then samples with that scale, not size / native. We do the same so
that their weights see the same position codes on local views and at 224 px.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


def resize_pos_embed(pos: torch.Tensor, native_grid: Sequence[int], target_grid: Sequence[int],
                     mode: str, fixed_axes: Sequence[int] = ()) -> torch.Tensor:
    """pos: (1, 1 + prod(native_grid), D) -> (1, 1 + prod(target_grid), D).

    Axes in `fixed_axes` must already match and keep scale 1 (the audio frequency axis).
    """
    native_grid, target_grid = tuple(native_grid), tuple(target_grid)
    if native_grid == target_grid:
        return pos
    for axis in fixed_axes:
        if native_grid[axis] != target_grid[axis]:
            raise ValueError(f"grid axis {axis} must stay {native_grid[axis]}, got {target_grid[axis]}")
    dim = pos.shape[-1]
    cls_row, table = pos[:, :1], pos[:, 1:]
    table = table.reshape(1, *native_grid, dim).movedim(-1, 1)  # (1, D, *grid)
    scale = tuple(1.0 if axis in fixed_axes else (target + 0.1) / native
                  for axis, (native, target) in enumerate(zip(native_grid, target_grid)))
    table = F.interpolate(table.float(), scale_factor=scale, mode=mode, align_corners=False).to(pos.dtype)
    if tuple(table.shape[2:]) != target_grid:
        raise ValueError(f"position table resized to {tuple(table.shape[2:])}, expected {target_grid}")
    table = table.movedim(1, -1).reshape(1, -1, dim)
    return torch.cat([cls_row, table], dim=1)
