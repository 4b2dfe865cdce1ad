"""Loss terms: MMD, cross-modal KD with centring, refinement, reconstruction, weighted total."""
import math

import numpy as np
import pytest
import torch

from xkd.config import LossConfig
from xkd.losses import CrossModalDistillationLoss, XKDLoss, mmd, reconstruction_loss
from xkd.models.refinement import cross_modal_attention, refine_tokens, refined_pooling

GAMMAS = [1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1e3]


def test_mmd_of_a_set_with_itself_is_zero():
    torch.manual_seed(0)
    x = torch.randn(6, 32)
    assert mmd(x, x, GAMMAS).abs() < 1e-6
    # A copy goes through ||x||^2 + ||y||^2 - 2xy, whose rounding exp(-1000 d) amplifies (docs/method.md B4).
    assert mmd(x, x.clone(), GAMMAS).abs() < 1e-2


def test_mmd_grows_with_distance():
    torch.manual_seed(0)
    x = torch.randn(8, 4) * 0.1
    values = [mmd(x, x + shift, [0.1, 1.0, 10.0]).item() for shift in (0.0, 0.05, 0.2, 1.0)]
    assert values[0] == pytest.approx(0.0, abs=1e-6)
    assert all(a < b for a, b in zip(values, values[1:])), values


def test_mmd_matches_the_v_statistic_by_hand():
    x = torch.tensor([[0.0], [1.0]])
    y = torch.tensor([[2.0]])
    k = lambda d2: math.exp(-0.5 * d2)  # one bandwidth
    expected = (2 * k(0) + 2 * k(1)) / 4 + k(0) - 2 * (k(4) + k(1)) / 2
    assert mmd(x, y, [0.5]).item() == pytest.approx(expected, rel=1e-6)


def test_mmd_of_unrelated_layernormed_logits_is_about_7_over_n_each():
    # docs/method.md B4: with 8192-d LayerNorm-ed logits every off-diagonal kernel underflows
    torch.manual_seed(0)
    ln = torch.nn.LayerNorm(8192, elementwise_affine=False)
    x, y = ln(torch.randn(4, 8192)), ln(torch.randn(4, 8192))
    assert mmd(x, y, GAMMAS).item() == pytest.approx(7 / 4 + 7 / 4, rel=0.01)


def test_kd_loss_equals_a_hand_computed_value():
    student = torch.tensor([[1.0, 0.0, -1.0],   # view 0, sample 0
                            [0.0, 2.0, 0.0],    # view 0, sample 1
                            [0.5, 0.5, 0.0],    # view 1, sample 0
                            [-1.0, 0.0, 1.0]])  # view 1, sample 1
    teacher = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    center = np.array([0.1, -0.1, 0.0])
    loss_fn = CrossModalDistillationLoss(3, center_momentum=0.9)
    loss_fn.center.copy_(torch.from_numpy(center[None]).float())

    def softmax(z):
        e = np.exp(z - z.max())
        return e / e.sum()

    s_np, t_np = student.numpy().astype(np.float64), teacher.numpy().astype(np.float64)
    ces = []
    for view in range(2):
        for b in range(2):
            q = softmax((t_np[b] - center) / 0.5)
            log_p = np.log(softmax(s_np[view * 2 + b] / 0.2))
            ces.append(-(q * log_p).sum())
    loss = loss_fn(student, teacher, student_temp=0.2, teacher_temp=0.5)
    assert loss.item() == pytest.approx(np.mean(ces), rel=1e-5)
    assert torch.equal(loss_fn.center, torch.from_numpy(center[None]).float())  # the loss never moves it
    loss_fn.update_center(teacher.mean(0))  # c <- 0.9 c + 0.1 mean_b(raw teacher)
    np.testing.assert_allclose(loss_fn.center.numpy()[0], 0.9 * center + 0.1 * t_np.mean(0), rtol=1e-6)


def test_kd_centre_is_a_buffer():
    loss_fn = CrossModalDistillationLoss(5)
    assert "center" in dict(loss_fn.named_buffers()) and not list(loss_fn.parameters())
    with pytest.raises(ValueError, match="multiple"):
        loss_fn(torch.randn(3, 5), torch.randn(2, 5), 0.1, 0.07)


def _criterion_inputs(batch: int, out_dim: int = 4, teacher_value: float | None = None):
    student = {"video_logits": torch.randn(2 * batch, out_dim), "audio_logits": torch.randn(2 * batch, out_dim),
               "recon_video": torch.tensor(0.5), "recon_audio": torch.tensor(0.5)}
    if teacher_value is None:
        teacher = {"video_logits": torch.randn(batch, out_dim), "audio_logits": torch.randn(batch, out_dim)}
    else:
        teacher = {"video_logits": torch.full((batch, out_dim), teacher_value),
                   "audio_logits": torch.full((batch, out_dim), -teacher_value)}
    return student, teacher


def test_kd_centres_move_only_with_update_centres_from_the_kept_batches():
    torch.manual_seed(0)
    criterion = XKDLoss(LossConfig(center_momentum=0.5), out_dim=4)
    centres = lambda: (criterion.kd_video_to_audio.center.clone(), criterion.kd_audio_to_video.center.clone())  # noqa: E731
    criterion(*_criterion_inputs(2, teacher_value=1.0))  # kept: video teacher 1, audio teacher -1
    criterion.keep_staged_batch()
    criterion(*_criterion_inputs(6, teacher_value=float("nan")))  # staged, never kept (a non-finite batch)
    criterion(*_criterion_inputs(2, teacher_value=3.0))  # kept below
    assert all(torch.equal(c, torch.zeros(1, 4)) for c in centres())  # no forward moves a centre
    criterion.keep_staged_batch()
    criterion.update_centres()
    # one update from the mean over both kept batches (2 rows of 1, 2 rows of 3): 0.5 * 0 + 0.5 * 2
    video, audio = centres()
    assert torch.allclose(video, torch.full((1, 4), 1.0)) and torch.allclose(audio, torch.full((1, 4), -1.0))
    # a skipped step: its batches never reach the centres
    criterion(*_criterion_inputs(2, teacher_value=100.0))
    criterion.discard_centre_updates()
    criterion.update_centres()
    assert all(torch.equal(a, b) for a, b in zip(centres(), (video, audio)))
    # in eval mode nothing is staged
    criterion.eval()
    criterion(*_criterion_inputs(2, teacher_value=100.0))
    criterion.update_centres()
    assert all(torch.equal(a, b) for a, b in zip(centres(), (video, audio)))


def test_kd_loss_gradient_flows_to_the_student_only():
    student = torch.randn(4, 6, requires_grad=True)
    teacher = torch.randn(2, 6, requires_grad=True)
    CrossModalDistillationLoss(6)(student, teacher, 0.1, 0.04).backward()
    assert student.grad is not None and teacher.grad is None


def test_cross_modal_attention_mean_mode_closed_form():
    v = torch.tensor([[[0.1, 0.3, 0.2]]])   # (B=1, heads=1, Nv=3)
    a = torch.tensor([[[0.4, 0.2]]])        # (1, 1, Na=2)
    v_t, a_t = cross_modal_attention(v, a, "mean")
    # authors: outer products a_j v_i averaged over the other axis, divided by the own mean
    assert torch.allclose(v_t, v * 0.3 / 0.2) and torch.allclose(a_t, a * 0.2 / 0.3)
    v_s, a_s = cross_modal_attention(v, a, "softmax")
    assert torch.allclose(v_s, torch.softmax(v * 0.3, -1)) and torch.allclose(a_s.sum(-1), torch.ones(1, 1))


def test_refinement_keeps_the_pooled_norm_and_turns_towards_attended_tokens():
    torch.manual_seed(0)
    tokens = torch.randn(3, 10, 16) + 0.5
    weights = torch.rand(3, 4, 10)
    refined = refine_tokens(tokens, weights)
    assert torch.allclose(refined.mean(1).norm(dim=-1), tokens.mean(1).norm(dim=-1), rtol=1e-5)
    direction = (weights.mean(1).unsqueeze(-1) * tokens).sum(1)
    cos = torch.nn.functional.cosine_similarity(refined.mean(1), direction, dim=-1)
    assert torch.allclose(cos, torch.ones(3), atol=1e-5)
    # a global scale of the weights cancels
    assert torch.allclose(refine_tokens(tokens, 7.0 * weights), refined, atol=1e-5)


def test_refined_pooling_none_is_plain_mean():
    v, a = torch.randn(2, 5, 8), torch.randn(2, 3, 8)
    pv, pa = refined_pooling(v, a, torch.rand(2, 2, 5), torch.rand(2, 2, 3), mode="none")
    assert torch.equal(pv, v.mean(1)) and torch.equal(pa, a.mean(1))


def test_reconstruction_loss_counts_masked_patches_only():
    torch.manual_seed(0)
    target = torch.randn(2, 6, 12)
    pred = torch.randn(2, 6, 12)
    mask = torch.tensor([[1, 0, 1, 0, 0, 1], [0, 1, 1, 0, 0, 0]], dtype=torch.float32)
    loss = reconstruction_loss(pred, target, mask, norm_pix=True)
    changed = pred.clone()
    changed[mask == 0] += 5.0  # visible patches do not count
    assert reconstruction_loss(changed, target, mask).item() == pytest.approx(loss.item())
    normed = (target - target.mean(-1, keepdim=True)) / (target.var(-1, unbiased=True, keepdim=True) + 1e-6).sqrt()
    per_patch = ((pred - normed) ** 2).mean(-1)
    assert loss.item() == pytest.approx((per_patch * mask).sum().item() / 5, rel=1e-6)
    raw = ((pred - target) ** 2).mean(-1)
    assert reconstruction_loss(pred, target, mask, norm_pix=False).item() == pytest.approx(
        (raw * mask).sum().item() / 5, rel=1e-6)


def test_total_loss_weights_and_directions():
    torch.manual_seed(0)
    cfg = LossConfig(student_temp_video=0.2, student_temp_audio=0.1)
    criterion = XKDLoss(cfg, out_dim=16)
    student = {"video_logits": torch.randn(8, 16), "audio_logits": torch.randn(4, 16),
               "recon_video": torch.tensor(0.8), "recon_audio": torch.tensor(0.4)}
    teacher = {"video_logits": torch.randn(2, 16), "audio_logits": torch.randn(2, 16)}
    out = criterion(student, teacher, epoch=0)
    expected_keys = {"loss", "loss_recon", "loss_recon_video", "loss_recon_audio", "loss_align",
                     "loss_align_student", "loss_align_teacher", "loss_kd", "loss_kd_video_to_audio",
                     "loss_kd_audio_to_video"}
    assert set(out) == expected_keys
    assert out["loss_recon"].item() == pytest.approx(0.6)
    assert out["loss_align"].item() == pytest.approx((out["loss_align_student"] + out["loss_align_teacher"]).item() / 2)
    total = (1 * out["loss_align"] + 1 * out["loss_kd"] + 5 * out["loss_recon"]) / 7
    assert out["loss"].item() == pytest.approx(total.item(), rel=1e-6)
    # video teacher (tau 0.1) -> audio student (tau 0.1); audio teacher (0.07) -> video student (its own 0.2)
    check = CrossModalDistillationLoss(16)
    assert out["loss_kd_video_to_audio"].item() == pytest.approx(
        check(student["audio_logits"], teacher["video_logits"], 0.1, 0.1).item(), rel=1e-6)
    assert out["loss_kd_audio_to_video"].item() == pytest.approx(
        check(student["video_logits"], teacher["audio_logits"], 0.2, 0.07).item(), rel=1e-6)


def test_teacher_temperature_warmup_per_epoch():
    cfg = LossConfig(teacher_temp_video_warmup=0.09, teacher_temp_video=0.11, teacher_temp_audio_warmup=0.04,
                     teacher_temp_audio=0.06, teacher_temp_warmup_epochs=30)
    criterion = XKDLoss(cfg, out_dim=4)
    assert criterion.teacher_temperatures(0) == pytest.approx((0.09, 0.04))
    assert criterion.teacher_temperatures(29) == pytest.approx((0.11, 0.06))
    assert criterion.teacher_temperatures(15) == pytest.approx((0.09 + 0.02 * 15 / 29, 0.04 + 0.02 * 15 / 29))
    assert criterion.teacher_temperatures(500) == pytest.approx((0.11, 0.06))


@pytest.mark.gpu
def test_losses_run_in_fp32_under_bf16_autocast():
    x = torch.randn(4, 512, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        value = mmd(x, x.bfloat16(), GAMMAS)
        kd = CrossModalDistillationLoss(512).cuda()(x.bfloat16(), x[:2].bfloat16(), 0.1, 0.07)
    assert value.dtype == torch.float32 and kd.dtype == torch.float32


def _centre_worker(rank: int, world_size: int, init_file: str, result_file: str):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    criterion = XKDLoss(LossConfig(center_momentum=0.5), out_dim=3)
    criterion(*_criterion_inputs(2, out_dim=3, teacher_value=float(rank + 1)))  # rank 0 ones, rank 1 twos
    criterion.update_centres()
    if rank == 0:
        torch.save(criterion.kd_video_to_audio.center, result_file)
    dist.barrier()
    dist.destroy_process_group()


def test_kd_centre_is_averaged_across_ranks(tmp_path):
    import torch.multiprocessing as mp

    result = tmp_path / "centre.pt"
    mp.spawn(_centre_worker, args=(2, str(tmp_path / "init"), str(result)), nprocs=2, join=True)
    # c = 0.5 * 0 + 0.5 * mean over both ranks (1.5), not rank 0's own mean (1.0)
    assert torch.allclose(torch.load(result), torch.full((1, 3), 0.75))
