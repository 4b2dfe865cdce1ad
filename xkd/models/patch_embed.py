"""Patch embeddings as a Linear on flattened patches, in the authors' flattening order.

The order matters for loading their weights and for MAE targets: video tokens are t-major then h,
then w, each token a (pt, ph, pw, c) block with channel fastest; audio tokens are frequency-major,
each a (ph=freq, pw=time, c) block.
"""
from __future__ import annotations

import torch
from torch import nn


def token_grid(shape, in_chans: int, patch: tuple[int, ...], modality: str, axes: str, sizes_name: str,
               unit: str) -> tuple[int, ...]:
    """Tokens along each axis of a (B, C, *sizes) input, refusing a wrong layout or a size that the
    patch does not divide."""
    if len(shape) != 2 + len(patch) or shape[1] != in_chans:
        raise ValueError(f"{modality} input must be (B, {in_chans}, {axes}), got {tuple(shape)}")
    sizes = shape[2:]
    if any(s % p for s, p in zip(sizes, patch)):
        raise ValueError(f"{sizes_name} size {tuple(sizes)} is not divisible by the {unit} {patch}")
    return tuple(s // p for s, p in zip(sizes, patch))


class TubeletEmbed(nn.Module):
    """(B, C, T, H, W) -> (B, T/pt * H/p * W/p, dim)."""

    def __init__(self, in_chans: int, tubelet_size: int, patch_size: int, embed_dim: int):
        super().__init__()
        self.in_chans = in_chans
        self.patch = (tubelet_size, patch_size, patch_size)
        self.patch_dim = in_chans * tubelet_size * patch_size * patch_size
        self.proj = nn.Linear(self.patch_dim, embed_dim)

    def grid(self, shape) -> tuple[int, int, int]:
        return token_grid(shape, self.in_chans, self.patch, "video", "T, H, W", "video", "tubelet")

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        t, h, w = self.grid(x.shape)
        pt, ph, pw = self.patch
        b, c = x.shape[:2]
        x = x.reshape(b, c, t, pt, h, ph, w, pw)
        x = x.permute(0, 2, 4, 6, 3, 5, 7, 1)  # b, t, h, w, pt, ph, pw, c
        return x.reshape(b, t * h * w, self.patch_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.patchify(x))


class SpectrogramPatchEmbed(nn.Module):
    """(B, C, F, T) log-mel -> (B, F/pf * T/pt, dim), frequency-major."""

    def __init__(self, in_chans: int, patch_freq: int, patch_time: int, embed_dim: int):
        super().__init__()
        self.in_chans = in_chans
        self.patch = (patch_freq, patch_time)
        self.patch_dim = in_chans * patch_freq * patch_time
        self.proj = nn.Linear(self.patch_dim, embed_dim)

    def grid(self, shape) -> tuple[int, int]:
        return token_grid(shape, self.in_chans, self.patch, "audio", "mel, time", "spectrogram", "patch")

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        f, t = self.grid(x.shape)
        pf, pt = self.patch
        b, c = x.shape[:2]
        x = x.reshape(b, c, f, pf, t, pt).permute(0, 2, 4, 3, 5, 1)  # b, f, t, pf, pt, c
        return x.reshape(b, f * t, self.patch_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.patchify(x))
