"""The XKD pretraining loop under DeepSpeed (the loop itself, shared with fine-tuning, is
`xkd/train/run_loop.py`; this module says what XKD adds to it).

Students (encoders, DINO heads, MAE decoders) live in the DeepSpeed engine; the EMA teachers and
the KD centres stay outside it in fp32 and follow the students after every applied optimiser step
(gathered first under ZeRO-3). A batch with a non-finite loss, or a step with a non-finite
gradient, is skipped on every rank and changes nothing: no weight, optimizer state, teacher or
centre. LR, weight decay and EMA momentum follow per-iteration schedules,
the teacher temperatures per-epoch ones (docs/method.md §Schedules).
"""
from __future__ import annotations

import torch

from dali_pipelines.batch import TrainingBatch
from dali_pipelines.shardset import PRETRAINING, ShardSet
from xkd.config import ExperimentConfig, to_dict
from xkd.schedules import TrainSchedules
from xkd.train.data import training_batches
from xkd.train.distributed import Process
from xkd.train.knn_monitor import KnnMonitor, KnnMonitorError
from xkd.train.run_loop import DeepSpeedLoop, NonFiniteLossError, RunRefused, config_differences  # noqa: F401
from xkd.train.state import TrainingState


class Trainer(DeepSpeedLoop):
    command = "xkd pretrain"
    resume_sections = ("train", "loss", "data")

    def __init__(self, cfg: ExperimentConfig, shards: str | ShardSet | None, run_dir: str, process: Process,
                 deepspeed_config_path: str, resume: str | None = None, quiet: bool = False, data=None):
        """shards: a shard folder or pattern, or a ShardSet already checked (`xkd pretrain` checks it
        before DeepSpeed starts). data: a source of TrainingBatches with the interface of
        `xkd.train.data` (len, iter per epoch, epoch, state_dict, load_state_dict) instead of a
        pipeline over `shards` (benchmarks, tests)."""
        super().__init__(cfg, shards, run_dir, process, deepspeed_config_path, resume, quiet, data)
        try:
            self.knn = KnnMonitor(cfg, self.model.teachers, self.device, process.rank, process.world_size)
        except KnnMonitorError as error:
            raise RunRefused(str(error)) from None

    # ------------------------------------------------------------------------ what XKD trains

    def _make_data(self, shards):
        train = self.cfg.train
        shards = shards if isinstance(shards, ShardSet) else ShardSet.from_path(
            shards, needs=PRETRAINING, skip_bad=train.skip_bad_samples)
        return training_batches(shards, self.cfg, self.process.rank, self.process.world_size, self.device), \
            shards.left_out

    def _make_schedules(self):
        return TrainSchedules(self.cfg.train, self.iters_per_epoch, self.total_batch)

    def _build_model(self):
        from xkd.models import build_xkd

        train = self.cfg.train
        self.model = build_xkd(self.cfg)
        self.model.teachers.to(self.device)
        self.model.criterion.to(self.device)
        self.decayed_groups = [1]  # the groups the weight-decay schedule drives
        return self.model.students, self.model.param_groups(train.weight_decay, train.decay_tokens)  # [no decay, decay]

    def _clip_flags(self) -> torch.Tensor:
        # student backbones and heads: clipped per parameter and averaged into the teachers
        self.backbone_and_head_params = self.model.students.backbone_and_head_parameters()
        clipped = {id(p) for p in self.backbone_and_head_params}
        return torch.tensor([id(p) in clipped for p in self.trainable_params], device=self.device)

    @property
    def student_params(self) -> list[torch.nn.Parameter]:
        return self.trainable_params

    def _make_state(self) -> TrainingState:
        return TrainingState(self.cfg, self.model, self.data, self.process.world_size)

    def _check_checkpoint(self, folder, marker: dict) -> None:
        saved_variant, variant = marker.get("variant"), self.cfg.model.variant
        if saved_variant != variant:
            raise RunRefused(f"{folder} is a checkpoint of variant {saved_variant!r}, but this run's config "
                             f"({self.cfg.name}) is variant {variant!r}: resume with the config it was made with "
                             f"({self.run_dir / 'config.yaml'})")
        differences = config_differences(marker.get("model", {}), to_dict(self.cfg.model))
        if differences:
            raise RunRefused(f"{folder} was made by a different model: " + "; ".join(differences))

    def _describe(self) -> str:
        return f"{self.cfg.name} ({self.cfg.model.variant})"

    # -------------------------------------------------------------------------- one step

    def _forward(self, batch: TrainingBatch, epoch: int) -> dict:
        """The MAE targets and the teachers read the float32 views unrounded, and autocast runs the
        students' matrix products in the training precision, as the authors do."""
        with self.autocast():
            return self.model(batch, epoch=epoch, students=self.engine)

    def _after_backward(self) -> None:
        self.model.criterion.keep_staged_batch()  # the KD centres move only once the step is applied

    def _set_hyperparameters(self, values: dict) -> None:
        for index, group in enumerate(self.optimizer.param_groups):
            group["lr"] = values["lr"]
            if index in self.decayed_groups:  # biases, norms (and tokens, if so set) stay at 0
                group["weight_decay"] = values["weight_decay"]

    def _after_step_applied(self, values: dict) -> None:
        """The teachers' EMA and the KD centres (the students gathered under ZeRO-3)."""
        from deepspeed import zero

        with zero.GatheredParameters(self.backbone_and_head_params, enabled=self.zero3):
            self.model.follow_students(values["momentum"], values["momentum"])

    def _after_step_not_applied(self) -> None:
        self.model.criterion.discard_centre_updates()

    def _schedule_record(self, values: dict, epoch: int) -> dict:
        temp_video, temp_audio = self.model.criterion.teacher_temperatures(epoch)
        return {"lr": values["lr"], "weight_decay": values["weight_decay"], "ema_momentum": values["momentum"],
                "teacher_temp_video": temp_video, "teacher_temp_audio": temp_audio}

    # ---------------------------------------------------------------------- epoch's end

    def _work_due(self, epoch: int, epoch_ended: bool) -> bool:
        return epoch_ended and self.knn.due(epoch)

    def _scheduled_work(self, epoch: int) -> None:
        """The kNN monitor after `epoch`."""
        record = self.knn.run()
        self.log.write(self.state.step, {"epoch": epoch, **record})
        scores = ", ".join(f"{k.removeprefix('knn_top1_')} {v:.1f}%" for k, v in record.items() if k.startswith("knn_top1"))
        self._say(f"epoch {epoch}: kNN top-1 {scores} ({record['knn_seconds']:.1f} s)")
