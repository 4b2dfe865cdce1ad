"""Writes one shard: a deterministic tar (fixed mtime/owner, ustar headers), its DALI index
(`shards/format.py`) and nothing half-written: everything goes to temporary names that `commit()`
renames into place, index first and tar last."""
from __future__ import annotations

import io
import os
import tarfile

from shards.atomic import replace_synced
from shards.format import TMP_SUFFIX, IndexEntry, write_index

TAR_BLOCK = tarfile.BLOCKSIZE  # 512
TAR_RECORD = tarfile.RECORDSIZE  # the archive is padded to a multiple of this on close


def _padded(size: int) -> int:
    return -(-size // TAR_BLOCK) * TAR_BLOCK


def tar_size_with(data_offset_end: int) -> int:
    """Size of a closed archive whose members end at `data_offset_end`."""
    return -(-(data_offset_end + 2 * TAR_BLOCK) // TAR_RECORD) * TAR_RECORD


def member_bytes(members) -> int:
    """Bytes that (extension, data) members take in a tar: a ustar header plus padded data each."""
    return sum(TAR_BLOCK + _padded(len(data)) for _, data in members)


class ShardWriter:
    def __init__(self, tar_path: str, idx_path: str):
        self.tar_path, self.idx_path = tar_path, idx_path
        self._tar = tarfile.open(tar_path + TMP_SUFFIX, "w", format=tarfile.USTAR_FORMAT)
        self._index: list[list[IndexEntry]] = []
        self.samples = 0

    def size_if_added(self, members) -> int:
        """Final tar size if this sample were added now (used for --shard-size)."""
        return tar_size_with(self._tar.offset + member_bytes(members))

    def add(self, key: str, members) -> None:
        components = []
        for extension, data in members:
            info = tarfile.TarInfo(f"{key}.{extension}")
            info.size, info.mtime, info.mode = len(data), 0, 0o444
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            self._tar.addfile(info, io.BytesIO(data))
            data_offset = self._tar.offset - _padded(len(data))
            components.append((extension, data_offset, len(data), info.name))
        self._index.append(components)
        self.samples += 1

    def commit(self) -> int:
        """Close, sync and rename into place (index first, tar last); returns the tar's size."""
        self._tar.close()
        write_index(self.idx_path, self._index)
        replace_synced(self.tar_path + TMP_SUFFIX, self.tar_path)
        return os.path.getsize(self.tar_path)

    def abort(self) -> None:
        self._tar.close()
        for path in (self.tar_path, self.idx_path):
            if os.path.exists(path + TMP_SUFFIX):
                os.remove(path + TMP_SUFFIX)
