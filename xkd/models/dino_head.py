"""DINO / iBOT-style projection head (docs/method.md §DINO heads)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from torch import nn

from xkd.config import HeadConfig


class WeightNormLinear(nn.Module):
    """Bias-free Linear with weight = g * v / ||v|| per output row.

    Same parameter names as torch's legacy weight_norm (`weight_g`, `weight_v`), so the authors'
    checkpoints map 1:1. With `freeze_norm` (DINO's norm_last_layer) g stays at 1.
    """

    def __init__(self, in_features: int, out_features: int, freeze_norm: bool = True):
        super().__init__()
        reference = nn.Linear(in_features, out_features, bias=False)  # PyTorch default init, as the authors
        self.weight_v = nn.Parameter(reference.weight.detach().clone())
        self.weight_g = nn.Parameter(torch.ones(out_features, 1), requires_grad=not freeze_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight_v * (self.weight_g / self.weight_v.norm(dim=1, keepdim=True))
        return F.linear(x, weight)


class DINOHead(nn.Module):
    """MLP (Linear-LN-GELU ... -> bottleneck) -> L2 normalise -> prototypes -> non-affine LayerNorm."""

    def __init__(self, in_dim: int, cfg: HeadConfig):
        super().__init__()
        if cfg.num_layers == 1:
            layers: list[nn.Module] = [nn.Linear(in_dim, cfg.bottleneck_dim)]
        else:
            # One LayerNorm instance reused on every hidden layer: the authors tie them (docs/method.md B5).
            hidden_norm = nn.LayerNorm(cfg.hidden_dim)
            layers = [nn.Linear(in_dim, cfg.hidden_dim), hidden_norm, nn.GELU()]
            for _ in range(cfg.num_layers - 2):
                layers += [nn.Linear(cfg.hidden_dim, cfg.hidden_dim), hidden_norm, nn.GELU()]
            layers.append(nn.Linear(cfg.hidden_dim, cfg.bottleneck_dim))
        self.mlp = nn.Sequential(*layers)
        for layer in self.mlp:
            if isinstance(layer, nn.Linear):
                trunc_normal_(layer.weight, std=0.02)
                nn.init.zeros_(layer.bias)
        self.last_layer = WeightNormLinear(cfg.bottleneck_dim, cfg.out_dim, freeze_norm=cfg.norm_last_layer)
        self.last_norm = nn.LayerNorm(cfg.out_dim, elementwise_affine=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(self.mlp(x), dim=-1)
        return self.last_norm(self.last_layer(x))
