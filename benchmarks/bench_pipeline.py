"""Data loading speed: clips/s of the DALI pretraining pipeline and of the reference loader
(webdataset + PyAV + torchvision + torchaudio in a DataLoader) on the same shards, with the same
CPU threads / workers; what DALI's per-epoch pipeline rebuilds cost; and memory over a long run and
over many rebuilds.

    python benchmarks/bench_pipeline.py                 # makes 128-px VP9 shards with the shard tool
    python benchmarks/bench_pipeline.py --shards DIR    # or reads yours
    python benchmarks/bench_pipeline.py --device cuda   # DALI decodes on the GPU (default when there is one)

A fair baseline: the reference loader's DataLoader workers split the shards round-robin, whole
shards each (DALI splits by sample count), so the benchmark makes as many equal shards as workers
(`--clips` rounded up to a multiple of `--threads`); listed `--repeat` times, every worker reads
the same number of clips. With `--shards`, the JSON gives each worker's share of the clips.

Each loader runs `--warmup` batches, then `--batches` timed batches (epochs repeat as needed);
resident memory (the process and its workers) is sampled every batch: the JSON gives the peak and
the growth between the first and the last quarter of the timed run. `--repeat R` lists the shards R
times, so an epoch is R times longer, as on a real dataset. DALI builds a new pipeline every epoch
(so that a run resumes mid-epoch exactly): the first batch of an epoch waits for it, and its wait
beyond the mean batch interval is the rebuild's cost, given per rebuild and as a share of the
timed run (the reference loader's epoch starts are measured the same way).

Then `--memory-rebuilds` one-batch DALI epochs (each a new pipeline, over a rank's one-batch share
of the unrepeated shards) after 10 to warm up: resident memory after each, and its growth between
the first and the last quarter. The last line printed is one JSON object; a GPU figure is also
written to benchmarks/results/."""
from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil
import torch

if __name__ == "__main__":  # run as a script from a checkout: its packages (benchmarks/ too) without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dali_pipelines.config import DataConfig  # noqa: E402
from dali_pipelines.loader import pretrain_loader  # noqa: E402
from dali_pipelines.reference import reference_loader  # noqa: E402
from dali_pipelines.shardset import ShardSet  # noqa: E402
from benchmarks.report import report  # noqa: E402

MEMORY_WARMUP_REBUILDS = 10  # the heap and DALI's buffers reach their working size within a few


def make_shards(folder: Path, clips: int, samples_per_shard: int = 16) -> Path:
    from shards.synthetic import write_clip
    from xkd.commands import main

    videos = folder / "videos"
    videos.mkdir(parents=True)
    for index in range(clips):
        write_clip(videos / f"clip{index:03d}.mp4", seconds=6.0, fps=30, width=320, height=240, seed=index)
    out = folder / "shards"
    if main(["shards", "create", str(videos), str(out), "--quiet", "--samples-per-shard", str(samples_per_shard)]):
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


def worker_shares(shards: ShardSet, workers: int) -> list[int]:
    """Clips each reference worker reads per epoch (workers take every `workers`-th shard)."""
    counts = shards.shard_samples()
    return [sum(counts[worker::workers]) for worker in range(workers)]


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


def epochs_of(loader):
    """(whether the batch opens an epoch, batch), epoch after epoch."""
    while True:
        for index, batch in enumerate(loader):
            yield index == 0, batch


def quarter_growth(samples: list[float]) -> float:
    quarter = max(1, len(samples) // 4)
    return round(statistics.mean(samples[-quarter:]) - statistics.mean(samples[:quarter]), 1)


def measure(loader, batch_size: int, warmup: int, batches: int, device) -> dict:
    stream = epochs_of(loader)
    for _ in range(warmup):
        next(stream)
    memory, gaps, opens = [], [], []
    started = last = time.perf_counter()
    for _ in range(batches):
        opens_epoch, batch = next(stream)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        now = time.perf_counter()
        gaps.append(now - last)
        opens.append(opens_epoch)
        last = now
        memory.append(rss_mib())
        assert len(batch) == batch_size
    elapsed = last - started
    # the mean, not the median: DataLoader workers deliver their batches in bursts
    steady = statistics.mean([gap for gap, first in zip(gaps, opens) if not first] or gaps)
    waits = [gap - steady for gap, first in zip(gaps, opens) if first]  # an epoch start, beyond a batch
    return {"clips_per_s": round(batches * batch_size / elapsed, 2),
            "batch_ms": round(steady * 1000, 1),
            "epoch_starts": len(waits),
            "epoch_start_ms": round(statistics.mean(waits) * 1000, 1) if waits else None,
            "epoch_start_share": round(sum(waits) / elapsed, 4),
            "peak_rss_mib": round(max(memory), 1),
            "rss_growth_mib": quarter_growth(memory)}


def rebuild_memory(shards: ShardSet, cfg: DataConfig, device, rebuilds: int) -> dict:
    """Resident memory after each of `rebuilds` one-batch epochs, each read by a new pipeline: rank
    0 of as many ranks as the shards hold batches (the shares rotate between epochs)."""
    loader = pretrain_loader(shards, cfg, world_size=shards.samples // cfg.batch_size, device=device)
    assert len(loader) == 1
    memory = []
    for _ in range(MEMORY_WARMUP_REBUILDS + rebuilds):
        for _ in loader:
            pass
        memory.append(rss_mib())
    after = memory[MEMORY_WARMUP_REBUILDS:]
    return {"rss_after_warmup_mib": round(after[0], 1), "rss_growth_mib": quarter_growth(after),
            "rss_range_mib": round(max(after) - min(after), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", default=None, help="a shard folder (default: make --clips clips)")
    parser.add_argument("--clips", type=int, default=48,
                        help="clips of 6 s to shard when --shards is not given (rounded up to a multiple of --threads)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=None, help="clips per batch (default: 8 CPU, 32 CUDA)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="DALI CPU threads = reference DataLoader workers")
    parser.add_argument("--warmup", type=int, default=None, help="batches before timing (default: one epoch)")
    parser.add_argument("--batches", type=int, default=None, help="timed batches (default: 8 epochs CPU, 400 CUDA)")
    parser.add_argument("--reference-batches", type=int, default=None,
                        help="timed batches of the reference loader (default: --batches on CPU, 40 on CUDA, "
                             "where it runs at a few percent of DALI's rate)")
    parser.add_argument("--repeat", type=int, default=None,
                        help="shard list repeats per epoch (default: 4 CPU, 32 CUDA)")
    parser.add_argument("--memory-rebuilds", type=int, default=200,
                        help="one-batch DALI epochs for the memory check, after 10 to warm up (0: skip it)")
    parser.add_argument("--out", default=None, help="also write the JSON here (default on CUDA: benchmarks/results/)")
    args = parser.parse_args()
    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    batch_size = args.batch_size or (32 if on_gpu else 8)
    repeat = args.repeat or (32 if on_gpu else 4)
    scratch = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    clips = math.ceil(args.clips / args.threads) * args.threads
    made = ShardSet.from_path(args.shards or str(make_shards(scratch, clips, clips // args.threads)))
    shards = ShardSet.from_path(repeat_shards(made, scratch / "repeated", repeat))
    shares = worker_shares(shards, args.threads)
    if len(set(shares)) > 1:
        print(f"warning: the reference workers read unequal shares of each epoch: {shares} clips", file=sys.stderr)
    cfg = DataConfig(batch_size=batch_size, num_threads=args.threads)
    batches_per_epoch = shards.batches_per_rank(1, batch_size)
    warmup = args.warmup if args.warmup is not None else batches_per_epoch
    batches = args.batches or (400 if on_gpu else 8 * batches_per_epoch)
    reference_batches = args.reference_batches or (40 if on_gpu else batches)

    dali = measure(pretrain_loader(shards, cfg, device=device), batch_size, warmup, batches, device)
    print(f"dali: {dali}", flush=True)
    reference = measure(reference_loader(shards, cfg, num_workers=args.threads), batch_size,
                        min(warmup, reference_batches), reference_batches, torch.device("cpu"))
    print(f"reference: {reference}", flush=True)
    memory = rebuild_memory(made, cfg, device, args.memory_rebuilds) if args.memory_rebuilds else {}
    if memory:
        print(f"dali over {args.memory_rebuilds} rebuilds: {memory}", flush=True)
    shutil.rmtree(scratch, ignore_errors=True)
    name = torch.cuda.get_device_name(device) if on_gpu else f"cpu ({os.cpu_count()} cores)"
    result = {
        "dali_clips_per_s": dali["clips_per_s"],
        "reference_clips_per_s": reference["clips_per_s"],
        "ratio": round(dali["clips_per_s"] / reference["clips_per_s"], 3),
        "device": name,
        "batch_size": batch_size,
        "threads_or_workers": args.threads,
        "timed_batches": batches,
        "reference_timed_batches": reference_batches,
        "clips_per_epoch": shards.samples,
        "batches_per_epoch": batches_per_epoch,
        "shards": f"{args.shards or f'{clips} clips of 6 s, 320x240 -> 128 px VP9, {len(made.tars)} shards'}, "
                  f"listed {repeat}x",
        "reference_clips_per_worker_and_epoch": shares,
        "dali_batch_ms": dali["batch_ms"],
        "dali_rebuilds": dali["epoch_starts"],
        "dali_rebuild_ms": dali["epoch_start_ms"],
        "dali_rebuild_share": dali["epoch_start_share"],
        "reference_epoch_starts": reference["epoch_starts"],
        "reference_epoch_start_ms": reference["epoch_start_ms"],
        "reference_epoch_start_share": reference["epoch_start_share"],
        "dali_peak_rss_mib": dali["peak_rss_mib"],
        "dali_rss_growth_mib": dali["rss_growth_mib"],
        "reference_peak_rss_mib": reference["peak_rss_mib"],
        "reference_rss_growth_mib": reference["rss_growth_mib"],
        **({"memory_rebuilds": args.memory_rebuilds, "memory_warmup_rebuilds": MEMORY_WARMUP_REBUILDS,
            **{f"memory_dali_{key}": value for key, value in memory.items()}} if memory else {}),
        "views": "XKD: global 32x112 + 1 local 8x96 video, 80x448 + 80x112 audio",
    }
    report(result, args.out, name if on_gpu else None, stem="pipeline")


if __name__ == "__main__":
    main()
