"""Data loading speed: clips/s of the DALI pretraining pipeline and of the reference loader
(webdataset + PyAV + torchvision + torchaudio in a DataLoader) on the same shards, with the same
CPU threads / workers, and their memory over a long run.

    python benchmarks/bench_pipeline.py                 # makes 128-px VP9 shards with the shard tool
    python benchmarks/bench_pipeline.py --shards DIR    # or reads yours
    python benchmarks/bench_pipeline.py --device cuda   # DALI decodes on the GPU (default when there is one)

Each loader runs `--warmup` batches, then `--batches` timed batches (epochs repeat as needed);
resident memory (the process and its workers) is sampled every batch: the JSON gives the peak and
the growth between the first and the last quarter of the timed run. `--repeat R` lists the shards R
times, so an epoch is R times longer, as on a real dataset (a pipeline is rebuilt every epoch; on a
GPU a 48-clip epoch would time little else). The last line printed is one JSON object; a GPU figure
is also written to benchmarks/results/."""
from __future__ import annotations

import argparse
import os
import platform
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))

from dali_pipelines.config import DataConfig  # noqa: E402
from dali_pipelines.loader import pretrain_loader  # noqa: E402
from dali_pipelines.reference import reference_loader  # noqa: E402
from dali_pipelines.shardset import ShardSet  # noqa: E402
from report import report  # noqa: E402


def make_shards(folder: Path, clips: int) -> Path:
    from shards.synthetic import write_clip
    from xkd.commands import main

    videos = folder / "videos"
    videos.mkdir(parents=True)
    for index in range(clips):
        write_clip(videos / f"clip{index:03d}.mp4", seconds=6.0, fps=30, width=320, height=240, seed=index)
    out = folder / "shards"
    if main(["shards", "create", str(videos), str(out), "--quiet", "--samples-per-shard", "16"]):
        raise SystemExit("could not make the benchmark shards")
    return out


def repeat_shards(shards: ShardSet, folder: Path, copies: int) -> str:
    """The shards linked `copies` times under `folder` (an epoch `copies` times longer): a '*.tar'
    pattern."""
    folder.mkdir(parents=True)
    for copy in range(copies):
        for path in (*shards.tars, *shards.indexes):
            (folder / f"copy{copy:04d}-{Path(path).name}").symlink_to(os.path.abspath(path))
    return str(folder / "*.tar")


def rss_mib() -> float:
    process = psutil.Process()
    total = process.memory_info().rss
    for child in process.children(recursive=True):
        try:
            total += child.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total / 2**20


def endless(loader):
    while True:
        yield from loader


def measure(loader, batch_size: int, warmup: int, batches: int, device) -> dict:
    stream = endless(loader)
    for _ in range(warmup):
        next(stream)
    memory, started = [], time.perf_counter()
    for _ in range(batches):
        batch = next(stream)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        memory.append(rss_mib())
        assert batch["video"][0].shape[0] == batch_size
    elapsed = time.perf_counter() - started
    quarter = max(1, len(memory) // 4)
    return {"clips_per_s": round(batches * batch_size / elapsed, 2),
            "peak_rss_mib": round(max(memory), 1),
            "rss_growth_mib": round(statistics.mean(memory[-quarter:]) - statistics.mean(memory[:quarter]), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", default=None, help="a shard folder (default: make --clips clips)")
    parser.add_argument("--clips", type=int, default=48, help="clips of 6 s to shard when --shards is not given")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=None, help="clips per batch (default: 8 CPU, 32 CUDA)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="DALI CPU threads = reference DataLoader workers")
    parser.add_argument("--warmup", type=int, default=60, help="batches before timing (DALI buffers reach their steady size)")
    parser.add_argument("--batches", type=int, default=None, help="timed batches (default: 120 CPU, 400 CUDA)")
    parser.add_argument("--reference-batches", type=int, default=None,
                        help="timed batches of the reference loader (default: --batches on CPU, 40 on CUDA, "
                             "where it runs at a few percent of DALI's rate)")
    parser.add_argument("--repeat", type=int, default=None, help="shard list repeats per epoch (default: 1 CPU, 32 CUDA)")
    parser.add_argument("--out", default=None, help="also write the JSON here (default on CUDA: benchmarks/results/)")
    args = parser.parse_args()
    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    batch_size = args.batch_size or (32 if on_gpu else 8)
    batches = args.batches or (400 if on_gpu else 120)
    reference_batches = args.reference_batches or (40 if on_gpu else batches)
    repeat = args.repeat or (32 if on_gpu else 1)
    scratch = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    made = ShardSet.from_path(args.shards or str(make_shards(scratch, args.clips)))
    shards = ShardSet.from_path(repeat_shards(made, scratch / "repeated", repeat))
    cfg = DataConfig(batch_size=batch_size, num_threads=args.threads)

    dali = measure(pretrain_loader(shards, cfg, device=device), batch_size, args.warmup, batches, device)
    print(f"dali: {dali}", flush=True)
    reference = measure(reference_loader(shards, cfg, num_workers=args.threads), batch_size,
                        min(args.warmup, reference_batches), reference_batches, torch.device("cpu"))
    print(f"reference: {reference}", flush=True)
    shutil.rmtree(scratch, ignore_errors=True)
    name = torch.cuda.get_device_name(device) if on_gpu else f"cpu ({os.cpu_count()} cores)"
    result = {
        "command": shlex.join(["python", *sys.argv]),
        "dali_clips_per_s": dali["clips_per_s"],
        "reference_clips_per_s": reference["clips_per_s"],
        "ratio": round(dali["clips_per_s"] / reference["clips_per_s"], 3),
        "device": name,
        "batch_size": batch_size,
        "threads_or_workers": args.threads,
        "timed_batches": batches,
        "reference_timed_batches": reference_batches,
        "clips_per_epoch": shards.samples,
        "shards": f"{args.shards or f'{args.clips} clips of 6 s, 320x240 -> 128 px VP9'}, listed {repeat}x",
        "dali_peak_rss_mib": dali["peak_rss_mib"],
        "dali_rss_growth_mib": dali["rss_growth_mib"],
        "reference_peak_rss_mib": reference["peak_rss_mib"],
        "reference_rss_growth_mib": reference["rss_growth_mib"],
        "views": "XKD: global 32x112 + 1 local 8x96 video, 80x448 + 80x112 audio",
        "cpu": platform.processor() or platform.machine(),
    }
    report(result, args.out, name if on_gpu else None, stem="pipeline")


if __name__ == "__main__":
    main()
