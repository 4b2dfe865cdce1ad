"""Argument checks shared by the commands. A bad argument is a usage error: one message on stderr and
exit status 2, before any work starts."""
from __future__ import annotations

import argparse
import os
from pathlib import Path


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: must be at least 1")
    return value


def positive_float(text: str) -> float:
    """An argparse type: a number above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid float value: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{value}: must be positive")
    return value


def unwritable_folder(path: str | os.PathLike) -> str | None:
    """Why `path` cannot be, or be made, a folder to write into; None when it can."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        return f"{path}: exists and is not a folder"
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{path}: cannot be made, {existing} is not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{path}: cannot be written, {existing} is not writable"
    return None


def lock_on_rank_0(lock, rank: int) -> str | None:
    """Rank 0 takes the run folder's lock (a `shards.folder_lock.FolderLock`); the refusal's text
    if another run holds it. The other ranks of the same run are no second writer."""
    from shards.folder_lock import FolderBusy

    if rank != 0:
        return None
    try:
        lock.acquire()
    except FolderBusy as error:
        return str(error)
    return None
