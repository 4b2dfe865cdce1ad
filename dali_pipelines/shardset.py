"""Which tar shards (and DALI index files) a pipeline reads: a shard folder made by
`xkd shards create` (its manifest.json), or a glob pattern of .tar files with .idx beside them.

Opening a set is also its preflight check, before any pipeline is built: every tar is there with
its index, each index's last member lies inside its tar (a cut copy), the counts agree with the
manifest, and the set holds the members the caller needs (pretraining: video and audio). It reads
the first and last lines of each index and the size of each tar, nothing else: no decoding; 0.8 s
for 10,000 shards of 1,000 samples on the 2-core CPU machine's local disk, files in the page cache
(`benchmarks/bench_preflight.py`, `benchmarks/results/preflight_cpu_2core.json`). A broken shard is
refused with one message naming it and the command that repairs or finds it, or, with
`skip_bad`, left out with a warning and named in `left_out`. The format itself (manifest, index
lines, member extensions) is `shards/format.py`'s."""
from __future__ import annotations

import glob
import os
import warnings
from dataclasses import dataclass

from shards.format import (AUDIO_EXTENSION, VIDEO_EXTENSIONS, index_path, load_manifest, parse_index_header,
                           parse_index_line, read_index, split_member, write_index)

MEMBERS_OF = {"video": VIDEO_EXTENSIONS, "audio": (AUDIO_EXTENSION,)}  # what a modality needs in each sample
PRETRAINING = ("video", "audio")
_PEEK = 8192  # bytes read from each end of an index: many whole lines (one is ~200 bytes)


class ShardSetError(ValueError):
    pass


@dataclass(frozen=True)
class ShardSet:
    tars: tuple[str, ...]
    indexes: tuple[str, ...]
    samples: int
    video_extension: str = "mp4"
    has_video: bool = True
    left_out: tuple[str, ...] = ()  # "TAR: problem; remedy" of each shard the preflight left out

    @classmethod
    def from_path(cls, location: str, *, needs: tuple[str, ...] = (), skip_bad: bool = False) -> "ShardSet":
        """The checked set at `location`; ShardSetError when it cannot be read as asked.
        needs: modalities every sample must have ("video", "audio"). skip_bad: leave broken shards
        out (with a warning) instead of refusing the set."""
        listing = _list_folder(location) if os.path.isdir(location) else _list_pattern(location)
        return listing.checked(needs, skip_bad)

    def without(self, excluded, folder: str) -> "ShardSet":
        """This set minus the (tar, key) samples in `excluded`, through filtered index files
        written to `folder` (the tars are untouched)."""
        tars, indexes, samples = [], [], self.samples
        for tar, index in zip(self.tars, self.indexes):
            bad = {key for bad_tar, key in excluded if bad_tar == tar}
            if bad:
                listed = read_index(index)
                kept = [members for members in listed if split_member(members[0][3])[0] not in bad]
                samples -= len(listed) - len(kept)
                if not kept:
                    continue
                index = os.path.join(folder, f"{len(indexes):06d}-{os.path.basename(index)}")
                write_index(index, kept)
            tars.append(tar)
            indexes.append(index)
        return ShardSet(tuple(tars), tuple(indexes), samples, self.video_extension, self.has_video, self.left_out)

    def shard_samples(self) -> list[int]:
        """Samples in each shard, from its index file."""
        return [_peek_index(index).samples for index in self.indexes]

    def samples_per_rank(self, num_ranks: int) -> int:
        """Samples every rank gets (DALI splits by sample count; the smallest share)."""
        return self.samples // num_ranks

    def batches_per_rank(self, num_ranks: int, batch_size: int) -> int:
        """Full batches every rank can make in an epoch (at least one, or ValueError)."""
        per_rank = self.samples_per_rank(num_ranks)
        if per_rank < batch_size:
            raise ValueError(f"{per_rank} samples per rank cannot fill one batch of {batch_size}")
        return per_rank // batch_size


@dataclass(frozen=True)
class _Shard:
    tar: str
    index: str
    samples: int | None = None  # what the manifest says, if there is one
    bytes: int | None = None


@dataclass(frozen=True)
class _Peek:
    """What the preflight reads of one shard."""
    samples: int  # the index header's count
    extensions: tuple[str, ...]  # members of the first sample
    end: int  # where the last member's data ends


@dataclass(frozen=True)
class _Listing:
    """A set as listed (by a manifest or a pattern), not yet checked."""
    where: str
    shards: tuple[_Shard, ...]
    manifest: dict | None = None

    def checked(self, needs: tuple[str, ...], skip_bad: bool) -> ShardSet:
        good, problems, peeks = [], [], []
        for shard in self.shards:
            try:
                peeks.append(_check_shard(shard))
                good.append(shard)
            except _BrokenShard as broken:
                problems.append(f"{shard.tar}: {broken}; {broken.remedy(os.path.dirname(shard.tar) or '.')}")
        self._check_counts()
        if good:
            self._check_members(peeks[0], needs)
        if problems and not skip_bad:
            more = f" (and {len(problems) - 1} more shard(s))" if len(problems) > 1 else ""
            raise ShardSetError(f"{problems[0]}{more}")
        for problem in problems:
            warnings.warn(f"shard left out: {problem}", stacklevel=3)
        if not good:
            raise ShardSetError(f"{self.where}: no shard can be read ({problems[0]})")
        video_extension, has_video = self._kind(peeks[0])
        samples = sum(s.samples if s.samples is not None else p.samples for s, p in zip(good, peeks))
        return ShardSet(tuple(s.tar for s in good), tuple(s.index for s in good), samples,
                        video_extension=video_extension, has_video=has_video, left_out=tuple(problems))

    def _check_counts(self) -> None:
        if self.manifest is None:
            return
        listed = sum(s.samples for s in self.shards)
        if listed != self.manifest["samples"]:
            raise ShardSetError(f"{self.where}/manifest.json lists shards of {listed} samples in all but says "
                                f"{self.manifest['samples']}: run the `xkd shards create` command that made it "
                                "again (a finished run only rewrites its manifest)")

    def _check_members(self, first: _Peek, needs: tuple[str, ...]) -> None:
        """Shard sets hold one kind of sample: the first one's members tell it."""
        for modality in needs:
            if not any(ext in MEMBERS_OF[modality] for ext in first.extensions):
                hint = ("; these are --audio-only shards (for audio evaluation): shard the videos without "
                        "--audio-only" if modality == "video" else "")
                raise ShardSetError(f"{self.where}: the shards hold no {modality} (members: "
                                    f"{', '.join(first.extensions)}), but {' and '.join(needs)} are needed{hint}")

    def _kind(self, first: _Peek) -> tuple[str, bool]:
        """(video member's extension, whether there is video): the manifest's word, else the first index's."""
        if self.manifest is not None:
            return self.manifest.get("video_extension") or "mp4", self.manifest.get("has_video", True)
        video = [ext for ext in first.extensions if ext in VIDEO_EXTENSIONS]
        return (video[0] if video else "mp4"), bool(video)


def _list_folder(folder: str) -> _Listing:
    try:
        manifest = load_manifest(folder)
    except FileNotFoundError:
        raise ShardSetError(f"{folder}: no manifest.json (not a folder made by `xkd shards create`)") from None
    except ValueError as error:  # not JSON, or not our format
        raise ShardSetError(str(error)) from None
    if not manifest.get("complete", False):
        raise ShardSetError(f"{folder}: the shard set is incomplete (a run or --part has not finished)")
    shards = tuple(_Shard(os.path.join(folder, s["tar"]), os.path.join(folder, s["idx"]), s["samples"], s["bytes"])
                   for s in manifest["shards"])
    if not shards:
        raise ShardSetError(f"{folder}: the shard set holds no sample")
    return _Listing(folder, shards, manifest)


def _list_pattern(pattern: str) -> _Listing:
    tars = sorted(glob.glob(pattern))
    if not tars:
        raise ShardSetError(f"{pattern}: no shard folder and no .tar file matches this pattern")
    return _Listing(pattern, tuple(_Shard(t, index_path(t)) for t in tars))


class _BrokenShard(Exception):
    def __init__(self, problem: str, repair: str):
        super().__init__(problem)
        self.repair = repair  # "index": `xkd shards index` rebuilds it; "copy": the tar itself is damaged

    def remedy(self, folder: str) -> str:
        if self.repair == "index":
            return f"run `xkd shards index {folder}`"
        return (f"copy it again (or re-run the `xkd shards create` that made it); `xkd shards verify {folder}` "
                "checks every shard")


def _check_shard(shard: _Shard) -> _Peek:
    try:
        size = os.path.getsize(shard.tar)
    except OSError:
        raise _BrokenShard("listed shard is missing", "copy") from None
    if shard.bytes is not None and size != shard.bytes:
        raise _BrokenShard(f"{size} bytes, the manifest says {shard.bytes} (cut short or changed)", "copy")
    if not os.path.isfile(shard.index):
        raise _BrokenShard(f"its index {os.path.basename(shard.index)} is missing", "index")
    peek = _peek_index(shard.index)
    if shard.samples is not None and peek.samples != shard.samples:
        raise _BrokenShard(f"its index lists {peek.samples} samples, the manifest says {shard.samples}", "index")
    if peek.end > size:
        raise _BrokenShard(f"the tar ends at byte {size} but its index has a member ending at {peek.end} "
                           "(a cut copy?)", "copy")
    return peek


def _peek_index(index: str) -> _Peek:
    """The header, the first sample's members and the last member's end, from the two ends of the file."""
    with open(index, "rb") as handle:
        head = handle.read(_PEEK)
        tail = head if len(head) < _PEEK else (handle.seek(-_PEEK, os.SEEK_END), handle.read())[1]
        if head.count(b"\n") < 2 or b"\n" not in tail.rstrip(b"\n"):  # lines longer than a peek
            handle.seek(0)
            head = tail = handle.read()
    lines, last = head.split(b"\n"), tail.rstrip(b"\n").rsplit(b"\n", 1)
    try:
        count = parse_index_header(lines[0].decode())
        first, final = parse_index_line(lines[1].decode()), parse_index_line(last[-1].decode())
        if len(last) < 2 or not first or not final:
            raise ValueError
        return _Peek(count, tuple(ext for ext, *_ in first), max(offset + size for _, offset, size, _ in final))
    except (ValueError, IndexError):
        raise _BrokenShard(f"its index {os.path.basename(index)} is not a DALI v1.2 index of at least "
                           "one sample", "index") from None
