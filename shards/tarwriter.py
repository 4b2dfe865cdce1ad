"""Writes one shard: a deterministic tar (fixed mtime/owner, ustar headers), its DALI index (the
`v1.2` format of DALI's wds2idx) and nothing half-written: everything goes to temporary names
that `commit()` renames into place, index first and tar last."""
from __future__ import annotations

import io
import os
import tarfile

TAR_BLOCK = tarfile.BLOCKSIZE  # 512
TAR_RECORD = tarfile.RECORDSIZE  # the archive is padded to a multiple of this on close
TMP_SUFFIX = ".tmp"

IndexEntry = tuple[str, int, int, str]  # one member: (extension, data offset, size, member name)


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
        with open(self.tar_path + TMP_SUFFIX, "rb") as handle:
            os.fsync(handle.fileno())
        write_index(self.idx_path, self._index)
        os.replace(self.tar_path + TMP_SUFFIX, self.tar_path)
        return os.path.getsize(self.tar_path)

    def abort(self) -> None:
        self._tar.close()
        for path in (self.tar_path, self.idx_path):
            if os.path.exists(path + TMP_SUFFIX):
                os.remove(path + TMP_SUFFIX)


def format_index(samples: list[list[IndexEntry]]) -> str:
    """The text of a v1.2 index: a header, then one line per sample listing its members."""
    lines = [" ".join(f"{ext} {offset} {size} {name}" for ext, offset, size, name in members)
             for members in samples]
    return f"v1.2 {len(lines)}\n" + "".join(line + "\n" for line in lines)


def write_index(idx_path: str, samples: list[list[IndexEntry]]) -> None:
    """Write an index under a temporary name, sync it and rename it into place: a reader sees the
    old index or the whole new one, never half of one."""
    with open(idx_path + TMP_SUFFIX, "w") as handle:
        handle.write(format_index(samples))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(idx_path + TMP_SUFFIX, idx_path)


def tar_samples(archive: tarfile.TarFile):
    """(key, [(member, index entry), ...]) per sample of an open tar, in archive order: the samples
    that a v1.2 index lists (members sharing the name before the first dot, regular files only)."""
    key, members = None, []
    for member in archive:
        if not member.isfile():
            continue
        name_key, ext = member.name.split(".", 1) if "." in member.name else (member.name, "")
        if name_key != key and members:
            yield key, members
            members = []
        key = name_key
        members.append((member, (ext, member.offset_data, member.size, member.name)))
    if members:
        yield key, members


def read_index(idx_path: str) -> list[list[IndexEntry]]:
    """Parse a v1.2 index: per sample, its (extension, data offset, size, member name)."""
    with open(idx_path) as handle:
        header = handle.readline().split()
        if len(header) != 2 or header[0] != "v1.2":
            raise ValueError(f"{idx_path}: not a v1.2 DALI webdataset index")
        samples = []
        for line in handle:
            fields = line.split()
            if len(fields) % 4:
                raise ValueError(f"{idx_path}: malformed line {line.strip()!r}")
            samples.append([(fields[i], int(fields[i + 1]), int(fields[i + 2]), fields[i + 3])
                            for i in range(0, len(fields), 4)])
    if len(samples) != int(header[1]):
        raise ValueError(f"{idx_path}: header says {header[1]} samples, found {len(samples)}")
    return samples
