"""`xkd pretrain` and `xkd export` on CPU (DS_ACCELERATOR=cpu, gloo): the deepspeed launcher with two
processes (ZeRO-2, ZeRO-3), resume after kill -9, SIGTERM, non-finite losses, refusals, export;
and one bf16 run on a GPU where there is one."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from shards.synthetic import write_clip

pytestmark = pytest.mark.slow  # training runs through the launchers: minutes

BIN = Path(sys.executable).parent
CONFIGS = Path(__file__).resolve().parents[1] / "xkd" / "deepspeed_configs"
TINY = ["--set", "data.batch_size=2", "--set", "data.num_threads=1", "--set", "train.base_lr=0.05"]
ENV = {**os.environ, "DS_ACCELERATOR": "cpu", "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def train_shards(tmp_path_factory) -> Path:
    """16 clips of 4.5 s at 8 fps (each a full 4 s XKD clip), 4 per shard."""
    from xkd.commands import main

    root = tmp_path_factory.mktemp("train")
    videos = root / "videos"
    videos.mkdir()
    for i in range(16):
        write_clip(videos / f"c{i:02d}.mp4", seconds=4.5, fps=8, width=128, height=96, seed=i,
                   flash_at=0.5 + (i % 4) * 0.5)
    assert main(["shards", "create", str(videos), str(root / "shards"), "--samples-per-shard", "4",
                 "--workers", "2"]) == 0
    return root / "shards"


def pretrain_args(shards, out, *sets, config="xkd_tiny", ds="zero0_fp32.json"):
    args = ["pretrain", "--config", config, "--shards", str(shards), "--out", str(out),
            "--deepspeed-config", str(CONFIGS / ds), *TINY]
    for s in sets:
        args += ["--set", s]
    return args


def run_plain(*args, check=True) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "xkd", *args], env=ENV, capture_output=True, text=True, timeout=600)
    if check:
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_launcher(*args) -> None:
    """`deepspeed --num_gpus 2 xkd ...`: two processes on this machine."""
    port = free_port()
    launcher = [str(BIN / "deepspeed"), "--num_gpus", "2", "--master_port", str(port)]
    done = subprocess.run([*launcher, str(BIN / "xkd"), *args], env=ENV, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    # DeepSpeed's CPU all-reduce segments (66 MB of RAM per rank) are not left behind in /dev/shm
    assert not list(Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_{port}_*"))


def run_two_nodes(hostfile: Path, *args) -> None:
    """`deepspeed --hostfile H --no_ssh --node_rank N ...` once per node, as on a cluster without
    passwordless ssh (SLURM): here both "nodes" are this machine, one process each."""
    hostfile.write_text("node0 slots=1\nnode1 slots=1\n")
    port = str(free_port())
    nodes = [subprocess.Popen([str(BIN / "deepspeed"), "--hostfile", str(hostfile), "--no_ssh", "--node_rank",
                               str(rank), "--master_addr", "127.0.0.1", "--master_port", port, str(BIN / "xkd"),
                               *args], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for rank in range(2)]
    outputs = [node.communicate(timeout=600)[0] for node in nodes]
    for node, output in zip(nodes, outputs):
        assert node.returncode == 0, output[-4000:]


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def losses(run: Path) -> dict[int, float]:
    """Loss per logged step; after a resume the later line of a step wins."""
    return {r["step"]: r["loss"] for r in records(run) if "loss" in r}


def complete(run: Path) -> list[str]:
    return sorted(p.parent.name for p in (run / "checkpoints").glob("step*/xkd_complete.json"))


# ------------------------------------------------------------------------------------------------
# Two processes through the deepspeed launcher
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def zero2_run(train_shards, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("zero2") / "run"
    run_two_nodes(run.parent / "hostfile", *pretrain_args(
        train_shards, run, "train.max_steps=24", "train.log_every_steps=4", "train.checkpoint_every_steps=10",
        "train.keep_checkpoints=2", ds="zero2_fp32.json"))
    return run


def test_zero2_on_two_nodes_from_a_hostfile_lowers_the_loss(zero2_run):
    started = next(r for r in records(zero2_run) if r.get("event") == "started")
    assert started["world_size"] == 2 and started["zero_stage"] == 2 and started["total_batch"] == 4
    values = [v for _, v in sorted(losses(zero2_run).items())]
    assert len(values) == 6 and all(v == v for v in values)
    assert values[-1] < 0.8 * values[0], values
    last = [r for r in records(zero2_run) if "loss" in r][-1]
    for key in ("loss_recon", "loss_kd", "loss_align", "lr", "ema_momentum", "teacher_temp_video",
                "clips_per_s", "data_wait_fraction", "rss_mib"):
        assert key in last
    # keep-last-2 of the checkpoints at steps 10, 20 and the final 24; each rank's state is kept
    assert complete(zero2_run) == ["step000000020", "step000000024"]
    assert sorted(p.name for p in (zero2_run / "checkpoints" / "step000000024").glob("rank*.pt")) == \
        ["rank00000.pt", "rank00001.pt"]
    assert any((zero2_run / "tensorboard").iterdir())


@pytest.mark.gpu
def test_bf16_zero2_on_a_gpu_lowers_the_loss_and_exports(train_shards, tmp_path):
    """One CUDA process (NCCL), bf16 ZeRO-2, the DALI loader decoding with NVDEC."""
    run = tmp_path / "run"
    gpu_env = {k: v for k, v in ENV.items() if k != "DS_ACCELERATOR"}
    done = subprocess.run([sys.executable, "-m", "xkd", *pretrain_args(
        train_shards, run, "train.max_steps=24", "train.log_every_steps=4", ds="zero2.json")],
        env=gpu_env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    started = next(r for r in records(run) if r.get("event") == "started")
    assert started["precision"] == "bf16" and started["zero_stage"] == 2
    values = [v for _, v in sorted(losses(run).items())]
    assert len(values) == 6 and values[-1] < 0.8 * values[0], values
    assert [r for r in records(run) if "loss" in r][-1]["gpu_peak_mib"] > 0
    exported = subprocess.run([sys.executable, "-m", "xkd", "export", str(run), str(tmp_path / "backbones")],
                              env=gpu_env, capture_output=True, text=True, timeout=600)
    assert exported.returncode == 0, exported.stderr[-3000:]


def test_mas_two_processes_lower_the_loss(train_shards, tmp_path):
    run = tmp_path / "run"
    run_launcher(*pretrain_args(train_shards, run, "train.max_steps=24", "train.log_every_steps=4",
                                config="xkd_mas_tiny", ds="zero2_fp32.json"))
    values = [v for _, v in sorted(losses(run).items())]
    assert len(values) == 6 and sum(values[-2:]) / 2 < 0.85 * values[0], values


def test_export_writes_four_backbones_that_load(zero2_run, tmp_path):
    from safetensors.torch import load_file

    from xkd.backbone_io import load_backbone
    from xkd.config import load_config
    from xkd.models import build_encoder
    from xkd.train.export import load_run_model

    out = tmp_path / "backbones"
    assert run_plain("export", zero2_run, out).returncode == 0
    cfg = load_config(zero2_run / "config.yaml")
    model, _, folder = load_run_model(zero2_run)
    assert folder.name == "step000000024"
    video = torch.randn(1, 3, 32, 112, 112)
    for modality in ("video", "audio"):
        (student, meta), (teacher, _) = (load_backbone(out / f"{modality}_{role}") for role in ("student", "teacher"))
        assert meta["source"]["checkpoint"] == "step000000024" and meta["source"]["network"] == f"{modality} student"
        expected = getattr(model.teachers, modality).state_dict()
        for key, value in teacher.state_dict().items():
            assert torch.equal(value, expected[key])
        assert any(not torch.equal(a, b) for a, b in zip(student.parameters(), teacher.parameters()))
        # plain state_dict loading, as timm-style code does it
        plain = build_encoder(modality, cfg.model)
        plain.load_state_dict(load_file(out / f"{modality}_student.safetensors"), strict=True)
    tokens = load_backbone(out / "video_teacher")[0](video)
    assert tokens.shape == (1, 1 + 8 * 7 * 7, cfg.model.encoder.embed_dim) and torch.isfinite(tokens).all()
    assert (out / "config.yaml").is_file()


def test_zero3_teachers_follow_the_students_mats(train_shards, tmp_path):
    from safetensors.torch import load_file

    from xkd.config import load_config
    from xkd.models import build_xkd

    run = tmp_path / "run"
    run_launcher(*pretrain_args(train_shards, run, "train.max_steps=8", "train.log_every_steps=4",
                                "train.ema_momentum=0.9", config="xkd_mats_tiny", ds="zero3_fp32.json"))
    assert next(r for r in records(run) if r.get("event") == "started")["zero_stage"] == 3
    out = tmp_path / "out"
    run_plain("export", run, out)
    cfg = load_config(run / "config.yaml")
    torch.manual_seed(cfg.train.seed)
    initial = build_xkd(cfg).students  # the run's initial weights: teachers start as copies of these

    def distance(a, b):
        return sum((a[k] - b[k]).pow(2).sum() for k in a).sqrt().item()

    exported = {}
    for modality in ("video", "audio"):
        start = getattr(initial, modality).state_dict()
        student = exported[modality, "student"] = load_file(out / f"{modality}_student.safetensors")
        teacher = exported[modality, "teacher"] = load_file(out / f"{modality}_teacher.safetensors")
        moved, gap = distance(teacher, start), distance(student, start)
        assert 0.05 * gap < moved  # the teacher left its start ...
        assert distance(teacher, student) < gap  # ... toward where the students went
    # MATS: one block stack for both students, one for both teachers
    for role in ("student", "teacher"):
        blocks = [k for k in exported["video", role] if k.startswith("blocks.")]
        assert blocks and all(torch.equal(exported["video", role][k], exported["audio", role][k]) for k in blocks)


ACCUMULATED = ["train.log_every_steps=1", "train.warmup_epochs=0", "train.grad_accumulation=2"]  # 2 steps/epoch


@pytest.fixture(scope="module")
def accumulated_zero2(train_shards, tmp_path_factory) -> Path:
    """Two processes, ZeRO-2, 2 micro-batches per step, 10 steps uninterrupted: the reference for the
    ZeRO-stage comparison and for the interrupted runs below."""
    run = tmp_path_factory.mktemp("accumulated") / "run"
    run_launcher(*pretrain_args(train_shards, run, "train.max_steps=10", *ACCUMULATED, ds="zero2_fp32.json"))
    return run


def test_zero_stages_compute_the_same_training(train_shards, accumulated_zero2, tmp_path):
    """Per-parameter clipping (full gradients at ZeRO-0, fragments summed over ranks at ZeRO-1/2,
    partitions at ZeRO-3), gradient accumulation and the EMA read through gathered ZeRO-3 parameters
    must not change the math: ZeRO-0 (under torchrun) and ZeRO-1, 2 and 3 (under the deepspeed
    launcher) give the same losses, step by step, with the learning rate and clipping active from the
    first step and 2 micro-batches per step, for 6 steps (later, the sharded sums' other rounding
    order grows past 1e-5). The clipped gradients themselves are compared in test_train_gradients.py:
    under AdamW a clipping error barely moves the loss."""
    runs = {stage: tmp_path / f"zero{stage}" for stage in (0, 1, 3)}
    runs[2] = accumulated_zero2
    sets = ["train.max_steps=6", *ACCUMULATED]
    torchrun = subprocess.run([str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(free_port()),
                               str(BIN / "xkd"), *pretrain_args(train_shards, runs[0], *sets, ds="zero0_fp32.json")],
                              env=ENV, capture_output=True, text=True, timeout=600)
    assert torchrun.returncode == 0, torchrun.stdout[-3000:] + torchrun.stderr[-3000:]
    for stage in (1, 3):
        run_launcher(*pretrain_args(train_shards, runs[stage], *sets, ds=f"zero{stage}_fp32.json"))
    layouts = {stage: next(r for r in records(run) if r.get("event") == "gradients")["layout"]
               for stage, run in runs.items()}
    assert layouts == {0: "full", 1: "fragments", 2: "fragments", 3: "zero3"}
    plain = losses(runs[0])
    assert sorted(plain) == list(range(1, 7)) and plain[6] != plain[1]
    for stage in (1, 2, 3):
        sharded = losses(runs[stage])
        assert set(plain) <= set(sharded)
        for step in plain:
            assert sharded[step] == pytest.approx(plain[step], rel=1e-5), (stage, step)


def start_launcher(*args) -> subprocess.Popen:
    """`deepspeed --num_gpus 2 xkd ...` in its own process group (os.killpg reaches every rank)."""
    launcher = [str(BIN / "deepspeed"), "--num_gpus", "2", "--master_port", str(free_port())]
    return subprocess.Popen([*launcher, str(BIN / "xkd"), *args], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def assert_same_losses_after(step: int, run: Path, reference: Path) -> None:
    expected, got = losses(reference), losses(run)
    assert sorted(got) == sorted(expected)
    for later in range(step + 1, max(expected) + 1):  # same data, masks, optimizer state, centres
        assert got[later] == pytest.approx(expected[later], rel=1e-6, abs=1e-7), later


def test_two_processes_resume_mid_epoch_under_accumulation_after_kill9(train_shards, accumulated_zero2, tmp_path):
    run = tmp_path / "run"
    sets = ["train.max_steps=10", *ACCUMULATED, "train.checkpoint_every_steps=3"]
    process = start_launcher(*pretrain_args(train_shards, run, *sets, ds="zero2_fp32.json"))
    wait_for(lambda: (run / "metrics.jsonl").is_file() and max(losses(run), default=0) >= 5, process)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert complete(run)[-1] == "step000000003"  # 6 micro-batches of 4 per epoch: epoch 1, batch 2
    run_launcher(*pretrain_args(train_shards, run, *sets, ds="zero2_fp32.json"), "--resume", "auto")
    resumed = next(r for r in records(run) if r.get("event") == "resumed")
    assert (resumed["step"], resumed["epoch"], resumed["batch"]) == (3, 1, 2)
    assert_same_losses_after(3, run, accumulated_zero2)


def test_sigterm_to_two_processes_stops_both_at_one_step(train_shards, accumulated_zero2, tmp_path):
    """As a cluster preempts a job: SIGTERM to every process (launcher and ranks) at once."""
    run = tmp_path / "run"
    process = start_launcher(*pretrain_args(train_shards, run, "train.max_steps=200", *ACCUMULATED,
                                            "train.checkpoint_every_steps=1000", ds="zero2_fp32.json"))
    wait_for(lambda: (run / "metrics.jsonl").is_file() and max(losses(run), default=0) >= 2, process)
    os.killpg(process.pid, signal.SIGTERM)
    process.communicate(timeout=300)
    stopped = next(r for r in records(run) if r.get("event") == "stopped")
    assert stopped["step"] < 10, "the run went past the reference before it stopped"
    tag = f"step{stopped['step']:09d}"
    assert complete(run) == [tag]  # one checkpoint, complete: both ranks saved at the same step
    assert sorted(p.name for p in (run / "checkpoints" / tag).rglob("*optim_states.pt")) == [
        f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt" for rank in (0, 1)]
    run_launcher(*pretrain_args(train_shards, run, "train.max_steps=10", *ACCUMULATED, ds="zero2_fp32.json"),
                 "--resume", "auto")
    assert_same_losses_after(stopped["step"], run, accumulated_zero2)


# ------------------------------------------------------------------------------------------------
# One process: resume, signals, variants, refusals
# ------------------------------------------------------------------------------------------------


def wait_for(predicate, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if process.poll() is not None:
            raise AssertionError(f"the run ended early: {process.stdout.read()[-3000:]}")
        if time.time() > deadline:
            process.kill()
            raise AssertionError("timed out")
        time.sleep(0.2)


def start(*args) -> subprocess.Popen:
    """A run in its own process group (os.killpg reaches it and its workers, not pytest)."""
    return subprocess.Popen([sys.executable, "-m", "xkd", *args], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


@pytest.mark.parametrize("config", ["xkd_tiny", "xkd_mats_tiny"])
def test_resume_after_kill9_reproduces_the_uninterrupted_losses(train_shards, tmp_path, config):
    sets = ["train.max_steps=14", "train.log_every_steps=1", "train.checkpoint_every_steps=5"]
    straight = tmp_path / "straight"
    run_plain(*pretrain_args(train_shards, straight, *sets, config=config))

    killed = tmp_path / "killed"
    process = start(*pretrain_args(train_shards, killed, *sets, config=config))
    wait_for(lambda: (killed / "metrics.jsonl").is_file() and max(losses(killed), default=0) >= 7, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert complete(killed)[-1] == "step000000005"
    resumed = run_plain(*pretrain_args(train_shards, killed, *sets, config=config), "--resume", "auto")
    assert "resumed from" in resumed.stdout and "step 5, epoch 0, batch 5" in resumed.stdout
    assert f"{killed}: taking over the lock left by a run that ended without releasing it" in resumed.stderr

    expected, got = losses(straight), losses(killed)
    assert sorted(got) == sorted(expected) == list(range(1, 15))
    for step in range(6, 15):  # the steps after the checkpoint: same data, masks, optimizer state
        assert got[step] == pytest.approx(expected[step], rel=1e-6, abs=1e-7), step


@pytest.mark.parametrize("loader", ["dali", "reference"])
def test_sigterm_saves_a_checkpoint_and_exits_cleanly(train_shards, tmp_path, loader):
    """As a cluster preempts: SIGTERM to the whole process group, DataLoader workers included."""
    run = tmp_path / "run"
    sets = ["train.max_steps=200", "train.log_every_steps=1", "train.checkpoint_every_steps=1000",
            f"train.loader={loader}", "train.reference_workers=2"]
    process = start(*pretrain_args(train_shards, run, *sets))
    wait_for(lambda: (run / "metrics.jsonl").is_file() and max(losses(run), default=0) >= 3, process)
    os.killpg(process.pid, signal.SIGTERM)
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output[-3000:]
    assert "stopped by SIGTERM" in output
    stopped = next(r for r in records(run) if r.get("event") == "stopped")
    assert complete(run) == [f"step{stopped['step']:09d}"] and stopped["step"] >= 3
    # and the run goes on from there
    again = run_plain(*pretrain_args(train_shards, run, "train.max_steps=8", "train.log_every_steps=1",
                                     f"train.loader={loader}", "train.reference_workers=2"), "--resume", "auto")
    assert f"step {stopped['step']}" in again.stdout.split("resumed from")[1]
    assert "train.max_steps: checkpoint 200, config 8" in again.stdout  # a changed config is said
    assert complete(run)[-1] == "step000000008"


def test_variants_mas_with_zero1_and_the_reference_loader(train_shards, tmp_path):
    run = tmp_path / "mas"
    run_plain(*pretrain_args(train_shards, run, "train.max_steps=3", "train.log_every_steps=1",
                             "train.loader=reference", "train.reference_workers=0",
                             config="xkd_mas_tiny", ds="zero1_fp32.json"))
    assert len(losses(run)) == 3 and complete(run) == ["step000000003"]
    out = tmp_path / "out"
    run_plain("export", run, out)
    from safetensors.torch import load_file

    video, audio = (load_file(out / f"{m}_student.safetensors") for m in ("video", "audio"))
    blocks = [k for k in video if k.startswith("blocks.")]
    assert all(torch.equal(video[k], audio[k]) for k in blocks)  # MAS: students share their blocks
    teachers = [load_file(out / f"{m}_teacher.safetensors") for m in ("video", "audio")]
    # MAS teachers are two networks, but both start as copies of the shared student stack and follow
    # it with the same momentum, so their blocks stay equal (as in the authors' code)
    assert all(torch.equal(teachers[0][k], teachers[1][k]) for k in blocks)
    assert not torch.equal(teachers[0]["patch_embed.proj.weight"].flatten()[:10], video["patch_embed.proj.weight"].flatten()[:10])

    # resuming this run under another variant is refused, naming both
    refused = run_plain(*pretrain_args(train_shards, run, config="xkd_tiny"), "--resume", "auto", check=False)
    assert refused.returncode == 2
    assert "variant 'xkd_mas'" in refused.stderr and "variant 'xkd'" in refused.stderr
    # and so is starting a new run over its checkpoints
    again = run_plain(*pretrain_args(train_shards, run, config="xkd_mas_tiny"), check=False)
    assert again.returncode == 2 and "--resume auto" in again.stderr


def test_compiled_blocks_train_as_the_eager_ones_do(train_shards, tmp_path):
    """train.compile: students' and teachers' blocks compiled (inductor on CPU), same losses step by
    step as the eager run, and the run's checkpoints export as any other's."""
    sets = ["train.max_steps=3", "train.log_every_steps=1", "train.base_lr=0.5"]
    eager, compiled = tmp_path / "eager", tmp_path / "compiled"
    run_plain(*pretrain_args(train_shards, eager, *sets))
    run_plain(*pretrain_args(train_shards, compiled, *sets, "train.compile=default"))
    started = next(r for r in records(compiled) if r.get("event") == "started")
    # both modalities: student encoder, teacher encoder, decoder (depths 2, 2, 1)
    assert started["compile"] == "default" and started["compiled_blocks"] == 2 * (2 + 2 + 1)
    expected, got = losses(eager), losses(compiled)
    assert sorted(got) == sorted(expected) == [1, 2, 3] and expected[3] != expected[1]
    for step in expected:
        assert got[step] == pytest.approx(expected[step], rel=1e-4), step
    run_plain("export", compiled, tmp_path / "out")
    assert len(list((tmp_path / "out").glob("*.safetensors"))) == 4


def test_bad_runs_are_refused_with_a_reason(train_shards, tmp_path):
    missing = run_plain(*pretrain_args(tmp_path / "nowhere", tmp_path / "a"), check=False)
    assert missing.returncode == 2 and "nowhere" in missing.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    nothing = run_plain(*pretrain_args(f"{empty}/*.tar", tmp_path / "b"), check=False)
    assert nothing.returncode == 2 and "no .tar file matches" in nothing.stderr
    unknown = run_plain(*pretrain_args(train_shards, tmp_path / "c", "train.learning_rate=1"), check=False)
    assert unknown.returncode == 2 and "train.learning_rate" in unknown.stderr
    conflicting = tmp_path / "ds.json"
    conflicting.write_text(json.dumps({"train_batch_size": 512, "zero_optimization": {"stage": 2}}))
    clash = run_plain("pretrain", "--config", "xkd_tiny", "--shards", str(train_shards), "--out",
                      str(tmp_path / "d"), "--deepspeed-config", str(conflicting), check=False)
    assert clash.returncode == 2 and "train_batch_size" in clash.stderr and "data.batch_size" in clash.stderr
    compiled_zero3 = run_plain(*pretrain_args(train_shards, tmp_path / "e", "train.compile=default",
                                              ds="zero3_fp32.json"), check=False)
    assert compiled_zero3.returncode == 2 and "train.compile=default with ZeRO-3" in compiled_zero3.stderr


def test_a_sample_that_does_not_decode_is_named_and_left_out(train_shards, tmp_path):
    broken = tmp_path / "shards"
    shutil.copytree(train_shards, broken)
    tar = broken / json.loads((broken / "manifest.json").read_text())["shards"][1]["tar"]
    fields = tar.with_suffix(".idx").read_text().splitlines()[1].split()
    offset, size, key = int(fields[1]), int(fields[2]), fields[3].split(".")[0]
    data = bytearray(tar.read_bytes())
    data[offset + 100:offset + size] = bytes(size - 100)  # the video member: all zeros after 100 bytes
    tar.write_bytes(bytes(data))
    run = tmp_path / "run"
    done = run_plain(*pretrain_args(broken, run, "train.max_steps=10", "train.log_every_steps=5"))
    assert f"samples left out: 1\n  {tar.name}: sample {key}" in done.stdout
    left_out = [r for r in records(run) if r.get("event") == "sample_left_out"]
    assert len(left_out) == 1 and key in left_out[0]["reason"]
    assert complete(run) == ["step000000010"] and records(run)[-2]["skipped_samples_total"] == 1


def test_broken_shards_are_refused_or_left_out_before_training(train_shards, tmp_path):
    broken = tmp_path / "shards"
    shutil.copytree(train_shards, broken)
    names = [s["tar"] for s in json.loads((broken / "manifest.json").read_text())["shards"]]
    cut = broken / names[1]
    cut.write_bytes(cut.read_bytes()[:cut.stat().st_size // 2])  # an interrupted copy
    (broken / names[2]).with_suffix(".idx").unlink()  # copied without its index
    strict = run_plain(*pretrain_args(broken, tmp_path / "strict", "train.skip_bad_samples=false"), check=False)
    assert strict.returncode == 2, strict.stderr[-3000:]
    assert strict.stderr.startswith(f"xkd pretrain: {cut}: ") and "(and 1 more shard(s))" in strict.stderr
    assert f"`xkd shards verify {broken}`" in strict.stderr and "Traceback" not in strict.stderr
    assert not (tmp_path / "strict" / "metrics.jsonl").exists()

    run = tmp_path / "run"
    done = run_plain(*pretrain_args(broken, run, "train.max_steps=2", "train.log_every_steps=1"))
    assert f"shard left out: {cut}:" in done.stderr
    assert (f"shards left out: 2\n  {cut}: " in done.stdout
            and f"{broken / names[2]}: its index {Path(names[2]).stem}.idx is missing; run `xkd shards index "
                f"{broken}`" in done.stdout)
    left_out = [r["reason"] for r in records(run) if r.get("event") == "shard_left_out"]
    assert len(left_out) == 2 and complete(run) == ["step000000002"]


def test_a_second_run_on_the_same_out_is_refused(train_shards, tmp_path):
    from shards.folder_lock import FolderLock

    run = tmp_path / "run"
    holder = f"{run} is being written by another run (host {socket.gethostname()}, pid {os.getpid()}, since"
    with FolderLock(str(run / "writer.lock"), str(run)):
        alone = run_plain(*pretrain_args(train_shards, run, "train.max_steps=1"), check=False)
        assert alone.returncode == 2 and f"xkd pretrain: {holder}" in alone.stderr
        # under a launcher rank 0 is refused and the other ranks stop with it instead of waiting
        launcher = [str(BIN / "deepspeed"), "--num_gpus", "2", "--master_port", str(free_port())]
        launched = subprocess.run([*launcher, str(BIN / "xkd"), *pretrain_args(train_shards, run, "train.max_steps=1")], env=ENV,
                                  capture_output=True, text=True, timeout=600)
    assert launched.returncode != 0 and (launched.stdout + launched.stderr).count(holder) == 1
    assert not (run / "metrics.jsonl").exists()


def test_nonfinite_losses_are_skipped_then_stop_the_run(train_shards, tmp_path):
    # an absurd LR sends the weights to inf after the first step: every later loss is non-finite
    run = tmp_path / "run"
    done = run_plain(*pretrain_args(train_shards, run, "train.base_lr=1e36", "train.warmup_epochs=0",
                                    "train.clip_grad=0", "train.max_nonfinite_in_a_row=3", "train.max_steps=20",
                                    "train.log_every_steps=1"), check=False)
    assert done.returncode == 3, done.stdout[-2000:] + done.stderr[-2000:]
    assert "3 batches in a row gave a non-finite loss" in done.stderr
    skipped = [r for r in records(run) if r.get("event") == "nonfinite_loss_skipped"]
    assert [r["in_a_row"] for r in skipped] == [1, 2, 3] and "loss" in skipped[0]["terms"]
