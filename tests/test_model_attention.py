"""Fused (SDPA) attention against the explicit-softmax path, and the teacher's CLS attention row."""
import pytest
import torch

from xkd.config import load_config
from xkd.models import Attention, build_encoder, build_xkd, set_fused_attention
from xkd.models.synthetic import synthetic_batch
from xkd.models.transformer import explicit_attention


@pytest.mark.parametrize("tokens", [17, 393])
def test_sdpa_matches_explicit_softmax_forward_and_backward(tokens):
    torch.manual_seed(0)
    attn = Attention(64, num_heads=4)
    x = torch.randn(2, tokens, 64, requires_grad=True)
    fused = attn(x)
    (grad_fused,) = torch.autograd.grad(fused.square().sum(), x)
    attn.fused = False
    explicit = attn(x)
    (grad_explicit,) = torch.autograd.grad(explicit.square().sum(), x)
    assert torch.allclose(fused, explicit, atol=1e-5, rtol=1e-4)
    assert torch.allclose(grad_fused, grad_explicit, atol=1e-4, rtol=1e-4)


def test_cls_attention_row_is_row_zero_of_the_full_softmax():
    torch.manual_seed(0)
    attn = Attention(32, num_heads=2)
    x = torch.randn(3, 9, 32)
    out, cls_row = attn(x, return_cls_attention=True)
    q, k, v = attn.qkv(x).reshape(3, 9, 3, 2, 16).permute(2, 0, 3, 1, 4)
    full = ((q @ k.transpose(-2, -1)) * 16**-0.5).softmax(-1)
    assert torch.allclose(cls_row, full[:, :, 0], atol=1e-6)
    assert torch.allclose(cls_row.sum(-1), torch.ones(3, 2))
    assert torch.allclose(out, attn(x), atol=1e-6)  # asking for the row does not change the output


def test_explicit_attention_formula():
    q, k, v = torch.randn(3, 1, 2, 4, 8).unbind(0)
    expected = torch.softmax(torch.einsum("bhid,bhjd->bhij", q, k) / 8**0.5, dim=-1) @ v
    assert torch.allclose(explicit_attention(q, k, v, 8**-0.5), expected, atol=1e-6)


def test_teacher_cls_attention_drops_only_the_cls_column():
    torch.manual_seed(0)
    encoder = build_encoder("audio", load_config("xkd_micro").model)
    x = torch.randn(2, 1, 16, 64)
    tokens, cls_attn = encoder.forward_with_cls_attention(x)
    assert cls_attn.shape == (2, 4, 16)
    assert (cls_attn.sum(-1) < 1).all() and (cls_attn > 0).all()  # CLS->CLS mass removed, no renormalisation
    assert torch.allclose(tokens, encoder(x), atol=1e-6)


def test_whole_model_fused_equals_explicit():
    torch.manual_seed(0)
    cfg = load_config("xkd_micro")
    model = build_xkd(cfg).eval()  # eval: the KD centres stay put between the two passes
    batch = synthetic_batch(cfg.data, 2)
    torch.manual_seed(1)
    fused = model(batch)
    set_fused_attention(model, False)
    assert not any(m.fused for m in model.modules() if isinstance(m, Attention))
    torch.manual_seed(1)  # same masks
    explicit = model(batch)
    for key in fused:
        assert torch.allclose(fused[key], explicit[key], atol=1e-4, rtol=1e-4), key
