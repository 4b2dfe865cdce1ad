"""`xkd demo`: the main job on a small built-in sample set. Makes a few synthetic videos (two
classes, plus inputs that must be rejected), shards them, verifies the shards, pretrains the tiny
XKD preset on them for a few steps with `xkd pretrain` (DALI pipeline, DeepSpeed engine, EMA
teachers, checkpoints), and exports the four backbones. Evaluation joins the demo when it lands."""
from __future__ import annotations

import json
import os
import sys
import tempfile

from xkd.commands.checks import positive_int, unwritable_folder
from xkd.demo import make_sample_set


def register(subparsers) -> None:
    demo = subparsers.add_parser("demo", help="run the pipeline end to end on a small built-in sample set")
    demo.add_argument("--out", default=None, help="working folder (default: a temporary one)")
    demo.add_argument("--workers", type=positive_int, default=2, help="shard-making processes (default: 2)")
    demo.add_argument("--steps", type=positive_int, default=4, help="pretraining steps (default: 4)")
    demo.set_defaults(func=run_demo)


def run_demo(args) -> int:
    from xkd.commands import main

    problem = args.out and unwritable_folder(args.out)
    if problem:
        print(f"xkd demo: --out {problem}", file=sys.stderr)
        return 2
    folder = args.out or tempfile.mkdtemp(prefix="xkd-demo-")
    print(f"[demo] making the built-in sample set in {folder}")
    videos = make_sample_set(folder)
    shard_dir = os.path.join(folder, "shards")
    run_dir, backbones = os.path.join(folder, "run"), os.path.join(folder, "backbones")
    steps = [
        ["shards", "create", videos, shard_dir, "--samples-per-shard", "2", "--workers", str(args.workers)],
        ["shards", "verify", shard_dir, "--workers", str(args.workers)],
        ["pretrain", "--config", "xkd_tiny", "--shards", shard_dir, "--out", run_dir, "--resume", "auto",
         "--set", "data.batch_size=2", "--set", "data.num_threads=2", "--set", f"train.max_steps={args.steps}",
         "--set", "train.log_every_steps=1", "--set", "train.base_lr=0.05"],
        ["export", run_dir, backbones],
    ]
    for step in steps:
        print(f"[demo] xkd {' '.join(step)}", flush=True)
        status = main(step)
        if status:
            print(f"[demo] step failed with exit code {status}", file=sys.stderr)
            return status
    with open(os.path.join(run_dir, "metrics.jsonl")) as handle:
        for line in handle:
            record = json.loads(line)
            if "loss" in record:
                print(f"[demo] step {record['step']}: loss {record['loss']:.3f} (recon {record['loss_recon']:.3f}, "
                      f"kd {record['loss_kd']:.3f}, align {record['loss_align']:.3f})")
    print(f"[demo] backbones in {backbones}")
    print(f"[demo] done: shards in {shard_dir}")
    return 0
