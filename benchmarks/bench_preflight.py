"""The shard preflight's cost: `ShardSet.from_path(..., needs=PRETRAINING)` over a large shard folder.

Makes `--shards` fake shards in a temporary folder (a manifest, and per shard an index of
`--samples-per-shard` samples of five members with realistic offsets and a sparse tar of the right
size), then times the check `--runs` times: the first run after writing (the files in the page
cache, as on a node that just copied them) and the median of all.

    python benchmarks/bench_preflight.py [--shards 10000] [--samples-per-shard 1000] [--runs 3] [--out FILE.json]

The last line printed is one JSON object."""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

if __name__ == "__main__":  # run as a script from a checkout: its packages (benchmarks/ too) without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.report import report  # noqa: E402
from dali_pipelines.shardset import PRETRAINING, ShardSet  # noqa: E402
from shards.format import FORMAT, MANIFEST, format_index  # noqa: E402

MEMBERS = (("mp4", 60000), ("flac", 90000), ("json", 600), ("lengths", 8), ("cls", 2))


def fake_shard(folder: Path, name: str, samples: int) -> dict:
    index, offset = [], 0
    for sample in range(samples):
        key = f"{name}_{sample:06d}"
        entries = []
        for ext, size in MEMBERS:
            offset += 512  # the member's header
            entries.append((ext, offset, size, f"{key}.{ext}"))
            offset += -(-size // 512) * 512
        index.append(entries)
    (folder / f"{name}.idx").write_text(format_index(index))
    tar_bytes = -(-(offset + 1024) // 10240) * 10240
    with open(folder / f"{name}.tar", "wb") as handle:
        handle.truncate(tar_bytes)  # sparse: the preflight reads sizes, not data
    return {"tar": f"{name}.tar", "idx": f"{name}.idx", "samples": samples, "bytes": tar_bytes, "hours": 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=10000)
    parser.add_argument("--samples-per-shard", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", default=None, help="also write the JSON here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="xkd-preflight-") as scratch:
        folder = Path(scratch)
        shards = [fake_shard(folder, f"shard-{i:06d}", args.samples_per_shard) for i in range(args.shards)]
        manifest = {"format": FORMAT, "complete": True, "has_video": True, "video_extension": "mp4",
                    "samples": sum(s["samples"] for s in shards), "shards": shards}
        (folder / MANIFEST).write_text(json.dumps(manifest))
        seconds = []
        for _ in range(args.runs):
            started = time.perf_counter()
            checked = ShardSet.from_path(str(folder), needs=PRETRAINING)
            seconds.append(time.perf_counter() - started)
            assert checked.samples == manifest["samples"] and not checked.left_out
    report({
        "command": "python benchmarks/bench_preflight.py " + shlex.join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "shards": args.shards,
        "samples_per_shard": args.samples_per_shard,
        "first_run_s": round(seconds[0], 3),
        "median_s": round(statistics.median(seconds), 3),
        "per_shard_us": round(statistics.median(seconds) / args.shards * 1e6, 1),
        "run_seconds": [round(s, 3) for s in seconds],
    }, args.out)


if __name__ == "__main__":
    main()
