"""`xkd shards create`: plan, transcode in parallel, pack into shards, resume after a kill.

The plan is the list of inputs in a seeded random order (shuffled across shards, since DALI only
shuffles within a small buffer). A run walks its share of the plan in order and packs accepted
samples into shards, starting a new one when `--samples-per-shard` or `--shard-size` would be
exceeded. Each finished shard gets a record under `.state/` naming the plan positions it consumed
(its samples and the rejected inputs among them). A re-run skips the recorded positions, so a
killed run resumes where its last complete shard ended and ends with the same shards as an
uninterrupted one. `--part I/N` takes the I-th contiguous slice of the plan; parts write shards
named `{name}-p{I}-{j}` and can run on different machines into one folder."""
from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import sys
import time
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from shards.atomic import atomic_write_json
from shards.folder_lock import FolderLock
from shards.format import TMP_SUFFIX, index_path
from shards.inputs import InputItem, InputSet, Rejection
from shards.manifest import STATE_DIR, write_manifest
from shards.options import ShardOptions
from shards.pool import OrderedPool
from shards.sample import Sample, make_sample
from shards.tarwriter import ShardWriter, member_bytes, tar_size_with


class PlanMismatch(RuntimeError):
    pass


@dataclass(frozen=True)
class Part:
    index: int = 0
    count: int = 1

    @classmethod
    def parse(cls, text: str | None) -> "Part":
        if not text:
            return cls()
        try:
            index, count = (int(v) for v in text.split("/"))
        except ValueError:
            raise ValueError(f"--part {text}: expected I/N, e.g. 0/4") from None
        if not 0 <= index < count:
            raise ValueError(f"--part {text}: I must be in 0..N-1")
        return cls(index, count)

    def shard_prefix(self, name: str) -> str:
        return name if self.count == 1 else f"{name}-p{self.index:03d}"

    def slice(self, total: int) -> tuple[int, int]:
        return self.index * total // self.count, (self.index + 1) * total // self.count


def plan_order(items: list[InputItem], opts: ShardOptions) -> list[InputItem]:
    if not opts.shuffle:
        return list(items)
    permutation = np.random.default_rng(opts.seed).permutation(len(items))
    return [items[i] for i in permutation]


def plan_fingerprint(order: list[InputItem], inputs: InputSet, opts: ShardOptions, part: Part) -> str:
    # a multi-label input adds its labels; single-label plans keep the fingerprint older runs wrote
    payload = json.dumps({
        "options": opts.to_dict(),
        "parts": part.count,
        "classes": inputs.classes,
        "inputs": [[item.path, item.key, item.label] + ([list(item.labels)] if item.labels is not None else [])
                   for item in order],
    }, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def create_shards(inputs: InputSet, out_dir: str, opts: ShardOptions, *, workers: int = 1,
                  part: Part = Part(), progress: bool = True) -> dict:
    """Writes this part's shards into out_dir and (re)writes manifest.json. Returns the manifest.
    Raises FolderBusy while another run writes the same part."""
    order = plan_order(inputs.items, opts)
    state_dir = os.path.join(out_dir, STATE_DIR)
    os.makedirs(state_dir, exist_ok=True)
    prefix = part.shard_prefix(opts.name)
    # one writer per part: a second run of the same part would delete this one's temporary files
    folder = out_dir if part.count == 1 else f"{out_dir} (--part {part.index}/{part.count})"
    with FolderLock(os.path.join(state_dir, f"{prefix}.lock"), folder, "xkd shards create"):
        _check_plan(state_dir, order, inputs, opts, part)
        first, last = part.slice(len(order))
        records = _completed_records(out_dir, prefix)
        _remove_leftovers(out_dir, prefix, next_shard=len(records))
        done = records[-1]["end"] if records else first
        if not (records and records[-1]["final"]):
            _run_part(order, done, last, out_dir, opts, prefix, len(records), workers, progress, first,
                      classes=inputs.classes)
        return write_manifest(out_dir)


def _check_plan(state_dir, order, inputs, opts, part) -> None:
    plan_path = os.path.join(state_dir, "plan.json")
    fingerprint = plan_fingerprint(order, inputs, opts, part)
    if os.path.exists(plan_path):
        with open(plan_path) as handle:
            saved = json.load(handle)
        if saved["fingerprint"] != fingerprint:
            raise PlanMismatch(
                f"{os.path.dirname(state_dir)} holds shards made from other inputs or options "
                f"(saved options: {saved['options']}, parts: {saved['parts']}); use a new OUT_DIR or delete this one")
        return
    atomic_write_json(plan_path, {
        "fingerprint": fingerprint, "options": opts.to_dict(), "parts": part.count,
        "inputs": len(order), "classes": inputs.classes, "multi_label": inputs.multi_label,
        "rejected_before_decoding": [r.to_dict() for r in inputs.rejected],
    })


def _record_path(out_dir: str, prefix: str, shard_index: int) -> str:
    return os.path.join(out_dir, STATE_DIR, f"{prefix}-{shard_index:06d}.json")


def _completed_records(out_dir: str, prefix: str) -> list[dict]:
    """This part's records 0..k-1 whose shard files are in place (stop at the first gap)."""
    records = []
    while os.path.exists(path := _record_path(out_dir, prefix, len(records))):
        with open(path) as handle:
            record = json.load(handle)
        tar = record.get("tar")
        if tar and not (os.path.exists(os.path.join(out_dir, tar))
                        and os.path.getsize(os.path.join(out_dir, tar)) == record["bytes"]):
            break
        records.append(record)
    return records


def _remove_leftovers(out_dir: str, prefix: str, next_shard: int) -> None:
    """Temporary files of a killed run, and shards past the last record (renamed, not recorded)."""
    ours = re.compile(rf"{re.escape(prefix)}-(\d{{6}})\.")
    for folder in (out_dir, os.path.join(out_dir, STATE_DIR)):
        for name in os.listdir(folder):
            match = ours.match(name)
            if match and (name.endswith(TMP_SUFFIX) or int(match.group(1)) >= next_shard):
                os.remove(os.path.join(folder, name))


class _PartWriter:
    """Packs results, in plan order, into consecutive shards and records each one."""

    def __init__(self, out_dir, opts: ShardOptions, prefix: str, next_shard: int, start: int):
        self.out_dir, self.opts, self.prefix = out_dir, opts, prefix
        self.shard_index, self.start = next_shard, start
        self.writer: ShardWriter | None = None
        self.samples: list[dict] = []
        self.rejected: list[dict] = []

    def add(self, position: int, result) -> None:
        if isinstance(result, Rejection):
            self.rejected.append(result.to_dict())
            return
        members = result.members
        cap = self.opts.shard_size
        if cap is not None and tar_size_with(member_bytes(members)) > cap:
            self.rejected.append(Rejection(result.meta["source_path"],
                                           f"sample alone is larger than --shard-size ({cap} bytes)",
                                           "too_large").to_dict())
            return
        if self.writer is not None and (
                self.writer.samples >= self.opts.samples_per_shard
                or (cap is not None and self.writer.size_if_added(members) > cap)):
            self.finish(end=position, final=False)
        if self.writer is None:
            tar = os.path.join(self.out_dir, f"{self.prefix}-{self.shard_index:06d}.tar")
            self.writer = ShardWriter(tar, index_path(tar))
        self.writer.add(result.key, members)
        self.samples.append({"key": result.key, "duration": result.duration,
                             "has_audio": result.meta["has_audio"], "label_id": result.meta["label_id"]})

    def finish(self, end: int, final: bool) -> None:
        record = {"start": self.start, "end": end, "final": final, "tar": None, "idx": None, "bytes": 0,
                  "samples": self.samples, "rejected": self.rejected}
        if self.writer is not None:
            record["bytes"] = self.writer.commit()
            record["tar"] = os.path.basename(self.writer.tar_path)
            record["idx"] = os.path.basename(self.writer.idx_path)
        if self.writer is not None or final:
            atomic_write_json(_record_path(self.out_dir, self.prefix, self.shard_index), record)
            self.shard_index += 1
        self.writer, self.samples, self.rejected, self.start = None, [], [], end

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()


def _run_part(order, done, last, out_dir, opts, prefix, next_shard, workers, progress, first, classes) -> None:
    packer = _PartWriter(out_dir, opts, prefix, next_shard, start=done)
    work = functools.partial(make_sample, opts=opts, classes=classes)
    bar = tqdm(total=last - first, initial=done - first, unit="video", disable=not progress,
               file=sys.stderr, dynamic_ncols=True, mininterval=1.0)
    seconds, rejected, started = 0.0, 0, time.monotonic()
    positions = range(done, last)
    try:
        with OrderedPool(work, workers) as pool:
            for position, (_, result) in zip(positions, pool.map(order[p] for p in positions)):
                packer.add(position, result)
                if isinstance(result, Sample):
                    seconds += result.duration
                else:
                    rejected += 1
                bar.update(1)
                bar.set_postfix(hours_per_s=f"{seconds / 3600 / max(time.monotonic() - started, 1e-9):.3f}",
                                rejected=rejected, refresh=False)
        packer.finish(end=last, final=True)
    except BaseException:
        packer.abort()
        raise
    finally:
        bar.close()
