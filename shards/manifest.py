"""manifest.json (its format: `shards/format.py`): what a shard folder holds, rebuilt from the
per-shard records under `.state/` (so parts running on several machines each bring it up to date,
and the last one completes it)."""
from __future__ import annotations

import glob
import json
import os
from collections import Counter

from shards.atomic import atomic_write_json
from shards.format import FORMAT, MANIFEST
from shards.options import ShardOptions

STATE_DIR = ".state"


def _load_records(out_dir: str) -> list[dict]:
    records = []
    for path in _record_names(out_dir):
        with open(path) as handle:
            records.append(json.load(handle))
    return records


def build_manifest(out_dir: str) -> dict:
    state_dir = os.path.join(out_dir, STATE_DIR)
    with open(os.path.join(state_dir, "plan.json")) as handle:
        plan = json.load(handle)
    records = _load_records(out_dir)
    shards, rejected, finals = [], list(plan["rejected_before_decoding"]), 0
    samples = with_audio = 0
    seconds = 0.0
    positions = 0
    for record in records:
        rejected += record["rejected"]
        positions += record["end"] - record["start"]
        finals += record["final"]
        if record["tar"]:
            shard_seconds = sum(s["duration"] for s in record["samples"])
            shards.append({"tar": record["tar"], "idx": record["idx"], "samples": len(record["samples"]),
                           "bytes": record["bytes"], "hours": round(shard_seconds / 3600, 6)})
            samples += len(record["samples"])
            with_audio += sum(s["has_audio"] for s in record["samples"])
            seconds += shard_seconds
    options = plan["options"]
    members = ShardOptions(**options).members
    multi_label = plan.get("multi_label", False)  # plans written before multi-label sets lack it
    label_member = ["labels"] if multi_label else ["cls"] if plan["classes"] else []
    return {
        "format": FORMAT,
        # complete: every part finished and every planned input was either packed or rejected
        "complete": finals == plan["parts"] and positions == plan["inputs"],
        "parts": plan["parts"],
        "options": options,
        "has_video": not options["audio_only"],
        "video_extension": None if options["audio_only"] else members[0],
        "members": members + label_member,
        "classes": plan["classes"],
        "num_classes": len(plan["classes"]),
        "multi_label": multi_label,
        "inputs": plan["inputs"] + len(plan["rejected_before_decoding"]),
        "samples": samples,
        "samples_with_audio": with_audio,
        "hours": round(seconds / 3600, 6),
        "bytes": sum(s["bytes"] for s in shards),
        "shards": sorted(shards, key=lambda s: s["tar"]),
        "rejected_counts": dict(sorted(Counter(r["category"] for r in rejected).items())),
        "rejected": sorted(rejected, key=lambda r: r["path"]),
    }


def _record_names(out_dir: str) -> list[str]:
    return sorted(glob.glob(os.path.join(out_dir, STATE_DIR, "*-[0-9]*.json")))


def write_manifest(out_dir: str) -> dict:
    """Parts finishing at the same moment could each write a manifest that misses the other's
    last shard: rebuild until the records seen before and after writing agree."""
    while True:
        seen = _record_names(out_dir)
        manifest = build_manifest(out_dir)
        atomic_write_json(os.path.join(out_dir, MANIFEST), manifest)
        if _record_names(out_dir) == seen:
            return manifest

