"""`xkd bench`: measure this machine stage by stage in one run, and compare two runs.

  xkd bench [--device cpu|cuda] [--preset tiny|small|base] [--shards DIR] [--stages shards,pipeline,model,train,eval]
            [--out DIR] [--repeats N] [--threads N] [--quick] [--record [--history FILE]]
  xkd bench compare A B        # A, B: report.json, its folder, or HISTORY.jsonl:N (-1: the last line)

Stages: shards (shard creation, x real time per worker), pipeline (DALI against the reference loader,
clips/s), model (one training step on synthetic batches: clips/s against batch size, GFLOP/clip,
TFLOP/s, on a GPU its share of the measured bf16 peak), train (the loop end to end against model
only, data-wait share), eval (feature extraction). Without --shards the bench shards a few synthetic
clips itself. Writes report.json, report.md and PNG charts to --out; exit status 1 when a stage failed
(the others still run and are reported)."""
from __future__ import annotations

import argparse
import os
import sys
import time

from xkd.commands.checks import positive_int, unwritable_folder


def _stage_list(text: str) -> tuple[str, ...]:
    from benchmarks.suite.settings import parse_stages

    try:
        return parse_stages(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def register(subparsers) -> None:
    from benchmarks.suite.settings import PRESETS, STAGES

    bench = subparsers.add_parser("bench", help="measure every stage in clips/s, with a report and charts",
                                  description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    bench.add_argument("--device", choices=("cpu", "cuda"), default=None,
                       help="where the pipeline decodes and the model runs (default: cuda when there is a GPU)")
    bench.add_argument("--preset", choices=PRESETS, default="tiny", help="model size: the xkd_PRESET config")
    bench.add_argument("--shards", default=None, help="a shard folder or '*.tar' pattern (default: the bench makes "
                                                      "a small set with `xkd shards create`)")
    bench.add_argument("--stages", type=_stage_list, default=STAGES, metavar="LIST",
                       help=f"comma-separated, run in this order (default: {','.join(STAGES)})")
    bench.add_argument("--out", default=None, help="report folder (default: xkd-bench-DATE-TIME here)")
    bench.add_argument("--repeats", type=positive_int, default=3, help="repeats of every figure after the warm-up")
    bench.add_argument("--threads", type=positive_int, default=os.cpu_count(),
                       help="DALI CPU threads = reference-loader workers (default: the CPU's cores)")
    bench.add_argument("--quick", action="store_true",
                       help="the smallest workloads: checks that the bench runs; not figures to quote")
    bench.add_argument("--record", action="store_true",
                       help="also append the report to benchmarks/results/history.jsonl (or --history)")
    bench.add_argument("--history", default=None, help="the history file --record appends to")
    bench.set_defaults(func=run)
    actions = bench.add_subparsers(dest="bench_command", metavar="compare", required=False)
    compare = actions.add_parser("compare", help="the change of every figure between two bench reports",
                                 description="The change of every figure from report A to report B.")
    compare.add_argument("a", help="report.json, its folder, or HISTORY.jsonl:N")
    compare.add_argument("b", help="the same, for the later run")


def run(args) -> int:
    if args.bench_command == "compare":
        return run_compare(args)
    settings = _settings(args)
    if isinstance(settings, str):
        print(f"xkd bench: {settings}", file=sys.stderr)
        return 2
    from benchmarks.suite.output import append_history, default_history, shown, write_report
    from benchmarks.suite.run import run_bench

    print(f"[bench] {settings.command()}", flush=True)
    report = run_bench(settings)
    written = write_report(report, settings.out)
    print("[bench] figures (median, min – max):")
    for stage, entry in report["stages"].items():
        for figure in entry.get("figures", {}).values():
            median, spread, _ = shown(figure)
            unit = "" if figure["unit"] == "ratio" else f" {figure['unit']}"  # ratios are shown as percentages
            print(f"  {stage:8s} {figure['label']}: {median} ({spread}){unit}")
        if entry["status"] != "ok":
            print(f"  {stage:8s} {entry['status']}: {entry.get('error') or entry.get('reason')}")
    for goal in report["goals"]:
        print(f"  goal: {goal['goal']}: {goal['verdict']}")
    if settings.record:
        history = settings.history or default_history()
        append_history(report, history)
        print(f"[bench] recorded in {history}")
    print("[bench] wrote " + ", ".join(str(path) for path in written))
    if report.get("interrupted"):
        return 130
    return 1 if any(entry["status"] == "failed" for entry in report["stages"].values()) else 0


def _settings(args):
    """The run's BenchSettings, or why the arguments cannot be run (a usage error)."""
    from pathlib import Path

    import torch

    from benchmarks.suite.output import default_history
    from benchmarks.suite.settings import BenchSettings
    from dali_pipelines.shardset import PRETRAINING, ShardSet, ShardSetError

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        return ("--device cuda: torch sees no CUDA GPU here (torch.cuda.is_available() is False); "
                "use --device cpu")
    out = Path(args.out or time.strftime("xkd-bench-%Y%m%d-%H%M%S"))
    problem = unwritable_folder(out)
    if problem:
        return f"--out {problem}"
    if args.history and not args.record:
        return "--history is where --record appends: give --record too"
    history = Path(args.history) if args.history else default_history()
    if args.record and history is None:
        return ("--record appends to benchmarks/results/history.jsonl of a source checkout, and this xkd is "
                "installed without one: name a file with --history FILE")
    if args.record and (problem := unwritable_folder(history.parent)):
        return f"--history {problem}"
    if args.shards:
        try:
            ShardSet.from_path(args.shards, needs=PRETRAINING)
        except ShardSetError as error:
            return f"--shards {error}"
    return BenchSettings(device=device, preset=args.preset, stages=args.stages, out=out, repeats=args.repeats,
                         threads=args.threads, shards=args.shards, quick=args.quick, record=args.record,
                         history=Path(args.history) if args.history else None)


def run_compare(args) -> int:
    from benchmarks.suite.compare import ReportError, compare, load_report

    try:
        a, b = load_report(args.a), load_report(args.b)
    except ReportError as error:
        print(f"xkd bench compare: {error}", file=sys.stderr)
        return 2
    print(compare(a, b))
    return 0
