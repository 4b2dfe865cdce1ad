"""The `xkd` command and the README's demo."""
import json
import re
import subprocess
import sys
from pathlib import Path

from shards.verify import verify

ROOT = Path(__file__).resolve().parents[1]


def test_version_and_help():
    result = subprocess.run([sys.executable, "-m", "xkd", "--version"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0 and result.stdout.startswith("xkd ")
    result = subprocess.run([sys.executable, "-m", "xkd", "shards", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0 and all(word in result.stdout for word in ("create", "verify", "stats"))


def test_demo_shards_and_verifies_the_built_in_set(run_cli, tmp_path, capsys):
    assert run_cli("demo", "--out", tmp_path) == 0
    out = capsys.readouterr().out
    assert "verified 2 shards, 4 samples: OK" in out
    assert re.search(r"^\[demo\] step 4: loss \d+\.\d+ \(recon", out, re.MULTILINE)
    assert sorted(p.name for p in (tmp_path / "backbones").glob("*.safetensors")) == [
        "audio_student.safetensors", "audio_teacher.safetensors", "video_student.safetensors", "video_teacher.safetensors"]
    manifest = json.loads((tmp_path / "shards" / "manifest.json").read_text())
    assert manifest["rejected_counts"] == {"corrupt": 1, "empty": 1, "no_audio": 1, "too_short": 1}
    assert manifest["classes"] == {"ripples": 0, "waves": 1}
    assert verify(str(tmp_path / "shards"))["problems"] == []


def test_create_warns_when_the_gpu_decoder_cannot_take_the_frame_size(run_cli, tmp_path, capsys):
    """NVDEC decodes VP9 from 128 px and HEVC from 144 px a side: the tool says so before working."""
    empty = tmp_path / "videos"
    empty.mkdir()
    for extra, expected in (([], None), (["--short-side", "112"], "on the CPU only"),
                            (["--codec", "hevc"], "neither on the GPU nor on DALI's CPU decoder"),
                            (["--codec", "hevc", "--short-side", "144"], None)):
        assert run_cli("shards", "create", empty, tmp_path / "out", *extra) == 2  # no video in the folder
        err = capsys.readouterr().err
        assert ("warning" in err) == (expected is not None), (extra, err)
        if expected:
            assert expected in err and "--short-side" in err
