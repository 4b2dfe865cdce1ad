"""Video and audio ViT encoders (docs/method.md §Encoders).

Our parameter names follow timm / the authors' evaluation code (`patch_embed.proj`, `pos_embed`,
`blocks.i`, `norm`); `xkd.weights` maps the authors' training names onto them.
"""
from __future__ import annotations

import math

import torch
from timm.layers import trunc_normal_
from torch import nn

from xkd.config import AudioConfig, EncoderConfig, VideoConfig
from xkd.models.masking import random_masking
from xkd.models.patch_embed import SpectrogramPatchEmbed, TubeletEmbed
from xkd.models.pos_embed import resize_pos_embed
from xkd.models.transformer import init_xavier, make_block_stack, run_blocks


class ViTEncoder(nn.Module):
    """Patch embedding + CLS + learnable positions + blocks + final LayerNorm.

    `blocks` may be passed in to share one stack between encoders (XKD-MAS / XKD-MATS).
    """

    modality = ""
    interpolation_mode = ""
    fixed_axes: tuple[int, ...] = ()

    def __init__(self, patch_embed: nn.Module, native_grid: tuple[int, ...], cfg: EncoderConfig,
                 blocks: nn.ModuleList | None = None):
        super().__init__()
        dim = cfg.embed_dim
        self.embed_dim = dim
        self.num_heads = cfg.num_heads
        self.native_grid = tuple(native_grid)
        self.patch_embed = patch_embed
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + math.prod(native_grid), dim))
        if blocks is None:
            blocks = make_block_stack(dim, cfg.depth, cfg.num_heads, cfg.mlp_ratio, cfg.qkv_bias, cfg.drop_path)
        self.blocks = blocks
        self.norm = nn.LayerNorm(dim)
        # Blocks are initialised where they are made; only this encoder's own parts here.
        self.patch_embed.apply(init_xavier)
        self.norm.apply(init_xavier)
        nn.init.normal_(self.cls_token, std=0.02)
        trunc_normal_(self.pos_embed, std=0.02)

    @property
    def num_patches(self) -> int:
        return math.prod(self.native_grid)

    def position_embedding(self, grid: tuple[int, ...]) -> torch.Tensor:
        """(1, 1 + prod(grid), D), interpolated when the grid differs from the native one."""
        return resize_pos_embed(self.pos_embed, self.native_grid, grid, self.interpolation_mode, self.fixed_axes)

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Patch tokens with positions (B, N, D), and the CLS token with its position (1, 1, D)."""
        pos = self.position_embedding(self.patch_embed.grid(x.shape))
        # Inputs follow the weights' dtype, so the same code runs fp32 under autocast and as a pure
        # bf16 module (DeepSpeed bf16 students) next to fp32 teachers.
        x = x.to(self.patch_embed.proj.weight.dtype)
        tokens = self.patch_embed(x) + pos[:, 1:]
        return tokens, self.cls_token + pos[:, :1]

    def _with_cls(self, tokens: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
        return torch.cat([cls.expand(tokens.shape[0], -1, -1).to(tokens.dtype), tokens], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """All tokens after the final norm, (B, 1 + N, D); token 0 is CLS."""
        tokens, cls = self.embed(x)
        return self.norm(run_blocks(self.blocks, self._with_cls(tokens, cls)))

    def forward_masked(self, x: torch.Tensor, mask_ratio: float):
        """MAE encoder pass: positions are added before masking, CLS is prepended after.

        Returns (tokens (B, 1 + keep, D) after the norm, mask (B, N) 1 = masked, ids_restore (B, N)).
        """
        tokens, cls = self.embed(x)
        visible, mask, ids_restore = random_masking(tokens, mask_ratio)
        latent = self.norm(run_blocks(self.blocks, self._with_cls(visible, cls)))
        return latent, mask, ids_restore

    def forward_with_cls_attention(self, x: torch.Tensor):
        """Tokens after the norm (B, 1 + N, D) and the last block's CLS->patch attention (B, heads, N)."""
        tokens, cls = self.embed(x)
        out, cls_attn = run_blocks(self.blocks, self._with_cls(tokens, cls), return_cls_attention=True)
        return self.norm(out), cls_attn[:, :, 1:]  # drop the CLS->CLS column, no renormalisation

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """Clip feature used for evaluation: mean of the patch tokens after the norm, (B, D)."""
        return self.forward(x)[:, 1:].mean(dim=1)


class VideoViT(ViTEncoder):
    """Tubelet ViT on (B, 3, T, H, W); 32x112x112 with 4x16x16 tubelets -> 8x7x7 = 392 tokens."""

    modality = "video"
    interpolation_mode = "trilinear"

    def __init__(self, video: VideoConfig, encoder: EncoderConfig, blocks: nn.ModuleList | None = None):
        embed = TubeletEmbed(video.in_chans, video.tubelet_size, video.patch_size, encoder.embed_dim)
        grid = embed.grid((1, video.in_chans, video.num_frames, video.image_size, video.image_size))
        super().__init__(embed, grid, encoder, blocks)


class AudioViT(ViTEncoder):
    """ViT on log-mel (B, 1, 80, T); 4 (freq) x 16 (time) patches -> 20x28 = 560 tokens for 4 s.

    Only the time axis of the position table is interpolated; the frequency axis must match.
    """

    modality = "audio"
    interpolation_mode = "bicubic"
    fixed_axes = (0,)

    def __init__(self, audio: AudioConfig, encoder: EncoderConfig, blocks: nn.ModuleList | None = None):
        embed = SpectrogramPatchEmbed(audio.in_chans, audio.patch_freq, audio.patch_time, encoder.embed_dim)
        grid = embed.grid((1, audio.in_chans, audio.mel_bins, audio.num_frames))
        super().__init__(embed, grid, encoder, blocks)


def build_encoder(modality: str, model_cfg, blocks: nn.ModuleList | None = None, drop_path: float | None = None):
    """Video or audio encoder from a ModelConfig (drop_path overrides the config, e.g. 0 for teachers)."""
    enc_cfg = model_cfg.encoder
    if drop_path is not None and drop_path != enc_cfg.drop_path:
        enc_cfg = EncoderConfig(**{**enc_cfg.__dict__, "drop_path": drop_path})
    if modality == "video":
        return VideoViT(model_cfg.video, enc_cfg, blocks)
    if modality == "audio":
        return AudioViT(model_cfg.audio, enc_cfg, blocks)
    raise ValueError(f"unknown modality {modality!r} (expected 'video' or 'audio')")
