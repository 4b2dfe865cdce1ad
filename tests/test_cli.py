"""The `xkd` command: usage errors and warnings (the README's demo: tests/test_demo.py)."""
import subprocess
import sys
from pathlib import Path

import pytest

from shards.synthetic import write_clip

ROOT = Path(__file__).resolve().parents[1]


def test_version_and_help():
    result = subprocess.run([sys.executable, "-m", "xkd", "--version"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0 and result.stdout.startswith("xkd ")
    result = subprocess.run([sys.executable, "-m", "xkd", "shards", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0 and all(word in result.stdout for word in ("create", "verify", "stats"))


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


@pytest.fixture(scope="module")
def usage_files(tmp_path_factory) -> dict[str, Path]:
    """What the usage errors point at: a plain file, an empty folder, a folder with one video, bad YAML."""
    root = tmp_path_factory.mktemp("usage")
    (root / "file").write_text("not a folder\n")
    (root / "empty").mkdir()
    (root / "videos").mkdir()
    write_clip(root / "videos" / "clip.mp4", seconds=1.5)
    (root / "bad.yaml").write_text("model: [1, 2\n")
    return {"tmp": root, "bad_yaml": root / "bad.yaml",
            **{name: root / name for name in ("file", "empty", "videos")}}


# (argv with {placeholders} from usage_files, what the message on stderr must say)
USAGE_ERRORS = {
    "no command": ([], "the following arguments are required: COMMAND"),
    "unknown command": (["nosuch"], "invalid choice: 'nosuch'"),
    "shards without an action": (["shards"], "required: ACTION"),
    "create: missing input": (["shards", "create", "{tmp}/nothing", "{new}"], "no such folder or manifest"),
    "create: output is a file": (["shards", "create", "{videos}", "{file}"], "{file}: exists and is not a folder"),
    "create: output under a file": (["shards", "create", "{videos}", "{file}/out"], "{file} is not a folder"),
    "create: crf out of range": (["shards", "create", "{videos}", "{new}", "--crf", "99"],
                                 "--crf 99: vp9 takes 0 (best) to 63"),
    "create: no workers": (["shards", "create", "{videos}", "{new}", "--workers", "0"],
                           "--workers: 0: must be at least 1"),
    "create: fold without a fold column": (["shards", "create", "{videos}", "{new}", "--fold", "1", "--split", "test"],
                                           "--fold 1 needs a manifest with a 'fold' column"),
    "manifest: unknown dataset": (["shards", "manifest", "ucf", "{empty}", "{new}"], "invalid choice: 'ucf'"),
    "manifest: missing download": (["shards", "manifest", "esc50", "{tmp}/nothing", "{new}"], "no such folder"),
    "manifest: no metadata": (["shards", "manifest", "fsd50k", "{empty}", "{new}"], "vocabulary.csv: not found"),
    "manifest: output is a file": (["shards", "manifest", "esc50", "{empty}", "{file}"],
                                   "{file}: exists and is not a folder"),
    "verify: missing folder": (["shards", "verify", "{tmp}/nothing"], "no manifest"),
    "verify: not a shard folder": (["shards", "verify", "{empty}"], "no manifest"),
    "verify: no workers": (["shards", "verify", "{empty}", "--workers", "-1"], "--workers: -1: must be at least 1"),
    "stats: not a shard folder": (["shards", "stats", "{empty}"], "no manifest"),
    "index: no tar": (["shards", "index", "{empty}"], "no .tar file"),
    "pretrain: missing arguments": (["pretrain"], "required: --config, --shards, --out"),
    "pretrain: unknown preset": (["pretrain", "--config", "no_such_preset", "--shards", "{empty}", "--out", "{new}"],
                                 "no config file 'no_such_preset'; presets: "),
    "pretrain: missing config file": (["pretrain", "--config", "{tmp}/mine/xkd_tiny.yaml", "--shards", "{empty}",
                                       "--out", "{new}"], "xkd_tiny.yaml: no such config file"),
    "pretrain: config not YAML": (["pretrain", "--config", "{bad_yaml}", "--shards", "{empty}", "--out", "{new}"],
                                  "bad.yaml: not valid YAML at line 2"),
    "pretrain: unknown key": (["pretrain", "--config", "xkd_tiny", "--set", "train.epoch=3", "--shards", "{empty}",
                               "--out", "{new}"], "unknown config key(s): train.epoch"),
    "pretrain: override not YAML": (["pretrain", "--config", "xkd_tiny", "--set", "loss.mmd_gammas=[1", "--shards",
                                     "{empty}", "--out", "{new}"], "override 'loss.mmd_gammas=[1': not valid YAML"),
    "pretrain: override of a wrong type": (["pretrain", "--config", "xkd_tiny", "--set", "train.epochs=many",
                                            "--shards", "{empty}", "--out", "{new}"], "expected an integer"),
    "pretrain: missing DeepSpeed config": (["pretrain", "--config", "xkd_tiny", "--shards", "{empty}", "--out",
                                            "{new}", "--deepspeed-config", "zero9.json"],
                                           "zero9.json: no such DeepSpeed config file"),
    "pretrain: output is a file": (["pretrain", "--config", "xkd_tiny", "--shards", "{empty}", "--out", "{file}"],
                                   "--out {file}: exists and is not a folder"),
    "pretrain: not a shard folder": (["pretrain", "--config", "xkd_tiny", "--shards", "{empty}", "--out", "{new}"],
                                     "no manifest.json"),
    "export: not a run": (["export", "{empty}", "{new}"], "no complete checkpoint"),
    "export: output is a file": (["export", "{empty}", "{file}"], "{file}: exists and is not a folder"),
    "import-weights: missing file": (["import-weights", "{tmp}/nothing.pth.tar", "{new}"],
                                     "nothing.pth.tar: cannot be read as a PyTorch file"),
    "import-weights: unknown preset": (["import-weights", "{tmp}/nothing.pth.tar", "{new}", "--config", "no_such"],
                                       "xkd import-weights: no config file 'no_such'"),
    "import-weights: output under a file": (["import-weights", "{tmp}/nothing.pth.tar", "{file}/b"],
                                            "cannot write {file}/b: {file}: exists and is not a folder"),
    "import-weights: no heads": (["import-weights", "{tmp}/nothing.pth.tar", "{new}", "--num-heads", "0"],
                                 "--num-heads: 0: must be at least 1"),
    # each demo case has a second bad argument that stops today's code at once, not after a long run
    "demo: output is a file": (["demo", "--out", "{file}"], "--out {file}: exists and is not a folder"),
    "demo: no steps": (["demo", "--steps", "0", "--out", "{file}"], "--steps: 0: must be at least 1"),
    "demo: no workers": (["demo", "--workers", "0", "--out", "{file}"], "--workers: 0: must be at least 1"),
    "demo: no fine-tuning epochs": (["demo", "--finetune", "--finetune-epochs", "0", "--out", "{file}"],
                                    "--finetune-epochs: 0: must be at least 1"),
}


@pytest.mark.parametrize("case", USAGE_ERRORS)
def test_a_usage_error_is_one_message_on_stderr_and_exit_status_2(case, usage_files, tmp_path, run_cli, capsys):
    argv, message = USAGE_ERRORS[case]
    places = {"new": str(tmp_path / "new"), **{name: str(path) for name, path in usage_files.items()}}
    try:
        status = run_cli(*[arg.format(**places) for arg in argv])
    except SystemExit as exit_:  # argparse's own errors
        status = exit_.code
    out, err = capsys.readouterr()
    assert status == 2, (status, out, err)
    assert message.format(**places) in err and "Traceback" not in err, err
    assert out == ""
