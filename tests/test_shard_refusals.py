"""Shard sets that cannot be read as they are (a cut copy, an index left behind, the wrong kind of
shards, a miscounted manifest) are refused before any pipeline, naming the shard and the command
to run, or left out with `skip_bad`; `xkd shards index` rebuilds indexes byte for byte; two
writers on one shard folder are refused, and a killed writer's lock is taken over."""
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest

from dali_pipelines.shardset import PRETRAINING, ShardSet, ShardSetError
from shards.folder_lock import FolderBusy, FolderLock
from shards.synthetic import write_clip

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1"}


def make_videos(folder: Path, count: int, seconds: float = 1.2) -> Path:
    folder.mkdir(parents=True)
    for index in range(count):
        write_clip(folder / f"c{index:02d}.mp4", seconds=seconds, width=64, height=48, seed=index)
    return folder


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    return make_videos(tmp_path_factory.mktemp("refusals") / "videos", 6)


@pytest.fixture(scope="module")
def made(videos, tmp_path_factory) -> Path:
    """3 shards of 2 samples."""
    from xkd.commands import main

    out = tmp_path_factory.mktemp("refusals") / "shards"
    assert main(["shards", "create", str(videos), str(out), "--quiet", "--workers", "2",
                 "--samples-per-shard", "2"]) == 0
    return out


@pytest.fixture
def shards(made, tmp_path) -> Path:
    """A copy to damage."""
    copy = tmp_path / "shards"
    shutil.copytree(made, copy)
    return copy


def cut_in_half(tar: Path) -> None:
    data = tar.read_bytes()
    tar.write_bytes(data[:len(data) // 2])


def refusal(location, **kwargs) -> str:
    with pytest.raises(ShardSetError) as refused:
        ShardSet.from_path(str(location), needs=PRETRAINING, **kwargs)
    return str(refused.value)


def test_good_shards_pass_the_preflight(made):
    checked = ShardSet.from_path(str(made), needs=PRETRAINING)
    assert checked.samples == 6 and len(checked.tars) == 3 and checked.left_out == ()
    pattern = ShardSet.from_path(str(made / "*.tar"), needs=PRETRAINING)
    assert pattern.samples == 6 and pattern.has_video and pattern.video_extension == "mp4"


def test_a_missing_index_is_refused_with_the_command_that_rebuilds_it(shards):
    (shards / "shard-000001.idx").unlink()
    for location in (shards, shards / "*.tar"):
        message = refusal(location)
        assert f"{shards / 'shard-000001.tar'}: its index shard-000001.idx is missing" in message
        assert f"run `xkd shards index {shards}`" in message


def test_a_cut_tar_is_refused_with_the_command_that_finds_the_damage(shards):
    tar = shards / "shard-000002.tar"
    size = tar.stat().st_size
    cut_in_half(tar)
    message = refusal(shards)  # the manifest knows each tar's size
    assert f"shard-000002.tar: {size // 2} bytes, the manifest says {size}" in message
    assert f"`xkd shards verify {shards}`" in message
    message = refusal(shards / "*.tar")  # without a manifest: the index's last member is past the end
    assert f"shard-000002.tar: the tar ends at byte {size // 2} but its index has a member ending at" in message
    assert f"`xkd shards verify {shards}`" in message


def test_counts_that_disagree_with_the_manifest_are_refused(shards):
    manifest = json.loads((shards / "manifest.json").read_text())
    manifest["samples"] = 7
    (shards / "manifest.json").write_text(json.dumps(manifest))
    assert "lists shards of 6 samples in all but says 7" in refusal(shards)
    manifest["samples"], manifest["shards"][0]["samples"] = 7, 3
    (shards / "manifest.json").write_text(json.dumps(manifest))
    message = refusal(shards)
    assert "shard-000000.tar: its index lists 2 samples, the manifest says 3" in message
    assert "xkd shards index" in message


def test_with_skip_bad_a_broken_shard_is_left_out_with_a_warning(shards):
    cut_in_half(shards / "shard-000002.tar")
    (shards / "shard-000000.idx").unlink()
    with pytest.warns(UserWarning, match="shard left out") as caught:
        checked = ShardSet.from_path(str(shards), needs=PRETRAINING, skip_bad=True)
    assert len(caught) == 2 and checked.tars == (str(shards / "shard-000001.tar"),) and checked.samples == 2
    assert [p.split(":")[0] for p in checked.left_out] == [str(shards / "shard-000000.tar"),
                                                          str(shards / "shard-000002.tar")]
    assert "(and 1 more shard(s))" in refusal(shards)


@pytest.fixture(scope="module")
def audio_only(tmp_path_factory) -> Path:
    import soundfile

    from xkd.commands import main

    root = tmp_path_factory.mktemp("audio_only")
    (root / "sounds").mkdir()
    for index in range(2):
        tone = 0.3 * np.sin(2 * np.pi * (300 + 100 * index) * np.arange(16000 * 2) / 16000)
        soundfile.write(root / "sounds" / f"s{index}.wav", tone.astype(np.float32), 16000)
    assert main(["shards", "create", str(root / "sounds"), str(root / "shards"), "--audio-only", "--quiet",
                 "--workers", "1"]) == 0
    return root / "shards"


def test_audio_only_shards_are_refused_for_pretraining(audio_only, tmp_path):
    for location in (audio_only, audio_only / "*.tar"):
        message = refusal(location)
        assert "the shards hold no video (members: flac, json, lengths), but video and audio are needed" in message
        assert "--audio-only" in message
    assert ShardSet.from_path(str(audio_only), needs=("audio",)).samples == 2  # audio evaluation takes them
    done = subprocess.run([sys.executable, "-m", "xkd", "pretrain", "--config", "xkd_tiny", "--shards",
                           str(audio_only), "--out", str(tmp_path / "run")], env=ENV, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 2 and "the shards hold no video" in done.stderr
    assert "Traceback" not in done.stderr


# ------------------------------------------------------------------------------------------------
# xkd shards index
# ------------------------------------------------------------------------------------------------


def test_shards_index_rewrites_missing_and_wrong_indexes_as_create_wrote_them(made, shards, run_cli, capsys):
    (shards / "shard-000000.idx").unlink()
    (shards / "shard-000001.idx").write_text("v1.2 1\nmp4 0 1 x.mp4\n")
    assert run_cli("shards", "index", shards, "--quiet") == 0
    out = capsys.readouterr().out
    assert "wrote shard-000000.idx" in out and "wrote shard-000001.idx" in out and "1 already matched" in out
    for index in made.glob("*.idx"):
        assert (shards / index.name).read_bytes() == index.read_bytes()
    assert not list(shards.glob("*.tmp"))
    assert run_cli("shards", "index", shards, "--quiet") == 0
    assert "0 index(es) written, 3 already matched" in capsys.readouterr().out
    assert ShardSet.from_path(str(shards), needs=PRETRAINING).samples == 6


def test_shards_index_refuses_a_tar_that_is_not_one_of_ours(shards, run_cli, capsys):
    with tarfile.open(shards / "notes.tar", "w") as archive:
        archive.add(__file__, arcname="readme.txt")
    cut_in_half(shards / "shard-000002.tar")
    (shards / "shard-000002.idx").unlink()
    assert run_cli("shards", "index", shards, "--quiet") == 2
    err = capsys.readouterr().err
    assert "refused notes.tar: member readme.txt is not an xkd sample member" in err
    assert "refused shard-000002.tar: unreadable tar: unexpected end of data" in err and "copy it again" in err
    assert not (shards / "notes.idx").exists() and not (shards / "shard-000002.idx").exists()
    assert run_cli("shards", "index", shards / "nowhere") == 2


# ------------------------------------------------------------------------------------------------
# One writer per folder
# ------------------------------------------------------------------------------------------------


def start_create(source: Path, out: Path, *extra) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "xkd", "shards", "create", str(source), str(out), "--quiet",
                             "--workers", "1", "--samples-per-shard", "1", *extra],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_holder(lock: Path, process: subprocess.Popen) -> dict:
    deadline = time.monotonic() + 120
    while not (lock.is_file() and lock.read_text()):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.01)
    return json.loads(lock.read_text())


def test_a_second_create_on_the_same_folder_is_refused_at_once(tmp_path, run_cli, capsys):
    source = make_videos(tmp_path / "videos", 8)
    out = tmp_path / "out"
    first = start_create(source, out)
    holder = wait_for_holder(out / ".state" / "shard.lock", first)
    assert holder["pid"] == first.pid
    started = time.monotonic()
    assert run_cli("shards", "create", source, out, "--quiet", "--workers", "1", "--samples-per-shard", "1") == 2
    assert time.monotonic() - started < 5
    err = capsys.readouterr().err
    assert (f"xkd shards create: {out} is being written by another run (host {socket.gethostname()}, "
            f"pid {first.pid}, since") in err
    assert first.wait(timeout=300) == 0, first.stderr.read()
    assert ShardSet.from_path(str(out), needs=PRETRAINING).samples == 8  # the first run was not disturbed


def test_parts_lock_on_their_own(tmp_path, run_cli, capsys):
    source = make_videos(tmp_path / "videos", 2)
    out = tmp_path / "out"
    with FolderLock(str(out / ".state" / "shard-p000.lock"), "part 0"):
        assert run_cli("shards", "create", source, out, "--quiet", "--workers", "1", "--part", "1/2") == 0
        assert run_cli("shards", "create", source, out, "--quiet", "--workers", "1", "--part", "0/2") == 2
        assert f"{out} (--part 0/2) is being written by another run" in capsys.readouterr().err
    assert run_cli("shards", "create", source, out, "--quiet", "--workers", "1", "--part", "0/2") == 0


def test_the_lock_of_a_killed_writer_is_taken_over_with_a_warning(tmp_path):
    lock = tmp_path / "folder" / "writer.lock"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\n"
                               "from shards.folder_lock import FolderLock\n"
                               f"FolderLock({str(lock)!r}, 'folder').acquire()\n"
                               "print('held', flush=True)\ntime.sleep(600)"],
                              env=ENV, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "held\n"
    with pytest.raises(FolderBusy, match=f"pid {holder.pid}"):
        FolderLock(str(lock), "folder").acquire()
    holder.kill()  # SIGKILL: no chance to release
    holder.wait()
    with pytest.warns(UserWarning, match=f"taking over the lock left by a run that ended without releasing it "
                                         f"\\(host {socket.gethostname()}, pid {holder.pid}"):
        taken = FolderLock(str(lock), "folder").acquire()
    assert json.loads(lock.read_text())["pid"] == os.getpid()
    taken.release()
    assert lock.read_text() == ""  # a clean exit leaves no holder named
