"""Shapes of every view and variant, patch order, masking counts, position-table resizing."""
import pytest
import torch
import torch.nn.functional as F

from xkd.config import load_config
from xkd.models import build_encoder, build_xkd
from xkd.models.masking import num_visible, random_masking
from xkd.models.pos_embed import resize_pos_embed
from xkd.models.synthetic import synthetic_batch

VARIANTS = ["xkd", "xkd_mas", "xkd_mats"]


def real_size_tiny_width():
    """The paper's input sizes with a narrow 1-block model, so shapes are checked at full size cheaply."""
    return load_config("xkd_tiny", ["model.encoder.embed_dim=32", "model.encoder.depth=1", "model.encoder.num_heads=2",
                                    "model.decoder.embed_dim=16", "model.decoder.num_heads=2",
                                    "model.head.hidden_dim=32", "model.head.bottleneck_dim=8", "model.head.out_dim=64"])


@pytest.mark.parametrize("variant", VARIANTS)
def test_real_input_sizes_every_view_and_variant(variant):
    torch.manual_seed(0)
    cfg = real_size_tiny_width()
    cfg.model.variant = variant
    model = build_xkd(cfg)
    local_video = 1 if variant == "xkd" else 3
    batch = synthetic_batch(cfg.data, 2, video_local_views=local_video)
    assert [tuple(v.shape) for v in batch.video[:2]] == [(2, 3, 32, 112, 112), (2, 3, 8, 96, 96)]
    assert [tuple(a.shape) for a in batch.audio] == [(2, 1, 80, 448), (2, 1, 80, 112)]

    students = model.students(batch.video, batch.audio)
    assert students["video_logits"].shape == ((1 + local_video) * 2, 64)
    assert students["audio_logits"].shape == (2 * 2, 64)
    teachers = model.teachers(batch.video[1], batch.audio[1])
    assert teachers["video_logits"].shape == (2, 64) and teachers["audio_logits"].shape == (2, 64)
    losses = model(batch)
    assert losses["loss"].ndim == 0 and torch.isfinite(losses["loss"])


def test_encoder_token_counts_at_real_sizes():
    cfg = real_size_tiny_width().model
    video, audio = build_encoder("video", cfg), build_encoder("audio", cfg)
    cases = [(video, (1, 3, 32, 112, 112), 392), (video, (1, 3, 8, 96, 96), 72), (video, (1, 3, 32, 224, 224), 1568),
             (audio, (1, 1, 80, 448), 560), (audio, (1, 1, 80, 112), 140)]
    for encoder, shape, patches in cases:
        assert encoder(torch.randn(shape)).shape == (1, 1 + patches, 32), shape
    tokens, cls_attn = video.forward_with_cls_attention(torch.randn(2, 3, 8, 96, 96))
    assert tokens.shape == (2, 73, 32) and cls_attn.shape == (2, 2, 72)  # 2x6x6 teacher tokens, as the authors
    tokens, cls_attn = audio.forward_with_cls_attention(torch.randn(2, 1, 80, 112))
    assert cls_attn.shape == (2, 2, 140)  # 20x7
    assert video.pooled(torch.randn(2, 3, 32, 112, 112)).shape == (2, 32)


def test_mae_at_real_sizes_masks_exactly():
    cfg = real_size_tiny_width().model
    for modality, shape, patches, keep, patch_dim in [("video", (2, 3, 32, 112, 112), 392, 59, 3072),
                                                      ("audio", (2, 1, 80, 448), 560, 112, 64)]:
        encoder = build_encoder(modality, cfg)
        ratio = getattr(cfg, modality).mask_ratio
        latent, mask, ids_restore = encoder.forward_masked(torch.randn(shape), ratio)
        assert latent.shape == (2, 1 + keep, 32)
        assert mask.shape == (2, patches) and mask.sum(dim=1).tolist() == [patches - keep] * 2
        assert sorted(ids_restore[0].tolist()) == list(range(patches))
        assert encoder.patch_embed.patchify(torch.randn(shape)).shape == (2, patches, patch_dim)


def test_decoder_projections_are_identities_where_the_widths_are_equal():
    """The authors' rule: the tiny preset's audio decoder (width 64) predicts its 4x16 patches directly."""
    with torch.device("meta"):
        tiny, base = build_xkd(load_config("xkd_tiny")).students, build_xkd(load_config("xkd_base")).students
        equal_in = build_xkd(load_config("xkd_tiny", ["model.decoder.embed_dim=96"])).students
    assert isinstance(tiny.audio_decoder.out_proj, torch.nn.Identity)
    assert isinstance(tiny.video_decoder.out_proj, torch.nn.Linear)  # 64 -> 3072
    assert isinstance(tiny.audio_decoder.mid_proj, torch.nn.Linear)  # 96 -> 64
    assert isinstance(equal_in.video_decoder.mid_proj, torch.nn.Identity)  # 96 -> 96
    for decoder in (base.video_decoder, base.audio_decoder):  # never at the paper's sizes
        assert isinstance(decoder.mid_proj, torch.nn.Linear) and isinstance(decoder.out_proj, torch.nn.Linear)
    batch = synthetic_batch(load_config("xkd_tiny").data, 1)
    model = build_xkd(load_config("xkd_tiny"))
    assert torch.isfinite(model(batch)["loss"])


def test_mask_counts_and_restore_order():
    assert (num_visible(392, 0.85), num_visible(560, 0.80)) == (59, 112)
    x = torch.arange(560, dtype=torch.float32).view(1, 560, 1).repeat(3, 1, 4)
    visible, mask, ids_restore = random_masking(x, 0.80)
    assert visible.shape == (3, 112, 4) and (mask.sum(1) == 448).all()
    # the decoder's unshuffle: [visible, fillers] gathered by ids_restore puts visible tokens back in place
    filled = torch.cat([visible, torch.full((3, 448, 4), -1.0)], dim=1)
    restored = filled.gather(1, ids_restore.unsqueeze(-1).expand(-1, -1, 4))
    assert torch.equal(restored[mask == 0], x[mask == 0]) and (restored[mask == 1] == -1).all()
    assert not torch.equal(mask[0], mask[1])  # per-sample noise


def test_video_patch_order_is_t_h_w_major_channel_fastest():
    cfg = load_config("xkd_micro").model
    embed = build_encoder("video", cfg).patch_embed
    c_, t_, h_, w_ = torch.meshgrid(torch.arange(3), torch.arange(16), torch.arange(32), torch.arange(32), indexing="ij")
    x = (c_ * 1_000_000 + t_ * 10_000 + h_ * 100 + w_).float().unsqueeze(0)
    patches = embed.patchify(x)  # grid 4 x 2 x 2
    token = 1 * 4 + 0 * 2 + 1  # t=1, h=0, w=1
    vec = patches[0, token]
    # vector index ((pt * 16 + ph) * 16 + pw) * 3 + c holds frame 4*1+pt, row ph, column 16+pw, channel c
    pt, ph, pw, c = 2, 5, 7, 1
    assert vec[((pt * 16 + ph) * 16 + pw) * 3 + c] == c * 1_000_000 + (4 + pt) * 10_000 + ph * 100 + (16 + pw)


def test_audio_patch_order_is_frequency_major():
    cfg = load_config("xkd_micro").model
    embed = build_encoder("audio", cfg).patch_embed
    f_, t_ = torch.meshgrid(torch.arange(16), torch.arange(64), indexing="ij")
    patches = embed.patchify((f_ * 1000 + t_).float().view(1, 1, 16, 64))  # grid 4 (freq) x 4 (time)
    token = 2 * 4 + 3  # frequency band 2, time step 3
    pf, pt = 1, 9
    assert patches[0, token, pf * 16 + pt] == (2 * 4 + pf) * 1000 + (3 * 16 + pt)


def test_position_resize_uses_the_authors_scale_factors():
    torch.manual_seed(0)
    cfg = real_size_tiny_width().model
    video, audio = build_encoder("video", cfg), build_encoder("audio", cfg)
    assert video.position_embedding((8, 7, 7)) is video.pos_embed  # native grid: untouched
    table = video.pos_embed[:, 1:].reshape(1, 8, 7, 7, 32).permute(0, 4, 1, 2, 3)
    # docs/method.md §Encoders: scale_factor = ((t/4 + 0.1)/8, (H/16 + 0.1)/7, (W/16 + 0.1)/7), trilinear, as a scale
    expected = F.interpolate(table, scale_factor=((2 + 0.1) / 8, (6 + 0.1) / 7, (6 + 0.1) / 7), mode="trilinear",
                             align_corners=False).permute(0, 2, 3, 4, 1).reshape(1, 72, 32)
    resized = video.position_embedding((2, 6, 6))
    assert torch.allclose(resized[:, 1:], expected) and torch.equal(resized[:, :1], video.pos_embed[:, :1])
    # docs/method.md §Encoders: audio frequency kept (scale 1), time scaled by (W/16 + 0.1)/28, bicubic
    table = audio.pos_embed[:, 1:].reshape(1, 20, 28, 32).permute(0, 3, 1, 2)
    expected = F.interpolate(table, scale_factor=(1, (7 + 0.1) / 28), mode="bicubic",
                             align_corners=False).permute(0, 2, 3, 1).reshape(1, 140, 32)
    assert torch.allclose(audio.position_embedding((20, 7))[:, 1:], expected)
    with pytest.raises(ValueError, match="axis 0"):
        audio.position_embedding((10, 28))


def test_constant_position_table_stays_constant_when_resized():
    pos = torch.ones(1, 1 + 8 * 7 * 7, 5)
    out = resize_pos_embed(pos, (8, 7, 7), (2, 14, 14), "trilinear")
    assert out.shape == (1, 1 + 2 * 14 * 14, 5) and torch.allclose(out, torch.ones_like(out))


def test_bad_input_shapes_are_refused_with_a_reason():
    cfg = load_config("xkd_micro").model
    video, audio = build_encoder("video", cfg), build_encoder("audio", cfg)
    with pytest.raises(ValueError, match="divisible"):
        video(torch.randn(1, 3, 16, 30, 32))
    with pytest.raises(ValueError, match=r"\(B, 1, mel, time\)"):
        audio(torch.randn(1, 2, 16, 64))
