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
