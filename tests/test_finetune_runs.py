"""`xkd finetune` as a cluster runs it, in processes of its own on the CPU (DS_ACCELERATOR=cpu, gloo):
resumed after kill -9 and after SIGTERM it repeats the uninterrupted run's losses and validations
exactly; two processes at ZeRO-0 (torchrun), ZeRO-2 and ZeRO-3 (the deepspeed launcher) train alike,
step by step; and a bf16 ZeRO-2 run on a GPU where there is one."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import make_class_shards

pytestmark = pytest.mark.slow  # fine-tuning runs through the launchers

BIN = Path(sys.executable).parent
ENV = {**os.environ, "DS_ACCELERATOR": "cpu", "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
MICRO = ["--config", "ft_micro", "--random-init", "xkd_micro", "--set", "train.log_every_steps=1"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return make_class_shards(tmp_path_factory.mktemp("runs"), 4)  # 16 clips, 4 classes


def finetune_args(shards: Path, out: Path, *sets, ds: str = "zero0_fp32") -> list[str]:
    args = ["finetune", *MICRO, "--train", str(shards), "--val", str(shards), "--out", str(out), "--deepspeed-config", ds]
    for value in sets:
        args += ["--set", value]
    return args


def run_plain(*args, env=ENV) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "xkd", *args], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def start(*args) -> subprocess.Popen:
    """A run in its own process group (os.killpg reaches it and its threads' children, not pytest)."""
    return subprocess.Popen([sys.executable, "-m", "xkd", *args], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def losses(run: Path) -> dict[int, float]:
    """Loss per logged step; after a resume the later line of a step wins."""
    return {r["step"]: r["loss"] for r in records(run) if "loss" in r}


def validations(run: Path) -> dict[int, float]:
    return {r["epoch"]: r["val_top1"] for r in records(run) if "val_top1" in r}


def wait_for(predicate, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if process.poll() is not None:
            raise AssertionError(f"the run ended early: {process.stdout.read()[-3000:]}")
        if time.time() > deadline:
            process.kill()
            raise AssertionError("timed out")
        time.sleep(0.2)


RESUMABLE = ["train.epochs=5", "train.eval_every_epochs=2", "train.checkpoint_every_steps=5"]  # 4 steps an epoch


@pytest.fixture(scope="module")
def straight(shards, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("straight") / "run"
    run_plain(*finetune_args(shards, run, *RESUMABLE))
    return run


def assert_same_run_after(step: int, run: Path, reference: Path) -> None:
    expected, got = losses(reference), losses(run)
    assert sorted(got) == sorted(expected) == list(range(1, 21))
    for later in range(step + 1, 21):  # same data, augmentation draws, dropout, optimizer state
        assert got[later] == pytest.approx(expected[later], rel=1e-6, abs=1e-7), later
    assert validations(run) == validations(reference) and sorted(validations(run)) == [1, 3, 4]
    assert json.loads((run / "result.json").read_text())["results"][0]["top1"] == \
        json.loads((reference / "result.json").read_text())["results"][0]["top1"]


def test_resume_after_kill9_repeats_the_uninterrupted_run(shards, straight, tmp_path):
    killed = tmp_path / "killed"
    process = start(*finetune_args(shards, killed, *RESUMABLE))
    wait_for(lambda: (killed / "metrics.jsonl").is_file() and max(losses(killed), default=0) >= 7, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert sorted(p.parent.name for p in (killed / "checkpoints").glob("step*/xkd_complete.json"))[-1] == "step000000005"
    resumed = run_plain(*finetune_args(shards, killed, *RESUMABLE), "--resume", "auto")
    assert "step 5, epoch 1, batch 1" in resumed.stdout  # epoch 1 resumed after its first batch
    assert_same_run_after(5, killed, straight)


def test_sigterm_saves_a_checkpoint_exits_cleanly_and_resumes_exactly(shards, straight, tmp_path):
    """As a cluster preempts: SIGTERM to the whole process group."""
    run = tmp_path / "run"
    process = start(*finetune_args(shards, run, *RESUMABLE))
    wait_for(lambda: (run / "metrics.jsonl").is_file() and max(losses(run), default=0) >= 3, process)
    os.killpg(process.pid, signal.SIGTERM)
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0 and "stopped by SIGTERM" in output, output[-3000:]
    stopped = next(r for r in records(run) if r.get("event") == "stopped")
    assert not (run / "result.json").exists()  # a stopped run is not tested
    run_plain(*finetune_args(shards, run, *RESUMABLE), "--resume", "auto")
    assert_same_run_after(stopped["step"], run, straight)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


TWO = ["data.batch_size=2", "train.grad_accumulation=2", "train.epochs=3", "train.warmup_epochs=0",
       "train.eval_every_epochs=1"]  # per rank: 8 clips, 4 batches, 2 steps an epoch


def test_zero0_2_and_3_on_two_processes_train_alike(shards, tmp_path):
    """ZeRO-0 under torchrun, ZeRO-2 and ZeRO-3 under the deepspeed launcher: the same losses step by
    step with 2 micro-batches per step and the layer-wise LRs, the same validations, and the same
    best classifier (the full fp32 weights, however the stage partitioned them)."""
    runs = {stage: tmp_path / f"zero{stage}" for stage in (0, 2, 3)}
    torchrun = subprocess.run([str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(free_port()),
                               str(BIN / "xkd"), *finetune_args(shards, runs[0], *TWO, ds="zero0_fp32")],
                              env=ENV, capture_output=True, text=True, timeout=600)
    assert torchrun.returncode == 0, torchrun.stdout[-3000:] + torchrun.stderr[-3000:]
    for stage in (2, 3):
        launcher = subprocess.run([str(BIN / "deepspeed"), "--num_gpus", "2", "--master_port", str(free_port()),
                                   str(BIN / "xkd"), *finetune_args(shards, runs[stage], *TWO, ds=f"zero{stage}_fp32")],
                                  env=ENV, capture_output=True, text=True, timeout=600)
        assert launcher.returncode == 0, launcher.stdout[-3000:] + launcher.stderr[-3000:]
    started = {stage: next(r for r in records(run) if r.get("event") == "started") for stage, run in runs.items()}
    assert [(s["world_size"], s["zero_stage"], s["total_batch"]) for s in started.values()] == \
        [(2, 0, 8), (2, 2, 8), (2, 3, 8)]
    layouts = {stage: next(r for r in records(run) if r.get("event") == "gradients")["layout"]
               for stage, run in runs.items()}
    assert layouts == {0: "full", 2: "fragments", 3: "zero3"}
    plain = losses(runs[0])
    assert sorted(plain) == list(range(1, 7)) and plain[6] != plain[1]
    from safetensors.torch import load_file

    reference = load_file(runs[0] / "best" / "classifier.safetensors")
    for stage in (2, 3):
        sharded = losses(runs[stage])
        assert sorted(sharded) == sorted(plain)
        for step in plain:
            assert sharded[step] == pytest.approx(plain[step], rel=1e-5), (stage, step)
        assert validations(runs[stage]) == validations(runs[0]) and sorted(validations(runs[0])) == [0, 1, 2]
        kept = load_file(runs[stage] / "best" / "classifier.safetensors")
        assert kept.keys() == reference.keys() and all((kept[k] - reference[k]).abs().max() < 1e-4 for k in kept)


@pytest.mark.gpu
def test_bf16_zero2_on_a_gpu_learns_and_tests(shards, tmp_path):
    """One CUDA process (NCCL), bf16 ZeRO-2, the labelled pipeline decoding with NVDEC."""
    run = tmp_path / "run"
    gpu_env = {k: v for k, v in ENV.items() if k != "DS_ACCELERATOR"}
    run_plain(*finetune_args(shards, run, "train.epochs=10", "train.eval_every_epochs=5", "train.log_every_steps=8",
                             ds="zero2"), env=gpu_env)
    started = next(r for r in records(run) if r.get("event") == "started")
    assert started["precision"] == "bf16" and started["zero_stage"] == 2
    values = [v for _, v in sorted(losses(run).items())]
    assert len(values) == 5 and values[-1] < 0.9 * values[0], values
    result = json.loads((run / "result.json").read_text())["results"][0]
    assert result["settings"]["precision"] == "bf16" and result["top1"] > 50.0


def test_compiled_blocks_fine_tune_as_the_eager_ones_do(shards, tmp_path):
    """train.compile: the encoder's blocks compiled (inductor on CPU); with no random drop paths (the
    compiled kernels draw other random numbers) the losses and the validation match the eager run's."""
    sets = ["train.epochs=2", "train.drop_path=0.0"]
    eager, compiled = tmp_path / "eager", tmp_path / "compiled"
    run_plain(*finetune_args(shards, eager, *sets))
    run_plain(*finetune_args(shards, compiled, *sets, "train.compile=default"))
    started = next(r for r in records(compiled) if r.get("event") == "started")
    assert started["compile"] == "default" and started["compiled_blocks"] > 0
    expected, got = losses(eager), losses(compiled)
    assert sorted(got) == sorted(expected) == list(range(1, 9))
    for step in expected:
        assert got[step] == pytest.approx(expected[step], rel=1e-4), step
    assert validations(compiled) == pytest.approx(validations(eager))
