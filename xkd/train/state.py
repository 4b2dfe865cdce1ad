"""The training state a run keeps outside the DeepSpeed engine, in one object: the step, the
counters, this rank's data position, the number of processes, the EMA teachers, the KD centres and
the resolved config. Its `state_dict()` is the checkpoint's `client_state`; save, resume and export
all read and write it through this class (the students, optimiser and ZeRO partitions are
DeepSpeed's own files)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from xkd.config import ExperimentConfig, from_dict, to_dict

PER_RANK = ("data",)  # keys that differ between ranks: each rank also keeps its own beside its RNG state


def _on_cpu(state: dict) -> dict:
    return {k: v.detach().cpu() for k, v in state.items()}


@dataclass
class TrainingState:
    config: ExperimentConfig
    model: Any  # the XKD model: its teachers and criterion (KD centres) are saved here
    data: Any = None  # the batch source (`xkd.train.data`); None when only reading (export)
    world_size: int = 1
    step: int = 0  # optimiser steps applied
    nonfinite_total: int = 0  # steps skipped for a non-finite loss or gradient
    nonfinite_in_a_row: int = 0  # not saved: a resumed run starts counting afresh

    def state_dict(self) -> dict:
        return {
            "teachers": _on_cpu(self.model.teachers.state_dict()),
            "criterion": _on_cpu(self.model.criterion.state_dict()),
            "step": self.step,
            "data": self.data.state_dict(),
            "nonfinite_total": self.nonfinite_total,
            "world_size": self.world_size,
            "config": to_dict(self.config),
        }

    def load_state_dict(self, state: dict) -> None:
        """Teachers, centres and counters, and the data position when there is a batch source (its
        `world_size` and `config` stay this run's: see `saved_config`)."""
        self.model.teachers.load_state_dict(state["teachers"])
        self.model.criterion.load_state_dict(state["criterion"])
        self.step = state["step"]
        self.nonfinite_total = state.get("nonfinite_total", 0)
        if self.data is not None:
            self.data.load_state_dict(state["data"])

    def marker(self) -> dict:
        """What `xkd_complete.json` says of the run: enough to refuse resuming with another model."""
        return {"variant": self.config.model.variant, "model": to_dict(self.config.model), "epoch": self.data.epoch,
                "world_size": self.world_size}

    @staticmethod
    def saved_config(state: dict) -> ExperimentConfig:
        """The config a checkpoint was made with (to build its model before loading it)."""
        return from_dict(ExperimentConfig, state["config"])
