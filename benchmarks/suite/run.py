"""One bench run: the chosen stages in turn, each in its own try, so that a stage that fails (or that
this machine cannot run) is reported with its error and the others still run; then the goals. The
report also says what ran where: the exact command, the date, the commit and the machine."""
from __future__ import annotations

import datetime
import os
import subprocess
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from benchmarks.suite.context import BenchContext
from benchmarks.suite.figures import Unavailable
from benchmarks.suite.goals import judge
from benchmarks.suite.settings import BenchSettings
from benchmarks.suite.stages import STAGE_FUNCTIONS

FORMAT = "xkd-bench"
VERSION = 1
SOURCE_ROOT = Path(__file__).resolve().parents[2]  # the checkout, when the bench runs from one


def git_commit(root: Path = SOURCE_ROOT) -> dict:
    """The commit of the checkout the code runs from, and whether its tracked files differ from it."""
    from xkd import __version__

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=True,
                              timeout=30).stdout.strip()

    if not (root / ".git").exists():
        return {"sha": None, "why": f"not run from a git checkout (xkd {__version__} installed at {root})"}
    try:
        return {"sha": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
                "xkd": __version__}
    except (OSError, subprocess.SubprocessError) as error:
        return {"sha": None, "why": f"git did not answer in {root}: {error}"}


def device_name(device: str) -> str:
    import torch

    if device == "cuda":
        return torch.cuda.get_device_name(0)
    return f"cpu ({os.cpu_count()} cores)"


def run_bench(settings: BenchSettings, say: Callable[[str], None] | None = None,
              stage_functions: dict | None = None) -> dict:
    """Measure `settings.stages`; the report as a dict (see output.py for the files)."""
    from benchmarks.report import machine

    stage_functions = stage_functions or STAGE_FUNCTIONS
    report = {"format": FORMAT, "version": VERSION, "command": settings.command(),
              "date": datetime.datetime.now().isoformat(timespec="seconds"), "commit": git_commit(),
              "machine": machine(), "device": device_name(settings.device), "settings": settings.as_dict(),
              "workload": {k: list(v) if isinstance(v, tuple) else v for k, v in vars(settings.workload).items()},
              "stages": {}}
    with tempfile.TemporaryDirectory(prefix="xkd-bench-") as scratch:
        context = BenchContext(settings, Path(scratch), say)
        for index, name in enumerate(settings.stages):
            context.stage = name
            context.progress(f"stage {index + 1}/{len(settings.stages)}")
            started = time.perf_counter()
            try:
                entry = {"status": "ok", **stage_functions[name](context).as_dict()}
            except Unavailable as why:
                entry = {"status": "not available", "reason": str(why)}
            except KeyboardInterrupt:
                for later in settings.stages[index:]:
                    report["stages"][later] = {"status": "not run", "reason": "interrupted (Ctrl-C)"}
                report["interrupted"] = True
                break
            except (Exception, SystemExit) as error:  # the scripts' functions stop with SystemExit too
                entry = {"status": "failed", "error": f"{type(error).__name__}: {error}",
                         "traceback": traceback.format_exc().splitlines()[-30:]}
            finally:
                context.release_memory()
            entry["seconds"] = round(time.perf_counter() - started, 1)
            report["stages"][name] = entry
            context.progress(_ending(entry))
    report["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]  # other work during the run
    report["goals"] = judge(report)
    return report


def _ending(entry: dict) -> str:
    if entry["status"] == "ok":
        return f"done in {entry['seconds']} s"
    if entry["status"] == "failed":
        return f"FAILED after {entry['seconds']} s: {entry['error']}"
    return f"{entry['status']}: {entry['reason']}"
