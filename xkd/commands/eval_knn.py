"""`xkd eval knn TRAIN TEST`: weighted cosine kNN (DINO's k=20, T=0.07) on per-video features, the
mean of each video's clips and crops, L2-normalised (docs/method.md §Evaluation)."""
from __future__ import annotations

from xkd.commands.checks import positive_float, positive_int
from xkd.commands.eval_common import (add_feature_arguments, check_out, fail, finish, load_pair_or_message,
                                      make_result)


def register(subparsers) -> None:
    from xkd.eval.knn import DEFAULT_K, DEFAULT_TEMPERATURE

    parser = subparsers.add_parser("knn", help="weighted cosine kNN on feature files (DINO's monitor)",
                                   description=__doc__)
    add_feature_arguments(parser)
    parser.add_argument("--k", type=positive_int, default=DEFAULT_K, help=f"neighbours (default {DEFAULT_K})")
    parser.add_argument("--temperature", type=positive_float, default=DEFAULT_TEMPERATURE,
                        help=f"vote weight exp(similarity / T) (default {DEFAULT_TEMPERATURE})")
    parser.set_defaults(func=run)


def run(args) -> int:
    from xkd.eval.knn import knn_votes, video_features
    from xkd.eval.scoring import topk_accuracy

    problem = check_out(args)
    if problem:
        return fail(args, problem)
    pair, problem = load_pair_or_message(args)
    if problem:
        return fail(args, problem)
    if pair.multi_label:
        return fail(args, f"{pair.train.path}: multi-label features; kNN here takes single-label sets "
                          f"(use `xkd eval linear`, which scores mAP)")
    train_features, train_labels = video_features(pair.train)
    test_features, test_labels = video_features(pair.test)
    votes = knn_votes(train_features, train_labels, test_features, args.k, args.temperature,
                      pair.num_classes).numpy()
    result = make_result(args, pair, "knn", top1=topk_accuracy(votes, test_labels, 1),
                         top5=topk_accuracy(votes, test_labels, 5, pair.train_classes),
                         settings={"k": min(args.k, len(train_features)), "temperature": args.temperature,
                                   "features": "per video: mean over clips and crops, L2-normalised"})
    return finish(args, pair, [result])
