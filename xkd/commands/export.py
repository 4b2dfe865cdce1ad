"""`xkd export RUN_DIR OUT`: the four backbones of a pretraining run as safetensors + json."""
from __future__ import annotations

import sys


def register(subparsers) -> None:
    parser = subparsers.add_parser("export", help="write a run's four backbones (video/audio x student/teacher)",
                                   description=__doc__)
    parser.add_argument("run_dir", help="the --out folder of `xkd pretrain`")
    parser.add_argument("out", help="output folder: {video,audio}_{student,teacher}.safetensors/.json, config.yaml")
    parser.add_argument("--checkpoint", default="auto", help="a checkpoint tag (default: the newest complete one)")
    parser.set_defaults(func=run)


def run(args) -> int:
    import os

    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # reading checkpoints needs no GPU
    from xkd.commands.checks import unwritable_folder
    from xkd.train.export import ExportError, export_backbones

    problem = unwritable_folder(args.out)
    if problem:
        print(f"xkd export: {problem}", file=sys.stderr)
        return 2
    try:
        written = export_backbones(args.run_dir, args.out, args.checkpoint)
    except (ExportError, FileNotFoundError) as error:
        print(f"xkd export: {error}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0
