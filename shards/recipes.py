"""Input manifests from the official layouts of the evaluation datasets that are not a folder of
class folders (`xkd shards manifest DATASET ROOT OUT_DIR`): OUT_DIR/inputs.csv, which `xkd shards
create` takes as INPUT, and OUT_DIR/classes.json, which it picks up beside it.

* esc50: the unpacked ESC-50 repository (`meta/esc50.csv`, `audio/*.wav`). Columns path, key,
  label (the category), fold (1..5); class ids are the official `target` numbers.
* fsd50k: the unpacked FSD50K download (`FSD50K.ground_truth/{dev,eval,vocabulary}.csv`,
  `FSD50K.dev_audio/`, `FSD50K.eval_audio/`). Columns path, key, labels (the class names, comma
  separated), split (train, val: the dev set's; eval); class ids are the vocabulary's indexes.
* kinetics: a Kinetics download in the layout of the CVDF mirror the Kinetics page links to
  (`annotations/{train,val,test}.csv` with label, youtube_id, time_start, time_end; the clips in
  `train/`, `val/`, `test/` as `YOUTUBEID_START_END.mp4`, flat or in class folders). Columns path,
  key, label, split; class ids are the sorted class names.

Nothing is decoded: a row whose file is missing is written as it is and `xkd shards create` records
it as rejected, naming the file, as it does any unreadable input. A ground-truth file that cannot be
read (absent, columns missing, contradictory) is a RecipeError naming it."""
from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from shards.atomic import atomic_write_json, atomic_write_text

MANIFEST_NAME = "inputs.csv"
CLASSES_NAME = "classes.json"


class RecipeError(ValueError):
    """An official metadata file that is missing or not as the dataset documents it."""


def _read_csv(path: Path, needs: tuple[str, ...], header: bool = True) -> list[dict]:
    if not path.is_file():
        raise RecipeError(f"{path}: not found (is the dataset unpacked in the official layout?)")
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle) if header else csv.reader(handle))
    if header and (not rows or not set(needs) <= set(rows[0])):
        found = ", ".join(rows[0]) if rows else "nothing"
        raise RecipeError(f"{path}: needs the columns {', '.join(needs)}; found {found}")
    return rows


def esc50(root: Path) -> tuple[list[dict], dict[str, int]]:
    meta = root / "meta" / "esc50.csv"
    rows, classes = [], {}
    for line_no, record in enumerate(_read_csv(meta, ("filename", "fold", "target", "category")), 2):
        category, target = record["category"], record["target"]
        if not target.isdigit():
            raise RecipeError(f"{meta}:{line_no}: target {target!r} is not a class number")
        if classes.setdefault(category, int(target)) != int(target):
            raise RecipeError(f"{meta}:{line_no}: category {category!r} has targets {classes[category]} and {target}")
        rows.append({"path": str(root / "audio" / record["filename"]), "key": Path(record["filename"]).stem,
                     "label": category, "fold": record["fold"]})
    _check_one_name_per_id(classes, meta)
    return rows, classes


def fsd50k(root: Path) -> tuple[list[dict], dict[str, int]]:
    truth = root / "FSD50K.ground_truth"
    vocabulary = truth / "vocabulary.csv"
    classes = {}
    for line_no, fields in enumerate(_read_csv(vocabulary, (), header=False), 1):
        if line_no == 1 and fields and not fields[0].strip().isdigit():
            continue  # a header line
        if len(fields) < 2 or not fields[0].strip().isdigit():
            raise RecipeError(f"{vocabulary}:{line_no}: expected 'index,name,mid', found {','.join(fields)!r}")
        classes[fields[1]] = int(fields[0])
    if not classes:
        raise RecipeError(f"{vocabulary}: names no class")
    _check_one_name_per_id(classes, vocabulary)
    rows = []
    for part, folder in (("dev", "FSD50K.dev_audio"), ("eval", "FSD50K.eval_audio")):
        needs = ("fname", "labels", "split") if part == "dev" else ("fname", "labels")
        for record in _read_csv(truth / f"{part}.csv", needs):
            rows.append({"path": str(root / folder / f"{record['fname']}.wav"), "key": f"{part}_{record['fname']}",
                         "labels": record["labels"], "split": record.get("split") or part})
    return rows, classes


def kinetics(root: Path) -> tuple[list[dict], dict[str, int]]:
    annotations = sorted((root / "annotations").glob("*.csv"))
    if not annotations:
        raise RecipeError(f"{root / 'annotations'}: no annotation CSV (train.csv, val.csv, ...)")
    rows = []
    for table in annotations:
        split = table.stem
        found = _clips_by_name(root / split)
        for line_no, record in enumerate(_read_csv(table, ("label", "youtube_id", "time_start", "time_end")), 2):
            try:
                name = f"{record['youtube_id']}_{int(float(record['time_start'])):06d}_" \
                       f"{int(float(record['time_end'])):06d}"
            except ValueError:
                raise RecipeError(f"{table}:{line_no}: time_start/time_end are not numbers") from None
            path = found.get(name, root / split / f"{name}.mp4")  # a missing clip: `create` records it
            rows.append({"path": str(path), "key": name, "label": record["label"], "split": split})
    return rows, {name: index for index, name in enumerate(sorted({row["label"] for row in rows}))}


def _clips_by_name(folder: Path) -> dict[str, Path]:
    """The clips under a split folder, flat or in class folders, by file name without extension."""
    found = {}
    for dirpath, _, filenames in os.walk(folder):
        for filename in filenames:
            found.setdefault(os.path.splitext(filename)[0], Path(dirpath) / filename)
    return found


def _check_one_name_per_id(classes: dict[str, int], where: Path) -> None:
    names: dict[int, str] = {}
    for name, index in classes.items():
        if names.setdefault(index, name) != name:
            raise RecipeError(f"{where}: class id {index} names both {names[index]!r} and {name!r}")


RECIPES = {"esc50": esc50, "fsd50k": fsd50k, "kinetics": kinetics}


def write_manifest(dataset: str, root: str | os.PathLike, out_dir: str | os.PathLike) -> dict:
    """Write OUT_DIR/inputs.csv and OUT_DIR/classes.json for DATASET unpacked at ROOT. Returns
    counts: rows, classes, and rows whose file is not there."""
    if dataset not in RECIPES:
        raise RecipeError(f"{dataset}: choose one of {', '.join(RECIPES)}")
    root = Path(root).resolve()
    if not root.is_dir():
        raise RecipeError(f"{root}: no such folder")
    rows, classes = RECIPES[dataset](root)
    if not rows:
        raise RecipeError(f"{root}: the {dataset} metadata lists no clip")
    columns = ["path", "key"] + [column for column in ("label", "labels", "split", "fold") if column in rows[0]]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    os.makedirs(out_dir, exist_ok=True)
    atomic_write_json(Path(out_dir) / CLASSES_NAME, classes)
    atomic_write_text(Path(out_dir) / MANIFEST_NAME, text.getvalue())
    return {"rows": len(rows), "classes": len(classes),
            "missing": sum(not os.path.exists(row["path"]) for row in rows),
            "manifest": str(Path(out_dir) / MANIFEST_NAME)}
