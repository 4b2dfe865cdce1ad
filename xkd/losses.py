"""XKD losses (docs/method.md §Losses): cross-modal distillation with centring, MMD domain alignment, the MAE
reconstruction loss (§Reconstruction), and the weighted total. (The attention refinement of the teachers'
tokens is a step of their forward pass: `xkd/models/refinement.py`.)

Every loss is computed in fp32, also under autocast: the KD softmaxes and the MMD distance
(||x||^2 ~ 8192 for LayerNorm-ed logits) lose too much precision in half precision.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from xkd.config import LossConfig
from xkd.fp32 import in_fp32
from xkd.schedules import teacher_temperature


# --------------------------------------------------------------------------------------------
# Cross-modal knowledge distillation
# --------------------------------------------------------------------------------------------


class CrossModalDistillationLoss(nn.Module):
    """DINO cross-entropy from one modality's teacher to the other modality's student.

    The teacher output is centred with a running centre (a buffer, so it is checkpointed) and
    sharpened; every (teacher chunk, student chunk) pair counts, none is skipped since the two
    come from different modalities. The loss never changes the centre: `update_center` does, once
    the optimiser step is known to be applied (see `XKDLoss.update_centres`).
    """

    def __init__(self, out_dim: int, center_momentum: float = 0.9):
        super().__init__()
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, student_temp: float,
                teacher_temp: float) -> torch.Tensor:
        """student (V * B, K): V views of the B clips; teacher (B, K): the one teacher view."""
        return self._loss(student, teacher.detach(), self.center, student_temp, teacher_temp)

    @staticmethod
    @in_fp32
    def _loss(student, teacher, center, student_temp, teacher_temp):
        batch = teacher.shape[0]
        if student.shape[0] % batch:
            raise ValueError(f"student rows {student.shape[0]} are not a multiple of the teacher batch {batch}")
        log_p = F.log_softmax(student / student_temp, dim=-1).reshape(-1, batch, student.shape[-1])
        q = F.softmax((teacher - center) / teacher_temp, dim=-1)
        # -sum_k q log p, averaged over every (student view, clip) pair
        return -(q.unsqueeze(0) * log_p).sum(dim=-1).mean()

    @torch.no_grad()
    def update_center(self, batch_mean: torch.Tensor) -> None:
        """c <- m c + (1 - m) batch_mean, batch_mean (K,) being the raw teacher output's mean over the
        whole (all-rank) batch of the step."""
        self.center.mul_(self.center_momentum).add_(batch_mean.view_as(self.center).to(self.center.dtype),
                                                    alpha=1.0 - self.center_momentum)


# --------------------------------------------------------------------------------------------
# MMD domain alignment
# --------------------------------------------------------------------------------------------


@in_fp32
def gaussian_kernel_sum(x: torch.Tensor, y: torch.Tensor, gammas: Sequence[float]) -> torch.Tensor:
    """sum_g exp(-g ||x_i - y_j||^2) for all pairs, (n_x, n_y)."""
    sq_dist = x.pow(2).sum(-1, keepdim=True) + y.pow(2).sum(-1).unsqueeze(0) - 2.0 * x @ y.T
    sq_dist = sq_dist.clamp_min(1e-30)
    if x is y:  # exact zeros on the diagonal: the expansion above leaves rounding noise that gamma=1e3 amplifies
        sq_dist = torch.where(torch.eye(len(x), dtype=torch.bool, device=x.device), 0.0, sq_dist)
    # a Python loop over the few bandwidths: no host-to-device copy (and so no sync) per call
    return sum(torch.exp(-gamma * sq_dist) for gamma in gammas)


@in_fp32
def mmd(x: torch.Tensor, y: torch.Tensor, gammas: Sequence[float]) -> torch.Tensor:
    """Biased (V-statistic) MMD^2 with a multi-bandwidth Gaussian kernel; sample sizes may differ."""
    return (gaussian_kernel_sum(x, x, gammas).mean() + gaussian_kernel_sum(y, y, gammas).mean()
            - 2.0 * gaussian_kernel_sum(x, y, gammas).mean())


class MMDLoss(nn.Module):
    def __init__(self, gammas: Sequence[float]):
        super().__init__()
        self.gammas = tuple(float(g) for g in gammas)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return mmd(x, y, self.gammas)


# --------------------------------------------------------------------------------------------
# MAE reconstruction
# --------------------------------------------------------------------------------------------


def reconstruction_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                        norm_pix: bool = True) -> torch.Tensor:
    """Mean squared error over masked patches only.

    With `norm_pix`, each target patch is standardised by its own mean and unbiased variance.
    """
    pred, target = pred.float(), target.float()
    if norm_pix:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)  # unbiased, as the authors
        target = (target - mean) / (var + 1.0e-6).sqrt()
    per_patch = (pred - target).pow(2).mean(dim=-1)
    return (per_patch * mask).sum() / mask.sum()


# --------------------------------------------------------------------------------------------
# Weighted total
# --------------------------------------------------------------------------------------------


class XKDLoss(nn.Module):
    """Combines the student and teacher outputs into every XKD loss term.

    Holds the two KD centres (`kd_video_to_audio.center` follows the video teacher,
    `kd_audio_to_video.center` the audio teacher). The centres move only with an applied optimiser
    step, so that a skipped batch (a non-finite loss or gradient) leaves them as they were:

        losses = criterion(student, teacher)   # in training: stages this batch's teacher outputs
        criterion.keep_staged_batch()          # the batch made it into the gradients
        ...                                    # (more micro-batches under gradient accumulation)
        criterion.update_centres()             # after an applied step: one update from every kept batch
        criterion.discard_centre_updates()     # or, after a skipped step, none

    Every rank must make the same calls (the update all-reduces the kept batches' sums).
    """

    def __init__(self, cfg: LossConfig, out_dim: int):
        super().__init__()
        self.cfg = cfg
        self.kd_video_to_audio = CrossModalDistillationLoss(out_dim, cfg.center_momentum)
        self.kd_audio_to_video = CrossModalDistillationLoss(out_dim, cfg.center_momentum)
        self.mmd = MMDLoss(cfg.mmd_gammas)
        self._staged: torch.Tensor | None = None  # (2, K + 1): video and audio teacher sums, then the row count
        self._kept: torch.Tensor | None = None

    def _stage(self, teacher: dict) -> None:
        rows = torch.stack([teacher["video_logits"].detach().float().sum(0),
                            teacher["audio_logits"].detach().float().sum(0)])
        count = rows.new_full((2, 1), float(teacher["video_logits"].shape[0]))
        self._staged = torch.cat([rows, count], dim=1)

    def keep_staged_batch(self) -> None:
        """The last forward's batch counts towards the next centre update."""
        if self._staged is not None:
            self._kept = self._staged if self._kept is None else self._kept + self._staged
            self._staged = None

    def discard_centre_updates(self) -> None:
        self._staged = self._kept = None

    @torch.no_grad()
    def update_centres(self) -> None:
        """c <- m c + (1 - m) mean of the raw teacher outputs over every kept batch of the step, on every
        rank (DINO's update; under gradient accumulation the step's batch is all its micro-batches)."""
        self.keep_staged_batch()  # a plain loop (forward, backward, step) need not call it
        if self._kept is None:
            return
        totals = self._kept
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(totals)
        means = totals[:, :-1] / totals[:, -1:]
        self.kd_video_to_audio.update_center(means[0])
        self.kd_audio_to_video.update_center(means[1])
        self._kept = None

    def teacher_temperatures(self, epoch: int) -> tuple[float, float]:
        c = self.cfg
        return (teacher_temperature(epoch, c.teacher_temp_video_warmup, c.teacher_temp_video, c.teacher_temp_warmup_epochs),
                teacher_temperature(epoch, c.teacher_temp_audio_warmup, c.teacher_temp_audio, c.teacher_temp_warmup_epochs))

    def forward(self, student: dict, teacher: dict, epoch: int = 0) -> dict[str, torch.Tensor]:
        """student: video_logits (Vv*B, K), audio_logits (Va*B, K), recon_video, recon_audio;
        teacher: video_logits (B, K), audio_logits (B, K). Returns every term and the total `loss`."""
        c = self.cfg
        temp_video, temp_audio = self.teacher_temperatures(epoch)
        out: dict[str, torch.Tensor] = {}
        out["loss_recon_video"] = student["recon_video"]
        out["loss_recon_audio"] = student["recon_audio"]
        out["loss_recon"] = (student["recon_video"] + student["recon_audio"]) / 2

        out["loss_align_student"] = self.mmd(student["video_logits"], student["audio_logits"])
        if c.mmd_teacher_term:
            with torch.no_grad():
                out["loss_align_teacher"] = self.mmd(teacher["video_logits"], teacher["audio_logits"])
            out["loss_align"] = (out["loss_align_student"] + out["loss_align_teacher"]) / 2
        else:
            out["loss_align"] = out["loss_align_student"]

        if self.training:
            self._stage(teacher)
        # video teacher -> audio student, audio teacher -> video student; no intra-modal term
        out["loss_kd_video_to_audio"] = self.kd_video_to_audio(
            student["audio_logits"], teacher["video_logits"], c.student_temp_audio, temp_video)
        out["loss_kd_audio_to_video"] = self.kd_audio_to_video(
            student["video_logits"], teacher["audio_logits"], c.student_temp_video, temp_audio)
        out["loss_kd"] = (out["loss_kd_video_to_audio"] + out["loss_kd_audio_to_video"]) / 2

        total_weight = c.align_coeff + c.cmkd_coeff + c.recon_coeff
        out["loss"] = (c.align_coeff * out["loss_align"] + c.cmkd_coeff * out["loss_kd"]
                       + c.recon_coeff * out["loss_recon"]) / total_weight
        return out
