"""DeepSpeed JSON configs completed from the experiment config.

The shipped configs live in `xkd/deepspeed_configs/` (package data, so an installed copy has them);
`--deepspeed-config` takes one of their names (`zero2.json` or `zero2`) or the path of any JSON file.

The JSON files hold only what is DeepSpeed's own business (ZeRO stage, precision, buckets). Batch
size, accumulation and clipping come from the experiment config: a file may leave them out or
write "auto"; any other value is refused, so the two can never disagree. An optimizer or scheduler
section is refused too: `xkd pretrain` builds AdamW and sets LR / weight decay every iteration.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from xkd.config import ConfigError, ExperimentConfig

CONFIG_DIR = Path(__file__).resolve().parents[1] / "deepspeed_configs"  # shipped with the package
FILLED = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
          "gradient_clipping")
NOT_USED = ("optimizer", "scheduler")


def default_config_path(on_gpu: bool) -> Path:
    """ZeRO-2 in bf16 on GPUs; plain fp32 data parallel on CPU (bf16 matmuls are slow there)."""
    return CONFIG_DIR / ("zero2.json" if on_gpu else "zero0_fp32.json")


def resolve_config_path(name_or_path: str | Path) -> Path:
    """The file `--deepspeed-config` names: a path to a JSON file, else a shipped config's name
    (`zero2.json` or `zero2`; a name with a folder in it is a path only)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    text = str(name_or_path)
    if "/" not in text and os.sep not in text:
        shipped = CONFIG_DIR / (text if text.endswith(".json") else f"{text}.json")
        if shipped.is_file():
            return shipped
    names = ", ".join(sorted(p.name for p in CONFIG_DIR.glob("*.json"))) or "none"
    raise ConfigError(f"{name_or_path}: no such DeepSpeed config file, and no shipped config of that name "
                      f"(shipped: {names})")


def read_json(path: str | Path) -> dict:
    path = resolve_config_path(path)
    try:
        data = json.loads(path.read_text())
    except ValueError as error:  # JSONDecodeError, or bytes that are not text
        raise ConfigError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be an object")
    return data


def deepspeed_config(path: str | Path, cfg: ExperimentConfig, world_size: int) -> dict:
    """The DeepSpeed config dict for `cfg` (a pretraining or a fine-tuning config: both have
    data.batch_size and train.grad_accumulation / clip_grad / clip_mode) on `world_size` processes."""
    data = read_json(path)
    for key in FILLED:
        if key in data and data[key] != "auto":
            raise ConfigError(f"{path}: {key} = {data[key]!r} is set from the experiment config "
                              "(data.batch_size, train.grad_accumulation, train.clip_grad / clip_mode); "
                              'write "auto" or leave it out')
    for key in NOT_USED:
        if key in data:
            raise ConfigError(f"{path}: an '{key}' section is not used: the training loop (xkd pretrain, xkd "
                              "finetune) builds AdamW and its per-iteration schedules from the experiment config "
                              "(train.*)")
    if data.get("fp16", {}).get("enabled") and data.get("bf16", {}).get("enabled"):
        raise ConfigError(f"{path}: fp16 and bf16 are both enabled; choose one")
    train = cfg.train
    micro = cfg.data.batch_size
    data.update({
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": train.grad_accumulation,
        "train_batch_size": micro * train.grad_accumulation * world_size,
        # per-parameter clipping is applied by the loop between backward and step
        "gradient_clipping": train.clip_grad if train.clip_mode == "global" else 0.0,
    })
    data.setdefault("steps_per_print", 10**9)  # the loop logs; DeepSpeed's own prints would interleave
    return data


def zero_stage(ds_config: dict) -> int:
    return int(ds_config.get("zero_optimization", {}).get("stage", 0))


def precision(ds_config: dict) -> str:
    if ds_config.get("bf16", {}).get("enabled"):
        return "bf16"
    if ds_config.get("fp16", {}).get("enabled"):
        return "fp16"
    return "fp32"
