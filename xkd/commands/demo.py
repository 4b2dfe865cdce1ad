"""`xkd demo`: the main job on a small built-in sample set. Makes labelled synthetic videos (four
classes that sound and picture share, in train and held-out splits, plus inputs that must be
rejected), shards both splits, verifies them, pretrains XKD-tiny on the train split with `xkd
pretrain` (preset xkd_demo: DALI pipeline, DeepSpeed engine, EMA teachers, checkpoints), and exports
the four backbones. Evaluation joins the demo when it lands."""
from __future__ import annotations

import json
import os
import sys
import tempfile

from xkd.commands.checks import positive_int, unwritable_folder
from xkd.demo import make_sample_set

PRESET = "xkd_demo"


def register(subparsers) -> None:
    demo = subparsers.add_parser("demo", help="run the pipeline end to end on a small built-in sample set")
    demo.add_argument("--out", default=None, help="working folder (default: a temporary one)")
    demo.add_argument("--workers", type=positive_int, default=2, help="shard-making processes (default: 2)")
    demo.add_argument("--steps", type=positive_int, default=None,
                      help="stop pretraining after this many steps (default: the preset's whole schedule)")
    demo.add_argument("--train-per-class", type=positive_int, default=100, help="training clips per class (default: 100)")
    demo.add_argument("--test-per-class", type=positive_int, default=50, help="held-out clips per class (default: 50)")
    demo.set_defaults(func=run_demo)


def run_demo(args) -> int:
    from shards.synthetic import CLIP_CLASSES
    from xkd.commands import main
    from xkd.config import load_config

    problem = args.out and unwritable_folder(args.out)
    if problem:
        print(f"xkd demo: --out {problem}", file=sys.stderr)
        return 2
    folder = args.out or tempfile.mkdtemp(prefix="xkd-demo-")
    print(f"[demo] making the built-in sample set in {folder}")
    manifest = make_sample_set(folder, args.train_per_class, args.test_per_class, workers=args.workers)
    shard_dir = os.path.join(folder, "shards")
    train_shards, test_shards = os.path.join(shard_dir, "train"), os.path.join(shard_dir, "test")
    run_dir, backbones = os.path.join(folder, "run"), os.path.join(folder, "backbones")
    train_clips = args.train_per_class * len(CLIP_CLASSES)
    pretrain = ["pretrain", "--config", PRESET, "--shards", train_shards, "--out", run_dir, "--resume", "auto"]
    if args.steps:
        pretrain += ["--set", f"train.max_steps={args.steps}"]
    if train_clips < load_config(PRESET).data.batch_size:  # a small set still makes a whole batch
        pretrain += ["--set", f"data.batch_size={train_clips}"]
    workers = ["--workers", str(args.workers)]
    steps = [
        ["shards", "create", manifest, train_shards, "--split", "train", "--samples-per-shard", "100", *workers],
        ["shards", "create", manifest, test_shards, "--split", "test", "--samples-per-shard", "100", *workers],
        ["shards", "verify", train_shards, *workers],
        ["shards", "verify", test_shards, *workers],
        pretrain,
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
    print(f"[demo] done: shards in {train_shards} and {test_shards}")
    return 0
