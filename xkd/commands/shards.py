"""`xkd shards create|manifest|verify|index|stats`."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from xkd.commands.checks import positive_int, unwritable_folder


def register(subparsers) -> None:
    shards = subparsers.add_parser("shards", help="turn raw videos into WebDataset shards that DALI reads")
    commands = shards.add_subparsers(dest="shards_command", metavar="ACTION", required=True)

    create = commands.add_parser(
        "create", help="transcode videos into tar shards + DALI .idx + manifest.json",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    create.add_argument("input", help="folder of videos (searched recursively) or a CSV/JSONL manifest "
                                      "with a 'path' column and optional label, key, split")
    create.add_argument("out_dir")
    media = create.add_argument_group("media")
    media.add_argument("--fps", default="8", help="output frame rate (number, fraction) or 'keep'")
    media.add_argument("--short-side", type=int, default=128, help="resize so the short side is this (256 for 224-px work)")
    media.add_argument("--codec", default="vp9", choices=("vp9", "h264", "hevc", "copy"),
                       help="vp9 decodes in DALI on CPU and GPU; h264/hevc on GPU only; copy keeps the source stream")
    media.add_argument("--crf", type=int, default=None,
                       help="encoder quality, 0 (best) to 63 for vp9, to 51 for h264/hevc (default: vp9 32, h264 23, "
                            "hevc 28)")
    media.add_argument("--min-duration", type=float, default=1.1, help="reject videos shorter than this (seconds)")
    media.add_argument("--missing-audio", default="skip", choices=("skip", "silence"),
                       help="videos without (audible) audio: reject, or keep with a silent track")
    media.add_argument("--audio-only", action="store_true",
                       help="sound datasets (ESC-50 ...): take audio files (and videos' soundtracks), "
                            "write FLAC + JSON only")
    media.add_argument("--fast-decode", action="store_true",
                       help="skip H.264/HEVC deblocking while decoding: faster, slightly blurrier (see README)")
    layout = create.add_argument_group("shards")
    layout.add_argument("--name", default="shard", help="shard file name prefix")
    layout.add_argument("--samples-per-shard", type=int, default=1000)
    layout.add_argument("--shard-size", default=None, help="also cap each tar's size, e.g. 500MB, 1GiB")
    layout.add_argument("--seed", type=int, default=0, help="seed of the cross-shard shuffle")
    layout.add_argument("--no-shuffle", action="store_true", help="keep the sorted input order")
    layout.add_argument("--workers", type=positive_int, default=os.cpu_count(), help="transcoding processes")
    layout.add_argument("--part", default=None, help="I/N: write the I-th of N disjoint shares (SLURM arrays)")
    labels = create.add_argument_group("labels and splits")
    labels.add_argument("--labels", default="auto", choices=("auto", "folder", "manifest", "none"),
                        help="auto: parent folder name for nested folders, the manifest's label column otherwise")
    labels.add_argument("--classes", default=None, help="classes.json mapping names to ids "
                                                        "(default: INPUT/classes.json if present, else sorted names)")
    labels.add_argument("--split-list", nargs="+", default=None,
                        help="UCF101 trainlist/testlist or HMDB51 *_test_splitN.txt files selecting the videos")
    labels.add_argument("--split", default=None, help="train|test for HMDB51 split files or with --fold; the "
                                                      "'split' values to keep with a manifest (train,val: either)")
    labels.add_argument("--fold", default=None, help="K: with a manifest's 'fold' column (ESC-50), --split test "
                                                     "keeps fold K, --split train the other folds")
    labels.add_argument("--classes-from", default=None, metavar="LIST",
                        help="keep only the classes of a class list (a file, one name a line, or a shipped list: "
                             "kinetics_sound_32), ids 0..N-1 in its order")
    create.add_argument("--quiet", action="store_true", help="no progress bar")
    create.set_defaults(func=run_create)

    recipe = commands.add_parser(
        "manifest", help="write the input manifest (inputs.csv + classes.json) of an official dataset layout",
        description="OUT_DIR/inputs.csv lists the clips with their labels and splits or folds, "
                    "OUT_DIR/classes.json the official class ids; give inputs.csv to `xkd shards create`.")
    recipe.add_argument("dataset", choices=("esc50", "fsd50k", "kinetics"),
                        help="esc50: ESC-50 (meta/esc50.csv, 5 folds); fsd50k: FSD50K (FSD50K.ground_truth/, "
                             "several labels per clip); kinetics: Kinetics-400 (annotations/*.csv)")
    recipe.add_argument("root", help="the unpacked official download")
    recipe.add_argument("out_dir", help="where inputs.csv and classes.json go")
    recipe.set_defaults(func=run_manifest)

    verify = commands.add_parser("verify", help="decode every member of every shard; exit 1 on any problem")
    verify.add_argument("out_dir")
    verify.add_argument("--workers", type=positive_int, default=os.cpu_count())
    verify.add_argument("--json", action="store_true", help="print the report as JSON")
    verify.set_defaults(func=run_verify)

    index = commands.add_parser("index", help="(re)write the DALI .idx of every tar that lacks one or "
                                              "whose index does not match it")
    index.add_argument("out_dir")
    index.add_argument("--quiet", action="store_true", help="no progress bar")
    index.set_defaults(func=run_index)

    stats = commands.add_parser("stats", help="print the totals of a shard folder")
    stats.add_argument("out_dir")
    stats.add_argument("--json", action="store_true", help="print the manifest's totals as JSON")
    stats.set_defaults(func=run_stats)


def run_create(args) -> int:
    from shards.create import Part, PlanMismatch, create_shards
    from shards.folder_lock import FolderBusy
    from shards.inputs import AUDIO_EXTENSIONS, VIDEO_EXTENSIONS, InputError, load_inputs
    from shards.options import ShardOptions, parse_size
    from shards.verify import format_stats

    try:
        opts = ShardOptions(
            fps=args.fps, short_side=args.short_side, codec=args.codec, crf=args.crf,
            min_duration=args.min_duration, missing_audio=args.missing_audio,
            samples_per_shard=args.samples_per_shard,
            shard_size=parse_size(args.shard_size) if args.shard_size else None,
            seed=args.seed, shuffle=not args.no_shuffle, name=args.name, fast_decode=args.fast_decode,
            audio_only=args.audio_only)
        for warning in opts.decode_warnings():
            print(f"xkd shards create: warning: {warning}", file=sys.stderr)
        part = Part.parse(args.part)
        problem = unwritable_folder(args.out_dir)
        if problem:
            raise ValueError(problem)
        extensions = VIDEO_EXTENSIONS | AUDIO_EXTENSIONS if args.audio_only else VIDEO_EXTENSIONS
        inputs = load_inputs(args.input, labels=args.labels, classes_file=args.classes,
                             split_lists=args.split_list, split=args.split, fold=args.fold,
                             classes_from=args.classes_from, extensions=extensions)
    except (ValueError, InputError) as exc:
        print(f"xkd shards create: {exc}", file=sys.stderr)
        return 2
    if not inputs.items:
        print(f"xkd shards create: no {'audio or video' if args.audio_only else 'video'} file found in "
              f"{args.input}", file=sys.stderr)
        return 2
    started = time.monotonic()
    try:
        manifest = create_shards(inputs, args.out_dir, opts, workers=args.workers, part=part,
                                 progress=not args.quiet)
    except (PlanMismatch, FolderBusy) as exc:
        print(f"xkd shards create: {exc}", file=sys.stderr)
        return 2
    elapsed = time.monotonic() - started
    print(format_stats(manifest))
    print(f"done in {elapsed:.1f} s; manifest: {os.path.join(args.out_dir, 'manifest.json')}")
    if not manifest["complete"]:
        print("other parts have not finished yet: the manifest completes when the last part ends")
    return 0


def run_manifest(args) -> int:
    from shards.recipes import RecipeError, write_manifest

    problem = unwritable_folder(args.out_dir)
    try:
        if problem:
            raise RecipeError(problem)
        written = write_manifest(args.dataset, args.root, args.out_dir)
    except (RecipeError, OSError) as exc:
        print(f"xkd shards manifest: {exc}", file=sys.stderr)
        return 2
    print(f"{written['rows']} clips of {written['classes']} classes in {written['manifest']}"
          + (f"; {written['missing']} listed clip(s) are not there (`xkd shards create` records them "
             "as rejected)" if written["missing"] else ""))
    return 0


def run_verify(args) -> int:
    from shards.verify import verify

    if _manifest(args.out_dir, "verify") is None:
        return 2
    report = verify(args.out_dir, workers=args.workers)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        for problem in report["problems"]:
            print(f"PROBLEM {problem}")
        status = "OK" if not report["problems"] else f"{len(report['problems'])} problem(s)"
        print(f"verified {report['shards']} shards, {report['samples']} samples: {status}")
    return 1 if report["problems"] else 0


def run_index(args) -> int:
    from shards.reindex import index_folder

    try:
        report = index_folder(args.out_dir, progress=not args.quiet)
    except OSError as exc:
        print(f"xkd shards index: {exc}", file=sys.stderr)
        return 2
    for name in report.written:
        print(f"wrote {name}")
    for reason in report.refused:
        print(f"xkd shards index: refused {reason} (not a whole xkd shard: copy it again, or move it out of "
              "this folder)", file=sys.stderr)
    print(f"{len(report.written)} index(es) written, {report.unchanged} already matched, "
          f"{len(report.refused)} tar(s) refused")
    return 2 if report.refused else 0


def run_stats(args) -> int:
    from shards.verify import format_stats

    manifest = _manifest(args.out_dir, "stats")
    if manifest is None:
        return 2
    if args.json:
        print(json.dumps({k: v for k, v in manifest.items() if k not in ("shards", "rejected")}, indent=1))
    else:
        print(format_stats(manifest))
    return 0


def _manifest(out_dir: str, action: str) -> dict | None:
    """The folder's manifest, or None after saying on stderr why there is none (not a shard folder)."""
    from shards.format import load_manifest

    try:
        return load_manifest(out_dir)
    except (OSError, ValueError) as exc:
        print(f"xkd shards {action}: {exc}", file=sys.stderr)
        return None
