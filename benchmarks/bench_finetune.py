"""Speed of fine-tuning: clips/s of `xkd finetune`'s training steps (the labelled DALI pipeline, the
batch augmentation, the classifier's forward and backward, the DeepSpeed step), in this process (a
world of one), for a preset's encoders at random initialisation.

    python benchmarks/bench_finetune.py                              # CPU: xkd_tiny backbone, ft_ucf101 at 112 px
    python benchmarks/bench_finetune.py --modality audio --config ft_esc50
    python benchmarks/bench_finetune.py --backbone-preset xkd_base --size 224 --batch-size 24 \\
        --deepspeed-config zero2.json                                # a GPU: the paper's recipe at ViT-B

The run trains `--warmup` untimed then `--steps` timed optimiser steps, logging every step; the
figure comes from the trainer's own metrics.jsonl records (validation, test and checkpoints are
outside the timed steps). A few labelled clips are sharded and the shards repeated (symbolic
links) so that the timed steps stay in one epoch. The last line printed is one JSON object; a GPU
figure is also written to benchmarks/results/."""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_pipeline import repeat_shards  # noqa: E402
from report import report  # noqa: E402


def make_labelled_shards(folder: Path, clips: int, short_side: int) -> Path:
    """`clips` synthetic clips of 6 s with sound in two class folders, sharded."""
    from shards.synthetic import write_clip
    from xkd.commands import main

    for index in range(clips):
        label = ("even", "odd")[index % 2]
        (folder / "videos" / label).mkdir(parents=True, exist_ok=True)
        write_clip(folder / "videos" / label / f"clip{index:03d}.mp4", seconds=6.0, fps=30, width=320, height=240,
                   seed=index)
    out = folder / "shards"
    if main(["shards", "create", str(folder / "videos"), str(out), "--quiet", "--samples-per-shard", "8",
             "--short-side", str(short_side)]):
        raise SystemExit("could not make the benchmark shards")
    return out


def measure_finetuning(cfg, backbone_preset: str, shards: Path, repeated: str, process, ds_path: str,
                       warmup: int) -> dict:
    """Per-process clips/s and data-wait share over the timed steps of one fine-tuning run."""
    from dali_pipelines.shardset import ShardSet
    from xkd.finetune.inputs import finetune_backbone, label_space
    from xkd.finetune.loop import FinetuneTrainer

    labels = label_space(cfg, str(shards), {})
    backbone = finetune_backbone(None, cfg, random_init=backbone_preset)
    with tempfile.TemporaryDirectory(prefix="bench-finetune-run-") as run_dir:
        trainer = FinetuneTrainer(cfg, backbone, labels, ShardSet.from_path(repeated), ShardSet.from_path(str(shards)),
                                  run_dir, process, ds_path, quiet=True)
        trainer.run()
        lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    records = [r for r in map(json.loads, lines) if "loss" in r and r["step"] > warmup]
    if len(records) != cfg.train.max_steps - warmup:
        raise SystemExit(f"expected {cfg.train.max_steps - warmup} timed steps, got {len(records)}")
    clips = trainer.total_batch / process.world_size
    seconds = [clips / r["clips_per_s_per_process"] for r in records]
    return {"clips_per_s": round(len(seconds) * clips / sum(seconds), 3),
            "step_ms": round(1e3 * sum(seconds) / len(seconds), 2),
            "data_wait_fraction": float(f"{sum(r['data_wait_fraction'] * s for r, s in zip(records, seconds)) / sum(seconds):.4g}"),
            "epochs_in_timed_steps": len({r["epoch"] for r in records}),
            "precision": trainer.precision, "total_batch": trainer.total_batch,
            "peak_rss_mib": round(max(r["rss_mib"] for r in records), 1),
            **({"gpu_peak_mib": round(max(r.get("gpu_peak_mib", 0.0) for r in records), 1)}
               if process.device.type == "cuda" else {})}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=None, help="fine-tuning preset (default: ft_ucf101, ft_esc50 for audio)")
    parser.add_argument("--modality", choices=["video", "audio"], default="video")
    parser.add_argument("--backbone-preset", default=None, help="pretraining preset of the random-init backbone "
                                                                "(default: xkd_tiny on CPU, xkd_base on a GPU)")
    parser.add_argument("--size", type=int, default=None, help="video frame size (default: 112 on CPU, the preset's on a GPU)")
    parser.add_argument("--batch-size", type=int, default=None, help="clips per process (default: 4 CPU, the preset's GPU)")
    parser.add_argument("--steps", type=int, default=None, help="timed optimiser steps (default: 20 CPU, 50 CUDA)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: 3 CPU, 10 CUDA)")
    parser.add_argument("--clips", type=int, default=16, help="clips of 6 s to shard")
    parser.add_argument("--threads", type=int, default=None, help="DALI CPU threads (default: the preset's)")
    parser.add_argument("--deepspeed-config", default=None,
                        help="DeepSpeed JSON (default: zero2.json on GPUs, zero0_fp32.json on CPU)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    parser.add_argument("--out", default=None, help="also write the JSON here (default on CUDA: benchmarks/results/)")
    args = parser.parse_args(argv)

    from xkd.train.distributed import finish_process, start_process  # before DeepSpeed (DS_ACCELERATOR on CPU)
    from xkd.train.ds_config import default_config_path

    process = start_process()
    on_gpu = process.device.type == "cuda"
    from xkd.finetune.config import load_finetune_config

    config = args.config or ("ft_esc50" if args.modality == "audio" else "ft_ucf101")
    backbone_preset = args.backbone_preset or ("xkd_base" if on_gpu else "xkd_tiny")
    preset = load_finetune_config(config)
    batch_size = args.batch_size or (preset.data.batch_size if on_gpu else 4)
    steps, warmup = args.steps or (50 if on_gpu else 20), args.warmup or (10 if on_gpu else 3)
    size = args.size or (preset.data.global_video.size if on_gpu else 112)
    sets = [f"modality={args.modality}", f"backbone_preset={backbone_preset}", f"data.batch_size={batch_size}",
            f"data.global_video.size={size}", f"data.eval_size={size}", "data.eval_clips=1", "data.eval_crops=1",
            "train.val_clips=1", "train.val_crops=1", f"train.max_steps={warmup + steps}", "train.log_every_steps=1",
            f"train.eval_every_epochs={10**6}", f"train.checkpoint_every_steps={10**9}",
            *([f"data.num_threads={args.threads}"] if args.threads else []), *args.set]
    cfg = load_finetune_config(config, sets)
    ds_path = args.deepspeed_config or str(default_config_path(on_gpu))
    samples = (warmup + steps + 1) * batch_size * cfg.train.grad_accumulation

    from dali_pipelines.shardset import ShardSet

    with tempfile.TemporaryDirectory(prefix="bench-finetune-") as scratch:
        shards = make_labelled_shards(Path(scratch), args.clips, 256 if size > 128 else 128)
        made = ShardSet.from_path(str(shards))
        repeated = repeat_shards(made, Path(scratch) / "repeated", -(-samples // made.samples))
        measured = measure_finetuning(cfg, backbone_preset, shards, repeated, process, ds_path, warmup)
    finish_process()
    device = torch.cuda.get_device_name(process.device) if on_gpu else f"cpu ({torch.get_num_threads()} threads)"
    result = {**measured, "device": device, "preset": cfg.name, "backbone_preset": backbone_preset,
              "modality": args.modality, "frame_size": size if args.modality == "video" else None,
              "batch_size": batch_size, "deepspeed_config": Path(ds_path).name, "data_threads": cfg.data.num_threads,
              "warmup_steps": warmup, "timed_steps": steps}
    report(result, args.out, device if on_gpu else None, stem=f"bench_finetune_{cfg.name}_{backbone_preset}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
