"""`xkd import-weights FILE.pth.tar OUT`: an authors' released backbone -> our backbone format."""
from __future__ import annotations

import sys
from pathlib import Path

from xkd.commands.checks import positive_int, unwritable_folder


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "import-weights", help="convert an authors' XKD backbone (.pth.tar) to an xkd backbone (safetensors + json)",
        description=__doc__)
    parser.add_argument("file", help="vid_student / vid_teacher / aud_student / aud_teacher .pth.tar")
    parser.add_argument("out", help="output name: writes OUT.safetensors and OUT.json")
    parser.add_argument("--config", default="xkd_base",
                        help="preset giving the input geometry and head count (default: xkd_base)")
    parser.add_argument("--num-heads", type=positive_int, default=None, help="attention heads, if not the preset's")
    parser.add_argument("--part", default=None, choices=["vid_student", "vid_teacher", "aud_student", "aud_teacher"],
                        help="network to take from a full training checkpoint (checkpoint.pth.tar)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from xkd.backbone_io import load_official_backbone, save_backbone
    from xkd.config import ConfigError, load_config
    from xkd.weights import WeightImportError

    try:
        base = load_config(args.config).model
    except ConfigError as err:
        print(f"xkd import-weights: {err}", file=sys.stderr)
        return 2
    problem = unwritable_folder(Path(args.out).parent)
    if problem:
        print(f"xkd import-weights: cannot write {args.out}: {problem}", file=sys.stderr)
        return 2
    try:
        encoder, modality, model_cfg = load_official_backbone(
            args.file, part=args.part, base=base, num_heads=args.num_heads)
    except WeightImportError as err:
        print(f"xkd import-weights: {args.file}: {err}", file=sys.stderr)
        return 2
    weights, meta = save_backbone(args.out, encoder, modality, model_cfg,
                                  source={"imported_from": str(args.file), "part": args.part})
    params = sum(p.numel() for p in encoder.parameters())
    print(f"{modality} backbone, {params:,} parameters -> {weights} + {meta}")
    return 0
