"""Class lists that select a subset of a dataset's classes (`--classes-from`): Kinetics-Sound is the
32 Kinetics-400 classes of `lists/kinetics_sound_32.txt`.

A list is a text file, one class name a line, `#` starting a comment; the classes get ids 0..N-1 in
the list's order. Names match a dataset's labels whatever the spelling of spaces: Kinetics' CSVs say
"blowing nose", folder dumps of it "blowing_nose"."""
from __future__ import annotations

import re
from pathlib import Path

LISTS_DIR = Path(__file__).resolve().parent / "lists"  # the lists shipped with the project


class ClassListError(ValueError):
    """A class list that cannot be read or used (the command turns it into exit status 2)."""


def shipped_lists() -> list[str]:
    return sorted(path.stem for path in LISTS_DIR.glob("*.txt"))


def class_key(name: str) -> str:
    """What two spellings of one class name share: case, underscores and runs of spaces do not count."""
    return re.sub(r"\s+", " ", name.replace("_", " ")).strip().casefold()


def resolve_list(spec: str) -> Path:
    """A list file, or the name of a list shipped in `shards/lists/` (e.g. `kinetics_sound_32`)."""
    path = Path(spec)
    if path.is_file():
        return path
    shipped = LISTS_DIR / f"{spec}.txt"
    if "/" not in spec and shipped.is_file():
        return shipped
    raise ClassListError(f"{spec}: no such class list file, and not a shipped list "
                         f"(shipped: {', '.join(shipped_lists())})")


def read_class_list(spec: str) -> tuple[Path, list[str]]:
    """(the list's file, its class names in order); ClassListError if it is empty or repeats a class."""
    path = resolve_list(spec)
    names, seen = [], {}
    for line_no, line in enumerate(path.read_text().splitlines(), 1):
        name = line.split("#", 1)[0].strip()
        if not name:
            continue
        if class_key(name) in seen:
            raise ClassListError(f"{path}:{line_no}: {name!r} repeats line {seen[class_key(name)]}")
        seen[class_key(name)] = line_no
        names.append(name)
    if not names:
        raise ClassListError(f"{path}: the class list names no class")
    return path, names


def select_classes(rows: list[dict], spec: str, source) -> tuple[list[dict], dict[str, int]]:
    """Keep the rows whose label is a class of the list, relabelled with the list's spelling, and
    the list's class ids. Every listed class must label at least one input: a class the input lacks
    would give a classifier a class it never sees, so it is an error naming the classes."""
    path, names = read_class_list(spec)
    by_key = {class_key(name): name for name in names}
    present = {class_key(row["label"]) for row in rows if row.get("label") is not None}
    missing = [name for name in names if class_key(name) not in present]
    if missing:
        raise ClassListError(f"{path}: {len(missing)} of its {len(names)} classes label no input in {source}: "
                             f"{', '.join(repr(name) for name in missing[:10])}"
                             f"{' ...' if len(missing) > 10 else ''}")
    kept = [{**row, "label": by_key[class_key(row["label"])]} for row in rows
            if row.get("label") is not None and class_key(row["label"]) in by_key]
    return kept, {name: index for index, name in enumerate(names)}
