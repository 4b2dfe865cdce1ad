"""`xkd eval features BACKBONE SHARDS OUT`: pooled backbone features of every clip and crop of an
evaluation shard set, one feature file per modality (see xkd/eval/feature_file.py), resumable.
With `--random-init PRESET` there is no BACKBONE: the preset's encoders at random initialisation."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from xkd.commands.checks import positive_int, unwritable_folder

USAGE = "xkd eval features [options] BACKBONE SHARDS OUT   |   xkd eval features --random-init PRESET SHARDS OUT"


def register(subparsers) -> None:
    parser = subparsers.add_parser("features", help="extract pooled backbone features of evaluation shards",
                                   description=__doc__, usage=USAGE)
    parser.add_argument("paths", nargs="+", metavar="BACKBONE SHARDS OUT",
                        help="BACKBONE: NAME.safetensors/.json (`xkd export`, `xkd import-weights`) or an export "
                             "folder; SHARDS: a shard folder or '*.tar' pattern; OUT: the feature folder")
    parser.add_argument("--random-init", metavar="PRESET", default=None,
                        help="evaluate PRESET's encoders at random initialisation (no BACKBONE)")
    parser.add_argument("--seed", type=int, default=0, help="random-init seed (default: 0)")
    parser.add_argument("--modality", choices=["video", "audio", "both"], default=None,
                        help="default: a backbone file's own; for an export folder or --random-init, both "
                             "(audio for --audio-only shards)")
    parser.add_argument("--role", choices=["teacher", "student"], default="teacher",
                        help="which backbones of an export folder (default: teacher)")
    parser.add_argument("--config", default=None,
                        help="preset or YAML giving the clip geometry (default: config.yaml beside the backbone, "
                             "the --random-init preset, else xkd_base)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    parser.add_argument("--clips", type=positive_int, default=None, help="clips per video (default: data.eval_clips)")
    parser.add_argument("--crops", type=int, choices=[1, 3], default=None, help="crops per clip (default: data.eval_crops)")
    parser.add_argument("--batch-size", type=positive_int, default=8, help="videos per batch (default: 8)")
    parser.add_argument("--threads", type=positive_int, default=None, help="DALI CPU threads (default: data.num_threads)")
    parser.add_argument("--chunk-videos", type=positive_int, default=2048,
                        help="videos per resumable chunk, rounded up to whole shards (default: 2048)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="auto: the GPU when there is one (bf16 autocast), else the CPU (fp32)")
    parser.set_defaults(func=run)


def _split_paths(args) -> tuple[str | None, str, str]:
    expected = 2 if args.random_init else 3
    if len(args.paths) != expected:
        what = "SHARDS OUT (with --random-init)" if args.random_init else "BACKBONE SHARDS OUT"
        raise argparse.ArgumentTypeError(f"expected {what}, got {len(args.paths)} path(s)")
    return (None, *args.paths) if args.random_init else tuple(args.paths)


def _config_name(args, backbone: str | None) -> str:
    if args.config:
        return args.config
    if args.random_init:
        return args.random_init
    beside = (Path(backbone) if Path(backbone).is_dir() else Path(backbone).parent) / "config.yaml"
    return str(beside) if beside.is_file() else "xkd_base"


def _device(choice: str):
    import torch

    if choice == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda, but no CUDA GPU is visible")
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(choice)


def run(args) -> int:
    from dali_pipelines.shardset import ShardSet, ShardSetError
    from xkd.config import ConfigError, load_config
    from xkd.eval.backbones import BackboneMismatch, default_modality, resolve_backbones
    from xkd.eval.extract import ExtractionConflict, FeatureExtraction

    def refuse(message: str) -> int:
        print(f"xkd eval features: {message}", file=sys.stderr)
        return 2

    try:
        backbone, shards, out = _split_paths(args)
        device = _device(args.device)
    except (argparse.ArgumentTypeError, ValueError) as error:
        return refuse(str(error))
    problem = unwritable_folder(out)
    if problem:
        return refuse(problem)
    try:
        overrides = list(args.set) + [f"data.batch_size={args.batch_size}"]
        overrides += [f"data.eval_clips={args.clips}"] if args.clips else []
        overrides += [f"data.eval_crops={args.crops}"] if args.crops else []
        overrides += [f"data.num_threads={args.threads}"] if args.threads else []
        cfg = load_config(_config_name(args, backbone), overrides)
        modality = args.modality or default_modality(backbone, ShardSet.from_path(shards).has_video)
        backbones = resolve_backbones(backbone, modality, cfg, role=args.role, seed=args.seed)
        extraction = FeatureExtraction(backbones, shards, cfg, out, device=device, chunk_videos=args.chunk_videos)
        extraction.run()
    except (ConfigError, BackboneMismatch, ShardSetError, ExtractionConflict) as error:
        return refuse(str(error))
    return 0
