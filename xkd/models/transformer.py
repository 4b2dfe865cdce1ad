"""Pre-norm transformer block with fused attention (SDPA) and an explicit-softmax reference path.

Parameter names match the authors' blocks (`norm1`, `attn.qkv`, `attn.proj`, `norm2`, `mlp.fc1`,
`mlp.fc2`), so their released weights load without renaming inside a block.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp
from torch import nn


def explicit_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(q k^T * scale) v, written out; the reference the fused kernel is tested against."""
    weights = (q @ k.transpose(-2, -1)) * scale
    return weights.softmax(dim=-1) @ v


def cls_attention_row(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """Attention weights of the CLS query (token 0) over all keys, shape (B, heads, N).

    Computed for that one row only, so the block itself can still use the fused kernel.
    """
    logits = (q[:, :, :1].float() @ k.float().transpose(-2, -1)) * scale
    return logits.softmax(dim=-1).squeeze(2)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = False):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed dim {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.fused = True  # SDPA (flash / memory-efficient kernels); False = explicit softmax

    def forward(self, x: torch.Tensor, return_cls_attention: bool = False):
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, N, head_dim)
        if self.fused:
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            out = explicit_attention(q, k, v, self.scale)
        out = self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))
        if return_cls_attention:
            return out, cls_attention_row(q, k, self.scale)
        return out


class Block(nn.Module):
    """x + Attn(LN(x)), then x + MLP(LN(x)); LayerNorm eps 1e-5, GELU MLP."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = False,
                 drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, hidden_features=int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, return_cls_attention: bool = False):
        if return_cls_attention:
            attn_out, cls_attn = self.attn(self.norm1(x), return_cls_attention=True)
        else:
            attn_out, cls_attn = self.attn(self.norm1(x)), None
        x = x + self.drop_path(attn_out)
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return (x, cls_attn) if return_cls_attention else x


def init_xavier(module: nn.Module) -> None:
    """The authors' init: Xavier-uniform Linears with zero bias, LayerNorm 1 / 0."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm) and module.elementwise_affine:
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def make_block_stack(dim: int, depth: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = False,
                     drop_path: float = 0.0) -> nn.ModuleList:
    """`depth` blocks with a linearly increasing drop-path rate, Xavier-initialised.

    Returned as its own object so that XKD-MAS / XKD-MATS can hand one stack to two encoders.
    """
    rates = [drop_path * i / (depth - 1) for i in range(depth)] if depth > 1 else [drop_path] * depth
    blocks = nn.ModuleList(Block(dim, num_heads, mlp_ratio, qkv_bias, rate) for rate in rates)
    blocks.apply(init_xavier)
    return blocks


def run_blocks(blocks: nn.ModuleList, x: torch.Tensor, return_cls_attention: bool = False):
    """Run a block stack; optionally return the last block's CLS attention row as well."""
    if not return_cls_attention:
        for block in blocks:
            x = block(x)
        return x
    for block in blocks[:-1]:
        x = block(x)
    return blocks[-1](x, return_cls_attention=True)


def set_fused_attention(module: nn.Module, enabled: bool) -> None:
    """Switch every attention layer under `module` between SDPA and the explicit-softmax path."""
    for layer in module.modules():
        if isinstance(layer, Attention):
            layer.fused = enabled
