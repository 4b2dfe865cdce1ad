"""The project as a user installs it: `pip install .` (not editable) gives a working `xkd`, whose presets
and DeepSpeed configs come with the package, not from the source tree."""
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from shards.synthetic import write_clip
from xkd.config import ConfigError
from xkd.train.ds_config import CONFIG_DIR, resolve_config_path

ROOT = Path(__file__).resolve().parents[1]
# what is not the project's source: environments, build outputs, caches
NOT_SOURCE = (".git", ".venv", ".gpuenv", ".gpuwheels", "build", "dist", "*.egg-info", "__pycache__",
              ".pytest_cache", "demo_out")


def test_a_deepspeed_config_is_named_by_its_shipped_name_or_given_by_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_config_path("zero2.json") == resolve_config_path("zero2") == CONFIG_DIR / "zero2.json"
    own = tmp_path / "zero2.json"  # a file of that name where the command runs is the user's own
    own.write_text("{}")
    assert resolve_config_path("zero2.json") == Path("zero2.json")
    assert resolve_config_path(own) == own
    for missing in ("zero9.json", "configs/zero2.json", tmp_path / "nothing" / "zero2.json"):
        with pytest.raises(ConfigError, match="no such DeepSpeed config.*shipped: zero0.json"):
            resolve_config_path(missing)  # a path with a folder is never taken for a shipped name


def second_environment(root: Path) -> Path:
    """A virtual environment that sees this one's packages (torch, DALI, ...) but not this project:
    a `.pth` file points at a copy of this environment's site-packages made of links, without the
    project's own (editable) install, whose import hook would serve missing modules from the checkout.
    Returns its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    python = root / "bin" / "python"
    shared = root / "shared-packages"
    shared.mkdir()
    for folder in {Path(sysconfig.get_paths()[kind]) for kind in ("purelib", "platlib")}:
        for entry in folder.iterdir() if folder.is_dir() else ():
            if not (entry.name.startswith(("__editable__", "xkd-", "xkd.")) or (shared / entry.name).exists()):
                (shared / entry.name).symlink_to(entry)
    own = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         check=True, capture_output=True, text=True).stdout.strip()
    (Path(own) / "shared-packages.pth").write_text(f"{shared}\n")
    return python


@pytest.mark.slow
def test_a_non_editable_install_shards_pretrains_and_exports_outside_the_checkout(tmp_path):
    """`pip install --no-deps .` of a copy of the checkout into a second environment; its `xkd` then
    shards a few videos, pretrains 2 steps and exports, run from a folder outside the checkout."""
    source, work = tmp_path / "source", tmp_path / "work"
    python = second_environment(tmp_path / "env")
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*NOT_SOURCE))  # builds write into the tree
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--disable-pip-version-check", str(source)], check=True, capture_output=True,
                   text=True)
    shutil.rmtree(source)  # nothing may be read from the copy that was installed
    work.mkdir()
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["TQDM_DISABLE"] = "1"
    where = subprocess.run(
        [str(python), "-c", "import sysconfig, benchmarks.suite.run, dali_pipelines, shards, xkd.commands, xkd.config, "
         "xkd.train.ds_config as d; print(sysconfig.get_paths()['purelib'], dali_pipelines.__file__, "
         "shards.__file__, xkd.commands.__file__, xkd.config.CONFIG_DIR, d.CONFIG_DIR, benchmarks.suite.run.__file__)"],
        cwd=work, env=env, check=True, capture_output=True, text=True).stdout.split()
    installed, modules = Path(where[0]).resolve(), where[1:]
    assert installed.is_relative_to(tmp_path.resolve())
    assert all(Path(path).resolve().is_relative_to(installed) for path in modules), where

    for index in range(4):
        clip = work / "videos" / ("a" if index % 2 else "b") / f"clip{index}.mp4"
        clip.parent.mkdir(parents=True, exist_ok=True)
        write_clip(clip, seconds=1.5, seed=index)
    xkd = [str(python.parent / "xkd")]  # the console script pip wrote
    commands = [
        ["shards", "create", "videos", "shards", "--samples-per-shard", "2", "--workers", "1", "--quiet"],
        ["pretrain", "--config", "xkd_tiny", "--shards", "shards", "--out", "run", "--set", "data.batch_size=2",
         "--set", "data.num_threads=1", "--set", "train.max_steps=2", "--set", "train.log_every_steps=1"],
        ["export", "run", "backbones"],
        ["bench", "--device", "cpu", "--stages", "model", "--quick", "--repeats", "1", "--out", "bench"],
    ]
    for command in commands:
        done = subprocess.run(xkd + command, cwd=work, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, (command, done.stdout[-2000:], done.stderr[-3000:])
    assert json.loads((work / "run" / "deepspeed_config.json").read_text())["train_micro_batch_size_per_gpu"] == 2
    steps = [json.loads(line) for line in (work / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [record["step"] for record in steps if "loss" in record] == [1, 2]
    assert sorted(p.name for p in (work / "backbones").glob("*.safetensors")) == [
        "audio_student.safetensors", "audio_teacher.safetensors", "video_student.safetensors",
        "video_teacher.safetensors"]
    bench = json.loads((work / "bench" / "report.json").read_text())  # the bench, installed: no checkout, no history
    assert bench["stages"]["model"]["status"] == "ok" and bench["commit"]["sha"] is None
    refused = subprocess.run(xkd + ["bench", "--record", "--out", "bench2"], cwd=work, env=env, capture_output=True,
                             text=True, timeout=600)
    assert refused.returncode == 2 and "--history FILE" in refused.stderr, refused.stderr
