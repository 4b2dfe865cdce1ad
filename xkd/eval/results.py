"""Result files of the evaluation commands, the table each command prints, and the paper-like table
`xkd eval report` collates from them.

A result file is JSON: {"format": "xkd-eval-result", "version": 1, "command": "...", "results":
[EvalResult, ...]}, one entry per protocol the command scored (the SVM writes two: "svm-cv" and
"svm-authors"). Fine-tuning writes the same entries with protocol "finetune". Metrics are percent."""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

FORMAT = "xkd-eval-result"
VERSION = 1
PROTOCOLS = {
    "svm-cv": "SVM, C by cross-validation on TRAIN",
    "svm-authors": "SVM, authors (C picked on test)",
    "linear": "linear probe",
    "knn": "weighted kNN",
    "finetune": "fine-tuning",
}
# folder names that say which split or stage, not which dataset
_GENERIC_NAMES = {"train", "test", "val", "valid", "validation", "shards", "eval", "features", "video", "audio",
                  "both", "trainval", "testing", "training"}
_FOLD = re.compile(r"(?:fold|split)[-_]?(\d+)", re.IGNORECASE)


class ResultFileError(ValueError):
    """A result file that is missing, malformed, or clashes with another."""


@dataclass
class EvalResult:
    dataset: str
    fold: str | None
    protocol: str  # a key of PROTOCOLS
    modality: str  # video | audio | both
    top1: float | None = None
    top5: float | None = None
    map: float | None = None  # multi-label sets: macro mAP instead of top-1/top-5
    backbone: str = "unknown"
    config: str | None = None
    n_train: int = 0  # videos
    n_test: int = 0
    chosen_c: float | None = None
    c_grid: list[float] | None = None
    settings: dict = field(default_factory=dict)  # what else decided the number (folds, k, epochs, ...)
    train: str = ""
    test: str = ""

    @property
    def metric(self) -> str:
        return "mAP" if self.map is not None else "top-1"

    @property
    def value(self) -> float | None:
        return self.map if self.map is not None else self.top1


def result_from_dict(entry: dict, where: str) -> EvalResult:
    names = {f.name for f in fields(EvalResult)}
    unknown = set(entry) - names
    if unknown:
        raise ResultFileError(f"{where}: unknown result fields {', '.join(sorted(unknown))}")
    try:
        result = EvalResult(**entry)
    except TypeError as error:
        raise ResultFileError(f"{where}: not a result ({error})") from None
    if result.protocol not in PROTOCOLS:
        raise ResultFileError(f"{where}: unknown protocol {result.protocol!r} (known: {', '.join(PROTOCOLS)})")
    return result


def write_results(path: str | os.PathLike, results: list[EvalResult], command: str = "") -> Path:
    from shards.atomic import atomic_write_text

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "version": VERSION, "command": command, "results": [asdict(r) for r in results]}
    atomic_write_text(path, json.dumps(payload, indent=1) + "\n")
    return path


def read_results(path: str | os.PathLike) -> list[EvalResult]:
    path = Path(path)
    if not path.is_file():
        raise ResultFileError(f"{path}: result file not found")
    try:
        payload = json.loads(path.read_text())
    except ValueError as error:
        raise ResultFileError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ResultFileError(f"{path}: not an {FORMAT} file")
    if not payload.get("results"):
        raise ResultFileError(f"{path}: holds no results")
    return [result_from_dict(entry, f"{path} result {i}") for i, entry in enumerate(payload["results"])]


# ---- defaults from features.json ------------------------------------------------------------------

def describe_features(meta: dict, location: str | os.PathLike) -> dict:
    """Default dataset, fold, backbone and config of a result, from features.json (what
    `xkd eval features` recorded) or else from the folder names of LOCATION: the dataset is the
    innermost folder name that is not a split or a fold, the fold a `foldN`/`splitN` name."""
    shards = meta.get("shards") or {}
    parts = [p for p in Path(shards.get("location") or Path(location).resolve()).parts if p not in ("/", "")]
    found = [m.group(1) for part in parts for m in [_FOLD.search(part)] if m]
    return {"dataset": _dataset_from(parts) or "unknown", "fold": found[-1] if found else None,
            "backbone": meta.get("backbone") or "unknown", "config": (meta.get("config") or {}).get("name")}


def _dataset_from(parts: list[str]) -> str | None:
    """The innermost folder name that is not a split, a stage or a fold (e.g. ucf101 in ucf101/fold1/test)."""
    for part in reversed(parts):
        stem = Path(part).stem if part.endswith((".npz", ".tar", ".json")) else part
        if stem.lower() not in _GENERIC_NAMES and not _FOLD.fullmatch(stem):
            return stem
    return None


# ---- tables ------------------------------------------------------------------------------------------

def _number(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " |" for row in [header, *rows]]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def format_table(results: list[EvalResult]) -> str:
    """One row per result: what a command prints after it has scored."""
    header = ["dataset", "fold", "protocol", "modality", "top-1", "top-5", "mAP", "backbone", "config",
              "n_train", "n_test", "C", "C grid"]
    rows = [[r.dataset, r.fold or "–", PROTOCOLS[r.protocol], r.modality, _number(r.top1), _number(r.top5),
             _number(r.map), r.backbone, r.config or "–", str(r.n_train), str(r.n_test),
             "–" if r.chosen_c is None else f"{r.chosen_c:g}",
             "–" if not r.c_grid else ",".join(f"{c:g}" for c in r.c_grid)] for r in results]
    return _markdown(header, rows)


def collate(results: list[tuple[EvalResult, str]]) -> str:
    """A markdown table as the paper's: one row per backbone (and config), one column per dataset,
    modality and protocol; several folds give mean ± sample standard deviation.

    results: (result, the file it came from); two results for the same cell and fold are refused."""
    cells: dict[tuple, dict[str | None, tuple[float, str]]] = {}
    rows: list[tuple] = []
    columns: list[tuple] = []
    for result, source in results:
        row = (result.backbone, result.config)
        column = (result.dataset, result.modality, result.protocol, result.metric)
        rows += [row] if row not in rows else []
        columns += [column] if column not in columns else []
        folds = cells.setdefault(row + column, {})
        if result.fold in folds:
            raise ResultFileError(f"{source}: a second result for {result.dataset} fold {result.fold or '-'} "
                                  f"{result.modality} {result.protocol} of {result.backbone} "
                                  f"(the first is in {folds[result.fold][1]})")
        if result.value is None:
            raise ResultFileError(f"{source}: a {result.protocol} result without top-1 or mAP")
        folds[result.fold] = (result.value, source)
    header = ["backbone"] + [f"{dataset} {modality} {protocol} ({metric})"
                             for dataset, modality, protocol, metric in columns]
    table = []
    for row in rows:
        label = row[0] + (f" ({row[1]})" if row[1] else "")
        table.append([label] + [_summary([v for v, _ in cells.get(row + column, {}).values()]) for column in columns])
    used = [p for p in PROTOCOLS if any(column[2] == p for column in columns)]
    legend = "; ".join(f"{p}: {PROTOCOLS[p]}" for p in used)
    return (_markdown(header, table) + f"\n\n{legend}. Percent; mean ± sample standard deviation over folds "
            "(n = number of folds) where there are several.\n")


def _summary(values: list[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    return f"{mean:.1f} ± {std:.1f} (n={len(values)})"
