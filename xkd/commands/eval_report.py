"""`xkd eval report RESULTS... [--out TABLE.md]`: result files of `xkd eval svm|linear|knn` collated
into one markdown table laid out as the paper's: a row per backbone, a column per dataset, modality
and protocol; mean ± standard deviation over folds."""
from __future__ import annotations

import sys
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser("report", help="collate result files into one markdown table",
                                   description=__doc__)
    parser.add_argument("results", nargs="+", help="result JSON files")
    parser.add_argument("--out", help="also write the table to this markdown file")
    parser.set_defaults(func=run)


def run(args) -> int:
    from shards.atomic import atomic_write_text
    from xkd.commands.checks import unwritable_folder
    from xkd.eval.results import ResultFileError, collate, read_results

    def fail(message: str) -> int:
        print(f"xkd eval report: {message}", file=sys.stderr)
        return 2

    if args.out:
        problem = (f"{args.out}: is a folder; --out names the markdown file" if Path(args.out).is_dir()
                   else unwritable_folder(Path(args.out).resolve().parent))
        if problem:
            return fail(problem)
    try:
        results = [(result, path) for path in args.results for result in read_results(path)]
        table = collate(results)
    except ResultFileError as error:
        return fail(str(error))
    print(table, end="")
    if args.out:
        atomic_write_text(args.out, table)
        print(f"table: {args.out}")
    return 0
