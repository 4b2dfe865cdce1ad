"""Fine-tuning under DeepSpeed: the pretraining loop (xkd/train/run_loop.py: ZeRO 0-3, checkpoints,
resume, SIGTERM, non-finite steps, metrics) training a classifier (xkd/finetune/classifier.py) on
labelled clips (dali_pipelines/labelled.py) with the recipe of docs/method.md §Fine-tuning.

After every `train.eval_every_epochs` epochs (and at the end) the classifier is validated on the
validation set; the best validation's weights are written as a classifier file pair,
RUN/best/classifier.{safetensors,json}. When training is done, that classifier is tested on the
test set (all of `data.eval_clips` x `data.eval_crops` clips), and the result is written as an
`xkd eval` result file (protocol "finetune"), RUN/result.json."""
from __future__ import annotations

import random

import torch

from dali_pipelines.shardset import ShardSet
from xkd.eval.backbones import EvalBackbone, backbone_label
from xkd.finetune.augment import BatchAugment
from xkd.finetune.classifier import (Classifier, classifier_meta, encoder_at, layer_decay_groups, load_classifier,
                                     model_config_at, save_classifier)
from xkd.finetune.config import FinetuneConfig
from xkd.finetune.evaluate import gather, metrics, score_videos
from xkd.finetune.inputs import LabelSpace, backbone_identity, describe_identity
from xkd.finetune.state import FinetuneState
from xkd.models.encoders import build_encoder
from xkd.schedules import FinetuneSchedules
from xkd.train.checkpoint import restore_rng, rng_state
from xkd.train.distributed import Process, barrier
from xkd.train.run_loop import DeepSpeedLoop, RunRefused

BEST = "best/classifier"
RESULT = "result.json"


def full_fp32_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The module's fp32 weights on the CPU, however DeepSpeed holds them (its fp32 masters under
    mixed precision and ZeRO 1-3, gathered). Every rank must call it together."""
    from deepspeed.utils import safe_get_full_fp32_param

    state = {}
    for name, param in module.named_parameters():
        full = safe_get_full_fp32_param(param)
        state[name] = (param.detach() if full is None else full).float().cpu().clone()
    for name, buffer in module.named_buffers():
        state[name] = buffer.detach().cpu().clone()
    return state


class FinetuneTrainer(DeepSpeedLoop):
    command = "xkd finetune"
    resume_sections = ("train", "data", "augment", "head")

    def __init__(self, cfg: FinetuneConfig, backbone: EvalBackbone, labels: LabelSpace, train: ShardSet,
                 val: ShardSet, run_dir: str, process: Process, deepspeed_config_path: str, *,
                 test: ShardSet | None = None, names: dict | None = None, resume: str | None = None,
                 quiet: bool = False, data=None):
        """train / val / test: checked shard sets (test: the val set when None). names: what the
        result file says of the run ('dataset', 'fold', 'train', 'test' locations), optional."""
        self.backbone, self.labels, self.identity = backbone, labels, backbone_identity(backbone)
        self.val_shards, self.test_shards, self.train_samples = val, test or val, train.samples
        self.names = names or {}
        super().__init__(cfg, train, run_dir, process, deepspeed_config_path, resume, quiet, data)
        self.augment = BatchAugment(cfg.augment, cfg.modality, labels.num_classes, labels.multi_label)
        if labels.multi_label:
            self.loss_fn = torch.nn.BCEWithLogitsLoss()
        else:
            from timm.loss import SoftTargetCrossEntropy

            self.loss_fn = SoftTargetCrossEntropy()

    # ------------------------------------------------------------------- what is trained

    def _make_data(self, shards: ShardSet):
        from dali_pipelines.labelled import labelled_loader

        cfg = self.cfg
        rand_augment = (cfg.augment.rand_augment_n, cfg.augment.rand_augment_m) if cfg.modality == "video" else (0, 0)
        try:
            data = labelled_loader(shards, cfg.data, cfg.modality, rand_augment=rand_augment, rank=self.process.rank,
                                   world_size=self.process.world_size, device=self.device, seed=cfg.train.seed,
                                   skip_bad=cfg.train.skip_bad_samples)
        except ValueError as error:  # too few samples for one batch per rank
            raise RunRefused(f"{self.names.get('train', 'the training shards')}: {error}") from None
        return data, shards.left_out

    def _make_schedules(self):
        return FinetuneSchedules(self.cfg.train, self.iters_per_epoch, self.total_batch)

    def _build_model(self):
        cfg = self.cfg
        info = self.backbone.info
        frame_size = cfg.data.global_video.size if cfg.modality == "video" else None
        self.model_cfg = model_config_at(info["encoder"], info["input"], cfg.modality, frame_size, cfg.train.drop_path)
        self.model = Classifier(encoder_at(self.backbone.encoder, self.model_cfg), self.labels.num_classes,
                                cfg.head.dropout, cfg.head.init, cfg.head.init_std)
        return self.model, layer_decay_groups(self.model, cfg.train.weight_decay, cfg.train.layer_decay)

    def _make_state(self) -> FinetuneState:
        return FinetuneState(self.cfg, self.data, self.identity, self.labels, self.process.world_size)

    def _seed_rank_streams(self) -> None:
        super()._seed_rank_streams()
        random.seed(self.cfg.train.seed * 1000 + self.process.rank + 1)  # timm's RandomErasing draws from it

    def _check_checkpoint(self, folder, marker: dict) -> None:
        if marker.get("task") != "finetune":
            what = "an `xkd pretrain` run" if "variant" in marker else "another kind of run"
            raise RunRefused(f"{folder} is a checkpoint of {what}, not of an `xkd finetune` run: choose another --out")
        if marker.get("backbone") != self.identity:
            raise RunRefused(f"{folder} was fine-tuned from another backbone (checkpoint: "
                             f"{describe_identity(marker.get('backbone'))}; this run: {describe_identity(self.identity)})"
                             ": resume with the backbone it started from, or choose another --out")
        labels = {"num_classes": self.labels.num_classes, "multi_label": self.labels.multi_label,
                  "classes": list(self.labels.classes or [])}
        if marker.get("labels") != labels:
            raise RunRefused(f"{folder} was fine-tuned on other classes (checkpoint {marker.get('labels')}, these "
                             f"shards {labels}): choose another --out")

    def _describe(self) -> str:
        kind = "multi-label" if self.labels.multi_label else "single-label"
        return (f"{self.cfg.name}: {self.cfg.modality} classifier of {self.labels.num_classes} classes ({kind}) from "
                f"{backbone_label([self.backbone])}")

    # ---------------------------------------------------------------------------- one step

    def _forward(self, batch, epoch: int) -> dict:
        clips, targets = self.augment(batch.clips, batch.label, batch.label_sets)
        with self.autocast():
            logits = self.engine(clips)
        return {"loss": self.loss_fn(logits.float(), targets)}

    def _set_hyperparameters(self, values: dict) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = values["lr"] * group.get("lr_scale", 1.0)

    def _schedule_record(self, values: dict, epoch: int) -> dict:
        return {"lr": values["lr"]}  # the head's; block i's is this x layer_decay^(depth - i)

    # --------------------------------------------------------------------------- validation

    def _work_due(self, epoch: int, epoch_ended: bool) -> bool:
        """After every eval_every_epochs-th epoch and the last one, and at the run's last step."""
        if self.state.step == self.last_step:
            return self.state.validated_step != self.state.step
        every = self.cfg.train.eval_every_epochs
        return epoch_ended and ((epoch + 1) % every == 0 or epoch + 1 == self.cfg.train.epochs)

    def _scheduled_work(self, epoch: int) -> None:
        self.validate(epoch)

    def _score(self, model: torch.nn.Module, shards: ShardSet, clips: int, crops: int):
        process = self.process
        share = score_videos(model, shards, self.cfg.data, self.cfg.modality, self.device,
                             num_classes=self.labels.num_classes, multi_label=self.labels.multi_label, clips=clips,
                             crops=crops, rank=process.rank, world_size=process.world_size)
        return gather(share)

    def validate(self, epoch: int) -> dict:
        """Score the current weights on the validation set; keep them as the best classifier when they
        are (strictly) the best so far. The random generators are left as they were."""
        generators = rng_state(self.device)
        weights = full_fp32_state(self.engine.module)
        model = Classifier(build_encoder(self.cfg.modality, self.model_cfg), self.labels.num_classes)
        model.load_state_dict(weights)  # a plain copy: each rank scores its share alone, under any ZeRO stage
        train = self.cfg.train
        scores = self._score(model.to(self.device), self.val_shards, train.val_clips, train.val_crops)
        found = metrics(scores, self.labels.multi_label)
        metric = "map" if self.labels.multi_label else "top1"
        state = self.state
        improved = state.best is None or found[metric] > state.best["value"]
        if improved:
            state.best = {"epoch": epoch, "step": state.step, "metric": metric, "value": found[metric]}
            if self.process.is_main:
                save_classifier(self.run_dir / BEST, weights, self._classifier_meta())
        state.validated_step = state.step
        barrier()  # the best classifier is on disk before any rank reads it
        record = {"epoch": epoch, **{f"val_{k}": v for k, v in found.items() if v is not None},
                  "val_videos": len(scores), "val_best": state.best["value"]}
        self.log.write(state.step, record)
        self._say(f"epoch {epoch}: validation {metric} {found[metric]:.2f}% on {len(scores)} videos"
                  + (" (best so far)" if improved else f" (best {state.best['value']:.2f}% at epoch {state.best['epoch']})"))
        restore_rng(generators, self.device)
        return found

    def _classifier_meta(self) -> dict:
        labels = self.labels
        return classifier_meta(self.model_cfg, self.cfg.modality, labels.num_classes, labels.multi_label,
                               list(labels.classes) if labels.classes else None,
                               {"dropout": self.cfg.head.dropout, "init": self.cfg.head.init},
                               {"run": str(self.run_dir.resolve()), "backbone": self.backbone.info,
                                "config": self.cfg.name, "step": self.state.step,
                                "epoch": self.state.best["epoch"] if self.state.best else None})

    # ------------------------------------------------------------------------------- the end

    def _at_end(self, outcome: str) -> None:
        """A finished run: validate the last weights if they were not, then test the best classifier."""
        if outcome != "finished" or self.state.step == 0:
            return
        if self.state.validated_step != self.state.step:  # a safety net: `_work_due` validates the last step
            position = self.data.state_dict()
            self.validate(position["epoch"] - 1 if position["batch"] == 0 else position["epoch"])
        self.result = self.test()

    def test(self) -> dict:
        """The best classifier on the test set, with every test clip and crop; the result file."""
        from xkd.eval.results import EvalResult, describe_features, write_results

        model, _ = load_classifier(self.run_dir / BEST, self.device)
        data = self.cfg.data
        scores = self._score(model, self.test_shards, data.eval_clips, data.eval_crops)
        found = metrics(scores, self.labels.multi_label)
        names = describe_features({}, self.names.get("test", "test"))
        names.update({k: v for k, v in self.names.items() if k in ("dataset", "fold") and v is not None})
        best = self.state.best
        settings = {
            "config": self.cfg.name, "epochs": self.cfg.train.epochs, "steps": self.state.step,
            "selected": f"best validation {best['metric']} ({best['value']:.2f}) at epoch {best['epoch']}, step "
                        f"{best['step']}", "validation": self.names.get("val"),
            "selection_on_test": self.names.get("val") == self.names.get("test"),
            "test_clips": data.eval_clips, "test_crops": data.eval_crops if self.cfg.modality == "video" else 1,
            "scores": "mean logits per video" if self.labels.multi_label else "mean softmax per video",
            "total_batch": self.total_batch, "peak_lr": self.schedules.peak_lr,
            "layer_decay": self.cfg.train.layer_decay, "precision": self.precision,
            "world_size": self.process.world_size, "map_classes": found.get("map_classes"),
        }
        result = EvalResult(dataset=self.names.get("dataset") or names["dataset"], fold=names["fold"],
                            protocol="finetune", modality=self.cfg.modality, top1=found.get("top1"),
                            top5=found.get("top5"), map=found.get("map"), backbone=backbone_label([self.backbone]),
                            config=self.cfg.name, n_train=self.train_samples, n_test=len(scores), settings=settings,
                            train=str(self.names.get("train", "")), test=str(self.names.get("test", "")))
        record = {f"test_{k}": v for k, v in found.items() if v is not None}
        self.log.write(self.state.step, {**record, "test_videos": len(scores)})
        if self.process.is_main:
            write_results(self.run_dir / RESULT, [result], self.names.get("command", "xkd finetune"))
        shown = ", ".join(f"{k} {v:.2f}%" for k, v in found.items() if v is not None and k != "map_classes")
        self._say(f"test ({len(scores)} videos, {settings['test_clips']} clips x {settings['test_crops']} crops): "
                  f"{shown}; result: {self.run_dir / RESULT}")
        return {"result": result, **found}

