"""`xkd bench compare A B`: the change of every figure from report A to report B. A report is a
report.json, the --out folder holding one, or one line of a history file (`history.jsonl:-1`, the
last; `:1`, the first). A change within both runs' spread (each median inside the other's min – max)
is marked as noise."""
from __future__ import annotations

import json
import re
from pathlib import Path

from benchmarks.suite.output import REPORT_JSON, number
from benchmarks.suite.run import FORMAT


class ReportError(ValueError):
    """A file that is not a bench report (or a history line that does not exist); names the file."""


def load_report(spec: str) -> dict:
    line_spec = re.fullmatch(r"(.+\.jsonl):(-?\d+)", spec)
    path = Path(line_spec.group(1) if line_spec else spec)
    if path.is_dir():
        path = path / REPORT_JSON
    if not path.is_file():
        raise ReportError(f"{path}: no such report file")
    try:
        text = path.read_text()
        if line_spec:
            lines = [line for line in text.splitlines() if line.strip()]
            index = int(line_spec.group(2))
            if index == 0 or abs(index) > len(lines):
                raise ReportError(f"{path}: has {len(lines)} line(s), no line {index} (1 is the first, -1 the last)")
            report = json.loads(lines[index - 1 if index > 0 else index])
        elif path.suffix == ".jsonl":
            raise ReportError(f"{path}: a history file; name one of its lines, e.g. {path}:-1 (the last)")
        else:
            report = json.loads(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ReportError(f"{path}: not a readable JSON report ({error})") from None
    if not isinstance(report, dict) or report.get("format") != FORMAT:
        raise ReportError(f"{path}: not an `xkd bench` report (no \"format\": \"{FORMAT}\")")
    return report


def figures_of(report: dict) -> dict[str, dict]:
    """Every figure by 'stage.figure' (series points as 'stage.series@setting=value'); None where
    it was not measured, with why."""
    found = {}
    for stage, entry in report["stages"].items():
        for name, figure in entry.get("figures", {}).items():
            found[f"{stage}.{name}"] = figure
        for name, figure in entry.get("not_measured", {}).items():
            found[f"{stage}.{name}"] = {"why": figure["why"], "unit": figure["unit"]}
        for name, series in entry.get("series", {}).items():
            for point in series["points"]:
                key = f"{stage}.{name}@{series['setting']}={point[series['setting']]}"
                found[key] = {"unit": series["unit"], "higher_is_better": True, **point}
    return found


def _value(figure: dict | None) -> str:
    if figure is None:
        return "–"
    if "median" not in figure:
        return "not measured"
    return f"{100 * figure['median']:.1f}%" if figure["unit"] == "ratio" else number(figure["median"])


def _change(a: dict | None, b: dict | None) -> str:
    if not (a and b and "median" in a and "median" in b):
        return ""
    if a["median"] == 0:
        return "n/a"
    change = b["median"] / a["median"] - 1
    noise = a["min"] <= b["median"] <= a["max"] or b["min"] <= a["median"] <= b["max"]
    better = (change > 0) == a.get("higher_is_better", True)
    verdict = "within spread" if noise else ("better" if better else "worse")
    return f"{change:+.1%} ({verdict})" if change else "same"


def _describe(report: dict) -> str:
    commit = report["commit"].get("sha") or "unknown commit"
    return f"{report['date']}  {report['device']}  commit {commit[:12]}\n   {report['command']}"


def compare(a: dict, b: dict) -> str:
    rows = [("figure", "A", "B", "change")]
    figures_a, figures_b = figures_of(a), figures_of(b)
    for key in [*figures_a, *(k for k in figures_b if k not in figures_a)]:
        fa, fb = figures_a.get(key), figures_b.get(key)
        rows.append((key, _value(fa), _value(fb), _change(fa, fb)))
    for stage in dict.fromkeys([*a["stages"], *b["stages"]]):  # a stage that did not measure, in either
        states = [report["stages"].get(stage, {}).get("status", "not run") for report in (a, b)]
        if states != ["ok", "ok"]:
            rows.append((f"{stage} (stage)", *states, ""))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [f"A: {_describe(a)}", f"B: {_describe(b)}"]
    if (a["machine"].get("cpu"), a["device"]) != (b["machine"].get("cpu"), b["device"]):
        lines.append("note: different machines; ratios compare, absolute rates less so")
    if a["settings"]["preset"] != b["settings"]["preset"]:
        lines.append(f"note: different presets (A xkd_{a['settings']['preset']}, B xkd_{b['settings']['preset']})")
    lines.append("")
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)
