"""`xkd demo`, shortened (a few clips per class, two pretraining steps): every stage of the main job
runs through the real commands, and the end shows the held-out accuracies of the pretrained and the
random-init backbones as a table and a figure; with --finetune (one epoch) both video backbones are
fine-tuned too, and their held-out accuracies shown."""
import contextlib
import io
import json
import re

import pytest

from xkd.eval.results import read_results

pytestmark = pytest.mark.slow  # the whole chain: sample set, shards, pretraining, export, features, SVMs

SHORT = ["--train-per-class", "4", "--test-per-class", "2", "--steps", "2", "--workers", "1"]


@pytest.fixture(scope="module")
def short_demo(tmp_path_factory):
    """The folder of a shortened demo and what it printed (made once: the --finetune test continues it)."""
    from xkd.commands import main

    folder = tmp_path_factory.mktemp("demo")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["demo", "--out", str(folder), *SHORT]) == 0
    return folder, printed.getvalue()


def test_a_short_demo_runs_every_stage_and_reports_both_baselines(short_demo, run_cli, capsys):
    tmp_path, out = short_demo
    assert "held-out SVM top-1 (C by cross-validation on the train split; chance 25%)" in out
    table = out[out.index("modality   random init"):].splitlines()
    assert [line.split()[0] for line in table[1:3]] == ["video", "audio"]
    for name in ("pretrained", "random-init"):
        for modality in ("video", "audio"):
            results = read_results(tmp_path / "results" / f"{name}_{modality}.json")
            assert [r.protocol for r in results] == ["svm-cv", "svm-authors"]
            assert (results[0].n_train, results[0].n_test) == (16, 8)  # 4 classes x 4 train, x 2 held out
    meta = json.loads((tmp_path / "features" / "pretrained" / "test" / "features.json").read_text())
    assert meta["backbones"]["video"]["role"] == "teacher" and meta["backbones"]["video"]["kind"] == "file"
    assert (tmp_path / "demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "verified 1 shards, 16 samples: OK" in out and "verified 1 shards, 8 samples: OK" in out
    assert re.search(r"^\[demo\] pretraining: loss \d+\.\d+ at step \d+ -> \d+\.\d+ at step 2 \(recon", out, re.MULTILINE)
    assert sorted(p.name for p in (tmp_path / "backbones").glob("*.safetensors")) == [
        "audio_student.safetensors", "audio_teacher.safetensors", "video_student.safetensors", "video_teacher.safetensors"]
    classes = {"bounce": 0, "orbit": 1, "pulse": 2, "swing": 3}
    # run again into the same folder: every stage finds its work done (sample set, shards, checkpoint, features)
    assert run_cli("demo", "--out", tmp_path, *SHORT) == 0
    assert capsys.readouterr().out.count(": already complete") == 5
    # the broken inputs the sample set carries are named and left out, not fatal
    for split, rejected in (("train", {"corrupt": 1, "empty": 1, "no_audio": 1, "too_short": 1}), ("test", {})):
        manifest = json.loads((tmp_path / "shards" / split / "manifest.json").read_text())
        assert manifest["rejected_counts"] == rejected and manifest["classes"] == classes


def test_finetune_fine_tunes_both_video_backbones_and_reports_them(short_demo, run_cli, capsys):
    folder, _ = short_demo
    # into the short demo's folder: its stages are found done, then one epoch (one step of 16 clips) each
    assert run_cli("demo", "--out", folder, *SHORT, "--finetune", "--finetune-epochs", "1") == 0
    out = capsys.readouterr().out
    assert out.count(": already complete") == 5 and out.count("[demo] xkd finetune --config ft_demo") == 2
    for name, backbone in (("pretrained", "backbones teacher"), ("random-init", "random-init xkd_demo (seed 0)")):
        [result] = read_results(folder / "finetune" / name / "result.json")
        # the file records the fine-tuning command itself, not the demo's (or pytest's) command line
        command = json.loads((folder / "finetune" / name / "result.json").read_text())["command"]
        assert command.startswith("xkd finetune --config ft_demo ") and "--out" in command, command
        assert (result.protocol, result.modality, result.dataset, result.backbone) == \
            ("finetune", "video", "demo", backbone)
        assert (result.n_train, result.n_test, result.settings["epochs"], result.settings["steps"]) == (16, 8, 1, 1)
        assert result.settings["selected"].startswith("best validation top1 (") and \
            result.settings["selected"].endswith("at epoch 0, step 1")  # validated once, after the last step
    assert "[demo] held-out top-1 after fine-tuning (video; chance 25%)" in out
    table = out[out.index("after fine-tuning"):].splitlines()[1:3]
    assert table[0].split() == ["modality", "random", "init", "pretrained", "gain"] and table[1].split()[0] == "video"
    assert (folder / "demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # again: the fine-tuning runs are found done too, not tested again
    assert run_cli("demo", "--out", folder, *SHORT, "--finetune", "--finetune-epochs", "1") == 0
    out = capsys.readouterr().out
    assert out.count(": already complete") == 7 and "xkd finetune" not in out and "after fine-tuning" in out
