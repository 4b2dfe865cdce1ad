"""The `xkd` command. Each subcommand lives in its own module, which exposes
`register(subparsers)`; heavy imports (torch, DALI) happen inside the command, so
`xkd shards ...` starts fast."""
import argparse
import importlib
import sys

from xkd import __version__

# subcommand name -> module that registers it
SUBCOMMANDS = {
    "shards": "shards.cli",
    "demo": "xkd.demo",
    "import-weights": "xkd.import_weights_command",
    "pretrain": "xkd.pretrain_command",
    "export": "xkd.export_command",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xkd", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"xkd {__version__}")
    # the deepspeed launcher passes --local_rank=N before the subcommand; LOCAL_RANK is read instead
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in SUBCOMMANDS.values():
        importlib.import_module(module).register(subparsers)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
