"""The `xkd` command: shard videos, pretrain XKD on them, export and import backbones, evaluate and fine-tune
them, benchmark.

Each subcommand lives in its own module of this package, which exposes
`register(subparsers)` and does only the command's part: arguments, messages, exit statuses. The work
is done by the library (`shards`, `dali_pipelines`, `xkd.*`), which never imports from here. Heavy
imports (torch, DALI) happen inside the command, so `xkd shards ...` starts fast."""
import argparse
import importlib
import sys

from xkd import __version__

# subcommand name -> module that registers it
SUBCOMMANDS = {
    "shards": "xkd.commands.shards",
    "demo": "xkd.commands.demo",
    "import-weights": "xkd.commands.import_weights",
    "pretrain": "xkd.commands.pretrain",
    "export": "xkd.commands.export",
    "eval": "xkd.commands.eval",
    "bench": "xkd.commands.bench",
    "finetune": "xkd.commands.finetune",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xkd", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"xkd {__version__}")
    # the deepspeed launcher passes --local_rank=N before the subcommand; LOCAL_RANK is read instead
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in SUBCOMMANDS.values():
        importlib.import_module(module).register(subparsers)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    argv = [str(word) for word in (sys.argv[1:] if argv is None else argv)]
    args = parser.parse_args(argv)
    # the words of this command, for the files that record how they were made (not the caller's
    # sys.argv when the demo or a test calls main); the launcher's --local_rank is not the user's
    args.argv = [word for word in argv if not word.startswith(("--local_rank", "--local-rank"))]
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
