"""The on-disk shard format, stated once: what `xkd shards` writes and checks and what the
pipelines (`dali_pipelines/shardset.py`) read.

A shard folder holds `{name}-NNNNNN.tar` (or `{name}-pIII-NNNNNN.tar` for `--part`), a DALI index
`.idx` beside each tar, and `manifest.json`.

* Members: a sample is the regular-file members `KEY.EXT` of a tar that share KEY (the name before
  the first dot), side by side. EXT is one of `MEMBER_EXTENSIONS`; `.json` and `.lengths` are in
  every sample, the video is `.mp4` (`.mkv` for `--codec copy`), the audio `.flac`; a labelled
  sample has `.cls` (its class id) or, in a multi-label set, `.labels` (its class ids, ascending,
  comma-separated, as the JSON's `label_ids`).
* Index: the `v1.2` format of DALI's `wds2idx`: a header `v1.2 SAMPLES`, then one line per sample
  listing each member as `EXT OFFSET SIZE NAME` (OFFSET: where the member's data starts in the tar).
* Manifest: a JSON object tagged `"format": "xkd-shards/1"`. What readers rely on: `complete`
  (every part finished), `samples`, `shards` (each `tar`, `idx`, `samples`, `bytes`), `members`,
  `has_video`, `video_extension`, `classes` (name -> id), `multi_label`; `shards/manifest.py` builds it.
"""
from __future__ import annotations

import json
import os
import tarfile

from shards.atomic import atomic_write_text

FORMAT = "xkd-shards/1"
MANIFEST = "manifest.json"
INDEX_VERSION = "v1.2"
TMP_SUFFIX = ".tmp"  # a shard's files while they are written; `create` removes leftovers by it

VIDEO_EXTENSIONS = ("mp4", "mkv")  # what we encode / `--codec copy` (Matroska holds any codec)
AUDIO_EXTENSION = "flac"
MEMBER_EXTENSIONS = {*VIDEO_EXTENSIONS, AUDIO_EXTENSION, "json", "lengths", "cls", "labels"}
REQUIRED_MEMBERS = {"json", "lengths"}  # in every sample, video or audio-only

IndexEntry = tuple[str, int, int, str]  # one member: (extension, data offset, size, member name)


def split_member(name: str) -> tuple[str, str]:
    """(key, extension) of a member name: the key is what comes before the first dot."""
    key, _, ext = name.partition(".")
    return key, ext


def index_path(tar_path: str) -> str:
    return os.path.splitext(tar_path)[0] + ".idx"


def load_manifest(out_dir: str) -> dict:
    """manifest.json of a shard folder; FileNotFoundError without one, ValueError if it is not ours."""
    path = os.path.join(out_dir, MANIFEST)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no manifest (is {out_dir} a shard folder made by `xkd shards create`?)")
    with open(path) as handle:
        manifest = json.load(handle)
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path}: unknown manifest format {manifest.get('format')!r}")
    return manifest


def format_index(samples: list[list[IndexEntry]]) -> str:
    """The text of a v1.2 index: a header, then one line per sample listing its members."""
    lines = [" ".join(f"{ext} {offset} {size} {name}" for ext, offset, size, name in members)
             for members in samples]
    return f"{INDEX_VERSION} {len(lines)}\n" + "".join(line + "\n" for line in lines)


def parse_index_header(line: str) -> int:
    """The sample count a v1.2 header line declares; ValueError if it is not one."""
    fields = line.split()
    if len(fields) != 2 or fields[0] != INDEX_VERSION:
        raise ValueError(f"not a {INDEX_VERSION} DALI webdataset index")
    return int(fields[1])


def parse_index_line(line: str) -> list[IndexEntry]:
    """One sample's members from its index line; ValueError if the line is malformed."""
    fields = line.split()
    if len(fields) % 4:
        raise ValueError(f"malformed line {line.strip()!r}")
    return [(fields[i], int(fields[i + 1]), int(fields[i + 2]), fields[i + 3]) for i in range(0, len(fields), 4)]


def read_index(idx_path: str) -> list[list[IndexEntry]]:
    """Parse a v1.2 index: per sample, its (extension, data offset, size, member name)."""
    with open(idx_path) as handle:
        try:
            declared = parse_index_header(handle.readline())
            samples = [parse_index_line(line) for line in handle]
        except ValueError as error:
            raise ValueError(f"{idx_path}: {error}") from None
    if len(samples) != declared:
        raise ValueError(f"{idx_path}: header says {declared} samples, found {len(samples)}")
    return samples


def write_index(idx_path: str, samples: list[list[IndexEntry]]) -> None:
    """Write an index atomically: a reader sees the old index or the whole new one."""
    atomic_write_text(idx_path, format_index(samples), tmp=idx_path + TMP_SUFFIX)


def tar_samples(archive: tarfile.TarFile):
    """(key, [(member, index entry), ...]) per sample of an open tar, in archive order: the samples
    that a v1.2 index lists (members sharing the name before the first dot, regular files only)."""
    key, members = None, []
    for member in archive:
        if not member.isfile():
            continue
        name_key, ext = split_member(member.name)
        if name_key != key and members:
            yield key, members
            members = []
        key = name_key
        members.append((member, (ext, member.offset_data, member.size, member.name)))
    if members:
        yield key, members
