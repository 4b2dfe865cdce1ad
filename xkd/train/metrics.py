"""Training metrics: one JSON object per line in RUN_DIR/metrics.jsonl and TensorBoard scalars in
RUN_DIR/tensorboard, written by rank 0 only."""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import psutil
import torch


def memory_mib(device: torch.device) -> dict[str, float]:
    """Peak GPU memory allocated since the last call (GPU), and this process's resident memory."""
    out = {"rss_mib": psutil.Process(os.getpid()).memory_info().rss / 2**20}
    if device.type == "cuda":
        out["gpu_peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
        torch.cuda.reset_peak_memory_stats(device)
    return out


class MetricsWindow:
    """Loss terms and throughput since the last log line."""

    def __init__(self):
        self.started = time.perf_counter()
        self.paused = 0.0  # checkpoint saving inside the window
        self.data_wait = 0.0
        self.clips = 0
        self.sums: dict[str, float] = {}
        self.count = 0

    def add(self, losses: dict[str, float], clips: int) -> None:
        for name, value in losses.items():
            self.sums[name] = self.sums.get(name, 0.0) + value
        self.count += 1
        self.clips += clips

    def pause(self, seconds: float) -> None:
        self.paused += seconds

    def elapsed(self) -> float:
        return time.perf_counter() - self.started - self.paused

    def mean_losses(self) -> dict[str, float]:
        return {k: v / max(self.count, 1) for k, v in self.sums.items()} or {"loss": math.nan}


class MetricsLog:
    def __init__(self, run_dir: str | Path, enabled: bool):
        self.enabled = enabled
        self._file = self._writer = None
        if enabled:
            self._file = open(Path(run_dir) / "metrics.jsonl", "a", buffering=1)
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(Path(run_dir) / "tensorboard"))

    def write(self, step: int, values: dict) -> None:
        if not self.enabled:
            return
        record = {"step": step, "time": round(time.time(), 3), **values}
        self._file.write(json.dumps(record) + "\n")
        for name, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self._writer.add_scalar(name, value, step)

    def event(self, step: int, event: str, **details) -> None:
        """A line that is not a metric (start, resume, skipped step, checkpoint, stop)."""
        if self.enabled:
            self._file.write(json.dumps({"step": step, "time": round(time.time(), 3), "event": event, **details}) + "\n")

    def close(self) -> None:
        if self.enabled:
            self._writer.close()
            self._file.close()
