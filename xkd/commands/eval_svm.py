"""`xkd eval svm TRAIN TEST`: linear SVM on frozen features, C chosen by cross-validation on TRAIN;
the authors' pick (best C on TEST) reported beside it (docs/method.md §Evaluation)."""
from __future__ import annotations

import argparse

from xkd.commands.checks import positive_int
from xkd.commands.eval_common import (add_feature_arguments, check_out, fail, finish, load_pair_or_message,
                                      make_result, progress_bar)


def c_grid(text: str) -> tuple[float, ...]:
    """An argparse type: comma-separated positive numbers."""
    try:
        values = tuple(float(word) for word in text.split(",") if word.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated numbers, e.g. 1e-3,1e-2,0.1,1") from None
    if not values or any(not value > 0 for value in values):
        raise argparse.ArgumentTypeError(f"{text!r}: every C must be a positive number")
    return values


def register(subparsers) -> None:
    from xkd.eval.svm import SvmSettings

    defaults = SvmSettings()
    parser = subparsers.add_parser("svm", help="linear SVM on feature files (C by cross-validation; authors' beside)",
                                   description=__doc__)
    add_feature_arguments(parser)
    parser.add_argument("--c-grid", type=c_grid, default=defaults.c_grid,
                        help="the C values tried (default the authors' 1e-5,1e-4,1e-3,1e-2,0.1,1)")
    parser.add_argument("--cv-folds", type=positive_int, default=defaults.cv_folds,
                        help=f"folds of the cross-validation on TRAIN, grouped by video (default {defaults.cv_folds})")
    parser.add_argument("--max-iter", type=positive_int, default=defaults.max_iter,
                        help=f"liblinear iterations (default {defaults.max_iter}, the authors')")
    parser.add_argument("--jobs", type=positive_int, default=1, help="fits run in parallel (default 1)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from xkd.eval.feature_file import FeatureFileError
    from xkd.eval.svm import SvmSettings, evaluate_svm

    problem = check_out(args)
    if problem:
        return fail(args, problem)
    pair, problem = load_pair_or_message(args)
    if problem:
        return fail(args, problem)
    settings = SvmSettings(c_grid=args.c_grid, cv_folds=args.cv_folds, max_iter=args.max_iter, seed=args.seed,
                           jobs=args.jobs)
    try:
        outcome = evaluate_svm(pair, settings, progress_bar("fit", "svm"))
    except FeatureFileError as error:
        return fail(args, str(error))
    details = {"cv_folds": outcome.cv_folds, "max_iter": settings.max_iter, "seed": settings.seed,
               "cv_top1_per_c": outcome.cv_top1, "test_top1_per_c": outcome.test_top1,
               "not_converged_c": outcome.not_converged}
    results = [make_result(args, pair, protocol, top1=outcome.test_top1[index], top5=outcome.test_top5[index],
                           chosen_c=outcome.c_grid[index], c_grid=outcome.c_grid, settings=details)
               for protocol, index in (("svm-cv", outcome.cv_index), ("svm-authors", outcome.authors_index))]
    if outcome.not_converged:
        print(f"note: liblinear stopped at --max-iter {settings.max_iter} before converging for C in "
              f"{', '.join(f'{c:g}' for c in outcome.not_converged)}")
    return finish(args, pair, results)
