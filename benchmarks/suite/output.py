"""A bench report on disk: report.json (everything), report.md (the tables a person reads) and the
charts in the --out folder, each written whole (shards/atomic.py); `--record` appends the report as
one line to a history file (benchmarks/results/history.jsonl in a checkout)."""
from __future__ import annotations

import json
import os
from pathlib import Path

from benchmarks.suite.charts import draw_charts
from benchmarks.suite.goals import stage_state
from shards.atomic import atomic_write_text

REPORT_JSON, REPORT_MD = "report.json", "report.md"
HISTORY = Path(__file__).resolve().parents[1] / "results" / "history.jsonl"


def default_history() -> Path | None:
    """benchmarks/results/history.jsonl of the checkout the bench runs from; None for an installed xkd."""
    return HISTORY if HISTORY.parent.is_dir() else None


def write_report(report: dict, out: Path) -> list[Path]:
    """Write the charts, report.json and report.md into `out`; the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    report["charts"] = draw_charts(report, out)
    atomic_write_text(out / REPORT_JSON, json.dumps(report, indent=1) + "\n")
    atomic_write_text(out / REPORT_MD, markdown(report))
    return [out / REPORT_JSON, out / REPORT_MD] + [out / c["file"] for c in report["charts"].values() if "file" in c]


def append_history(report: dict, path: Path) -> None:
    """The report as one JSON line at the end of `path`, in one write (O_APPEND: concurrent runs
    do not interleave within a line)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(report, separators=(",", ":")) + "\n").encode()
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(descriptor, line)
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def number(value: float) -> str:
    """4 significant digits, without an exponent for everyday magnitudes."""
    if value == 0 or 1e-3 <= abs(value) < 1e6:
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    return f"{value:.3e}"


def shown(figure: dict) -> tuple[str, str, str]:
    """(median, min-max, IQR) of a figure, ratios as percentages."""
    if figure["unit"] == "ratio":
        def form(v):
            return f"{100 * v:.1f}%"
    else:
        form = number
    return (form(figure["median"]), f"{form(figure['min'])} – {form(figure['max'])}",
            f"{form(figure['q1'])} – {form(figure['q3'])}")


def _load(averages: list[float]) -> str:
    return ", ".join(map(str, averages)) or "–"


def _machine_line(report: dict) -> str:
    m = report["machine"]
    text = f"{m['cpu']}, {m['cores']} cores ({m['cores_usable']} usable), {m['memory_gib']} GiB"
    if m.get("gpus"):
        text += f"; GPU {', '.join(m['gpus'])}, driver {m.get('gpu_driver')}, CUDA {m.get('cuda_runtime')}"
    return text


def markdown(report: dict) -> str:
    settings, commit = report["settings"], report["commit"]
    sha = (commit["sha"][:12] + (" (with uncommitted changes)" if commit.get("dirty") else "")
           if commit.get("sha") else f"unknown: {commit['why']}")
    lines = [f"# xkd bench: {report['device']}, xkd_{settings['preset']}", ""]
    if settings["quick"]:
        lines += ["**Quick run** (`--quick`): the smallest workloads, to check that the bench runs; "
                  "not figures to quote.", ""]
    if report.get("interrupted"):
        lines += ["**Interrupted** (Ctrl-C): the stages after it were not run.", ""]
    lines += ["| | |", "|---|---|", f"| command | `{report['command']}` |", f"| date | {report['date']} |",
              f"| commit | {sha} |", f"| machine | {_machine_line(report)} |",
              f"| load average (1, 5, 15 min) | {_load(report['machine']['load_average_1_5_15_min'])} at the start, "
              f"{_load(report.get('load_average_at_end', []))} at the end |",
              f"| libraries | {', '.join(f'{k} {v}' for k, v in report['machine']['libraries'].items())} |",
              f"| python | {report['machine']['python']}, {report['machine']['os']} |", ""]
    lines += [f"Each figure: the median of {settings['repeats']} repeat(s) after a warm-up, the range (min – max) "
              "and the interquartile range of the repeats; ratios are taken within each repeat. Rates are per "
              "process (one GPU, or the CPU).", "", "## Figures", "",
              "| stage | figure | median | min – max | IQR | unit |", "|---|---|---:|---:|---:|---|"]
    missing = []
    for stage, entry in report["stages"].items():
        for figure in entry.get("figures", {}).values():
            median, spread, iqr = shown(figure)
            unit = "" if figure["unit"] == "ratio" else figure["unit"]
            lines.append(f"| {stage} | {figure['label']} | {median} | {spread} | {iqr} | {unit} |")
        for figure in entry.get("not_measured", {}).values():
            missing.append(f"- {stage}: {figure['label']}: not measured, {figure['why']}")
        if entry["status"] != "ok":
            missing.append(f"- {stage}: every figure not measured, {stage_state(entry)}")
    if missing:
        lines += ["", "Not measured:", "", *missing]
    lines += _series_tables(report)
    lines += ["", "## Goals (per GPU)", "", "| goal | median | verdict |", "|---|---:|---|"]
    for goal in report["goals"]:
        value = number(goal["median"]) if "median" in goal else "–"
        lines.append(f"| {goal['goal']} | {value} | {goal['verdict']}{': ' + goal['why'] if 'why' in goal else ''} |")
    lines += ["", "## Stages", "", "| stage | status | seconds | details |", "|---|---|---:|---|"]
    for stage, entry in report["stages"].items():
        said = "; ".join(f"{k} {v}" for k, v in entry.get("details", {}).items()) if entry["status"] == "ok" \
            else stage_state(entry).replace("|", "\\|")
        lines.append(f"| {stage} | {entry['status']} | {entry.get('seconds', '–')} | {said} |")
    lines += ["", "## Charts", ""]
    for chart in report.get("charts", {}).values():
        lines.append(f"![{chart['file']}]({chart['file']})" if "file" in chart
                     else f"- not drawn: {chart['not_drawn']}")
    return "\n".join(lines) + "\n"


def _series_tables(report: dict) -> list[str]:
    lines = []
    for stage, entry in report["stages"].items():
        for series in entry.get("series", {}).values():
            setting = series["setting"]
            lines += ["", f"## {stage}: {series['label']}, {series['unit']} against {setting.replace('_', ' ')}", "",
                      f"| {setting.replace('_', ' ')} | median | min – max | IQR |", "|---:|---:|---:|---:|"]
            for point in series["points"]:
                if "why" in point:
                    lines.append(f"| {point[setting]} | not measured: {point['why']} | | |")
                else:
                    median, spread, iqr = shown({**point, "unit": series["unit"]})
                    lines.append(f"| {point[setting]} | {median} | {spread} | {iqr} |")
    return lines
