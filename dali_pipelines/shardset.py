"""Which tar shards (and DALI index files) a pipeline reads: a shard folder made by
`xkd shards create` (its manifest.json), or a glob pattern of .tar files with .idx beside them."""
from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass


class ShardSetError(ValueError):
    pass


@dataclass(frozen=True)
class ShardSet:
    tars: tuple[str, ...]
    indexes: tuple[str, ...]
    samples: int
    video_extension: str = "mp4"
    has_video: bool = True

    @classmethod
    def from_path(cls, location: str) -> "ShardSet":
        if os.path.isdir(location):
            return cls._from_manifest(location)
        tars = sorted(glob.glob(location))
        if not tars:
            raise ShardSetError(f"{location}: no shard folder and no .tar file matches this pattern")
        indexes = [os.path.splitext(t)[0] + ".idx" for t in tars]
        missing = [i for i in indexes if not os.path.isfile(i)]
        if missing:
            raise ShardSetError(f"{missing[0]}: index file missing (make it with DALI's wds2idx)")
        samples = sum(_index_count(i) for i in indexes)
        return cls._checked(tuple(tars), tuple(indexes), samples, location)

    @classmethod
    def _from_manifest(cls, folder: str) -> "ShardSet":
        path = os.path.join(folder, "manifest.json")
        if not os.path.isfile(path):
            raise ShardSetError(f"{folder}: no manifest.json (not a folder made by `xkd shards create`)")
        with open(path) as handle:
            manifest = json.load(handle)
        if not manifest.get("complete", False):
            raise ShardSetError(f"{folder}: the shard set is incomplete (a run or --part has not finished)")
        tars = tuple(os.path.join(folder, s["tar"]) for s in manifest["shards"])
        indexes = tuple(os.path.join(folder, s["idx"]) for s in manifest["shards"])
        return cls._checked(tars, indexes, manifest["samples"], folder,
                            video_extension=manifest.get("video_extension") or "mp4",
                            has_video=manifest.get("has_video", True))

    @classmethod
    def _checked(cls, tars, indexes, samples, where, **extra) -> "ShardSet":
        if samples == 0:
            raise ShardSetError(f"{where}: the shard set holds no sample")
        for path in tars:
            if not os.path.isfile(path):
                raise ShardSetError(f"{path}: listed shard is missing")
        return cls(tars=tars, indexes=indexes, samples=samples, **extra)

    def without(self, excluded, folder: str) -> "ShardSet":
        """This set minus the (tar, key) samples in `excluded`, through filtered index files
        written to `folder` (the tars are untouched)."""
        tars, indexes, samples = [], [], self.samples
        for tar, index in zip(self.tars, self.indexes):
            bad = {key for bad_tar, key in excluded if bad_tar == tar}
            if bad:
                with open(index) as handle:
                    lines = handle.read().splitlines()[1:]
                kept = [line for line in lines if line.split()[3].split(".", 1)[0] not in bad]
                samples -= len(lines) - len(kept)
                if not kept:
                    continue
                index = os.path.join(folder, f"{len(indexes):06d}-{os.path.basename(index)}")
                with open(index, "w") as handle:
                    handle.write(f"v1.2 {len(kept)}\n" + "".join(line + "\n" for line in kept))
            tars.append(tar)
            indexes.append(index)
        return ShardSet(tuple(tars), tuple(indexes), samples, self.video_extension, self.has_video)

    def shard_samples(self) -> list[int]:
        """Samples in each shard, from its index file."""
        return [_index_count(index) for index in self.indexes]

    def samples_per_rank(self, num_ranks: int) -> int:
        """Samples every rank gets (DALI splits by sample count; the smallest share)."""
        return self.samples // num_ranks

    def batches_per_rank(self, num_ranks: int, batch_size: int) -> int:
        """Full batches every rank can make in an epoch (at least one, or ValueError)."""
        per_rank = self.samples_per_rank(num_ranks)
        if per_rank < batch_size:
            raise ValueError(f"{per_rank} samples per rank cannot fill one batch of {batch_size}")
        return per_rank // batch_size


def _index_count(index_path: str) -> int:
    with open(index_path) as handle:
        fields = handle.readline().split()
    if len(fields) != 2 or fields[0] != "v1.2":
        raise ShardSetError(f"{index_path}: not a DALI v1.2 webdataset index")
    return int(fields[1])
