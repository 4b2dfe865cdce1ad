"""CPU cost per sample of each stage of the DALI pretraining pipeline, alone, on one CPU thread:
what a host's CPU must supply per clip, and so how many cores a GPU's data loading needs.

Each stage is its own pipeline that reads the shards and stops after that stage:
  read        the webdataset reader (tar members of one sample)
  flac        + the whole FLAC member decoded (CPU also on a GPU machine)
  log_mel     + the 4 s global audio view (slice, volume, log-mel; on the GPU when there is one)
  video       + the 32-frame clip decoded from its key frame on the CPU (NVDEC's job on a GPU)
  full        the whole pretraining pipeline on the CPU (every view of both modalities)

    python benchmarks/bench_pipeline_stages.py                 # makes 128-px VP9 shards (bench_pipeline's)
    python benchmarks/bench_pipeline_stages.py --shards DIR

The last line printed is one JSON object (ms per sample per stage, and samples/s on one thread)."""
from __future__ import annotations

import argparse
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

if __name__ == "__main__":  # run as a script from a checkout: its packages (benchmarks/ too) without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nvidia.dali import fn, pipeline_def, types  # noqa: E402

from benchmarks.bench_pipeline import make_shards  # noqa: E402
from dali_pipelines.config import DataConfig  # noqa: E402
from dali_pipelines.ops import audio_view  # noqa: E402
from dali_pipelines.pretrain import decode_clip, decode_waveform, pretrain_pipeline, read_shards  # noqa: E402
from dali_pipelines.shardset import ShardSet  # noqa: E402
from benchmarks.report import report  # noqa: E402

STAGES = ("read", "flac", "log_mel", "video", "full")


@pipeline_def(enable_conditionals=False)
def stage_pipeline(shards: ShardSet, cfg: DataConfig, stage: str):
    video, flac, _, lengths = read_shards(shards, cfg, shard_id=0, num_shards=1)
    if stage == "read":
        return lengths
    if stage == "video":
        return decode_clip(video, lengths, cfg)[0]
    waveform = decode_waveform(flac, cfg)
    if stage == "flac":
        return waveform
    clip = fn.slice(waveform, 0, cfg.clip_samples, axes=[0],
                    out_of_bounds_policy="pad", fill_values=0.0)
    return audio_view(clip, cfg.global_audio, cfg.mel, types.FLOAT)


def per_sample_ms(pipeline, batch_size: int, warmup: int, batches: int) -> float:
    pipeline.build()
    for _ in range(warmup):
        pipeline.run()
    started = time.perf_counter()
    for _ in range(batches):
        pipeline.run()
    return 1e3 * (time.perf_counter() - started) / (batches * batch_size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", default=None, help="a shard folder (default: make --clips clips)")
    parser.add_argument("--clips", type=int, default=48, help="clips of 6 s to shard when --shards is not given")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=6, help="untimed batches per stage")
    parser.add_argument("--batches", type=int, default=30, help="timed batches per stage")
    parser.add_argument("--out", default=None, help="also write the JSON here")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="bench-stages-"))
    try:
        shards = ShardSet.from_path(args.shards or str(make_shards(scratch, args.clips)))
        cfg = DataConfig(batch_size=args.batch_size, num_threads=1)
        common = dict(batch_size=args.batch_size, num_threads=1, device_id=None, seed=1, prefetch_queue_depth=1)
        cost = {}
        for stage in STAGES:
            pipeline = (pretrain_pipeline(shards, cfg, **common) if stage == "full"
                        else stage_pipeline(shards, cfg, stage, **common))
            cost[stage] = per_sample_ms(pipeline, args.batch_size, args.warmup, args.batches)
            del pipeline
            print(f"{stage:8s} {cost[stage]:7.2f} ms per sample on one thread", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    result = {
        "command": shlex.join(["python", *sys.argv]),
        "date": time.strftime("%Y-%m-%d"),
        **{f"{stage}_ms_per_sample": round(ms, 3) for stage, ms in cost.items()},
        **{f"{stage}_samples_per_s_per_thread": round(1e3 / ms, 1) for stage, ms in cost.items()},
        "shards": args.shards or f"{args.clips} clips of 6 s, 320x240 -> 128 px VP9, 16 kHz FLAC",
        "batch_size": args.batch_size,
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
    }
    report(result, args.out)


if __name__ == "__main__":
    main()
