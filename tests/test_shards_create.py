"""`xkd shards create/verify/stats` end to end: shards that the webdataset library and DALI read,
deterministic, capped, resumable after kill -9, splittable into parts, verified."""
import filecmp
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import av
import numpy as np
import pytest

from conftest import make_bad_inputs
from shards.format import load_manifest
from shards.synthetic import write_clip
from shards.verify import verify

ROOT = Path(__file__).resolve().parents[1]


def create(run_cli, source, out, *extra):
    assert run_cli("shards", "create", source, out, "--quiet", "--workers", "2", *extra) == 0
    return load_manifest(str(out))


def tar_members(out: Path) -> dict[str, list[str]]:
    members = {}
    for tar in sorted(out.glob("*.tar")):
        with tarfile.open(tar) as archive:
            members[tar.name] = archive.getnames()
    return members


def keys_of(out: Path) -> list[str]:
    return [name.split(".")[0] for names in tar_members(out).values() for name in names if name.endswith(".json")]


@pytest.fixture(scope="session")
def shard_dir(labelled_videos, tmp_path_factory):
    from xkd.commands import main

    out = tmp_path_factory.mktemp("shards")
    assert main(["shards", "create", str(labelled_videos), str(out), "--quiet", "--workers", "2",
                 "--samples-per-shard", "3"]) == 0
    return out


def test_manifest_counts_classes_and_hours(shard_dir):
    manifest = load_manifest(str(shard_dir))
    assert manifest["complete"] and manifest["samples"] == 8 and manifest["inputs"] == 8
    assert [s["samples"] for s in manifest["shards"]] == [3, 3, 2]
    assert [s["tar"] for s in manifest["shards"]] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    assert manifest["classes"] == {"ApplyLipstick": 0, "Archery": 1}
    assert manifest["samples_with_audio"] == 8 and manifest["rejected"] == []
    assert manifest["bytes"] == sum(os.path.getsize(shard_dir / s["tar"]) for s in manifest["shards"])
    expected_hours = (5.25 + sum(int((1.5 + 0.25 * i) * 8) / 8 for i in range(7))) / 3600
    assert manifest["hours"] == pytest.approx(expected_hours, abs=1e-5)
    assert not list(shard_dir.glob("*.tmp")) and not list((shard_dir / ".state").glob("*.tmp"))


def test_index_files_equal_dalis_wds2idx(shard_dir, tmp_path):
    tool = Path(sys.executable).parent / "wds2idx"
    for tar in sorted(shard_dir.glob("*.tar")):
        subprocess.run([str(tool), str(tar), str(tmp_path / "x.idx")], check=True, capture_output=True)
        assert (tmp_path / "x.idx").read_text() == tar.with_suffix(".idx").read_text()


def test_webdataset_library_reads_every_sample(shard_dir):
    import webdataset as wds

    urls = [str(p) for p in sorted(shard_dir.glob("*.tar"))]
    samples = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))
    assert len(samples) == 8
    for sample in samples:
        meta = json.loads(sample["json"])
        assert sample["__key__"] == meta["key"] and int(sample["cls"]) == meta["label_id"]
        with av.open(io.BytesIO(sample["mp4"])) as container:
            frames = [f for f in container.decode(video=0)]
        assert len(frames) == meta["frames"] and frames[0].height == 128
        import soundfile
        audio, rate = soundfile.read(io.BytesIO(sample["flac"]))
        assert rate == 16000 and len(audio) == meta["audio_samples"] == round(meta["frames"] / 8 * 16000)


def test_dali_reads_shards_with_the_index_and_decodes_on_cpu(shard_dir):
    from nvidia.dali import fn, pipeline_def, types

    manifest = load_manifest(str(shard_dir))
    paths = [str(shard_dir / s["tar"]) for s in manifest["shards"]]
    index_paths = [str(shard_dir / s["idx"]) for s in manifest["shards"]]

    @pipeline_def(batch_size=1, num_threads=1, device_id=None)
    def pipeline():
        video, audio, meta, lengths, label = fn.readers.webdataset(
            paths=paths, index_paths=index_paths, ext=["mp4", "flac", "json", "lengths", "cls"],
            missing_component_behavior="error", name="reader")
        frames = fn.decoders.video(video, device="cpu")
        waveform, rate = fn.decoders.audio(audio, dtype=types.FLOAT, downmix=True)
        return frames, waveform, rate, meta, label, fn.reinterpret(lengths, dtype=types.INT32)

    pipe = pipeline()
    pipe.build()
    assert pipe.epoch_size("reader") == 8
    seen = set()
    for _ in range(8):
        frames, waveform, rate, meta, label, lengths = (np.array(o[0]) for o in pipe.run())
        info = json.loads(meta.tobytes())
        assert lengths.tolist() == [info["frames"], info["audio_samples"]]
        seen.add(info["key"])
        assert frames.shape == (info["frames"], info["height"], info["width"], 3)
        assert waveform.shape == (info["audio_samples"],) and float(rate) == 16000
        assert int(label.tobytes()) == info["label_id"]
    assert len(seen) == 8


def test_verify_and_stats_pass_on_good_shards(shard_dir, run_cli, capsys):
    assert run_cli("shards", "verify", shard_dir) == 0
    assert "verified 3 shards, 8 samples: OK" in capsys.readouterr().out
    assert run_cli("shards", "stats", shard_dir) == 0
    out = capsys.readouterr().out
    assert "samples:  8 (8 with audio) of 8 inputs" in out and "classes:  2" in out


def test_same_input_and_options_give_byte_identical_shards(shard_dir, labelled_videos, run_cli, tmp_path):
    create(run_cli, labelled_videos, tmp_path / "again", "--samples-per-shard", "3")
    for tar in shard_dir.glob("*.tar"):
        assert filecmp.cmp(tar, tmp_path / "again" / tar.name, shallow=False)


def test_samples_are_shuffled_across_shards_by_seed(shard_dir, labelled_videos, run_cli, tmp_path):
    keys = keys_of(shard_dir)
    assert sorted(keys) == sorted(set(keys)) and keys != sorted(keys)
    create(run_cli, labelled_videos, tmp_path / "seed1", "--samples-per-shard", "3", "--seed", "1")
    other = keys_of(tmp_path / "seed1")
    assert sorted(other) == sorted(keys) and other != keys
    create(run_cli, labelled_videos, tmp_path / "sorted", "--samples-per-shard", "3", "--no-shuffle")
    assert keys_of(tmp_path / "sorted") == sorted(keys)


def test_shard_size_caps_every_tar(labelled_videos, run_cli, tmp_path):
    manifest = create(run_cli, labelled_videos, tmp_path / "capped", "--shard-size", "120KB")
    assert manifest["samples"] + manifest["rejected_counts"].get("too_large", 0) == 8
    assert manifest["rejected_counts"] == {"too_large": 1}  # the 720p clip alone is > 120 KB at 128 px
    assert len(manifest["shards"]) >= 3
    for shard in manifest["shards"]:
        assert os.path.getsize(tmp_path / "capped" / shard["tar"]) <= 120_000


def test_kill_9_then_rerun_gives_the_uninterrupted_shards(run_cli, tmp_path):
    source = tmp_path / "videos"
    source.mkdir()
    for index in range(10):
        write_clip(source / f"c{index}.mp4", seconds=1.5, width=320, height=240, seed=index)
    reference = create(run_cli, source, tmp_path / "reference", "--samples-per-shard", "2")

    out = tmp_path / "killed"
    command = [sys.executable, "-m", "xkd", "shards", "create", str(source), str(out), "--quiet",
               "--workers", "1", "--samples-per-shard", "2"]
    process = subprocess.Popen(command, cwd=ROOT, start_new_session=True,
                               env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.monotonic() + 120
    while not (out / ".state" / "shard-000001.json").exists():
        assert process.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (out / "manifest.json").exists()
    assert len(list(out.glob("*.tar"))) < len(reference["shards"])

    resumed = create(run_cli, source, out, "--samples-per-shard", "2")
    assert resumed["complete"] and resumed["samples"] == reference["samples"] == 10
    assert tar_members(out) == tar_members(tmp_path / "reference")
    for tar in out.glob("*.tar"):
        assert filecmp.cmp(tar, tmp_path / "reference" / tar.name, shallow=False)
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert verify(str(out))["problems"] == []


def test_parts_are_disjoint_and_together_complete(labelled_videos, run_cli, tmp_path, shard_dir):
    out = tmp_path / "parts"
    first = create(run_cli, labelled_videos, out, "--samples-per-shard", "3", "--part", "0/2")
    assert not first["complete"] and verify(str(out))["problems"]
    part0 = set(keys_of(out))
    second = create(run_cli, labelled_videos, out, "--samples-per-shard", "3", "--part", "1/2")
    assert second["complete"] and second["samples"] == 8
    names = [s["tar"] for s in second["shards"]]
    assert all(n.startswith(("shard-p000-", "shard-p001-")) for n in names)
    part1 = set(keys_of(out)) - part0
    assert part0 and part1 and not part0 & part1 and part0 | part1 == set(keys_of(shard_dir))
    assert verify(str(out))["problems"] == []


def test_other_options_in_the_same_folder_are_refused(shard_dir, labelled_videos, run_cli, capsys, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(shard_dir, copy)
    assert run_cli("shards", "create", labelled_videos, copy, "--quiet", "--fps", "4") == 2
    assert "other inputs or options" in capsys.readouterr().err
    # the same command again is a no-op that finds everything done
    before = {p: p.stat().st_mtime_ns for p in copy.glob("*.tar")}
    create(run_cli, labelled_videos, copy, "--samples-per-shard", "3")
    assert before == {p: p.stat().st_mtime_ns for p in copy.glob("*.tar")}


def test_bad_inputs_are_recorded_and_the_run_goes_on(run_cli, tmp_path, capsys):
    expected = make_bad_inputs(tmp_path / "bad")
    manifest = create(run_cli, tmp_path / "bad", tmp_path / "out")
    assert manifest["samples"] == 1 and manifest["complete"]
    rejected = {Path(r["path"]).name: r["category"] for r in manifest["rejected"]}
    assert rejected == expected
    assert all(r["reason"] for r in manifest["rejected"])
    assert sum(manifest["rejected_counts"].values()) == len(expected)
    out = capsys.readouterr().out
    assert "rejected: 8" in out and "truncated: 1" in out
    assert verify(str(tmp_path / "out"))["problems"] == []


def test_verify_finds_damage(shard_dir, run_cli, tmp_path, capsys):
    damaged = tmp_path / "damaged"
    shutil.copytree(shard_dir, damaged)
    tar = damaged / "shard-000000.tar"
    index = tar.with_suffix(".idx").read_text().splitlines()
    _, offset, size, _ = index[1].split()[:4]  # first sample's video
    data = bytearray(tar.read_bytes())
    start = int(offset) + int(size) // 2
    data[start:start + 2000] = bytes(2000)
    tar.write_bytes(bytes(data))
    (damaged / "shard-000001.idx").write_text("v1.2 1\nmp4 0 1 x.mp4\n")
    (damaged / "shard-000002.tar").unlink()
    shutil.copy(shard_dir / "shard-000000.tar", damaged / "stray-000000.tar")
    assert run_cli("shards", "verify", damaged) == 1
    report = capsys.readouterr().out
    damage = [line for line in report.splitlines() if line.startswith("PROBLEM shard-000000.tar:")]
    assert damage and all(("frames decoded" in line) or ("does not decode" in line) for line in damage)
    assert "shard-000001.idx" in report and "shard-000002.tar: missing" in report
    assert "stray-000000.tar: in the folder but not in the manifest" in report


def test_no_videos_and_bad_arguments_exit_2(run_cli, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert run_cli("shards", "create", tmp_path / "empty", tmp_path / "o") == 2
    assert "no video file found" in capsys.readouterr().err
    assert run_cli("shards", "create", tmp_path / "empty", tmp_path / "o", "--part", "3/2") == 2
    assert run_cli("shards", "create", tmp_path / "empty", tmp_path / "o", "--shard-size", "lots") == 2
    assert run_cli("shards", "stats", tmp_path / "nothing") == 2


def test_audio_only_shards_for_sound_datasets(run_cli, tmp_path):
    """ESC-50-like: WAV files in class folders (plus a video whose soundtrack is taken)."""
    import soundfile

    source = tmp_path / "esc"
    for label, freq in (("dog", 440), ("rain", 880)):
        (source / label).mkdir(parents=True)
        for index in range(2):
            tone = 0.3 * np.sin(2 * np.pi * freq * np.arange(44100 * 5) / 44100)
            soundfile.write(source / label / f"{label}{index}.wav", tone.astype(np.float32), 44100)
    write_clip(source / "dog" / "video.mp4", seconds=2.0)
    soundfile.write(source / "rain" / "quiet.wav", np.zeros(44100 * 2, np.float32), 44100)
    manifest = create(run_cli, source, tmp_path / "out", "--audio-only")
    assert manifest["samples"] == 5 and manifest["rejected_counts"] == {"silent_audio": 1}
    assert not manifest["has_video"] and manifest["members"] == ["flac", "json", "lengths", "cls"]
    assert verify(str(tmp_path / "out"))["problems"] == []
    import webdataset as wds
    for sample in wds.WebDataset([str(p) for p in sorted((tmp_path / "out").glob("*.tar"))], shardshuffle=False,
                                 empty_check=False):
        meta = json.loads(sample["json"])
        assert {k for k in sample if not k.startswith("__")} == {"flac", "json", "lengths", "cls"}
        assert np.frombuffer(sample["lengths"], "<i4").tolist() == [0, meta["audio_samples"]]
        if meta["key"] == "dog__video":  # AAC ends on a whole 1024-sample frame
            assert abs(meta["audio_samples"] - 32000) < 1024
        else:
            assert meta["audio_samples"] == 80000
