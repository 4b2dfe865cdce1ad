"""`xkd eval linear TRAIN TEST`: a linear classifier trained on frozen features; cross-entropy and
top-1/top-5, or for multi-label sets (FSD50K) binary cross-entropy and macro mAP
(docs/method.md §Evaluation)."""
from __future__ import annotations

from xkd.commands.checks import positive_float, positive_int
from xkd.commands.eval_common import (add_feature_arguments, check_out, fail, finish, load_pair_or_message,
                                      make_result, progress_bar)


def register(subparsers) -> None:
    from xkd.eval.linear_probe import LinearSettings

    defaults = LinearSettings()
    parser = subparsers.add_parser("linear", help="linear classifier on feature files (top-1, or mAP if multi-label)",
                                   description=__doc__)
    add_feature_arguments(parser)
    parser.add_argument("--epochs", type=positive_int, default=defaults.epochs,
                        help=f"passes over TRAIN (default {defaults.epochs}); the last epoch is scored")
    parser.add_argument("--batch-size", type=positive_int, default=defaults.batch_size,
                        help=f"rows per step (default {defaults.batch_size})")
    parser.add_argument("--lr", type=positive_float, default=defaults.lr,
                        help=f"AdamW peak learning rate, cosine to 0 (default {defaults.lr:g})")
    parser.add_argument("--weight-decay", type=float, default=defaults.weight_decay,
                        help=f"AdamW weight decay (default {defaults.weight_decay:g})")
    parser.add_argument("--warmup-epochs", type=int, default=defaults.warmup_epochs,
                        help=f"linear warm-up epochs (default {defaults.warmup_epochs})")
    parser.add_argument("--raw-features", action="store_true",
                        help="feed features as they are (default: standardised with TRAIN's mean and deviation)")
    parser.add_argument("--device", default=defaults.device, help="auto (the GPU when there is one), cpu, cuda:N")
    parser.set_defaults(func=run)


def run(args) -> int:
    from xkd.eval.linear_probe import LinearSettings, evaluate_linear

    if args.weight_decay < 0 or args.warmup_epochs < 0:
        return fail(args, "--weight-decay and --warmup-epochs must not be negative")
    problem = check_out(args)
    if problem:
        return fail(args, problem)
    pair, problem = load_pair_or_message(args)
    if problem:
        return fail(args, problem)
    settings = LinearSettings(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                              weight_decay=args.weight_decay, warmup_epochs=args.warmup_epochs,
                              standardise=not args.raw_features, seed=args.seed, device=args.device)
    outcome = evaluate_linear(pair, settings, progress_bar("epoch", "linear"))
    details = {"epochs": settings.epochs, "batch_size": settings.batch_size, "lr": settings.lr,
               "weight_decay": settings.weight_decay, "warmup_epochs": settings.warmup_epochs,
               "standardise": settings.standardise, "seed": settings.seed, "scored": "last epoch",
               "final_train_loss": outcome.final_train_loss, "map_classes": outcome.map_classes,
               "loss": "binary cross-entropy" if pair.multi_label else "cross-entropy"}
    result = make_result(args, pair, "linear", top1=outcome.top1, top5=outcome.top5, map=outcome.map,
                         settings=details)
    return finish(args, pair, [result])
