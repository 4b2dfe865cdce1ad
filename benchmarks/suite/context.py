"""What the stages of one bench run share: the settings, the device, a scratch folder, progress
messages, and one shard set (the user's, or a small one the bench makes once with the shard tool)."""
from __future__ import annotations

import math
import sys
from collections.abc import Callable
from pathlib import Path

from benchmarks.suite.settings import BenchSettings

CLIP_SECONDS = 6.0  # the bench's own clips, as bench_pipeline.make_shards writes them


class BenchContext:
    def __init__(self, settings: BenchSettings, scratch: Path, say: Callable[[str], None] | None = None):
        import torch

        self.settings, self.workload, self.scratch = settings, settings.workload, scratch
        self.device = torch.device(settings.device)
        self.stage = ""
        self._say = say or (lambda message: print(message, flush=True))
        self._shards = None
        self._shards_location = settings.shards
        self._shards_problem: str | None = None

    def progress(self, message: str) -> None:
        self._say(f"[bench {self.stage}] {message}")

    def shard_set(self):
        """The ShardSet every shard-reading stage uses; made (or checked) once, its failure remembered."""
        from dali_pipelines.shardset import PRETRAINING, ShardSet

        if self._shards_problem:
            raise RuntimeError(f"no shard set: {self._shards_problem}")
        if self._shards is None:
            try:
                if self.settings.shards:
                    self._shards = ShardSet.from_path(self.settings.shards, needs=PRETRAINING)
                else:
                    self._shards_location = str(self._make_shards())
                    self._shards = ShardSet.from_path(self._shards_location, needs=PRETRAINING)
            except (Exception, SystemExit) as error:
                self._shards_problem = f"{type(error).__name__}: {error}"
                raise
        return self._shards

    def shard_location(self) -> str:
        """The shard set's folder or pattern (for the functions that open it themselves)."""
        self.shard_set()
        return self._shards_location

    def _make_shards(self) -> Path:
        """bench_pipeline's shard set: whole, equal shards, one per reference-loader worker, so that every
        worker reads the same number of clips."""
        from benchmarks.bench_pipeline import make_shards

        threads = self.settings.threads
        clips = math.ceil(self.workload.clips / threads) * threads
        self.progress(f"making the bench's shard set: {clips} synthetic clips of {CLIP_SECONDS:.0f} s, "
                      f"sharded by `xkd shards create` into {threads} shard(s)")
        return make_shards(self.scratch / "own-shards", clips, clips // threads)

    def shards_description(self) -> str:
        if self.settings.shards:
            return self.settings.shards
        shards = self._shards
        return (f"made by the bench: {shards.samples} synthetic clips of {CLIP_SECONDS:.0f} s, 320x240 -> 128 px VP9 "
                f"+ FLAC, {len(shards.tars)} shard(s)") if shards else "not made"

    def data_config(self, batch_size: int):
        """The preset's data section at this batch size, with the bench's CPU threads."""
        from xkd.config import load_config

        return load_config(self.settings.config, [f"data.batch_size={batch_size}",
                                                  f"data.num_threads={self.settings.threads}"]).data

    def release_memory(self) -> None:
        import gc

        import torch

        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def warn(message: str) -> None:
    print(f"xkd bench: warning: {message}", file=sys.stderr, flush=True)
