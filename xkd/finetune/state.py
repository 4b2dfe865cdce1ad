"""The state a fine-tuning checkpoint keeps outside the DeepSpeed engine (which holds the classifier
and its optimizer): the step and counters, this rank's data position, the best validation so far,
the backbone it started from and the label space, and the resolved config. The same interface as
the pretraining `TrainingState` (xkd/train/state.py), which the checkpoint manager saves and loads."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from xkd.config import to_dict


@dataclass
class FinetuneState:
    config: Any  # the FinetuneConfig
    data: Any  # the batch source (dali_pipelines/labelled.py)
    backbone: dict  # `xkd.finetune.inputs.backbone_identity`
    labels: Any  # the LabelSpace
    world_size: int = 1
    step: int = 0
    nonfinite_total: int = 0
    nonfinite_in_a_row: int = 0  # not saved: a resumed run starts counting afresh
    best: dict | None = None  # {"epoch", "step", "metric", "value"} of the best validation
    validated_step: int | None = None  # the step of the newest validation

    def state_dict(self) -> dict:
        return {"step": self.step, "data": self.data.state_dict(), "nonfinite_total": self.nonfinite_total,
                "world_size": self.world_size, "config": to_dict(self.config), "best": self.best,
                "validated_step": self.validated_step}

    def load_state_dict(self, state: dict) -> None:
        self.step = state["step"]
        self.nonfinite_total = state.get("nonfinite_total", 0)
        self.best, self.validated_step = state.get("best"), state.get("validated_step")
        if self.data is not None:
            self.data.load_state_dict(state["data"])

    def marker(self) -> dict:
        """What `xkd_complete.json` says of the run: enough to refuse continuing another run."""
        return {"task": "finetune", "modality": self.config.modality, "backbone": self.backbone,
                "labels": {**asdict(self.labels), "classes": list(self.labels.classes or [])},
                "epoch": self.data.epoch, "world_size": self.world_size}
