"""How every benchmark hands in its result: one JSON object as the last printed line, and the same
object in a file under benchmarks/results/ (always on a GPU, where the figures are the goal's)."""
from __future__ import annotations

import json
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def report(result: dict, out: str | Path | None, gpu_name: str | None = None, stem: str = "") -> None:
    """Write `result` to `out`, or on a GPU to results/{stem}_{gpu}.json when `out` is None; then
    print it as one line."""
    if out is None and gpu_name:
        out = RESULTS_DIR / f"{stem}_{gpu_name.replace(' ', '_')}.json"
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result), flush=True)
