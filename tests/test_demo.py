"""`xkd demo`, shortened (a few clips per class, two pretraining steps): every stage of the main job
runs through the real commands, and the end shows the held-out accuracies of the pretrained and the
random-init backbones as a table and a figure."""
import json

import pytest

from xkd.eval.results import read_results

pytestmark = pytest.mark.slow  # the whole chain: sample set, shards, pretraining, export, features, SVMs


def test_a_short_demo_runs_every_stage_and_reports_both_baselines(run_cli, tmp_path, capsys):
    assert run_cli("demo", "--out", tmp_path, "--train-per-class", "4", "--test-per-class", "2", "--steps", "2",
                   "--workers", "1") == 0
    out = capsys.readouterr().out
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
    rejected = json.loads((tmp_path / "shards" / "train" / "manifest.json").read_text())["rejected"]
    assert len(rejected) >= 3  # the broken inputs the sample set carries are named, not fatal
