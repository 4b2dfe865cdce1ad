"""`xkd pretrain`: XKD pretraining under DeepSpeed, started any of three ways:

  xkd pretrain --config xkd_tiny --shards DIR --out RUN                       # one process
  torchrun --nproc_per_node 8 $(which xkd) pretrain ...                       # one node
  deepspeed [--hostfile hosts] $(which xkd) pretrain ... --deepspeed-config zero2.json
"""
from __future__ import annotations

import argparse
import os
import sys


def register(subparsers) -> None:
    parser = subparsers.add_parser("pretrain", help="pretrain XKD / XKD-MAS / XKD-MATS under DeepSpeed",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="preset name (e.g. xkd_tiny, xkd_mas_base) or a YAML file")
    parser.add_argument("--shards", required=True, help="shard folder made by `xkd shards create`, or a '*.tar' pattern")
    parser.add_argument("--out", required=True, help="run folder: config, checkpoints, metrics.jsonl, tensorboard/")
    parser.add_argument("--deepspeed-config", default=None,
                        help="a shipped DeepSpeed config by name (zeroN.json bf16, zeroN_fp16.json, zeroN_fp32.json "
                             "for ZeRO stage N = 0-3) or the path of a JSON file (default: zero2.json on GPUs, "
                             "zero0_fp32.json on CPU)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set train.epochs=100 (repeatable)")
    parser.add_argument("--resume", default=None, metavar="auto|TAG|DIR",
                        help="'auto': continue from the newest complete checkpoint in --out (or start if none)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from dali_pipelines.shardset import PRETRAINING, ShardSet, ShardSetError
    from shards.folder_lock import FolderLock
    from xkd.commands.checks import lock_on_rank_0, unwritable_folder
    from xkd.config import ConfigError, load_config
    from xkd.train.distributed import launched_rank
    from xkd.train.ds_config import resolve_config_path

    try:
        cfg = load_config(args.config, args.set)
        if args.deepspeed_config:
            resolve_config_path(args.deepspeed_config)  # a missing file is refused before DeepSpeed starts
        problem = unwritable_folder(args.out)
        if problem:
            raise ConfigError(f"--out {problem}")
        # the shard preflight runs before DeepSpeed starts; every rank checks the same files and comes
        # to the same verdict, so no rank waits for another that was refused
        shards = ShardSet.from_path(args.shards, needs=PRETRAINING, skip_bad=cfg.train.skip_bad_samples)
    except (ConfigError, ShardSetError) as error:
        print(f"xkd pretrain: {error}", file=sys.stderr)
        return 2
    rank, world_size = launched_rank()
    # one run per --out, held by rank 0 alone: the other ranks of the same run are no second writer
    lock = FolderLock(os.path.join(args.out, "writer.lock"), args.out, "xkd pretrain")
    busy = lock_on_rank_0(lock, rank)
    if busy and world_size == 1:
        print(f"xkd pretrain: {busy}", file=sys.stderr)
        return 2
    try:
        return _train(args, cfg, shards, busy)
    finally:
        lock.release()


def _train(args, cfg, shards, busy: str | None) -> int:
    import torch

    from xkd.config import ConfigError
    from xkd.train.distributed import all_max, finish_process, start_process

    process = start_process()
    refused = torch.tensor([float(busy is not None)], device=process.device)
    all_max(refused)  # rank 0's lock verdict reaches every rank: all stop together
    if refused.item():
        if busy:
            print(f"xkd pretrain: {busy}", file=sys.stderr)
        return 2
    from xkd.train.ds_config import default_config_path
    from xkd.train.loop import NonFiniteLossError, RunRefused, Trainer

    ds_path = args.deepspeed_config or str(default_config_path(process.device.type == "cuda"))
    try:
        trainer = Trainer(cfg, shards, args.out, process, ds_path, resume=args.resume)
        summary = trainer.run()
    except (ConfigError, RunRefused) as error:
        print(f"xkd pretrain: {error}", file=sys.stderr)
        return 2
    except NonFiniteLossError as error:
        print(f"xkd pretrain: {error}", file=sys.stderr)
        return 3
    if process.is_main:
        skipped, left_out = summary["skipped_samples"], summary["left_out_shards"]
        print(f"[xkd pretrain] {summary['outcome']} at step {summary['step']} (epoch {summary['epoch']}); "
              f"non-finite steps skipped: {summary['nonfinite_total']}; samples left out: {len(skipped)}"
              + "".join(f"\n  {s}" for s in skipped)
              + (f"\nshards left out: {len(left_out)}" + "".join(f"\n  {s}" for s in left_out) if left_out else ""),
              flush=True)
    finish_process()  # every rank gets here after the same last step
    return 0
