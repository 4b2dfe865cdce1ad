"""Find the videos to shard: a folder searched recursively, or a CSV/JSONL manifest; labels from
parent folders or the manifest (one class, or several in a `labels` column: FSD50K); official split
lists (UCF101, HMDB51), a manifest's `split` or `fold` column (ESC-50's folds) and class lists
(Kinetics-Sound, `shards/class_lists.py`) to select videos.

Everything here is cheap and deterministic (no media is opened): the result is the sorted list of
`InputItem`s plus the inputs rejected before any decoding (a listed file that does not exist, a
label missing from classes.json, a duplicate)."""
from __future__ import annotations

import csv
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from shards.class_lists import select_classes

VIDEO_EXTENSIONS = {
    ".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".flv", ".mpg", ".mpeg", ".3gp", ".ogv", ".wmv", ".ts",
}
AUDIO_EXTENSIONS = {".wav", ".flac", ".ogg", ".mp3", ".m4a", ".aac", ".opus"}
KEY_MAX_LEN = 90  # keeps every tar member name within ustar's 100 characters
_HMDB_SPLIT_FILE = re.compile(r"_test_split\d+\.txt$")
_HMDB_SPLIT_IDS = {"train": "1", "test": "2", "unused": "0"}


@dataclass(frozen=True)
class InputItem:
    path: str  # as given (absolute for folder inputs)
    rel: str  # path relative to the input root / manifest folder, "/"-separated
    key: str  # unique sample key in the shards
    label: str | None = None  # class name
    labels: tuple[str, ...] | None = None  # the class names of a multi-label input (then label is None)


@dataclass
class Rejection:
    path: str
    reason: str
    category: str  # short tag for the end-of-run counts

    def to_dict(self) -> dict:
        return {"path": self.path, "reason": self.reason, "category": self.category}


@dataclass
class InputSet:
    items: list[InputItem]
    rejected: list[Rejection] = field(default_factory=list)
    classes: dict[str, int] = field(default_factory=dict)
    multi_label: bool = False  # labels come from a manifest's `labels` column, several per input


class InputError(ValueError):
    """The input as a whole is unusable (not a folder or manifest, bad manifest format, ...)."""


def sanitize_key(text: str) -> str:
    """A webdataset key: no dots (the first dot starts the extension), no spaces (DALI's index is
    space-separated), no slashes (flat tars)."""
    text = re.sub(r"\.[A-Za-z0-9]{1,5}$", "", text)
    text = text.replace("/", "__")
    return re.sub(r"[^A-Za-z0-9_\-]", "_", text) or "_"


def load_inputs(
    source: str | os.PathLike,
    *,
    labels: str = "auto",
    classes_file: str | None = None,
    split_lists: list[str] | None = None,
    split: str | None = None,
    fold: str | None = None,
    classes_from: str | None = None,
    extensions: set[str] = VIDEO_EXTENSIONS,
) -> InputSet:
    """labels: 'auto' (parent folder for nested folder inputs, the manifest's column otherwise),
    'folder', 'manifest' or 'none'. split_lists: UCF101 train/testlist files or HMDB51
    *_test_splitN.txt files; with HMDB51 files, `split` picks train or test. With a manifest that
    has a `split` column, `split` selects rows ("train,val": either). With a manifest that has a
    `fold` column, `fold` K and `split` test keep fold K, `split` train the other folds.
    classes_from: a class list (file or shipped name) keeping only its classes, ids in its order."""
    source = Path(source)
    if source.is_dir():
        rows, rejected = _rows_from_folder(source, labels, extensions)
    elif source.is_file() and source.suffix.lower() in (".csv", ".jsonl", ".json"):
        rows, rejected = _rows_from_manifest(source, labels)
    elif source.exists():
        raise InputError(f"{source}: INPUT must be a folder or a .csv/.jsonl manifest")
    else:
        raise InputError(f"{source}: no such folder or manifest")
    multi_label = any(row.get("labels") is not None for row in rows)
    # class ids come from every video found, before any split is taken, so train and test agree
    if classes_from is not None:
        if classes_file or multi_label:
            raise InputError(f"--classes-from {classes_from}: takes single-label inputs and no --classes")
        rows, classes = select_classes(rows, classes_from, source)
    else:
        classes = _load_classes(classes_file, source) or _derive_classes(_label_names(rows))

    if split_lists and fold is not None:
        raise InputError(f"--fold {fold} selects from a manifest's folds; it does not combine with --split-list")
    if split_lists:
        rows, more = _select_by_split_lists(rows, split_lists, split)
        rejected += more
    elif fold is not None:
        rows = _select_by_fold(rows, fold, split, source)
    elif split is not None:
        rows = _select_by_split_column(rows, split, source)

    items, more = _finalize(rows, classes)
    return InputSet(items=items, rejected=rejected + more, classes=classes, multi_label=multi_label)


# ----------------------------------------------------------------------------------------------
# Sources


def _rows_from_folder(root: Path, labels: str, extensions: set[str]) -> tuple[list[dict], list[Rejection]]:
    if labels not in ("auto", "folder", "none"):
        raise InputError(f"--labels {labels}: a folder input takes auto, folder or none")
    rows, rejected = [], []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith(".") or Path(name).suffix.lower() not in extensions:
                continue
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if not path.exists():  # a broken symlink
                rejected.append(Rejection(str(path), "cannot read: broken symbolic link", "unreadable"))
                continue
            label = None
            if labels != "none" and "/" in rel:
                label = rel.split("/")[-2]
            rows.append({"path": str(path), "rel": rel, "label": label})
    if labels == "folder" and any(row["label"] is None for row in rows):
        raise InputError(f"{root}: --labels folder needs every video inside a class folder")
    return rows, rejected


def _rows_from_manifest(manifest: Path, labels: str) -> tuple[list[dict], list[Rejection]]:
    if labels not in ("auto", "manifest", "none"):
        raise InputError(f"--labels {labels}: a manifest input takes auto, manifest or none")
    with open(manifest, newline="") as handle:
        if manifest.suffix.lower() == ".csv":
            records = list(csv.DictReader(handle))
        else:
            records = []
            for line_no, line in enumerate(handle, 1):
                if line.strip():
                    try:
                        records.append(json.loads(line))
                    except json.JSONDecodeError as exc:
                        raise InputError(f"{manifest}:{line_no}: not valid JSON: {exc}") from None
    if records and "path" not in records[0]:
        raise InputError(f"{manifest}: the manifest needs a 'path' column")
    if records and "label" in records[0] and "labels" in records[0]:
        raise InputError(f"{manifest}: a manifest has a 'label' column (one class per input) or a 'labels' "
                         "column (several), not both")
    base = manifest.parent
    rows = []
    for record in records:
        given = str(record["path"])
        path = Path(given) if os.path.isabs(given) else base / given
        label = record.get("label")
        rows.append({
            "path": str(path),
            "rel": given.replace(os.sep, "/"),
            "label": None if labels == "none" or label in (None, "") else str(label),
            "labels": None if labels == "none" else _label_list(record.get("labels")),
            "key": record.get("key") or None,
            "split": _text(record.get("split")),
            "fold": _text(record.get("fold")),
        })
    return rows, []


def _text(value) -> str | None:
    return None if value in (None, "") else str(value)


def _label_list(value) -> tuple[str, ...] | None:
    """A `labels` cell: a JSON list, or names separated by commas (a CSV cell, as FSD50K writes them)."""
    if value is None:
        return None
    names = value if isinstance(value, list) else str(value).split(",")
    names = tuple(dict.fromkeys(str(name).strip() for name in names if str(name).strip()))
    return names or None


def _select_by_split_column(rows: list[dict], split: str, source: Path) -> list[dict]:
    if not any(row.get("split") is not None for row in rows):
        raise InputError(f"{source}: --split {split} needs a manifest with a 'split' column (or --split-list)")
    wanted = {name.strip() for name in split.split(",")}
    return [row for row in rows if row.get("split") in wanted]


def _select_by_fold(rows: list[dict], fold: str, split: str | None, source: Path) -> list[dict]:
    """k-fold cross-validation (ESC-50): the test split is fold K, the train split every other fold."""
    folds = sorted({row["fold"] for row in rows if row.get("fold") is not None}, key=_natural)
    if not folds:
        raise InputError(f"{source}: --fold {fold} needs a manifest with a 'fold' column")
    if split not in ("train", "test"):
        raise InputError(f"--fold {fold}: add --split test (fold {fold}) or --split train (the other folds)")
    if fold not in folds:
        raise InputError(f"--fold {fold}: {source} has folds {', '.join(folds)}")
    if split == "test":
        return [row for row in rows if row.get("fold") == fold]
    return [row for row in rows if row.get("fold") is not None and row["fold"] != fold]


def _natural(text: str) -> tuple:
    return (0, int(text), "") if text.lstrip("-").isdigit() else (1, 0, text)


# ----------------------------------------------------------------------------------------------
# Official split lists


def _read_split_list(path: Path, split: str | None) -> set[str]:
    """Entries (relative paths or bare file names) that the list selects."""
    hmdb = bool(_HMDB_SPLIT_FILE.search(path.name))
    if hmdb and split not in _HMDB_SPLIT_IDS:
        raise InputError(f"{path}: an HMDB51 split file needs --split train or --split test")
    selected = set()
    for line in path.read_text().splitlines():
        parts = line.split()
        if not parts:
            continue
        if hmdb:
            if len(parts) >= 2 and parts[1] == _HMDB_SPLIT_IDS[split]:
                selected.add(parts[0])
        else:  # UCF101 trainlist ("Class/v_x.avi 1") or testlist ("Class/v_x.avi"), or a plain list
            selected.add(parts[0].replace("\\", "/"))
    return selected


def _select_by_split_lists(rows, split_lists, split) -> tuple[list[dict], list[Rejection]]:
    wanted: set[str] = set()
    for list_file in split_lists:
        path = Path(list_file)
        if not path.is_file():
            raise InputError(f"{path}: split list not found")
        wanted |= _read_split_list(path, split)
    by_rel = {row["rel"]: row for row in rows}
    by_name: dict[str, list[dict]] = {}
    for row in rows:
        by_name.setdefault(row["rel"].rsplit("/", 1)[-1], []).append(row)
    chosen, rejected, seen = [], [], set()
    for entry in sorted(wanted):
        matches = [by_rel[entry]] if entry in by_rel else by_name.get(entry.rsplit("/", 1)[-1], [])
        if not matches:
            rejected.append(Rejection(entry, "listed in the split file but not found in INPUT", "missing"))
        for row in matches:
            if id(row) not in seen:
                seen.add(id(row))
                chosen.append(row)
    return chosen, rejected


# ----------------------------------------------------------------------------------------------
# Keys, labels, classes


def _load_classes(classes_file: str | None, source: Path) -> dict[str, int]:
    candidates = [Path(classes_file)] if classes_file else [
        (source if source.is_dir() else source.parent) / "classes.json"]
    for path in candidates:
        if path.is_file():
            try:
                classes = json.loads(path.read_text())
            except json.JSONDecodeError as exc:
                raise InputError(f"{path}: not valid JSON: {exc}") from None
            if not isinstance(classes, dict) or not all(isinstance(v, int) for v in classes.values()):
                raise InputError(f"{path}: classes.json must map class names to integer ids")
            return {str(name): int(idx) for name, idx in classes.items()}
        if classes_file:
            raise InputError(f"{path}: classes file not found")
    return {}


def _label_names(rows: list[dict]):
    for row in rows:
        yield row["label"]
        yield from row.get("labels") or ()


def _derive_classes(labels) -> dict[str, int]:
    names = sorted({label for label in labels if label is not None})
    if names and all(name.lstrip("-").isdigit() for name in names):
        return {name: int(name) for name in names}  # labels already are ids
    return {name: idx for idx, name in enumerate(names)}


def _finalize(rows: list[dict], classes: dict[str, int]) -> tuple[list[InputItem], list[Rejection]]:
    items, rejected, keys, paths = [], [], set(), set()
    for row in sorted(rows, key=lambda r: r["rel"]):
        path = row["path"]
        if path in paths:
            rejected.append(Rejection(path, "duplicate: listed more than once", "duplicate"))
            continue
        paths.add(path)
        unknown = [name for name in (row.get("labels") or (row["label"],)) if name is not None and name not in classes]
        if unknown:
            rejected.append(Rejection(path, f"label {unknown[0]!r} is not in classes.json", "label"))
            continue
        key = sanitize_key(row.get("key") or row["rel"])
        if len(key) > KEY_MAX_LEN or key in keys:
            key = _unique_key(key, path, keys)
        keys.add(key)
        items.append(InputItem(path=path, rel=row["rel"], key=key, label=row["label"], labels=row.get("labels")))
    return items, rejected


def _unique_key(key: str, path: str, taken: set[str]) -> str:
    digest = hashlib.sha1(path.encode()).hexdigest()
    for length in (8, 16, 40):
        candidate = f"{key[:KEY_MAX_LEN - length - 1]}-{digest[:length]}"
        if candidate not in taken:
            return candidate
    raise InputError(f"{path}: cannot make a unique key")
