"""A figure is the samples of one quantity, one per repeat, with their median and spread; a stage
returns its figures, the figures it could not measure (and why), series (a figure against a
setting) and details (what it measured on)."""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field


class Unavailable(Exception):
    """A stage this machine or this version of xkd cannot run; the message says why."""


def _tidy(value: float) -> float:
    return float(f"{value:.6g}")


def summarise(samples: list[float]) -> dict:
    """Median, min, max and quartiles (inclusive method: the quartiles of 2 samples are between them)."""
    if not samples:
        raise ValueError("a figure needs at least one sample")
    values = [float(v) for v in samples]
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else values * 3
    return {"median": _tidy(statistics.median(values)), "min": _tidy(min(values)), "max": _tidy(max(values)),
            "q1": _tidy(q1), "q3": _tidy(q3), "n": len(values), "samples": [_tidy(v) for v in values]}


@dataclass
class StageResult:
    figures: dict[str, dict] = field(default_factory=dict)
    not_measured: dict[str, dict] = field(default_factory=dict)
    series: dict[str, dict] = field(default_factory=dict)
    details: dict = field(default_factory=dict)

    def add(self, name: str, label: str, unit: str, samples: list[float], higher_is_better: bool = True) -> None:
        self.figures[name] = {"label": label, "unit": unit, "higher_is_better": higher_is_better,
                              **summarise(samples)}

    def missing(self, name: str, label: str, unit: str, why: str) -> None:
        self.not_measured[name] = {"label": label, "unit": unit, "why": why}

    def add_series(self, name: str, label: str, setting: str, unit: str, points: list[dict]) -> None:
        """points: {setting: value, and either 'samples' or 'why' (not measured)}."""
        rows = []
        for point in points:
            row = {setting: point[setting]}
            row.update({"why": point["why"]} if "why" in point else summarise(point["samples"]))
            rows.append(row)
        self.series[name] = {"label": label, "setting": setting, "unit": unit, "points": rows}

    def as_dict(self) -> dict:
        return {"figures": self.figures, "not_measured": self.not_measured, "series": self.series,
                "details": self.details}
