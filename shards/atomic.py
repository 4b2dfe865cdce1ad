"""Files written whole or not at all: the content goes to a temporary name beside the target, is
synced to disk and renamed over it (a rename within one folder is atomic), so a reader, or a run
after a crash, finds the old file or the whole new one, never half of one.

It lives in `shards`, the bottom package (it imports nothing of the project's), so the shard tool
and the training side (checkpoint markers, backbone files) write through this one helper without
the shard tool depending on the training package."""
from __future__ import annotations

import json
import os
from collections.abc import Callable


def replace_synced(tmp: str, final: str) -> None:
    """Sync the finished file `tmp` to disk, then rename it to `final`."""
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, final)


def atomic_write(final: str | os.PathLike, write: Callable[[str], object], tmp: str | None = None) -> None:
    """`write(tmp)` writes the content under a temporary name (default `FINAL.PID.tmp`), then it is
    synced and renamed to `final`; if writing fails, the temporary file is removed."""
    final = os.fspath(final)
    tmp = tmp or f"{final}.{os.getpid()}.tmp"
    try:
        write(tmp)
        replace_synced(tmp, final)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_text(final: str | os.PathLike, text: str, tmp: str | None = None) -> None:
    def write(path: str) -> None:
        with open(path, "w") as handle:
            handle.write(text)

    atomic_write(final, write, tmp)


def atomic_write_json(final: str | os.PathLike, payload) -> None:
    """`payload` as JSON, keys sorted (the shard tool's plan, records and manifest; checkpoint markers)."""
    atomic_write_text(final, json.dumps(payload, indent=1, sort_keys=True))
