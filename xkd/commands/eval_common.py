"""What `xkd eval svm`, `linear` and `knn` share: the TRAIN/TEST arguments, loading them with every
refusal turned into one message and exit status 2, and writing and printing the result."""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from xkd.commands.checks import unwritable_folder

MODALITY_CHOICES = ("video", "audio", "both")


def add_feature_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("train", help="training features: a folder written by `xkd eval features`, or a "
                                      "MODALITY.npz in one")
    parser.add_argument("test", help="test features, from the same backbone")
    parser.add_argument("--modality", choices=MODALITY_CHOICES, default=None,
                        help="which features (default: the folder's only one); both: video and audio, each "
                             "L2-normalised, concatenated per clip (Kinetics-Sound)")
    parser.add_argument("--dataset", help="dataset name in the result (default: from features.json or folder names)")
    parser.add_argument("--fold", help="fold or split in the result (default: a foldN/splitN folder name)")
    parser.add_argument("--backbone", help="backbone name in the result (default: from features.json)")
    parser.add_argument("--config", help="config name in the result (default: from features.json)")
    parser.add_argument("--out", help="result JSON (default: TEST/result-COMMAND-MODALITY.json)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice (default 0)")


def fail(args, message: str) -> int:
    print(f"xkd eval {args.eval_command}: {message}", file=sys.stderr)
    return 2


def default_out(args, modality: str) -> Path:
    test = Path(args.test)
    folder = test.parent if test.suffix == ".npz" else test
    return folder / f"result-{args.eval_command}-{modality}.json"


def check_out(args) -> str | None:
    """Why --out cannot be written; None when it can (checked before any work)."""
    if args.out is None:
        return None
    if Path(args.out).is_dir():
        return f"{args.out}: is a folder; --out names the result JSON file"
    return unwritable_folder(Path(args.out).resolve().parent)


def load_pair_or_message(args):
    """(EvalPair, None) or (None, the refusal naming the file)."""
    from xkd.eval.feature_file import FeatureFileError
    from xkd.eval.inputs import load_pair

    try:
        return load_pair(args.train, args.test, args.modality), None
    except FeatureFileError as error:
        return None, str(error)


def progress_bar(unit: str, description: str):
    """A factory total -> tqdm bar on stderr, for the library's `progress` arguments."""
    from tqdm import tqdm

    return lambda total: tqdm(total=total, unit=unit, desc=description, file=sys.stderr, dynamic_ncols=True)


def make_result(args, pair, protocol: str, **values):
    """An EvalResult: names from the flags, else from the test features' features.json or folders."""
    from xkd.eval.results import EvalResult, describe_features

    names = describe_features(pair.test.meta, args.test)
    for key in names:
        if getattr(args, key, None) is not None:
            names[key] = getattr(args, key)
    return EvalResult(protocol=protocol, modality=pair.modality, n_train=len(set(pair.train.video_index.tolist())),
                      n_test=len(set(pair.test.video_index.tolist())), train=str(args.train), test=str(args.test),
                      **names, **values)


def command_line(args) -> str:
    words = ["xkd", "eval", args.eval_command, str(args.train), str(args.test)]
    skipped = ("train", "test", "func", "command", "eval_command", "local_rank", "argv")
    for name, value in sorted(vars(args).items()):
        if name in skipped or value is None or value is False:
            continue
        if isinstance(value, (list, tuple)):
            value = ",".join(f"{v:g}" for v in value)
        words += [f"--{name.replace('_', '-')}"] + ([] if value is True else [str(value)])
    return shlex.join(words)


def finish(args, pair, results) -> int:
    """Write the result file, print the table and where it went."""
    from xkd.eval.results import format_table, write_results

    out = Path(args.out) if args.out else default_out(args, pair.modality)
    problem = unwritable_folder(out.resolve().parent)
    if problem:
        return fail(args, problem)
    write_results(out, results, command_line(args))
    print(format_table(results))
    print(f"result: {out}")
    return 0
