"""`xkd shards index DIR`: (re)write the DALI index of every shard that lacks one or whose index does
not match its tar (shards copied without their `.idx`, an index from another tool or version).

The index is read off the tar's own headers (no decoding) and written by `shards/format.py`'s
`write_index`, so it is byte for byte the index `xkd shards create` writes, and atomically. A tar
that is not an xkd shard is refused, since a pipeline could not read it anyway: every member must be
`KEY.EXT` with one of our extensions, each sample's members side by side, each sample with its
`.json` and `.lengths`, and the tar whole (a truncated copy is refused, not indexed)."""
from __future__ import annotations

import glob
import os
import sys
import tarfile
from dataclasses import dataclass, field

from tqdm import tqdm

from shards.format import (MEMBER_EXTENSIONS, REQUIRED_MEMBERS, IndexEntry, format_index, index_path, tar_samples,
                           write_index)


class NotAShard(ValueError):
    """A tar that `xkd shards create` did not write (or that lost its end)."""


def shard_index(tar_path: str) -> list[list[IndexEntry]]:
    """The v1.2 index of one of our tars, or NotAShard saying why it is not one."""
    name = os.path.basename(tar_path)
    index, seen = [], set()
    try:
        with tarfile.open(tar_path, "r:") as archive:  # ours are never compressed
            for key, members in tar_samples(archive):
                entries = [entry for _, entry in members]
                extensions = {ext for ext, *_ in entries}
                if key in seen:
                    raise NotAShard(f"{name}: the members of sample {key} are not side by side")
                if unknown := sorted(extensions - MEMBER_EXTENSIONS):
                    raise NotAShard(f"{name}: member {key}.{unknown[0]} is not an xkd sample member "
                                    f"(expected {', '.join(sorted(MEMBER_EXTENSIONS))})")
                if missing := sorted(REQUIRED_MEMBERS - extensions):
                    raise NotAShard(f"{name}: sample {key} has no .{missing[0]} member")
                seen.add(key)
                index.append(entries)
    except (tarfile.TarError, EOFError) as exc:  # a cut tar ends in "unexpected end of data"
        raise NotAShard(f"{name}: unreadable tar: {exc}") from None
    if not index:
        raise NotAShard(f"{name}: holds no sample")
    return index


@dataclass
class IndexReport:
    written: list[str] = field(default_factory=list)
    unchanged: int = 0
    refused: list[str] = field(default_factory=list)


def index_folder(folder: str, progress: bool = True) -> IndexReport:
    """Rewrite each `*.tar`'s `.idx` in `folder` where it is missing or differs; a tar that is not
    ours is named in `refused` and the others are still indexed."""
    tars = sorted(glob.glob(os.path.join(glob.escape(folder), "*.tar")))
    if not tars:
        raise FileNotFoundError(f"{folder}: no .tar file in this folder")
    report = IndexReport()
    for tar in tqdm(tars, unit="shard", disable=not progress, file=sys.stderr, dynamic_ncols=True,
                    mininterval=1.0):
        try:
            index = shard_index(tar)
        except (NotAShard, OSError) as exc:
            report.refused.append(str(exc))
            continue
        idx = index_path(tar)
        if os.path.isfile(idx):
            with open(idx) as handle:
                if handle.read() == format_index(index):
                    report.unchanged += 1
                    continue
        write_index(idx, index)
        report.written.append(os.path.basename(idx))
    return report
