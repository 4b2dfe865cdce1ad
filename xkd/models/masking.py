"""MAE per-sample random masking."""
from __future__ import annotations

import torch


def num_visible(num_tokens: int, mask_ratio: float) -> int:
    """Tokens kept: round(L * (1 - r)); video 392 @ 0.85 -> 59, audio 560 @ 0.80 -> 112."""
    return int(round(num_tokens * (1.0 - mask_ratio)))


def random_masking(x: torch.Tensor, mask_ratio: float, generator: torch.Generator | None = None):
    """Keep a random subset of tokens per sample.

    x: (B, L, D). Returns (visible (B, keep, D), mask (B, L) with 1 = masked, ids_restore (B, L))
    where ids_restore puts [visible tokens, masked tokens] back into the original order.
    """
    batch, length, dim = x.shape
    keep = num_visible(length, mask_ratio)
    noise = torch.rand(batch, length, device=x.device, generator=generator)
    ids_shuffle = noise.argsort(dim=1)
    ids_restore = ids_shuffle.argsort(dim=1)
    ids_keep = ids_shuffle[:, :keep]
    visible = x.gather(1, ids_keep.unsqueeze(-1).expand(-1, -1, dim))
    mask = torch.ones(batch, length, device=x.device)  # fp32 even under autocast
    mask[:, :keep] = 0
    mask = mask.gather(1, ids_restore)
    return visible, mask, ids_restore
