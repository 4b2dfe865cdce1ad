"""`xkd demo`, shortened (a few clips per class, two pretraining steps): every stage of the main job
runs through the real commands, and the end shows the held-out accuracies of the pretrained and the
random-init backbones as a table and a figure."""
import json
import re

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
    assert "verified 1 shards, 16 samples: OK" in out and "verified 1 shards, 8 samples: OK" in out
    assert re.search(r"^\[demo\] pretraining: loss \d+\.\d+ at step \d+ -> \d+\.\d+ at step 2 \(recon", out, re.MULTILINE)
    assert sorted(p.name for p in (tmp_path / "backbones").glob("*.safetensors")) == [
        "audio_student.safetensors", "audio_teacher.safetensors", "video_student.safetensors", "video_teacher.safetensors"]
    classes = {"bounce": 0, "orbit": 1, "pulse": 2, "swing": 3}
    # run again into the same folder: every stage finds its work done (shards, checkpoint, features)
    assert run_cli("demo", "--out", tmp_path, "--train-per-class", "4", "--test-per-class", "2", "--steps", "2",
                   "--workers", "1") == 0
    assert capsys.readouterr().out.count(": already complete") == 4
    # the broken inputs the sample set carries are named and left out, not fatal
    for split, rejected in (("train", {"corrupt": 1, "empty": 1, "no_audio": 1, "too_short": 1}), ("test", {})):
        manifest = json.loads((tmp_path / "shards" / split / "manifest.json").read_text())
        assert manifest["rejected_counts"] == rejected and manifest["classes"] == classes
