"""One fine-tuning run from its arguments: `prepare` checks every input before DeepSpeed starts (the
config, the backbone against it, the shard sets and their labels), `train` runs the loop on this
process, and `finetune` does both in a world of one: the library entry point.
`xkd finetune` (xkd/commands/finetune.py) is `prepare` + `train` with messages and exit statuses."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from dali_pipelines.shardset import ShardSet, ShardSetError
from xkd.config import ConfigError
from xkd.eval.backbones import BackboneMismatch, EvalBackbone
from xkd.finetune.config import FinetuneConfig, load_finetune_config
from xkd.finetune.inputs import LabelMismatch, LabelSpace, check_shards, finetune_backbone, label_space


class FinetuneRefused(ValueError):
    """The run cannot start as asked (the message names the file or value and says why)."""


@dataclass
class FinetuneInputs:
    cfg: FinetuneConfig
    backbone: EvalBackbone
    labels: LabelSpace
    train: ShardSet
    val: ShardSet
    test: ShardSet | None
    names: dict = field(default_factory=dict)  # what the result file says: locations, dataset, fold, command


def prepare(config: str, backbone: str | None, train: str, val: str, *, test: str | None = None,
            random_init: str | None = None, role: str = "teacher", seed: int = 0, overrides: list[str] | None = None,
            dataset: str | None = None, fold: str | None = None, command: str = "") -> FinetuneInputs:
    """Every input checked; FinetuneRefused with one message when something does not fit."""
    if (backbone is None) == (random_init is None):
        raise FinetuneRefused("give a backbone (an `xkd export` folder or file, or an `xkd import-weights` file) "
                              "or --random-init PRESET, not both or neither")
    try:
        cfg = load_finetune_config(config, overrides)
        others = {"--val": val, **({"--test": test} if test else {})}
        labels = label_space(cfg, train, others)
        sets = {"--train": check_shards(train, cfg, skip_bad=cfg.train.skip_bad_samples)}
        sets.update({name: check_shards(location, cfg) for name, location in others.items()})
        chosen = finetune_backbone(backbone, cfg, role=role, random_init=random_init, seed=seed)
    except (ConfigError, LabelMismatch, BackboneMismatch, ShardSetError) as error:
        raise FinetuneRefused(str(error)) from None
    names = {"train": os.path.abspath(train), "val": os.path.abspath(val), "test": os.path.abspath(test or val),
             "dataset": dataset, "fold": fold, "command": command}
    return FinetuneInputs(cfg, chosen, labels, sets["--train"], sets["--val"], sets.get("--test"), names)


def train(inputs: FinetuneInputs, out: str, process, deepspeed_config: str | None = None, resume: str | None = None,
          quiet: bool = False) -> dict:
    """Fine-tune on this process (of a world started by `xkd.train.distributed.start_process`); the
    summary: outcome, step, epoch, best validation, test metrics, result and classifier paths.
    Raises RunRefused / NonFiniteLossError (xkd/train/run_loop.py) and ConfigError."""
    from xkd.finetune.loop import BEST, RESULT, FinetuneTrainer
    from xkd.train.ds_config import default_config_path

    ds_path = deepspeed_config or str(default_config_path(process.device.type == "cuda"))
    trainer = FinetuneTrainer(inputs.cfg, inputs.backbone, inputs.labels, inputs.train, inputs.val, out, process,
                              ds_path, test=inputs.test, names=inputs.names, resume=resume, quiet=quiet)
    summary = trainer.run()
    result = getattr(trainer, "result", None) or {}
    summary.update({"best": trainer.state.best, "classifier": os.path.join(out, BEST + ".safetensors"),
                    "result": os.path.join(out, RESULT) if result else None,
                    **{k: v for k, v in result.items() if k != "result"}})
    return summary


def finetune(backbone: str | None, train_shards: str, val_shards: str, out: str, preset: str = "ft_micro", *,
             test_shards: str | None = None, random_init: str | None = None, max_steps: int | None = None,
             epochs: int | None = None, overrides: list[str] | None = None, deepspeed_config: str | None = None,
             resume: str | None = None, quiet: bool = True) -> dict:
    """Fine-tune `backbone` (or `random_init`, a pretraining preset) on labelled shards in this process
    and return the summary of `train`: {"outcome", "step", "best", "top1", "top5" (or "map"),
    "result", "classifier", ...}. max_steps / epochs shorten the preset's run (the LR schedule follows
    `epochs`). Raises FinetuneRefused for inputs that do not fit."""
    from xkd.train.distributed import finish_process, start_process

    sets = list(overrides or [])
    sets += [f"train.max_steps={max_steps}"] if max_steps else []
    sets += [f"train.epochs={epochs}"] if epochs else []
    inputs = prepare(preset, backbone, train_shards, val_shards, test=test_shards, random_init=random_init,
                     overrides=sets, command="xkd.finetune.finetune")
    process = start_process()
    try:
        return train(inputs, out, process, deepspeed_config, resume, quiet)
    finally:
        finish_process()
