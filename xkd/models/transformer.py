"""Pre-norm transformer blocks: timm's `Block` and `Attention` (SDPA), thinly wrapped for what XKD
needs beyond them: the CLS query's attention row of the last block (the teachers' cross-modal
refinement reads it) without giving up the fused kernel, and a switch to the explicit softmax.

Parameter names are timm's, which are the authors' (`norm1`, `attn.qkv`, `attn.proj`, `norm2`,
`mlp.fc1`, `mlp.fc2`), so their released weights load without renaming inside a block.
"""
from __future__ import annotations

import typing
from contextlib import contextmanager

import torch
from timm.layers import Attention as TimmAttention
from timm.models.vision_transformer import Block as TimmBlock
from torch import nn

from xkd.config import CompileMode


def explicit_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(q k^T * scale) v, written out: the op SDPA is timed against (`benchmarks/bench_model.py`)."""
    weights = (q @ k.transpose(-2, -1)) * scale
    return weights.softmax(dim=-1) @ v


def cls_attention_row(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """Attention weights of the CLS query (token 0) over all keys, shape (B, heads, N).

    Computed for that one row only, so the block itself can still use the fused kernel.
    """
    logits = (q[:, :, :1].float() @ k.float().transpose(-2, -1)) * scale
    return logits.softmax(dim=-1).squeeze(2)


class Attention(TimmAttention):
    """timm's attention, always on SDPA unless `fused` is set False (then timm's explicit softmax),
    whatever TIMM_FUSED_ATTN says; it can also give the CLS query's attention row."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = False, **timm_options):
        if dim % num_heads:
            raise ValueError(f"embed dim {dim} is not divisible by {num_heads} heads")
        super().__init__(dim, num_heads=num_heads, qkv_bias=qkv_bias, **timm_options)
        self.fused_attn = True

    @property
    def fused(self) -> bool:
        return self.fused_attn

    @fused.setter
    def fused(self, enabled: bool) -> None:
        self.fused_attn = enabled

    @contextmanager
    def recording_cls_attention(self):
        """Yields a list that receives, for each call of this layer within the `with`, the CLS attention
        row (B, heads, N) of its q and k, read off the qkv projection: timm's forward runs unchanged."""
        rows = []

        def record(_module, _args, qkv):
            q, k, _ = qkv.unflatten(-1, (3, self.num_heads, self.head_dim)).permute(2, 0, 3, 1, 4).unbind(0)
            rows.append(cls_attention_row(self.q_norm(q), self.k_norm(k), self.scale))

        hook = self.qkv.register_forward_hook(record)
        try:
            yield rows
        finally:
            hook.remove()

    def forward(self, x: torch.Tensor, attn_mask=None, is_causal: bool = False, return_cls_attention: bool = False):
        if not return_cls_attention:
            return super().forward(x, attn_mask=attn_mask, is_causal=is_causal)
        with self.recording_cls_attention() as rows:
            out = super().forward(x, attn_mask=attn_mask, is_causal=is_causal)
        return out, rows[0]


class Block(TimmBlock):
    """timm's block, x + Attn(LN(x)), then x + MLP(LN(x)), with torch's LayerNorm (eps 1e-5, the
    authors'; timm's default is 1e-6) and the attention above."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = False,
                 drop_path: float = 0.0):
        super().__init__(dim, num_heads, mlp_ratio, qkv_bias, drop_path=drop_path, norm_layer=nn.LayerNorm,
                         attn_layer=Attention)

    def forward(self, x: torch.Tensor, return_cls_attention: bool = False):
        if not return_cls_attention:
            return super().forward(x)
        return self._forward_recording_cls_attention(x)

    # A hook registered while torch.compile traces the block is not reliably run (a compiled teacher
    # block once gave no CLS row): when the block is compiled (`compile_blocks`), this path runs
    # eagerly (a graph break) and only the plain one compiled.
    @torch.compiler.disable
    def _forward_recording_cls_attention(self, x: torch.Tensor):
        with self.attn.recording_cls_attention() as rows:
            x = super().forward(x)
        return x, rows[0]


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


COMPILE_MODES = typing.get_args(CompileMode)


def compile_blocks(module: nn.Module, mode: str = "default") -> int:
    """Compile every transformer block under `module` in place with torch.compile (`mode`: one of
    COMPILE_MODES; "none" leaves them eager). Returns how many blocks were compiled.

    Why blocks: a ViT-B step runs thousands of small kernels (norms, GELU, residual adds, casts), and
    compiling each block fuses them; the rest of the step (masking, losses, EMA) stays eager. In place
    (`Module.compile`), so parameter names, checkpoints and exported backbones are unchanged.
    """
    if mode not in COMPILE_MODES:
        raise ValueError(f"unknown compile mode {mode!r} (expected one of {', '.join(COMPILE_MODES)})")
    if mode == "none":
        return 0
    blocks = [layer for layer in module.modules() if isinstance(layer, Block)]
    # Every compiled module shares one compiled function (Module._call_impl), specialised per block
    # shape, drop-path rate, train/eval and grad mode: past torch's recompile limit (8) the remaining
    # blocks would quietly run eagerly, so allow a few specialisations per block.
    import torch._dynamo

    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 4 * len(blocks))
    for block in blocks:
        block.compile(mode=None if mode == "default" else mode)
    return len(blocks)
