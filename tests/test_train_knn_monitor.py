"""The kNN monitor of `xkd pretrain`: kNN top-1 per modality at each epoch's end in metrics.jsonl,
the same training with and without it, and on two processes (each extracting its share) the same
score as `xkd eval features` + `xkd eval knn` on the exported teachers."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shards.synthetic import write_clip

pytestmark = pytest.mark.slow  # three short pretraining runs

BIN = Path(sys.executable).parent
ENV = {**os.environ, "DS_ACCELERATOR": "cpu", "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
MICRO = ["--config", "xkd_micro", "--deepspeed-config", "zero0_fp32", "--set", "data.batch_size=2",
         "--set", "data.num_threads=1", "--set", "train.log_every_steps=1", "--set", "train.base_lr=0.05",
         "--set", "data.eval_size=32"]


def labelled_shards(root: Path, clips: int, first_seed: int) -> Path:
    """Labelled clips of 2.5 s (the micro preset's 2 s clip fits), two classes, 32 px, 2 per shard."""
    from xkd.commands import main

    for index in range(clips):
        label = "up" if index % 2 else "down"
        (root / "videos" / label).mkdir(parents=True, exist_ok=True)
        write_clip(root / "videos" / label / f"c{index}.mp4", seconds=2.5, fps=8, width=64, height=48,
                   seed=first_seed + index)
    assert main(["shards", "create", str(root / "videos"), str(root / "shards"), "--samples-per-shard", "2",
                 "--short-side", "32", "--quiet", "--workers", "1"]) == 0
    return root / "shards"


@pytest.fixture(scope="module")
def micro_shards(tmp_path_factory) -> Path:
    return labelled_shards(tmp_path_factory.mktemp("knn-train"), 8, first_seed=0)


@pytest.fixture(scope="module")
def held_out_shards(tmp_path_factory) -> Path:
    return labelled_shards(tmp_path_factory.mktemp("knn-test"), 6, first_seed=50)


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def pretrain(shards: Path, out: Path, *sets: str, processes: int = 1) -> None:
    args = ["pretrain", *MICRO, "--shards", str(shards), "--out", str(out)]
    for item in sets:
        args += ["--set", item]
    command = [sys.executable, "-m", "xkd", *args] if processes == 1 else \
        [str(BIN / "torchrun"), "--standalone", f"--nproc_per_node={processes}", str(BIN / "xkd"), *args]
    done = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def monitor(shards: Path, test_shards: Path) -> list[str]:
    return ["train.knn_every_epochs=1", f"train.knn_train_shards={shards}", f"train.knn_test_shards={test_shards}",
            "train.knn_k=3"]


def test_the_monitor_scores_each_epoch_and_changes_no_step(micro_shards, held_out_shards, tmp_path):
    steps = ["train.max_steps=8"]  # 4 batches of 2 per epoch: two epochs
    pretrain(micro_shards, tmp_path / "plain", *steps)
    pretrain(micro_shards, tmp_path / "monitored", *steps, *monitor(micro_shards, held_out_shards))
    plain = {r["step"]: r["loss"] for r in records(tmp_path / "plain") if "loss" in r}
    monitored = records(tmp_path / "monitored")
    assert {r["step"]: r["loss"] for r in monitored if "loss" in r} == plain  # bit for bit
    scores = [r for r in monitored if "knn_top1_video" in r]
    assert [(r["step"], r["epoch"]) for r in scores] == [(4, 0), (8, 1)]
    assert all(0.0 <= r[f"knn_top1_{m}"] <= 100.0 for r in scores for m in ("video", "audio"))
    assert all((r["knn_videos_train"], r["knn_videos_test"]) == (8, 6) for r in scores)


def test_two_processes_score_what_the_exported_teachers_score(micro_shards, held_out_shards, tmp_path):
    from xkd.commands import main

    run = tmp_path / "run"
    pretrain(micro_shards, run, "train.max_steps=2", *monitor(micro_shards, held_out_shards), processes=2)  # 1 epoch
    logged = [r for r in records(run) if "knn_top1_video" in r][-1]
    assert (logged["knn_videos_train"], logged["knn_videos_test"]) == (8, 6)  # both ranks' shares gathered
    assert main(["export", str(run), str(tmp_path / "backbones")]) == 0
    for split, shards in (("train", micro_shards), ("test", held_out_shards)):
        assert main(["eval", "features", str(tmp_path / "backbones"), str(shards), str(tmp_path / split),
                     "--config", str(tmp_path / "backbones" / "config.yaml"), "--clips", "1", "--crops", "1"]) == 0
    for modality in ("video", "audio"):
        result = tmp_path / f"knn_{modality}.json"
        assert main(["eval", "knn", str(tmp_path / "train"), str(tmp_path / "test"), "--modality", modality,
                     "--k", "3", "--out", str(result)]) == 0
        offline = json.loads(result.read_text())
        offline = offline["results"][0]
        assert offline["top1"] == pytest.approx(logged[f"knn_top1_{modality}"], abs=1e-6), modality


@pytest.mark.parametrize("sets, message", [
    (["train.knn_every_epochs=1"], "train.knn_every_epochs=1 needs train.knn_train_shards and train.knn_test_shards"),
    (["train.knn_every_epochs=1", "train.knn_train_shards=/nowhere", "train.knn_test_shards=/nowhere"],
     "kNN monitor: "),
])
def test_a_monitor_without_its_shards_is_refused(micro_shards, tmp_path, sets, message):
    args = ["pretrain", *MICRO, "--shards", str(micro_shards), "--out", str(tmp_path / "run")]
    for item in sets:
        args += ["--set", item]
    done = subprocess.run([sys.executable, "-m", "xkd", *args], env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 2 and message in done.stderr, done.stderr[-2000:]
