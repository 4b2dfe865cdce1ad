"""`xkd pretrain`: XKD pretraining under DeepSpeed, started any of three ways:

  xkd pretrain --config xkd_tiny --shards DIR --out RUN                       # one process
  torchrun --nproc_per_node 8 $(which xkd) pretrain ...                       # one node
  deepspeed [--hostfile hosts] $(which xkd) pretrain ... --deepspeed-config deepspeed_configs/zero2.json
"""
from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    parser = subparsers.add_parser("pretrain", help="pretrain XKD / XKD-MAS / XKD-MATS under DeepSpeed",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="preset name (e.g. xkd_tiny, xkd_mas_base) or a YAML file")
    parser.add_argument("--shards", required=True, help="shard folder made by `xkd shards create`, or a '*.tar' pattern")
    parser.add_argument("--out", required=True, help="run folder: config, checkpoints, metrics.jsonl, tensorboard/")
    parser.add_argument("--deepspeed-config", default=None,
                        help="DeepSpeed JSON (default: deepspeed_configs/zero2.json on GPUs, zero0_fp32.json on CPU)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set train.epochs=100 (repeatable)")
    parser.add_argument("--resume", default=None, metavar="auto|TAG|DIR",
                        help="'auto': continue from the newest complete checkpoint in --out (or start if none)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from dali_pipelines.shardset import ShardSetError
    from xkd.config import ConfigError, load_config
    from xkd.train.distributed import start_process

    try:
        cfg = load_config(args.config, args.set)
    except ConfigError as error:
        print(f"xkd pretrain: {error}", file=sys.stderr)
        return 2
    process = start_process()
    from xkd.train.ds_config import default_config_path
    from xkd.train.loop import NonFiniteLossError, RunRefused, Trainer

    ds_path = args.deepspeed_config or str(default_config_path(process.device.type == "cuda"))
    try:
        trainer = Trainer(cfg, args.shards, args.out, process, ds_path, resume=args.resume)
        summary = trainer.run()
    except (ConfigError, ShardSetError, RunRefused) as error:
        print(f"xkd pretrain: {error}", file=sys.stderr)
        return 2
    except NonFiniteLossError as error:
        print(f"xkd pretrain: {error}", file=sys.stderr)
        return 3
    if process.is_main:
        skipped = summary["skipped_samples"]
        print(f"[xkd pretrain] {summary['outcome']} at step {summary['step']} (epoch {summary['epoch']}); "
              f"non-finite steps skipped: {summary['nonfinite_total']}; samples left out: {len(skipped)}"
              + "".join(f"\n  {s}" for s in skipped), flush=True)
    return 0
