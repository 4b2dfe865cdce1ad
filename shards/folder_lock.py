"""One writer per folder: `xkd shards create` (per --part) and `xkd pretrain` (per --out) hold a lock
file while they write, so a second run pointed at the same folder is refused at once, naming the
holder, instead of the two overwriting each other's temporary files.

The lock is `fcntl.flock` on the file, not a file made with O_CREAT|O_EXCL: the kernel drops a flock
when its holder dies, however it dies (kill -9, the OOM killer, a lost node), so there is no stale
lock to guess about: no pid to test, no pid reused by an unrelated process taken for a live
holder, no race between two runs taking over the same dead lock. flock works on local disks and on
NFS (Linux maps it onto NFS byte-range locks, seen by every client) and on most cluster file
systems. The holder writes its host and pid into the file for the refusal message and empties it
on a clean exit; a file still naming someone when the lock is free was left by a run that was
killed, and taking it over says so. The file itself is never deleted: unlinking a locked file lets
a third process lock a new file of the same name while the second still holds the old one."""
from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
import warnings


class FolderBusy(RuntimeError):
    """Another live process holds the folder's lock."""


def _describe(holder: dict) -> str:
    return f"host {holder.get('host', '?')}, pid {holder.get('pid', '?')}" + (
        f", since {holder['since']}" if holder.get("since") else "")


class FolderLock:
    """`with FolderLock(path, folder_name):` holds the lock file at `path` (created as needed)."""

    def __init__(self, path: str, folder: str, command: str = "xkd"):
        self.path, self.folder, self.command = path, folder, command
        self._fd: int | None = None

    def acquire(self) -> "FolderLock":
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._read_holder(fd, wait_s=1.0)  # the holder may not have written itself in yet
            os.close(fd)
            raise FolderBusy(f"{self.folder} is being written by another run ({_describe(holder)}): wait "
                             f"for it to finish, or stop it, or choose another folder") from None
        except OSError as exc:
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                os.close(fd)
                raise
            warnings.warn(f"{self.folder}: this file system does not support locks ({exc.strerror}); a "
                          f"second run writing into this folder would not be noticed", stacklevel=2)
        left = self._read_holder(fd)
        if left:
            warnings.warn(f"{self.folder}: taking over the lock left by a run that ended without releasing it "
                          f"({_describe(left)}; killed?)", stacklevel=2)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "command": self.command,
                                  "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode(), 0)
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        os.ftruncate(self._fd, 0)  # a clean exit leaves nobody named
        os.close(self._fd)  # closing drops the flock
        self._fd = None

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    @staticmethod
    def _read_holder(fd: int, wait_s: float = 0.0) -> dict:
        deadline = time.monotonic() + wait_s
        while True:
            text = os.pread(fd, 4096, 0)
            if text:
                try:
                    holder = json.loads(text)
                    return holder if isinstance(holder, dict) else {}
                except ValueError:
                    pass  # caught mid-write
            if time.monotonic() >= deadline:
                return {}
            time.sleep(0.05)
