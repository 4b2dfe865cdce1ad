"""The built-in sample set of `xkd demo`: labelled synthetic clips in train and held-out splits (the
classes of `shards.synthetic.CLIP_CLASSES`, carried by both sound and picture), listed in a
manifest with a `split` column, plus inputs that `xkd shards create` must reject."""
from __future__ import annotations

import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

SPLITS = ("train", "test")
TEST_SEED_OFFSET = 1_000_000  # held-out clips draw other seeds, so none repeats a training clip


def make_sample_set(folder: str, train_per_class: int = 100, test_per_class: int = 50, workers: int = 1,
                    progress: bool = True) -> str:
    """Write the clips under FOLDER/videos/CLASS/ and FOLDER/videos/manifest.csv (path, label,
    split), in `workers` processes; returns the manifest's path. The broken inputs are listed in the
    train split, so sharding it shows every rejection. The manifest is written last: a folder
    without one is an unfinished set."""
    from tqdm import tqdm

    from shards.atomic import atomic_write_text
    from shards.synthetic import CLIP_CLASSES

    videos = os.path.join(folder, "videos")
    clips = []  # (name, label, split, seed)
    for label in CLIP_CLASSES:
        os.makedirs(os.path.join(videos, label), exist_ok=True)
        for split, count in zip(SPLITS, (train_per_class, test_per_class)):
            for index in range(count):
                # every fifth clip in Matroska: users bring more than one container
                name = f"{label}/{split}{index:04d}.{'mkv' if index % 5 == 4 else 'mp4'}"
                clips.append((name, label, split, index + (TEST_SEED_OFFSET if split == "test" else 0)))
    rows = [(name, label, split) for name, label, split, _ in clips] + _broken_rows(next(iter(CLIP_CLASSES)))
    manifest = os.path.join(videos, "manifest.csv")
    text = "".join(",".join(row) + "\n" for row in [("path", "label", "split"), *rows])
    if os.path.exists(manifest) and Path(manifest).read_text() == text:
        print(f"[demo] sample set {videos}: already complete")
        return manifest  # written last, so every clip it lists is there
    jobs = [(os.path.join(videos, name), label, seed) for name, label, _, seed in clips]
    context = multiprocessing.get_context("spawn")  # no fork of a process holding threads
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        done = pool.map(_write_clip, jobs, chunksize=8)
        for _ in tqdm(done, total=len(jobs), unit="clip", desc="sample set", disable=not progress,
                      file=sys.stderr, dynamic_ncols=True):
            pass
    _write_broken_inputs(videos)
    atomic_write_text(manifest, text)
    return manifest


def _write_clip(job: tuple[str, str, int]) -> None:
    from shards.atomic import atomic_write
    from shards.synthetic import write_class_clip

    path, label, seed = job
    container = "matroska" if path.endswith(".mkv") else "mp4"
    atomic_write(path, lambda tmp: write_class_clip(tmp, label, seed, container=container))


BROKEN_INPUTS = ("no_audio.avi", "short.mp4", "empty.mp4", "notes.mp4")


def _broken_rows(label: str) -> list[tuple[str, str, str]]:
    """The broken inputs as manifest rows of the train split."""
    return [(f"broken/{name}", label, "train") for name in BROKEN_INPUTS]


def _write_broken_inputs(videos: str) -> None:
    """Inputs the shard tool rejects, one per reason."""
    from shards.synthetic import write_clip

    folder = os.path.join(videos, "broken")
    os.makedirs(folder, exist_ok=True)
    write_clip(os.path.join(folder, "no_audio.avi"), codec="mjpeg", audio="none")
    write_clip(os.path.join(folder, "short.mp4"), seconds=0.6)  # shorter than --min-duration
    open(os.path.join(folder, "empty.mp4"), "wb").close()
    with open(os.path.join(folder, "notes.mp4"), "w") as handle:
        handle.write("not a video\n" * 50)
