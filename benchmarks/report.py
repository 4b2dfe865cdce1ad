"""How every benchmark hands in its result: one JSON object as the last printed line, and the same
object in a file under benchmarks/results/ (always on a GPU, where the figures are the goal's).
The script itself records what it ran on: the command, the date and the machine (CPU model,
cores, memory, load, library versions, GPU), so a result file holds only what was printed."""
from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"
LIBRARIES = ("torch", "torchvision", "torchaudio", "nvidia-dali", "deepspeed", "timm", "webdataset", "av", "numpy")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def library_versions() -> dict:
    """Installed versions of the libraries the benchmarks time (DALI under its CUDA-tagged name)."""
    installed = {d.metadata["Name"].lower(): d.version for d in importlib.metadata.distributions()}
    versions = {}
    for name in LIBRARIES:
        match = next((n for n in sorted(installed) if n == name or n.startswith(name + "-cuda")), None)
        if match:
            versions[match] = installed[match]
    return versions


def machine() -> dict:
    import psutil
    import torch

    description = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "load_average_1_5_15_min": [round(x, 2) for x in os.getloadavg()],  # other work on the machine
        "os": platform.platform(),
        "python": platform.python_version(),
        "libraries": library_versions(),
    }
    if torch.cuda.is_available():
        description["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        description["gpu_driver"] = gpu_driver()
        description["cuda_runtime"] = torch.version.cuda
    return description


def gpu_driver() -> str:
    """The NVIDIA driver's version, as the kernel module or nvidia-smi reports it."""
    try:
        with open("/proc/driver/nvidia/version") as handle:  # "NVRM version: NVIDIA UNIX ... Kernel Module  580.95.05 ..."
            words = handle.readline().split()
        return next(word for word in words if word[:1].isdigit() and "." in word)
    except (OSError, StopIteration):
        pass
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30)
        if done.returncode == 0 and done.stdout.strip():
            return done.stdout.splitlines()[0].strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    return "unknown (neither /proc/driver/nvidia/version nor nvidia-smi answered)"


def report(result: dict, out: str | Path | None, gpu_name: str | None = None, stem: str = "") -> None:
    """Add the command, date and machine (where the script did not set them), write `result` to
    `out`, or on a GPU to results/{stem}_{gpu}.json when `out` is None; then print it as one line."""
    result = {**result}
    result.setdefault("command", shlex.join(["python", os.path.relpath(sys.argv[0]), *sys.argv[1:]]))
    result.setdefault("date", datetime.date.today().isoformat())
    result.setdefault("machine", machine())
    if out is None and gpu_name:
        out = RESULTS_DIR / f"{stem}_{gpu_name.replace(' ', '_')}.json"
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result), flush=True)
