"""`xkd finetune`: fine-tune a pretrained video or audio backbone end to end on labelled shards, under
DeepSpeed, started any of three ways (as `xkd pretrain`):

  xkd finetune --config ft_ucf101 --backbone BACKBONE --train SHARDS --val SHARDS --out RUN
  torchrun --nproc_per_node 8 $(which xkd) finetune ...
  deepspeed [--hostfile hosts] $(which xkd) finetune ... --deepspeed-config zero2.json

BACKBONE: an `xkd export` folder (its {modality}_{role} backbone), or one backbone file of `xkd
export` or `xkd import-weights`; --random-init PRESET instead fine-tunes a pretraining preset's
encoder from random weights (the baseline). The best validation weights are kept as
RUN/best/classifier.{safetensors,json}; the final test (--test, else --val) is written as an
`xkd eval` result file, RUN/result.json, which `xkd eval report` collates."""
from __future__ import annotations

import argparse
import os
import shlex
import sys


def register(subparsers) -> None:
    parser = subparsers.add_parser("finetune", help="fine-tune a backbone end to end on labelled shards (DeepSpeed)",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True,
                        help="fine-tuning preset (ft_ucf101, ft_hmdb51, ft_kinetics, ft_esc50, ft_fsd50k; ft_tiny, ft_micro, ft_demo) "
                             "or a YAML file")
    parser.add_argument("--backbone", default=None, help="an `xkd export` folder or a backbone file (.safetensors/.json)")
    parser.add_argument("--random-init", metavar="PRESET", default=None,
                        help="fine-tune PRESET's encoder from random weights instead of a backbone")
    parser.add_argument("--role", choices=["teacher", "student"], default="teacher",
                        help="which backbone of an export folder (default: teacher)")
    parser.add_argument("--seed", type=int, default=0, help="--random-init seed (default: 0)")
    parser.add_argument("--train", required=True, help="labelled training shard folder (`xkd shards create`)")
    parser.add_argument("--val", required=True, help="labelled shard folder validated on after epochs (best kept)")
    parser.add_argument("--test", default=None, help="labelled shard folder of the final test (default: --val)")
    parser.add_argument("--out", required=True, help="run folder: config, checkpoints, metrics.jsonl, tensorboard/, "
                                                     "best/classifier.*, result.json")
    parser.add_argument("--dataset", default=None, help="dataset name in the result (default: from the folder names)")
    parser.add_argument("--fold", default=None, help="fold or split in the result (default: a foldN/splitN folder name)")
    parser.add_argument("--deepspeed-config", default=None,
                        help="a shipped DeepSpeed config by name (zeroN.json bf16, zeroN_fp16.json, zeroN_fp32.json "
                             "for ZeRO stage N = 0-3) or the path of a JSON file (default: zero2.json on GPUs, "
                             "zero0_fp32.json on CPU)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set train.epochs=30 (repeatable)")
    parser.add_argument("--resume", default=None, metavar="auto|TAG|DIR",
                        help="'auto': continue from the newest complete checkpoint in --out (or start if none)")
    parser.set_defaults(func=run)


def _refuse(message: str) -> int:
    print(f"xkd finetune: {message}", file=sys.stderr)
    return 2


def run(args) -> int:
    from shards.folder_lock import FolderLock
    from xkd.commands.checks import lock_on_rank_0, unwritable_folder
    from xkd.config import ConfigError
    from xkd.finetune.run import FinetuneRefused, prepare
    from xkd.train.distributed import launched_rank
    from xkd.train.ds_config import resolve_config_path

    problem = unwritable_folder(args.out)
    if problem:
        return _refuse(f"--out {problem}")
    try:
        if args.deepspeed_config:
            resolve_config_path(args.deepspeed_config)  # a missing file is refused before DeepSpeed starts
        # every rank checks the same files and comes to the same verdict: no rank waits for a refused one
        inputs = prepare(args.config, args.backbone, args.train, args.val, test=args.test,
                         random_init=args.random_init, role=args.role, seed=args.seed, overrides=args.set,
                         dataset=args.dataset, fold=args.fold, command=shlex.join(["xkd", *args.argv]))
    except (ConfigError, FinetuneRefused) as error:
        return _refuse(str(error))
    rank, world_size = launched_rank()
    lock = FolderLock(os.path.join(args.out, "writer.lock"), args.out, "xkd finetune")
    busy = lock_on_rank_0(lock, rank)
    if busy and world_size == 1:
        return _refuse(busy)
    try:
        return _train(args, inputs, busy)
    finally:
        lock.release()


def _train(args, inputs, busy: str | None) -> int:
    import torch

    from xkd.config import ConfigError
    from xkd.finetune.run import train
    from xkd.train.distributed import all_max, finish_process, start_process
    from xkd.train.run_loop import NonFiniteLossError, RunRefused

    process = start_process()
    refused = torch.tensor([float(busy is not None)], device=process.device)
    all_max(refused)  # rank 0's lock verdict reaches every rank: all stop together
    if refused.item():
        if busy:
            _refuse(busy)
        return 2
    try:
        summary = train(inputs, args.out, process, args.deepspeed_config, args.resume)
    except (ConfigError, RunRefused) as error:
        return _refuse(str(error))
    except NonFiniteLossError as error:
        print(f"xkd finetune: {error}", file=sys.stderr)
        return 3
    if process.is_main:
        best = summary["best"]
        print(f"[xkd finetune] {summary['outcome']} at step {summary['step']} (epoch {summary['epoch']}); "
              + (f"best validation {best['metric']} {best['value']:.2f}% at epoch {best['epoch']}; " if best else "")
              + f"non-finite steps skipped: {summary['nonfinite_total']}; samples left out: "
              f"{len(summary['skipped_samples'])}" + "".join(f"\n  {s}" for s in summary["skipped_samples"]),
              flush=True)
    finish_process()
    return 0
