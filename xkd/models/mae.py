"""MAE decoder (docs/method.md §MAE decoders); its reconstruction loss is with the other losses in `xkd/losses.py`."""
from __future__ import annotations

import torch
from timm.layers import trunc_normal_
from torch import nn

from xkd.config import DecoderConfig
from xkd.models.transformer import init_xavier, make_block_stack, run_blocks


def _projection(in_dim: int, out_dim: int) -> nn.Module:
    return nn.Identity() if in_dim == out_dim else nn.Linear(in_dim, out_dim)


class MAEDecoder(nn.Module):
    """Projects encoder tokens, fills masked slots with a mask token, decodes, predicts raw patches.

    As in the authors' code: learnable (not sin-cos) positions, no final norm, CLS kept through the
    blocks and dropped at the end, and each projection an identity where its two widths are equal
    (never at the paper's sizes; the tiny preset's audio output, 64 -> 4x16 patch values, is one).
    """

    def __init__(self, encoder_dim: int, num_patches: int, patch_dim: int, cfg: DecoderConfig):
        super().__init__()
        dim = cfg.embed_dim
        self.num_patches = num_patches
        self.mid_proj = _projection(encoder_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + num_patches, dim))
        self.blocks = make_block_stack(dim, cfg.depth, cfg.num_heads, cfg.mlp_ratio, qkv_bias=False)
        self.out_proj = _projection(dim, patch_dim)
        self.mid_proj.apply(init_xavier)
        self.out_proj.apply(init_xavier)
        nn.init.normal_(self.mask_token, std=0.02)
        trunc_normal_(self.pos_embed, std=0.02)

    def forward(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """latent (B, 1 + keep, D_enc) -> predicted patches (B, N, patch_dim) in original order."""
        batch, num_tokens = ids_restore.shape
        if num_tokens != self.num_patches:
            # The MAE only ever sees the global view, whose grid is the native one (docs/method.md B9).
            raise ValueError(f"decoder built for {self.num_patches} patches, got {num_tokens}")
        x = self.mid_proj(latent)
        cls, visible = x[:, :1], x[:, 1:]
        mask_tokens = self.mask_token.to(x.dtype).expand(batch, num_tokens - visible.shape[1], -1)
        x = torch.cat([visible, mask_tokens], dim=1)
        x = x.gather(1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        x = torch.cat([cls, x], dim=1) + self.pos_embed
        x = run_blocks(self.blocks, x)
        return self.out_proj(x)[:, 1:]

