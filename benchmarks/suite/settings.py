"""What one `xkd bench` run measures: the stages, device, preset and repeats a user chose, and the
workload sizes (clips, batches, steps) that follow from the device and `--quick`."""
from __future__ import annotations

import shlex
from dataclasses import asdict, dataclass
from pathlib import Path

STAGES = ("shards", "pipeline", "model", "train", "eval")
PRESETS = ("tiny", "small", "base")
STAGES_READING_SHARDS = ("pipeline", "train", "eval")


@dataclass(frozen=True)
class Workload:
    """How much each stage runs per repeat (after its warm-up)."""
    corpus_files: int  # shards: 720p H.264 files of the corpus ...
    corpus_copies: int  # ... each this many copies of the 5.28 s clip
    clips: int  # 6-s clips of the bench's own shard set (rounded up to a multiple of the threads)
    pipeline_batch: int
    pipeline_warmup: int  # batches
    pipeline_batches: int  # timed DALI batches
    reference_batches: int  # timed reference-loader batches (it is far slower on a GPU machine)
    pipeline_repeat: int  # the shard list repeated so that an epoch is this many times longer
    model_batch: int  # the batch of the headline figures (GFLOP/clip, TFLOP/s, share of the peak)
    model_batches: tuple[int, ...]  # the clips/s-against-batch-size sweep
    model_warmup: int  # steps
    model_steps: int  # timed steps per repeat
    train_batch: int
    train_warmup: int  # optimiser steps
    train_steps: int
    eval_batch: int  # videos per evaluation batch
    eval_clips: int  # clips per video, one crop each


WORKLOADS = {
    ("cpu", False): Workload(corpus_files=2, corpus_copies=2, clips=16, pipeline_batch=8, pipeline_warmup=4,
                             pipeline_batches=16, reference_batches=16, pipeline_repeat=4, model_batch=4,
                             model_batches=(1, 2, 4, 8), model_warmup=2, model_steps=3, train_batch=4,
                             train_warmup=5, train_steps=20, eval_batch=4, eval_clips=10),
    ("cpu", True): Workload(corpus_files=1, corpus_copies=1, clips=4, pipeline_batch=2, pipeline_warmup=1,
                            pipeline_batches=2, reference_batches=2, pipeline_repeat=1, model_batch=2,
                            model_batches=(1, 2), model_warmup=1, model_steps=1, train_batch=2, train_warmup=1,
                            train_steps=2, eval_batch=2, eval_clips=2),
    ("cuda", False): Workload(corpus_files=2, corpus_copies=2, clips=48, pipeline_batch=32, pipeline_warmup=30,
                              pipeline_batches=200, reference_batches=20, pipeline_repeat=32, model_batch=32,
                              model_batches=(8, 16, 32, 64, 128), model_warmup=5, model_steps=10, train_batch=32,
                              train_warmup=20, train_steps=100, eval_batch=32, eval_clips=10),
    ("cuda", True): Workload(corpus_files=1, corpus_copies=1, clips=16, pipeline_batch=8, pipeline_warmup=2,
                             pipeline_batches=10, reference_batches=4, pipeline_repeat=2, model_batch=8,
                             model_batches=(8, 16), model_warmup=2, model_steps=3, train_batch=8, train_warmup=2,
                             train_steps=5, eval_batch=8, eval_clips=2),
}


@dataclass(frozen=True)
class BenchSettings:
    device: str  # "cpu" or "cuda"
    preset: str  # tiny, small or base: the xkd_{preset} experiment config
    stages: tuple[str, ...]
    out: Path
    repeats: int
    threads: int  # DALI CPU threads = reference-loader workers
    shards: str | None = None  # the user's shard set; None: the bench makes a small one
    quick: bool = False
    record: bool = False
    history: Path | None = None  # where --record appends (None: the checkout's benchmarks/results/)

    @property
    def workload(self) -> Workload:
        return WORKLOADS[(self.device, self.quick)]

    @property
    def config(self) -> str:
        return f"xkd_{self.preset}"

    def command(self) -> str:
        """The command line that repeats this run, every default spelled out."""
        words = ["xkd", "bench", "--device", self.device, "--preset", self.preset, "--stages", ",".join(self.stages),
                 "--repeats", str(self.repeats), "--threads", str(self.threads), "--out", str(self.out)]
        if self.shards:
            words += ["--shards", self.shards]
        if self.quick:
            words.append("--quick")
        if self.record:
            words.append("--record")
            if self.history:
                words += ["--history", str(self.history)]
        return shlex.join(words)

    def as_dict(self) -> dict:
        values = asdict(self)
        values.update(out=str(self.out), history=self.history and str(self.history), stages=list(self.stages))
        return values


def parse_stages(text: str) -> tuple[str, ...]:
    """'pipeline,model' -> ('pipeline', 'model'), in the order given; ValueError naming what is wrong."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in STAGES]
    if unknown or not names:
        raise ValueError(f"{text!r}: unknown stage(s) {', '.join(unknown) or '(none given)'}; "
                         f"choose from {','.join(STAGES)}")
    if len(set(names)) != len(names):
        raise ValueError(f"{text!r}: a stage is named twice")
    return tuple(names)
