"""The project's speed goals, per GPU, and whether a bench report meets them. Judged on the median,
only where the goal applies: a GPU run (and, for the ViT-B goals, the base preset)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Goal:
    stage: str
    figure: str
    target: float
    text: str
    base_only: bool  # stated for ViT-B (--preset base)


GOALS = (
    Goal("pipeline", "dali_clips_per_s", 2000.0, "DALI pipeline >= 2,000 clips/s per GPU", base_only=False),
    Goal("model", "share_of_bf16_peak", 0.5, "ViT-B step in bf16 >= 50% of the bf16 matrix-product peak "
                                             "measured on the same GPU", base_only=True),
    Goal("train", "ratio_e2e_model_only", 0.9, "ViT-B training loop end to end >= 90% of model only",
         base_only=True),
)


def judge(report: dict) -> list[dict]:
    """One row per goal: verdict 'met', 'missed' or 'not judged', with the median and why."""
    settings = report["settings"]
    rows = []
    for goal in GOALS:
        row = {"goal": goal.text, "figure": f"{goal.stage}.{goal.figure}", "target": goal.target}
        stage = report["stages"].get(goal.stage)
        figure = (stage or {}).get("figures", {}).get(goal.figure)
        if settings["device"] != "cuda":
            row.update(verdict="not judged", why="the goals are per GPU; this run is on the CPU")
        elif goal.base_only and settings["preset"] != "base":
            row.update(verdict="not judged", why=f"the goal is for ViT-B (--preset base), not {settings['preset']}")
        elif stage is None:
            row.update(verdict="not judged", why=f"stage {goal.stage} was not run (--stages)")
        elif figure is None:
            row.update(verdict="not judged", why=f"stage {goal.stage}: {stage_state(stage)}")
        else:
            row.update(verdict="met" if figure["median"] >= goal.target else "missed", median=figure["median"])
        rows.append(row)
    return rows


def stage_state(stage: dict) -> str:
    """A stage's status with its reason or error, in a few words."""
    if stage["status"] == "failed":
        return f"failed: {stage['error']}"
    if stage.get("reason"):
        return f"{stage['status']}: {stage['reason']}"
    return stage["status"]
