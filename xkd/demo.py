"""`xkd demo`: the main job on a small built-in sample set. Makes a few synthetic videos (two
classes, plus inputs that must be rejected), shards them, verifies the shards, then feeds DALI
pretraining batches to the tiny XKD model for a few optimisation steps. Later stages (DeepSpeed
pretraining, evaluation) join the demo as they land."""
from __future__ import annotations

import os
import sys
import tempfile


def register(subparsers) -> None:
    demo = subparsers.add_parser("demo", help="run the pipeline end to end on a small built-in sample set")
    demo.add_argument("--out", default=None, help="working folder (default: a temporary one)")
    demo.add_argument("--workers", type=int, default=2)
    demo.set_defaults(func=run_demo)


def make_sample_set(folder: str) -> str:
    """Two class folders of short clips in the containers users bring, and a few broken inputs."""
    from shards.synthetic import write_clip

    videos = os.path.join(folder, "videos")
    for label in ("waves", "ripples"):
        os.makedirs(os.path.join(videos, label), exist_ok=True)
    clips = [
        ("waves/clip0.mp4", {}),
        ("waves/clip1.mkv", {"vfr": True, "width": 176, "height": 144}),
        ("waves/clip2.mp4", {"fps": 30000 / 1001, "seconds": 3.0}),
        ("ripples/clip3.mp4", {"flash_at": 1.0, "audio_rate": 48000}),
        ("ripples/clip4.avi", {"codec": "mjpeg", "audio": "none"}),  # no audio: rejected by default
        ("ripples/clip5.mp4", {"seconds": 0.6}),  # shorter than --min-duration
    ]
    for index, (name, options) in enumerate(clips):
        write_clip(os.path.join(videos, name), seed=index, **options)
    open(os.path.join(videos, "ripples", "empty.mp4"), "wb").close()
    with open(os.path.join(videos, "ripples", "notes.mp4"), "w") as handle:
        handle.write("not a video\n" * 50)
    return videos


def run_demo(args) -> int:
    from xkd.cli import main

    folder = args.out or tempfile.mkdtemp(prefix="xkd-demo-")
    print(f"[demo] making the built-in sample set in {folder}")
    videos = make_sample_set(folder)
    shard_dir = os.path.join(folder, "shards")
    steps = [
        ["shards", "create", videos, shard_dir, "--samples-per-shard", "2", "--workers", str(args.workers)],
        ["shards", "verify", shard_dir, "--workers", str(args.workers)],
    ]
    for step in steps:
        print(f"[demo] xkd {' '.join(step)}", flush=True)
        status = main(step)
        if status:
            print(f"[demo] step failed with exit code {status}", file=sys.stderr)
            return status
    train_a_few_steps(shard_dir)
    print(f"[demo] done: shards in {shard_dir}")
    return 0


def train_a_few_steps(shard_dir: str, steps: int = 3) -> None:
    """DALI pipeline -> XKD (tiny preset) -> AdamW, on this machine's device."""
    import torch

    from dali_pipelines.loader import pretrain_loader
    from xkd.config import load_config
    from xkd.models import build_xkd

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = load_config("xkd_tiny", ["data.batch_size=2", "data.num_threads=2"])
    model = build_xkd(cfg).to(device)
    optimizer = torch.optim.AdamW(model.students.parameters(), lr=1e-4)
    print(f"[demo] DALI pretraining batches -> XKD tiny on {device}", flush=True)
    loader = pretrain_loader(shard_dir, cfg.data, device=device)
    epochs = (batch for _ in range(steps) for batch in loader)  # as many epochs as the steps need
    for step, batch in zip(range(steps), epochs):
        losses = model(batch["video"], batch["audio"], epoch=0)
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()
        model.ema_update(0.997, 0.997)
        terms = ", ".join(f"{k} {v.item():.3f}" for k, v in losses.items() if k.startswith("loss"))
        print(f"[demo] step {step}: {terms}", flush=True)
