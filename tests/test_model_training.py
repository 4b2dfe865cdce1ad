"""Training mechanics: gradient flow, EMA, parameter sharing of the variants, optimisation steps."""
import pytest
import torch

from xkd.config import load_config
from xkd.models import build_xkd
from xkd.models.synthetic import synthetic_batch
from xkd.schedules import cosine_scheduler, ema_momentum_schedule, teacher_temperature_schedule

VARIANTS = ["xkd", "xkd_mas", "xkd_mats"]


def micro(variant="xkd", *overrides):
    return load_config("xkd_micro", [f"model.variant={variant}", *overrides])


def param_ids(module):
    return {id(p) for p in module.parameters()}


@pytest.mark.parametrize("variant", VARIANTS)
def test_gradients_reach_every_student_parameter_and_no_teacher(variant):
    torch.manual_seed(0)
    cfg = micro(variant)
    model = build_xkd(cfg)
    batch = synthetic_batch(cfg.data, 2, video_local_views=2)
    model(batch)["loss"].backward()
    for name, param in model.students.named_parameters():
        if param.requires_grad:
            assert param.grad is not None and param.grad.abs().sum() > 0, name
        else:
            assert name.endswith("last_layer.weight_g") and param.grad is None  # DINO norm_last_layer
    for name, param in model.teachers.named_parameters():
        assert not param.requires_grad and param.grad is None, name


def test_teachers_start_as_copies_of_the_students():
    model = build_xkd(micro("xkd_mas"))
    for name in ("video", "audio", "video_head", "audio_head"):
        s, t = getattr(model.students, name).state_dict(), getattr(model.teachers, name).state_dict()
        assert s.keys() == t.keys() and all(torch.equal(s[k], t[k]) for k in s)
        assert not param_ids(getattr(model.students, name)) & param_ids(getattr(model.teachers, name))


@pytest.mark.parametrize("variant", VARIANTS)
def test_ema_arithmetic_once_per_tensor(variant):
    model = build_xkd(micro(variant))
    with torch.no_grad():
        for p in model.students.parameters():
            p.fill_(1.0)
        for p in model.teachers.parameters():
            p.fill_(0.0)
    model.ema_update(0.9)
    for name, p in model.teachers.named_parameters():
        # 0.9 * 0 + 0.1 * 1, also for the MATS shared stack (the authors' code gave 0.19, docs/method.md B10)
        assert torch.allclose(p, torch.full_like(p, 0.1)), name
    model.ema_update(0.5, momentum_audio=0.0)
    assert torch.allclose(model.teachers.video_head.mlp[0].weight, torch.tensor(0.55))
    assert torch.allclose(model.teachers.audio_head.mlp[0].weight, torch.tensor(1.0))
    expected_audio_blocks = 0.55 if variant == "xkd_mats" else 1.0  # shared stack follows the video momentum
    assert torch.allclose(model.teachers.audio.blocks[0].mlp.fc1.weight, torch.tensor(expected_audio_blocks))


def test_ema_teacher_stays_fp32_when_the_student_is_bf16():
    model = build_xkd(micro())
    model.students.to(torch.bfloat16)
    model.ema_update(0.99)
    assert all(p.dtype == torch.float32 for p in model.teachers.parameters())


def test_bf16_students_next_to_fp32_teachers_without_autocast():
    """The DeepSpeed bf16 layout: a bf16 student module, fp32 teachers, fp32 inputs."""
    torch.manual_seed(0)
    cfg = micro("xkd_mas")
    model = build_xkd(cfg)
    model.students.to(torch.bfloat16)
    out = model(synthetic_batch(cfg.data, 2))
    assert all(v.dtype == torch.float32 for v in out.values()) and torch.isfinite(out["loss"])
    out["loss"].backward()
    assert model.students.video.blocks[0].attn.qkv.weight.grad.dtype == torch.bfloat16
    model.ema_update(0.99)


def test_sharing_xkd_shares_nothing():
    model = build_xkd(micro("xkd"))
    s, t = model.students, model.teachers
    assert not param_ids(s.video) & param_ids(s.audio)
    assert not param_ids(t.video) & param_ids(t.audio)
    assert not param_ids(s) & param_ids(t)


@pytest.mark.parametrize("variant", ["xkd_mas", "xkd_mats"])
def test_sharing_mas_and_mats_share_exactly_the_block_stack(variant):
    model = build_xkd(micro(variant))
    s, t = model.students, model.teachers
    assert s.video.blocks is s.audio.blocks
    assert param_ids(s.video) & param_ids(s.audio) == param_ids(s.video.blocks)
    # patch embeddings, CLS, positions, norms, heads and decoders stay per modality
    for name in ("video_head", "video_decoder"):
        assert not param_ids(getattr(s, name)) & param_ids(getattr(s, name.replace("video", "audio")))
    teacher_shared = param_ids(t.video) & param_ids(t.audio)
    if variant == "xkd_mats":
        assert t.video.blocks is t.audio.blocks and teacher_shared == param_ids(t.video.blocks)
    else:
        assert t.video.blocks is not t.audio.blocks and not teacher_shared
    assert not param_ids(s) & param_ids(t)


def test_shared_student_blocks_get_gradients_from_both_modalities():
    torch.manual_seed(0)
    cfg = micro("xkd_mas")
    model = build_xkd(cfg)
    students = model.students
    video_views = synthetic_batch(cfg.data, 2).video
    audio_views = synthetic_batch(cfg.data, 2).audio
    out = students(video_views, audio_views)
    (g_video,) = torch.autograd.grad(out["recon_video"], students.video.blocks[0].attn.qkv.weight, retain_graph=True)
    (g_audio,) = torch.autograd.grad(out["recon_audio"], students.audio.blocks[0].attn.qkv.weight)
    assert g_video.abs().sum() > 0 and g_audio.abs().sum() > 0


def test_param_groups_follow_the_authors_rule():
    model = build_xkd(micro())
    no_decay, decay = model.param_groups(weight_decay=0.3)
    names = {id(p): n for n, p in model.students.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    plain = {names[id(p)] for p in no_decay["params"]}
    assert decay["weight_decay"] == 0.3 and no_decay["weight_decay"] == 0.0
    assert "video.cls_token" in decayed and "video.pos_embed" in decayed and "video_decoder.mask_token" in decayed
    assert "video.blocks.0.attn.qkv.weight" in decayed and "video.norm.weight" in plain and "video.blocks.0.attn.proj.bias" in plain
    assert not any(n.endswith("weight_g") for n in decayed | plain)  # frozen
    _, decay_mae_style = model.param_groups(0.3, decay_tokens=False)
    assert "video.pos_embed" not in {names[id(p)] for p in decay_mae_style["params"]}
    clipped = {names[id(p)] for p in model.students.backbone_and_head_parameters()}
    assert "video.blocks.0.attn.qkv.weight" in clipped and "audio_head.mlp.0.weight" in clipped
    assert not any("decoder" in n or n.endswith("weight_g") for n in clipped)  # the authors clip encoders + heads
    trainable = [p for p in model.students.parameters() if p.requires_grad]
    assert len(decay["params"]) + len(no_decay["params"]) == len(trainable)


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_few_steps_on_a_fixed_batch_lower_the_loss(variant):
    torch.manual_seed(0)
    cfg = micro(variant)
    model = build_xkd(cfg)
    batch = synthetic_batch(cfg.data, 4, video_local_views=1 if variant == "xkd" else 3)
    optimizer = torch.optim.AdamW(model.param_groups(0.05), lr=2e-3, betas=(0.9, 0.95))
    losses = []
    for _ in range(12):
        torch.manual_seed(1)  # same masks every step: a fixed problem
        loss = model(batch)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        model.follow_students(0.99)
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0], losses


def test_schedules():
    momentum = ema_momentum_schedule(epochs=2, iters_per_epoch=5)
    k = torch.arange(10).double()
    assert momentum == pytest.approx((1 - 0.0015 * (1 + torch.cos(torch.pi * k / 10))).tolist())
    lr = cosine_scheduler(1e-4, 0.0, epochs=4, iters_per_epoch=3, warmup_epochs=1)
    assert len(lr) == 12 and lr[0] == 0 and lr[2] == pytest.approx(1e-4) and lr[3] == pytest.approx(1e-4)
    assert lr[-1] < lr[4] and min(lr[3:]) > 0
    temps = teacher_temperature_schedule(0.04, 0.06, warmup_epochs=3, epochs=5, iters_per_epoch=2)
    assert temps.tolist() == pytest.approx([0.04, 0.04, 0.05, 0.05, 0.06, 0.06, 0.06, 0.06, 0.06, 0.06])


@pytest.mark.gpu
@pytest.mark.parametrize("variant", VARIANTS)
def test_bf16_autocast_step_on_gpu(variant):
    torch.manual_seed(0)
    cfg = micro(variant)
    model = build_xkd(cfg).cuda()
    batch = synthetic_batch(cfg.data, 2, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(batch)
    out["loss"].backward()
    model.ema_update(0.99)
    assert torch.isfinite(out["loss"]) and all(p.dtype == torch.float32 for p in model.teachers.parameters())


@pytest.mark.parametrize("override", ["model.teacher_view=0", "model.student_global=unmasked", "loss.refine_mode=softmax",
                                      "loss.refine_mode=none", "loss.mmd_teacher_term=false"])
def test_departure_switches_change_the_loss(override):
    torch.manual_seed(0)
    default, switched = micro(), micro("xkd", override)
    model = build_xkd(default).eval()
    batch = synthetic_batch(default.data, 2)
    torch.manual_seed(1)
    reference = model(batch)
    other = build_xkd(switched).eval()
    other.load_state_dict(model.state_dict())
    torch.manual_seed(1)
    out = other(batch)
    assert torch.isfinite(out["loss"]) and not torch.allclose(out["loss"], reference["loss"])
    if override == "loss.mmd_teacher_term=false":
        assert "loss_align_teacher" not in out and torch.equal(out["loss_align"], out["loss_align_student"])
