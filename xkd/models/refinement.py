"""Cross-modal attention refinement of the teachers' tokens (docs/method.md §Refinement and B12;
`xkd/models/DEPARTURES.md`): a step of the teachers' forward pass, before their DINO heads. Each modality's
CLS attention is re-weighted by the other modality's, and the tokens are pooled under those weights.

The re-weighting runs in fp32 (`xkd/fp32.py`), as the losses do."""
from __future__ import annotations

import torch

from xkd.fp32 import in_fp32


@in_fp32
def cross_modal_attention(video_attn: torch.Tensor, audio_attn: torch.Tensor, mode: str = "mean"):
    """Re-weight each modality's CLS attention (B, heads, N) by the other modality's.

    'mean' (authors' cm_attn_mode, in closed form): v~ = v * mean(a) / mean(v) per head, and
    symmetrically; 'softmax': v~ = softmax_i(v_i * mean(a)).
    """
    v_mean = video_attn.mean(dim=-1, keepdim=True)
    a_mean = audio_attn.mean(dim=-1, keepdim=True)
    if mode == "mean":
        return video_attn * a_mean / v_mean, audio_attn * v_mean / a_mean
    if mode == "softmax":
        return (video_attn * a_mean).softmax(dim=-1), (audio_attn * v_mean).softmax(dim=-1)
    raise ValueError(f"unknown cross-modal attention mode {mode!r}")


def refine_tokens(tokens: torch.Tensor, head_weights: torch.Tensor) -> torch.Tensor:
    """Energy-preserving refinement: F'_i = s * w_i * F_i with w_i = mean over heads.

    s (per sample) makes ||mean_i F'_i|| equal ||mean_i F_i||, so the pooled vector is turned
    towards the attended tokens without changing its norm. tokens (B, N, D), weights (B, heads, N).
    """
    weights = head_weights.mean(dim=1).unsqueeze(-1).to(tokens.dtype)  # (B, N, 1)
    weighted = weights * tokens
    plain_norm = tokens.mean(dim=1).float().norm(dim=-1)
    weighted_norm = weighted.mean(dim=1).float().norm(dim=-1).clamp_min(1e-12)
    scale = (plain_norm / weighted_norm).to(tokens.dtype).view(-1, 1, 1)
    return scale * weighted


def refined_pooling(video_tokens, audio_tokens, video_attn, audio_attn, mode: str = "mean"):
    """Pooled teacher vectors (B, D) per modality: refined token mean, or plain mean for mode 'none'."""
    if mode == "none":
        return video_tokens.mean(dim=1), audio_tokens.mean(dim=1)
    video_w, audio_w = cross_modal_attention(video_attn, audio_attn, mode)
    return refine_tokens(video_tokens, video_w).mean(dim=1), refine_tokens(audio_tokens, audio_w).mean(dim=1)
