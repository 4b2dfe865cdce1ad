"""`xkd eval ...`: score backbones downstream. `features` extracts pooled backbone features of
evaluation shards; `svm`, `linear` and `knn` classify them; `report` collates result files into one
table. Each subcommand lives in its own module (`xkd/commands/eval_*.py`)."""
from __future__ import annotations

import importlib

# eval subcommand -> module that registers it
EVAL_SUBCOMMANDS = {
    "features": "xkd.commands.eval_features",
    "svm": "xkd.commands.eval_svm",
    "linear": "xkd.commands.eval_linear",
    "knn": "xkd.commands.eval_knn",
    "report": "xkd.commands.eval_report",
}


def register(subparsers) -> None:
    parser = subparsers.add_parser("eval", help="extract features and score backbones (SVM, linear probe, kNN)",
                                   description=__doc__)
    commands = parser.add_subparsers(dest="eval_command", metavar="EVAL_COMMAND", required=True)
    for module in EVAL_SUBCOMMANDS.values():
        importlib.import_module(module).register(commands)
