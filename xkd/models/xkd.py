"""XKD, XKD-MAS and XKD-MATS in one code path (docs/method.md §Losses, §Variants).

    model = XKD(cfg.model, cfg.loss)
    losses = model(batch, epoch)   # a TrainingBatch; a dict of every term, the total in losses["loss"]
    losses["loss"].backward(); optimizer.step()
    model.follow_students(momentum)                    # teachers' EMA and KD centres, after an applied step

`model.students` holds every trainable parameter (encoders, DINO heads, MAE decoders) and can be
wrapped by DeepSpeed on its own: pass the engine as `model(..., students=engine)`. `model.teachers`
(EMA copies of the student encoders and heads) never gets gradients and stays in fp32.
`model.criterion` holds the two KD centres (buffers); they move only in `follow_students`, so a
step that is skipped (non-finite loss or gradient) changes neither teachers nor centres.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from dali_pipelines.batch import TrainingBatch
from xkd.config import LossConfig, ModelConfig
from xkd.losses import XKDLoss, reconstruction_loss
from xkd.models.dino_head import DINOHead
from xkd.models.ema import ema_update, paired_parameters
from xkd.models.encoders import ViTEncoder, build_encoder
from xkd.models.mae import MAEDecoder
from xkd.models.refinement import refined_pooling
from xkd.models.transformer import make_block_stack

MODALITIES = ("video", "audio")


def _shared_block_stack(cfg: ModelConfig, drop_path: float) -> nn.ModuleList:
    e = cfg.encoder
    return make_block_stack(e.embed_dim, e.depth, e.num_heads, e.mlp_ratio, e.qkv_bias, drop_path)


def _group_consecutive_by_shape(views: Sequence[torch.Tensor]) -> list[list[torch.Tensor]]:
    """Consecutive views of equal shape, so each group runs through the encoder as one batch."""
    groups: list[list[torch.Tensor]] = []
    for view in views:
        if groups and groups[-1][0].shape == view.shape:
            groups[-1].append(view)
        else:
            groups.append([view])
    return groups


class XKDStudents(nn.Module):
    """Video and audio student encoders (sharing their block stack in MAS / MATS), DINO heads and
    MAE decoders. Everything trainable in XKD lives here."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        shared = _shared_block_stack(cfg, cfg.encoder.drop_path) if cfg.variant in ("xkd_mas", "xkd_mats") else None
        dim = cfg.encoder.embed_dim
        for modality in MODALITIES:
            encoder = build_encoder(modality, cfg, blocks=shared)
            self.add_module(modality, encoder)
            self.add_module(f"{modality}_head", DINOHead(dim, cfg.head))
            self.add_module(f"{modality}_decoder", MAEDecoder(dim, encoder.num_patches, encoder.patch_embed.patch_dim,
                                                              cfg.decoder))

    def _modality_forward(self, modality: str, views: Sequence[torch.Tensor], mask_ratio: float):
        encoder: ViTEncoder = getattr(self, modality)
        head: DINOHead = getattr(self, f"{modality}_head")
        decoder: MAEDecoder = getattr(self, f"{modality}_decoder")
        global_view = views[0]

        latent, mask, ids_restore = encoder.forward_masked(global_view, mask_ratio)
        pred = decoder(latent, ids_restore)
        recon = reconstruction_loss(pred, encoder.patch_embed.patchify(global_view), mask, self.cfg.norm_pix_loss)

        if self.cfg.student_global == "masked":
            pooled = [latent[:, 1:].mean(dim=1)]  # visible tokens only (docs/method.md B11)
        else:
            pooled = [encoder(global_view)[:, 1:].mean(dim=1)]
        for group in _group_consecutive_by_shape(views[1:]):
            pooled.append(encoder(torch.cat(group))[:, 1:].mean(dim=1))
        logits = head(torch.cat(pooled))  # rows: [global; local_1; ...], B each
        return logits, recon

    def forward(self, video_views: Sequence[torch.Tensor], audio_views: Sequence[torch.Tensor]) -> dict:
        video_logits, recon_video = self._modality_forward("video", video_views, self.cfg.video.mask_ratio)
        audio_logits, recon_audio = self._modality_forward("audio", audio_views, self.cfg.audio.mask_ratio)
        return {"video_logits": video_logits, "audio_logits": audio_logits,
                "recon_video": recon_video, "recon_audio": recon_audio}

    def backbone_and_head_parameters(self) -> list[nn.Parameter]:
        """The parameters the authors clip per parameter (student encoders and heads, not decoders)."""
        params = {}
        for modality in MODALITIES:
            for module in (getattr(self, modality), getattr(self, f"{modality}_head")):
                params.update({id(p): p for p in module.parameters() if p.requires_grad})
        return list(params.values())


class XKDTeachers(nn.Module):
    """EMA teacher encoders (sharing their block stack in MATS) and heads; no gradients, ever."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        shared = _shared_block_stack(cfg, 0.0) if cfg.variant == "xkd_mats" else None
        for modality in MODALITIES:
            self.add_module(modality, build_encoder(modality, cfg, blocks=shared, drop_path=0.0))
            self.add_module(f"{modality}_head", DINOHead(cfg.encoder.embed_dim, cfg.head))
        self.requires_grad_(False)

    @torch.no_grad()
    def copy_from(self, students: XKDStudents) -> None:
        for modality in MODALITIES:
            for name in (modality, f"{modality}_head"):
                getattr(self, name).load_state_dict(getattr(students, name).state_dict())

    @torch.no_grad()
    def forward(self, video_view: torch.Tensor, audio_view: torch.Tensor, refine_mode: str = "mean") -> dict:
        """Teacher logits (B, K) per modality from one view each, after cross-modal refinement."""
        video_tokens, video_attn = self.video.forward_with_cls_attention(video_view)
        audio_tokens, audio_attn = self.audio.forward_with_cls_attention(audio_view)
        video_pooled, audio_pooled = refined_pooling(video_tokens[:, 1:], audio_tokens[:, 1:],
                                                     video_attn, audio_attn, refine_mode)
        return {"video_logits": self.video_head(video_pooled), "audio_logits": self.audio_head(audio_pooled)}


class XKD(nn.Module):
    def __init__(self, model_cfg: ModelConfig, loss_cfg: LossConfig):
        super().__init__()
        self.model_cfg, self.loss_cfg = model_cfg, loss_cfg
        self.students = XKDStudents(model_cfg)
        self.teachers = XKDTeachers(model_cfg)
        self.teachers.copy_from(self.students)
        self.criterion = XKDLoss(loss_cfg, model_cfg.head.out_dim)

    @property
    def variant(self) -> str:
        return self.model_cfg.variant

    def forward(self, batch: TrainingBatch, epoch: int = 0, students: nn.Module | None = None) -> dict:
        """Every loss term of one batch (its views: [global, local_1, ...] per modality).

        `students` replaces self.students for the student pass (e.g. a DeepSpeed engine wrapping it).
        """
        video_views, audio_views = batch.video, batch.audio
        index = self.model_cfg.teacher_view
        if index >= min(len(video_views), len(audio_views)):
            raise ValueError(f"teacher_view={index} but only {len(video_views)} video / {len(audio_views)} audio views")
        student_out = (students or self.students)(list(video_views), list(audio_views))
        teacher_out = self.teachers(video_views[index], audio_views[index], self.loss_cfg.refine_mode)
        return self.criterion(student_out, teacher_out, epoch)

    def ema_pairs(self, modality: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
        names = (modality, f"{modality}_head")
        return paired_parameters((getattr(self.students, n), getattr(self.teachers, n)) for n in names)

    @torch.no_grad()
    def ema_update(self, momentum: float, momentum_audio: float | None = None) -> None:
        """Teachers <- EMA of students (encoders and heads). Each teacher tensor is updated once;
        a MATS shared teacher stack follows the video momentum."""
        video_pairs = self.ema_pairs("video")
        done = {id(t) for _, t in video_pairs}
        audio_pairs = [(s, t) for s, t in self.ema_pairs("audio") if id(t) not in done]
        ema_update(video_pairs, momentum)
        ema_update(audio_pairs, momentum if momentum_audio is None else momentum_audio)

    @torch.no_grad()
    def follow_students(self, momentum: float, momentum_audio: float | None = None) -> None:
        """After an applied optimiser step: teachers <- EMA of the students, KD centres <- the step's
        teacher outputs (see `XKDLoss.update_centres`)."""
        self.ema_update(momentum, momentum_audio)
        self.criterion.update_centres()

    def param_groups(self, weight_decay: float, decay_tokens: bool = True) -> list[dict]:
        """Optimizer groups over the trainable student parameters (docs/method.md §Training step).

        Biases and 1-D tensors get no decay. The authors decay cls/pos/mask tokens too
        (decay_tokens=True, docs/method.md B8); decay_tokens=False excludes them, as MAE does.
        """
        decay, no_decay = [], []
        for name, param in self.students.named_parameters():
            if not param.requires_grad:
                continue
            token = name.split(".")[-1] in ("cls_token", "pos_embed", "mask_token")
            if name.endswith(".bias") or param.ndim <= 1 or (token and not decay_tokens):
                no_decay.append(param)
            else:
                decay.append(param)
        return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def build_xkd(cfg) -> XKD:
    """XKD model from an ExperimentConfig (or anything with .model and .loss)."""
    return XKD(cfg.model, cfg.loss)
