"""The report's PNG charts (matplotlib, no display needed): throughput per stage, clips/s against
batch size, end to end against model only. Each bar or point is the median, its whisker min to max.
A chart whose figures were not measured is not drawn; `draw_charts` says why instead."""
from __future__ import annotations

from pathlib import Path

from shards.atomic import atomic_write

CHARTS = {"throughput": "throughput.png", "batch_size": "clips_per_s_by_batch.png",
          "e2e_vs_model": "e2e_vs_model_only.png"}
THROUGHPUT = (  # (stage, figure), in the order data flows
    ("pipeline", "dali_clips_per_s"), ("pipeline", "reference_clips_per_s"), ("model", "clips_per_s"),
    ("train", "model_only_clips_per_s"), ("train", "e2e_clips_per_s"), ("eval", "clips_per_s"),
)


def _figure(report: dict, stage: str, name: str) -> dict | None:
    return report["stages"].get(stage, {}).get("figures", {}).get(name)


def _whiskers(figures: list[dict]) -> list[list[float]]:
    return [[f["median"] - f["min"] for f in figures], [f["max"] - f["median"] for f in figures]]


def _save(figure, path: Path) -> None:
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))


def _title(report: dict, what: str) -> str:
    return f"{what}\n{report['device']}, xkd_{report['settings']['preset']}, median of {report['settings']['repeats']}"


def throughput_chart(report: dict, path: Path) -> str | None:
    from matplotlib.figure import Figure

    bars = [(f"{stage}: {figure['label']}", figure) for stage, name in THROUGHPUT
            if (figure := _figure(report, stage, name))]
    shards = _figure(report, "shards", "realtime_factor_per_worker")
    if not bars and not shards:
        return "no stage measured a throughput"
    panels = 1 + (shards is not None and bool(bars))
    chart = Figure(figsize=(8, 1.6 + 0.5 * (len(bars) + 2 * (shards is not None))), layout="constrained")
    axes = chart.subplots(panels, 1, squeeze=False, height_ratios=[max(len(bars), 1), 1][:panels])[:, 0]
    if bars:
        labels, figures = zip(*bars)
        axes[0].barh(range(len(bars)), [f["median"] for f in figures], xerr=_whiskers(figures), capsize=3)
        axes[0].set_yticks(range(len(bars)), [f"{label} ({f['unit']})" for label, f in bars])
        axes[0].invert_yaxis()
        axes[0].set_xlabel("per second (per GPU, or per process on the CPU)")
    if shards:
        ax = axes[-1]
        ax.barh([0], [shards["median"]], xerr=_whiskers([shards]), capsize=3, color="tab:green")
        ax.set_yticks([0], ["shards: 1 worker"])
        ax.set_xlabel("seconds of source video per second (x real time)")
    axes[0].set_title(_title(report, "Throughput per stage"))
    _save(chart, path)
    return None


def batch_size_chart(report: dict, path: Path) -> str | None:
    from matplotlib.figure import Figure

    series = report["stages"].get("model", {}).get("series", {}).get("clips_per_s_by_batch")
    points = [p for p in (series or {}).get("points", []) if "median" in p]
    if not points:
        return "the model stage measured no batch size"
    chart = Figure(figsize=(6, 4), layout="constrained")
    ax = chart.subplots()
    ax.errorbar([p["batch_size"] for p in points], [p["median"] for p in points], yerr=_whiskers(points),
                marker="o", capsize=3)
    ax.set_xscale("log", base=2)
    ax.set_xticks([p["batch_size"] for p in points], [str(p["batch_size"]) for p in points])
    ax.set_xlabel("clips per batch")
    ax.set_ylabel("clips/s (one XKD training step, synthetic batches)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.set_title(_title(report, "Model step: clips/s against batch size"))
    _save(chart, path)
    return None


def e2e_chart(report: dict, path: Path) -> str | None:
    from matplotlib.figure import Figure

    e2e, alone = _figure(report, "train", "e2e_clips_per_s"), _figure(report, "train", "model_only_clips_per_s")
    if not (e2e and alone):
        return "the train stage measured no end-to-end and model-only rates"
    ratio, wait = _figure(report, "train", "ratio_e2e_model_only"), _figure(report, "train", "data_wait_share")
    chart = Figure(figsize=(5, 4), layout="constrained")
    ax = chart.subplots()
    ax.bar([0, 1], [alone["median"], e2e["median"]], yerr=_whiskers([alone, e2e]), capsize=4,
           color=["tab:gray", "tab:blue"])
    ax.set_xticks([0, 1], ["model only\n(one batch again)", "end to end\n(DALI pipeline)"])
    ax.set_ylabel("clips/s per process")
    ax.set_title(_title(report, f"Training loop: end to end at {ratio['median']:.0%} of model only\n"
                                f"(data wait {wait['median']:.1%} of the step)"))
    _save(chart, path)
    return None


def draw_charts(report: dict, out: Path) -> dict:
    """Each chart's file name, or why it was not drawn (the measured report is written either way)."""
    import importlib.util

    drawn = {}
    for key, draw in (("throughput", throughput_chart), ("batch_size", batch_size_chart),
                      ("e2e_vs_model", e2e_chart)):
        if importlib.util.find_spec("matplotlib") is None:
            why = "matplotlib is not installed (pip install matplotlib==3.11.2)"
        else:
            try:
                why = draw(report, out / CHARTS[key])
            except Exception as error:  # a chart that cannot be drawn must not cost the figures
                why = f"drawing failed: {type(error).__name__}: {error}"
        if why is not None:
            (out / CHARTS[key]).unlink(missing_ok=True)  # an earlier run's chart would pass for this one's
        drawn[key] = {"file": CHARTS[key]} if why is None else {"not_drawn": why}
    return drawn
