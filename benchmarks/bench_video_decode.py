"""Where a GPU pipeline's time goes: clips/s of the video decode alone (reader + `decode_clip`) and of
the whole pretraining pipeline, with 1 or several DALI pipelines sharing one device.

    python benchmarks/bench_video_decode.py                          # decode and full, 1/2/4/7 pipelines
    python benchmarks/bench_video_decode.py --what decode --pipelines 1,7 --shards DIR

Why several pipelines: on an H200 one pretraining pipeline gave ~100 clips/s whatever its batch size
(32 or 128), with `nvidia-smi dmon` showing the decoder (NVDEC) at most ~18% busy, about one of the
chip's 7 NVDEC engines; DALI's issue tracker reports one pipeline using one engine, and several
pipelines on one GPU using several. Each pipeline reads its own share of the shards (shard_id / num_shards)
with `--threads` CPU threads split between them; the iterator runs them concurrently. Reported per
count: clips/s over the timed batches (after `--warmup`), and the seconds to build the pipelines and
produce their first batch (what every per-epoch rebuild costs). The last line printed is one JSON
object; on a GPU it is also written to benchmarks/results/."""
from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import torch

if __name__ == "__main__":  # run as a script from a checkout: its packages (benchmarks/ too) without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nvidia.dali import pipeline_def  # noqa: E402
from nvidia.dali.plugin.base_iterator import LastBatchPolicy  # noqa: E402
from nvidia.dali.plugin.pytorch import DALIGenericIterator  # noqa: E402

from benchmarks.bench_pipeline import endless, make_shards, repeat_shards  # noqa: E402
from benchmarks.report import report  # noqa: E402
from dali_pipelines.config import DataConfig  # noqa: E402
from dali_pipelines.loader import build_parts  # noqa: E402
from dali_pipelines.pretrain import READER, decode_clip, output_names, pretrain_pipeline, read_shards  # noqa: E402
from dali_pipelines.shardset import ShardSet  # noqa: E402


@pipeline_def(enable_conditionals=False)
def decode_pipeline(shards: ShardSet, cfg: DataConfig, shard_id: int, num_shards: int, gpu: bool):
    """The pretraining pipeline's reader and clip decode, nothing after them."""
    video_bytes, _, _, lengths = read_shards(shards, cfg, shard_id, num_shards)
    frames, _ = decode_clip(video_bytes, lengths, cfg, gpu)
    return frames


def build_iterator(what: str, shards: ShardSet, cfg: DataConfig, device_id) -> DALIGenericIterator:
    """cfg.pipelines_per_device pipelines, made as the training loaders make them (`build_parts`)."""
    make = decode_pipeline if what == "decode" else pretrain_pipeline
    names = ["frames"] if what == "decode" else output_names(cfg)
    built = build_parts(partial(make, shards, cfg), cfg, rank=0, world_size=1, epoch=0, seed=1234,
                        device_id=device_id)
    return DALIGenericIterator(built, names, reader_name=READER, auto_reset=True,
                               last_batch_policy=LastBatchPolicy.DROP)


def measure(what: str, shards: ShardSet, cfg: DataConfig, device: torch.device, warmup: int, batches: int) -> dict:
    """One iterator step yields a part-batch from every pipeline: `cfg.batch_size` clips in all."""
    device_id = (device.index or 0) if device.type == "cuda" else None
    started = time.perf_counter()
    stream = endless(build_iterator(what, shards, cfg, device_id))
    next(stream)
    build_s = time.perf_counter() - started
    for _ in range(warmup):
        next(stream)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    for _ in range(batches):
        next(stream)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - started
    return {"clips_per_s": round(batches * cfg.batch_size / seconds, 2), "build_s": round(build_s, 2)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", default=None, help="a shard folder (default: make --clips clips)")
    parser.add_argument("--clips", type=int, default=48, help="clips of 6 s to shard when --shards is not given")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--what", default="decode,full", help="decode (reader + clip decode), full (pretraining views)")
    parser.add_argument("--pipelines", default="1,2,4,7", help="pipelines per device, comma-separated counts")
    parser.add_argument("--batch-size", type=int, default=None, help="clips per batch and pipeline (default: 4 CPU, 32 CUDA)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="DALI CPU threads, split between the pipelines")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps after the first (default: 2 CPU, 10 CUDA)")
    parser.add_argument("--batches", type=int, default=None, help="timed steps (default: 4 CPU, 40 CUDA)")
    parser.add_argument("--repeat", type=int, default=None, help="shard list repeats (default: 1 CPU, 32 CUDA)")
    parser.add_argument("--out", default=None, help="also write the JSON here (default on CUDA: benchmarks/results/)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    batch_size = args.batch_size or (32 if on_gpu else 4)
    warmup = args.warmup if args.warmup is not None else (10 if on_gpu else 2)
    batches = args.batches or (40 if on_gpu else 4)
    counts = [int(n) for n in args.pipelines.split(",") if n.strip()]
    kinds = [w.strip() for w in args.what.split(",") if w.strip()]
    if any(kind not in ("decode", "full") for kind in kinds) or any(n < 1 for n in counts):
        parser.error("--what takes decode and/or full; --pipelines takes counts >= 1")

    scratch = Path(tempfile.mkdtemp(prefix="bench-decode-"))
    made = ShardSet.from_path(args.shards or str(make_shards(scratch, args.clips)))
    shards = ShardSet.from_path(repeat_shards(made, scratch / "repeated", args.repeat or (32 if on_gpu else 1)))
    results = {}
    for kind in kinds:
        for count in counts:
            if shards.samples // count < batch_size:
                raise SystemExit(f"{shards.samples} clips cannot fill a batch of {batch_size} in each of {count} pipelines")
            cfg = DataConfig(batch_size=batch_size * count, num_threads=args.threads, pipelines_per_device=count)
            results[f"{kind}_{count}"] = measure(kind, shards, cfg, device, warmup, batches)
            print(f"{kind:6s} {count} pipeline(s): {results[f'{kind}_{count}']}", flush=True)
    name = torch.cuda.get_device_name(device) if on_gpu else f"cpu ({os.cpu_count()} cores)"
    result = {
        "command": shlex.join(["python", "benchmarks/bench_video_decode.py", *(sys.argv[1:] if argv is None else argv)]),
        "device": name, "batch_size_per_pipeline": batch_size, "threads": args.threads,
        "timed_steps": batches, "clips_per_pass": shards.samples, "results": results,
        "best_clips_per_s": max(r["clips_per_s"] for r in results.values()),
        "shards": args.shards or f"{args.clips} clips of 6 s, 320x240 -> 128 px VP9",
    }
    report(result, args.out, name if on_gpu else None, stem="video_decode")
    return 0


if __name__ == "__main__":
    sys.exit(main())
