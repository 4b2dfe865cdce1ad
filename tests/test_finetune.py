"""`xkd finetune` in this process (a world of one, ZeRO-0 on the CPU) on tiny labelled shard sets of
four classes a small model can tell apart: video, audio (audio-only shards) and multi-label audio
each lower the loss and beat chance on the training set, the best validation classifier is kept and
the test is an `xkd eval` result that `xkd eval report` collates; inputs that do not fit are refused
with exit status 2 before any training."""
import json
import os
from pathlib import Path

import pytest
import torch

from conftest import make_class_shards, make_multi_label_shards
from xkd.backbone_io import save_backbone
from xkd.config import load_config
from xkd.models.encoders import build_encoder

FAST = ["--config", "ft_micro", "--deepspeed-config", "zero0_fp32", "--set", "train.eval_every_epochs=5",
        "--set", "train.log_every_steps=6"]


@pytest.fixture(autouse=True)
def own_environment():
    """A run started by hand sets RANK, WORLD_SIZE, MASTER_PORT ... for DeepSpeed: each test starts clean."""
    saved = dict(os.environ)
    os.environ["DS_ACCELERATOR"] = "cpu"
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="module")
def sets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("finetune")
    return {"video": make_class_shards(root, 3), "audio": make_class_shards(root, 3, audio_only=True),
            "multi_label": make_multi_label_shards(tmp_path_factory.mktemp("multi-label"), 3)}


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def finetune(run_cli, shards: Path, out: Path, *extra) -> int:
    return run_cli("finetune", "--train", shards, "--val", shards, "--out", out, *FAST, *extra)


@pytest.fixture(scope="module")
def video_run(sets, tmp_path_factory) -> Path:
    from xkd.commands import main

    os.environ["DS_ACCELERATOR"] = "cpu"
    out = tmp_path_factory.mktemp("video-run") / "run"
    saved = dict(os.environ)
    status = main([str(a) for a in ["finetune", "--train", sets["video"], "--val", sets["video"], "--out", out, *FAST,
                                    "--random-init", "xkd_micro"]])
    os.environ.clear()
    os.environ.update(saved)
    assert status == 0
    return out


def assert_learned(run: Path, metric: str, above: float) -> dict:
    losses = [r["loss"] for r in records(run) if "loss" in r]  # each the mean of 6 steps
    assert len(losses) == 5 and losses[-1] < 0.9 * losses[0], losses
    validations = [r for r in records(run) if any(k.startswith("val_") for k in r)]
    assert [r["epoch"] for r in validations] == [4, 9]
    result = json.loads((run / "result.json").read_text())["results"][0]
    assert result["protocol"] == "finetune" and result[metric] > above, result
    assert result["n_train"] == result["n_test"] == 12
    assert (run / "best" / "classifier.safetensors").is_file() and any((run / "tensorboard").iterdir())
    return result


def test_video_finetuning_lowers_the_loss_and_beats_chance_on_the_training_set(video_run, run_cli, tmp_path, capsys):
    from xkd.finetune.classifier import load_classifier

    result = assert_learned(video_run, "top1", above=50.0)  # chance: 25%
    assert result["modality"] == "video" and result["backbone"] == "random-init xkd_micro (seed 0)"
    assert result["settings"]["selection_on_test"] is True and result["settings"]["test_clips"] == 2
    best = max((r for r in records(video_run) if "val_top1" in r), key=lambda r: r["val_top1"])
    assert json.loads((video_run / "result.json").read_text())["results"][0]["settings"]["selected"].startswith(
        f"best validation top1 ({best['val_top1']:.2f}) at epoch {best['epoch']}")
    model, meta = load_classifier(video_run / "best" / "classifier")
    assert meta["classes"] == ["blue", "green", "red", "yellow"] and meta["input"]["image_size"] == 32
    assert model(torch.zeros(1, 3, 16, 32, 32)).shape == (1, 4)
    capsys.readouterr()
    assert run_cli("eval", "report", video_run / "result.json", "--out", tmp_path / "table.md") == 0
    assert "finetune (top-1)" in (tmp_path / "table.md").read_text()


def test_audio_finetuning_from_an_exported_backbone_learns(sets, run_cli, tmp_path):
    model = load_config("xkd_micro").model
    torch.manual_seed(5)
    save_backbone(tmp_path / "export" / "audio_teacher", build_encoder("audio", model), "audio", model)
    out = tmp_path / "run"
    assert finetune(run_cli, sets["audio"], out, "--backbone", tmp_path / "export", "--set", "modality=audio",
                    "--dataset", "esc50", "--fold", "1") == 0
    result = assert_learned(out, "top1", above=50.0)
    assert (result["dataset"], result["fold"], result["modality"]) == ("esc50", "1", "audio")
    assert result["backbone"] == "export teacher"


def test_multi_label_finetuning_reports_map(sets, run_cli, tmp_path):
    out = tmp_path / "run"
    assert finetune(run_cli, sets["multi_label"], out, "--random-init", "xkd_micro", "--set", "modality=audio") == 0
    result = assert_learned(out, "map", above=60.0)  # chance: about the share of positives, 25-50%
    assert result["top1"] is None and result["settings"]["scores"] == "mean logits per video"
    assert result["settings"]["map_classes"] == 6


@pytest.mark.parametrize("case", ["other_modality", "other_size", "label_count", "pretraining_checkpoint",
                                  "other_backbone_checkpoint", "no_backbone", "unlabelled"])
def test_refusals_name_the_problem_with_exit_2(case, sets, video_run, run_cli, tmp_path, capsys):
    micro, tiny = load_config("xkd_micro").model, load_config("xkd_tiny").model
    save_backbone(tmp_path / "audio", build_encoder("audio", micro), "audio", micro)
    save_backbone(tmp_path / "tiny", build_encoder("video", tiny), "video", tiny)
    out = tmp_path / "run"
    if case == "pretraining_checkpoint":  # an --out that holds an `xkd pretrain` run's checkpoint
        (out / "checkpoints" / "step000000005").mkdir(parents=True)
        (out / "checkpoints" / "step000000005" / "xkd_complete.json").write_text(json.dumps(
            {"step": 5, "variant": "xkd", "model": {}, "epoch": 0, "world_size": 1}))
    if case == "unlabelled":
        (tmp_path / "plain" / "videos").mkdir(parents=True)
        for clip in sets["video"].parent.glob("videos/*/*.mp4"):
            os.symlink(clip, tmp_path / "plain" / "videos" / clip.name)
        assert run_cli("shards", "create", tmp_path / "plain" / "videos", tmp_path / "plain" / "shards", "--short-side",
                       "32", "--quiet", "--workers", "1") == 0
    args = {
        "other_modality": ["--backbone", tmp_path / "audio.safetensors"],
        "other_size": ["--backbone", tmp_path / "tiny.safetensors"],
        "label_count": ["--random-init", "xkd_micro", "--set", "num_classes=10"],
        "pretraining_checkpoint": ["--random-init", "xkd_micro", "--resume", "auto"],
        "other_backbone_checkpoint": ["--random-init", "xkd_micro", "--seed", "1", "--resume", "auto"],
        "no_backbone": [],
        "unlabelled": ["--random-init", "xkd_micro"],
    }[case]
    expected = {
        "other_modality": "an audio backbone, but config ft_micro fine-tunes video",
        "other_size": "encoder embed_dim is 96 in the backbone but 64 in config ft_micro (backbone_preset xkd_micro)",
        "label_count": "num_classes=10 in config ft_micro, but",
        "pretraining_checkpoint": "is a checkpoint of an `xkd pretrain` run, not of an `xkd finetune` run",
        "other_backbone_checkpoint": "was fine-tuned from another backbone (checkpoint: video random-init xkd_micro "
                                     "(seed 0); this run: video random-init xkd_micro (seed 1))",
        "no_backbone": "give a backbone",
        "unlabelled": "the shards hold no labels",
    }[case]
    shards = tmp_path / "plain" / "shards" if case == "unlabelled" else sets["video"]
    destination = video_run if case == "other_backbone_checkpoint" else out
    before = (video_run / "metrics.jsonl").read_text()
    capsys.readouterr()
    assert run_cli("finetune", "--train", shards, "--val", shards, "--out", destination, *FAST, *args) == 2
    err = capsys.readouterr().err
    assert err.startswith("xkd finetune: ") and expected in err, err
    assert "Traceback" not in err and (video_run / "metrics.jsonl").read_text() == before


def test_the_library_function_fine_tunes_twice_in_one_process(sets, tmp_path):
    """What `xkd demo` calls: a pretrained backbone, then the random-init baseline, in one process."""
    from xkd.finetune import FinetuneRefused, finetune

    model = load_config("xkd_micro").model
    save_backbone(tmp_path / "video_teacher", build_encoder("video", model), "video", model)
    runs = [finetune(str(tmp_path / "video_teacher.safetensors"), str(sets["video"]), str(sets["video"]),
                     str(tmp_path / "pretrained"), "ft_micro", max_steps=3),
            finetune(None, str(sets["video"]), str(sets["video"]), str(tmp_path / "baseline"), "ft_micro",
                     random_init="xkd_micro", max_steps=3)]
    for summary, name in zip(runs, ("pretrained", "baseline")):
        assert summary["outcome"] == "finished" and summary["step"] == 3 and summary["best"]["step"] == 3
        assert summary["top1"] is not None and summary["result"] == str(tmp_path / name / "result.json")
        assert Path(summary["classifier"]).is_file()
    with pytest.raises(FinetuneRefused, match="holds 4 classes"):
        finetune(None, str(sets["video"]), str(sets["video"]), str(tmp_path / "c"), "ft_micro",
                 random_init="xkd_micro", overrides=["num_classes=3"])
