"""Speed of the whole pretraining loop: `xkd.train.loop.Trainer` in this process (a world of one),
run twice on the same config and DeepSpeed JSON.

  e2e:        the real loop: DALI pipeline -> model -> DeepSpeed step -> EMA teachers;
  model-only: the same Trainer fed one pipeline batch over and over (no data loading).

Each run trains `--warmup` untimed then `--steps` timed optimiser steps, logging every step; the
figures come from the Trainer's own metrics.jsonl records (per step: clips/s and the share of the
step spent waiting for the next batch). The run folder is temporary, so the checkpoint the Trainer
writes at its last step falls outside the timed steps. Without `--shards`, a few clips are sharded
as by bench_pipeline.py and the shards repeated (symbolic links) so that the timed steps stay in
one epoch (every epoch builds a new DALI pipeline).

    python benchmarks/bench_train.py                  # tiny preset, CPU: batch 4, 5 + 30 steps
    python benchmarks/bench_train.py --config xkd_base --batch-size 32 \\
        --deepspeed-config zero2.json --out benchmarks/results/train_h100.json
    python benchmarks/bench_train.py --config xkd_base --deepspeed-config zero2.json \\
        --set train.compile=default   # the transformer blocks compiled (results: train_*_compiled_default_*)

Goal: end to end >= 90% of model-only on an H100 with ViT-B (xkd_base). The last line printed is
one JSON object; `--out` (default on CUDA: benchmarks/results/) also writes it to a file.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import shlex
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import torch

if __name__ == "__main__":  # run as a script from a checkout: its packages (benchmarks/ too) without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_pipeline import make_shards, repeat_shards  # noqa: E402
from benchmarks.report import report  # noqa: E402
from dali_pipelines.batch import TrainingBatch  # noqa: E402
from dali_pipelines.shardset import ShardSet  # noqa: E402
from xkd.config import load_config  # noqa: E402

GOAL = "end to end >= 90% of model-only on an H100 with ViT-B (xkd_base)"


class RepeatedBatch:
    """The training-batch interface (see xkd/train/data.py) over one batch, yielded again and again."""

    def __init__(self, batch: TrainingBatch, batches_per_epoch: int):
        self.batch = replace(batch, video=[t.clone() for t in batch.video], audio=[t.clone() for t in batch.audio],
                             skipped=[])
        self.batches_per_epoch, self.epoch = batches_per_epoch, 0

    def __len__(self) -> int:
        return self.batches_per_epoch

    def __iter__(self):
        for _ in range(self.batches_per_epoch):
            yield self.batch
        self.epoch += 1

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batch": 0}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = int(state["epoch"])


def bench_config(config: str, batch_size: int, warmup: int, steps: int, loader: str = "dali",
                 overrides: list[str] = ()):
    """The experiment config of a timed run: `warmup + steps` optimiser steps, each one logged, no
    checkpoint before the last step."""
    return load_config(config, [*overrides, f"data.batch_size={batch_size}", f"train.loader={loader}",
                                f"train.max_steps={warmup + steps}", "train.log_every_steps=1",
                                f"train.checkpoint_every_steps={10**9}"])


def samples_needed(cfg, warmup: int, steps: int, process) -> int:
    """Samples an epoch must hold for the warm-up and timed steps to fall in one epoch (every epoch
    builds a new DALI pipeline)."""
    return (warmup + steps + 1) * cfg.data.batch_size * cfg.train.grad_accumulation * process.world_size


def long_enough(made: ShardSet, folder: Path, samples: int) -> str:
    """`made` listed as often as it takes to hold `samples` samples (links under `folder`)."""
    return repeat_shards(made, folder, -(-samples // made.samples))


def measure(cfg, shards: str, process, ds_path: str, warmup: int, one_batch: bool) -> dict:
    """Train warmup + timed steps; per-process clips/s and data-wait share over the timed steps."""
    from xkd.train.ds_config import zero_stage
    from xkd.train.loop import Trainer

    with tempfile.TemporaryDirectory(prefix="bench-train-run-") as run_dir:
        trainer = Trainer(cfg, shards, run_dir, process, ds_path, quiet=True)
        if one_batch:
            trainer.data = RepeatedBatch(next(iter(trainer.data)), len(trainer.data))
        summary = trainer.run()
        lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    records = [r for r in map(json.loads, lines) if "event" not in r and r["step"] > warmup]
    if summary["nonfinite_total"] or len(records) != cfg.train.max_steps - warmup:
        raise SystemExit(f"expected {cfg.train.max_steps - warmup} timed steps, got {len(records)} "
                         f"({summary['nonfinite_total']} non-finite steps skipped)")
    clips = trainer.total_batch / process.world_size  # per process and optimiser step; one step per record
    seconds = [clips / r["clips_per_s_per_process"] for r in records]
    result = {"clips_per_s": len(seconds) * clips / sum(seconds),
              "step_ms": 1e3 * sum(seconds) / len(seconds),
              "data_wait_fraction": sum(r["data_wait_fraction"] * s for r, s in zip(records, seconds)) / sum(seconds),
              "epochs_in_timed_steps": len({r["epoch"] for r in records}),
              "zero_stage": zero_stage(trainer.ds_config), "precision": trainer.precision,
              "gpu_peak_mib": max((r.get("gpu_peak_mib", 0.0) for r in records), default=0.0),
              "rss_mib": max(r["rss_mib"] for r in records)}
    del trainer
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return result


def profile_phases(cfg, shards: str, process, ds_path: str, warmup: int, steps: int) -> dict:
    """Where the loop's model-only step goes: a third model-only run under torch.profiler, `steps`
    steps after `warmup`, read by the loop's named phases (`xkd.forward`, `xkd.backward`, ...;
    xkd/train/run_loop.py `phase`). Per phase and step: host_ms, the CPU time inside the phase (on a
    GPU: launching kernels, and waiting wherever the phase syncs), and on a GPU device_ms, the GPU
    time of the kernels it launched; with step_ms, the wall time of a whole step."""
    from torch.profiler import ProfilerActivity, profile, schedule

    from xkd.train.loop import Trainer

    class ProfiledTrainer(Trainer):
        def _step(self, batch, epoch: int):
            profiler.step()  # a profiler step is one loop step, bookkeeping and the next batch included
            return super()._step(batch, epoch)

    on_gpu = process.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
    cfg = replace(cfg, train=replace(cfg.train, max_steps=warmup + steps + 1))  # + the profiler's warm-up step
    window = schedule(wait=warmup, warmup=1, active=steps, repeat=1)
    with tempfile.TemporaryDirectory(prefix="bench-train-profile-") as run_dir, \
            profile(activities=activities, schedule=window, acc_events=True) as profiler:
        trainer = ProfiledTrainer(cfg, shards, run_dir, process, ds_path, quiet=True)
        trainer.data = RepeatedBatch(next(iter(trainer.data)), len(trainer.data))
        trainer.run()
    # the host-side ranges (on a GPU the profiler also lists each range's span on the device timeline)
    averages = {e.key: e for e in profiler.key_averages() if e.device_type == torch.autograd.DeviceType.CPU}
    step_ms = sum(e.cpu_time_total for key, e in averages.items() if key.startswith("ProfilerStep")) / 1e3 / steps
    phases = {}
    for key, e in sorted(averages.items(), key=lambda item: -item[1].cpu_time_total):
        if key.startswith("xkd."):
            phases[key[4:]] = {"host_ms": round(e.cpu_time_total / 1e3 / steps, 3),
                               **({"device_ms": round(e.device_time_total / 1e3 / steps, 3)} if on_gpu else {})}
    print(f"profile of {steps} model-only steps: {step_ms:.1f} ms/step; per phase (host ms"
          f"{', device ms' if on_gpu else ''}): "
          + ", ".join(f"{name} {v['host_ms']:.1f}" + (f"/{v['device_ms']:.1f}" if on_gpu else "")
                      for name, v in phases.items()), flush=True)
    out = {"steps": steps, "step_ms": round(step_ms, 3), "phases": phases}
    if on_gpu:
        from benchmarks.bench_model import kernel_summary

        out["top_kernels"] = kernel_summary(profiler, steps)
    del trainer
    gc.collect()
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="xkd_tiny", help="preset name or YAML file (default: xkd_tiny)")
    parser.add_argument("--shards", default=None, help="a shard folder or '*.tar' pattern (default: make some)")
    parser.add_argument("--clips", type=int, default=16, help="clips of 6 s to shard when --shards is not given")
    parser.add_argument("--batch-size", type=int, default=None, help="clips per process (default: 4 CPU, 32 CUDA)")
    parser.add_argument("--steps", type=int, default=None, help="timed optimiser steps (default: 30 CPU, 100 CUDA)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: 5 CPU, 20 CUDA)")
    parser.add_argument("--deepspeed-config", default=None,
                        help="DeepSpeed JSON (default: zero2.json on GPUs, zero0_fp32.json on CPU)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, e.g. --set data.num_threads=8 (repeatable)")
    parser.add_argument("--loader", default="dali", choices=["dali", "reference"])
    parser.add_argument("--profile", type=int, default=0, metavar="STEPS",
                        help="then profile this many model-only steps: time per phase of the step, and on a "
                             "GPU the largest kernels (default: 0, no profile)")
    parser.add_argument("--out", default=None, help="also write the JSON here (default on CUDA: benchmarks/results/)")
    args = parser.parse_args(argv)

    from xkd.train.distributed import start_process  # before DeepSpeed is imported (DS_ACCELERATOR on CPU)
    from xkd.train.ds_config import default_config_path

    process = start_process()
    on_gpu = process.device.type == "cuda"
    batch_size = args.batch_size or (32 if on_gpu else 4)
    steps = args.steps or (100 if on_gpu else 30)
    warmup = args.warmup or (20 if on_gpu else 5)
    ds_path = args.deepspeed_config or str(default_config_path(on_gpu))
    cfg = bench_config(args.config, batch_size, warmup, steps, args.loader, args.set)
    scratch = tempfile.TemporaryDirectory(prefix="bench-train-")
    if args.shards:
        shards = args.shards
    else:
        made = ShardSet.from_path(str(make_shards(Path(scratch.name), args.clips)))
        shards = long_enough(made, Path(scratch.name) / "repeated", samples_needed(cfg, warmup, steps, process))

    runs = {}
    for name, one_batch in (("e2e", False), ("model_only", True)):
        runs[name] = measure(cfg, shards, process, ds_path, warmup, one_batch)
        print(f"{name:10s} {runs[name]['clips_per_s']:8.2f} clips/s per process  {runs[name]['step_ms']:8.1f} ms/step"
              f"  data wait {runs[name]['data_wait_fraction']:.1%}", flush=True)
    profiled = profile_phases(cfg, shards, process, ds_path, warmup, args.profile) if args.profile else None
    scratch.cleanup()
    e2e, model_only = runs["e2e"], runs["model_only"]
    if e2e["epochs_in_timed_steps"] > 1:
        print(f"note: the timed steps cross {e2e['epochs_in_timed_steps'] - 1} epoch end(s) "
              "(a new DALI pipeline each): use more --shards samples", flush=True)
    ratio = e2e["clips_per_s"] / model_only["clips_per_s"]
    print(f"goal: {GOAL}; here {ratio:.1%}", flush=True)

    import deepspeed
    import nvidia.dali

    device = torch.cuda.get_device_name(process.device) if on_gpu else f"cpu ({os.cpu_count()} cores)"
    result = {
        "e2e_clips_per_s": round(e2e["clips_per_s"], 3),
        "model_only_clips_per_s": round(model_only["clips_per_s"], 3),
        "ratio_e2e_model_only": round(ratio, 3),
        "data_wait_fraction": float(f"{e2e['data_wait_fraction']:.4g}"),  # 4 digits: ~1e-6 when well fed, not 0
        "model_only_data_wait_fraction": float(f"{model_only['data_wait_fraction']:.4g}"),
        "e2e_step_ms": round(e2e["step_ms"], 2), "model_only_step_ms": round(model_only["step_ms"], 2),
        "device": device, "preset": cfg.name, "variant": cfg.model.variant, "batch_size": batch_size,
        "world_size": process.world_size, "zero_stage": e2e["zero_stage"], "precision": e2e["precision"],
        "deepspeed_config": Path(ds_path).name, "compile": cfg.train.compile, "loader": args.loader,
        "pipelines_per_device": cfg.data.pipelines_per_device, "data_threads": cfg.data.num_threads,
        "warmup_steps": warmup, "timed_steps": steps, "epochs_in_timed_steps": e2e["epochs_in_timed_steps"],
        "shards": args.shards or f"{args.clips} clips of 6 s (bench_pipeline), shards repeated",
        "e2e_peak_rss_mib": round(e2e["rss_mib"], 1),
        **({"e2e_gpu_peak_mib": round(e2e["gpu_peak_mib"], 1)} if on_gpu else {}),
        **({"model_only_profile": profiled} if profiled else {}),
        "goal": GOAL,
        "command": shlex.join(["python", *sys.argv]),
        "date": datetime.date.today().isoformat(),
        "torch": torch.__version__, "deepspeed": deepspeed.__version__, "dali": nvidia.dali.__version__,
    }
    compiled = "" if cfg.train.compile == "none" else f"_compiled_{cfg.train.compile}"
    parts = "" if cfg.data.pipelines_per_device == 1 else f"_{cfg.data.pipelines_per_device}pipelines"
    report(result, args.out, device if on_gpu else None, stem=f"train_{cfg.name}{compiled}{parts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
