"""Feature extraction speed: clips/s of `xkd eval features`' work (the DALI evaluation pipeline and
the encoders' pooled forward, one modality or both) for a preset's encoders.

    python benchmarks/bench_eval.py                          # tiny preset, makes 128-px VP9 shards
    python benchmarks/bench_eval.py --preset base --device cuda
    python benchmarks/bench_eval.py --shards DIR             # or reads yours

A clip is one clip in one crop of one video through the video encoder (and its 4 s of audio through
the audio encoder, with --modality both): `features_clips_per_s` counts video clip-crops (audio
windows for audio-only), `features_videos_per_s` whole videos. One untimed pass warms up, then
`--passes` timed passes over the shards; the median pass is reported with the spread. The last line
printed is one JSON object; a GPU figure is also written to benchmarks/results/."""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

if __name__ == "__main__":  # run as a script from a checkout: its packages (benchmarks/ too) without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_pipeline import make_shards  # noqa: E402
from benchmarks.report import report  # noqa: E402
from dali_pipelines.shardset import ShardSet  # noqa: E402


def measure_feature_extraction(shards: str, preset: str, device: torch.device, *, modality: str = "both",
                               clips: int = 2, crops: int = 1, batch_size: int = 4, threads: int = 2,
                               passes: int = 3) -> dict:
    """Median clips/s of `passes` timed extraction passes over `shards` (after one warm-up pass)."""
    from xkd.config import load_config
    from xkd.eval.backbones import resolve_backbones
    from xkd.eval.extract import extract_in_memory

    cfg = load_config(f"xkd_{preset}", [f"data.eval_clips={clips}", f"data.eval_crops={crops}",
                                        f"data.batch_size={batch_size}", f"data.num_threads={threads}"])
    shard_set = ShardSet.from_path(shards)
    if modality == "both" and not shard_set.has_video:
        modality = "audio"
    backbones = resolve_backbones(None, modality, cfg)
    for backbone in backbones:
        backbone.encoder.to(device)
    seconds = []
    for timed in [False] + [True] * passes:
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        extract_in_memory(backbones, shard_set, cfg.data, device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if timed:
            seconds.append(time.perf_counter() - started)
    per_video = clips * (crops if modality != "audio" else 1)
    median = statistics.median(seconds)
    return {"features_clips_per_s": round(shard_set.samples * per_video / median, 3),
            "features_videos_per_s": round(shard_set.samples / median, 3),
            "pass_seconds": [round(s, 3) for s in seconds], "videos": shard_set.samples, "clips": clips,
            "crops": crops, "modality": modality, "batch_size": batch_size, "threads": threads,
            "device": str(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "preset": preset, "dtype": "bfloat16 autocast" if device.type == "cuda" else "float32"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=["tiny", "small", "base"], default="tiny")
    parser.add_argument("--shards", default=None, help="a shard folder (default: make --videos synthetic clips)")
    parser.add_argument("--videos", type=int, default=16)
    parser.add_argument("--modality", choices=["both", "video", "audio"], default="both")
    parser.add_argument("--clips", type=int, default=2, help="clips per video")
    parser.add_argument("--crops", type=int, choices=[1, 3], default=1)
    parser.add_argument("--batch-size", type=int, default=4, help="videos per batch")
    parser.add_argument("--threads", type=int, default=2, help="DALI CPU threads")
    parser.add_argument("--passes", type=int, default=3, help="timed passes after one warm-up pass")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=None, help="also write the JSON here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-eval-") as scratch:
        shards = args.shards or str(make_shards(Path(scratch), args.videos))
        result = measure_feature_extraction(shards, args.preset, torch.device(args.device), modality=args.modality,
                                            clips=args.clips, crops=args.crops, batch_size=args.batch_size,
                                            threads=args.threads, passes=args.passes)
    report(result, args.out, result["gpu"], stem=f"bench_eval_{args.preset}")


if __name__ == "__main__":
    main()
