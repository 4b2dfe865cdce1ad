"""The DeepSpeed training loop every run shares, whatever it trains: `xkd pretrain` (XKD,
`xkd/train/loop.py`) and `xkd finetune` (a classifier, `xkd/finetune/loop.py`) are subclasses that
say what the model is, what one forward computes and what follows an applied step.

What lives here: the DeepSpeed engine and its config, the batch source by epoch (resumable
mid-epoch), checkpoints and `--resume`, the per-iteration schedules' values set before each
optimiser step, the gradient check (and clipping), non-finite batches and steps skipped on every
rank alike, SIGTERM (all ranks stop at one step, a checkpoint is saved), metrics.jsonl +
TensorBoard, and the progress bar. The loop reads "get batch, step, after-step (count, log,
scheduled work such as a monitor or a validation, save)".
"""
from __future__ import annotations

import json
import signal
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml

from xkd.config import to_dict
from xkd.models.transformer import compile_blocks
from xkd.train.checkpoint import CheckpointManager, complete_tags, find_checkpoint, read_marker
from xkd.train.distributed import Process, all_max, all_mean
from xkd.train.ds_config import deepspeed_config, precision, zero_stage
from xkd.train.metrics import MetricsLog, MetricsWindow, memory_mib

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def phase(name: str):
    """A named range of the step ("xkd.forward", ...) for torch.profiler: a profile of a run then says
    where each step's time goes (`benchmarks/bench_train.py --profile`); next to free without one."""
    return torch.profiler.record_function(f"xkd.{name}")


class RunRefused(RuntimeError):
    """The run cannot start as asked (the message says why and what to do)."""


class NonFiniteLossError(RuntimeError):
    """Too many steps in a row had a non-finite loss."""


def config_differences(saved: dict, current: dict, prefix: str = "model") -> list[str]:
    """'prefix.key: checkpoint A, config B' for every value that differs."""
    out = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_differences(a, b, f"{prefix}.{key}")
        elif a != b:
            out.append(f"{prefix}.{key}: checkpoint {a!r}, config {b!r}")
    return out


@dataclass
class StepResult:
    """What one batch did, for the after-step."""

    stop: bool  # some rank has a stop signal
    skipped: str = ""  # the event of a skipped batch or step (non-finite): then nothing changed
    bad: list[str] = field(default_factory=list)  # what was not finite
    applied: bool = False  # an optimiser step was applied
    values: dict | None = None  # the schedules' values at an optimiser step
    terms: dict[str, float] | None = None  # the loss terms, once backward has run
    clips: int = 0  # clips of the batch on all ranks


class DeepSpeedLoop:
    """One run: `run()` trains to the last step (or a stop signal) and returns a summary.

    A subclass provides, before this constructor's work needs them:
      _make_data(shards) -> (batch source, shards left out)  (the interface of `xkd.train.data`)
      _build_model() -> (the module DeepSpeed trains, its optimizer parameter groups), the whole model
        (for pretraining: students and teachers) in `self.model`
      _make_schedules() -> an object with len() and at(step) -> {"lr": ..., ...}
      _make_state() -> the run state a checkpoint holds (`xkd.train.state.TrainingState`'s interface)
      _check_checkpoint(folder, marker): refuse (RunRefused) a checkpoint this run cannot continue
      _forward(batch, epoch) -> the loss terms, the total in "loss"
    and may override the hooks below (`_after_backward`, `_set_hyperparameters`, `_after_step_applied`,
    `_after_step_not_applied`, `_work_due`, `_scheduled_work`, `_schedule_record`, `_at_end`)."""

    command = "xkd"  # prefix of the messages
    resume_sections = ("train", "data")  # config sections a resume compares (and says what changed)

    def __init__(self, cfg, shards, run_dir: str, process: Process, deepspeed_config_path: str,
                 resume: str | None = None, quiet: bool = False, data=None):
        """shards: what `_make_data` reads (a folder, a pattern, a checked ShardSet). data: a batch
        source with the interface of `xkd.train.data` to use instead (benchmarks, tests)."""
        import deepspeed

        self.cfg, self.process, self.quiet = cfg, process, quiet
        self.run_dir = Path(run_dir)
        self.device = process.device
        train = cfg.train

        self.resume_from = self._checkpoint_to_resume(resume)
        self.ds_config = deepspeed_config(deepspeed_config_path, cfg, process.world_size)
        self.precision = precision(self.ds_config)
        self.zero3 = zero_stage(self.ds_config) == 3
        if self.precision == "fp16" and self.device.type == "cpu":
            raise RunRefused(f"{deepspeed_config_path}: fp16 needs a GPU; use a *_fp32.json config on CPU")

        self.left_out_shards: tuple = ()
        if data is None:
            data, self.left_out_shards = self._make_data(shards)
        self.data = data
        self.iters_per_epoch = len(self.data) // train.grad_accumulation
        if self.iters_per_epoch == 0:
            raise RunRefused(f"{shards}: {len(self.data)} batches per epoch and process cannot make one "
                             f"optimiser step with train.grad_accumulation={train.grad_accumulation}")
        self.total_batch = self.ds_config["train_batch_size"]
        self.schedules = self._make_schedules()
        self.last_step = len(self.schedules) if not train.max_steps else min(train.max_steps, len(self.schedules))

        torch.manual_seed(train.seed)  # identical initial weights on every rank
        module, groups = self._build_model()
        if train.compile != "none" and self.zero3:
            raise RunRefused(f"train.compile={train.compile} with ZeRO-3 ({deepspeed_config_path}): ZeRO-3 gathers "
                             "parameters in hooks that compiled blocks would skip; use ZeRO-2 or train.compile=none")
        self.compiled_blocks = compile_blocks(self.model, train.compile)
        optimizer = torch.optim.AdamW(groups, lr=0.0, betas=tuple(train.betas), eps=train.eps,
                                      fused=self.device.type == "cuda")
        self.engine, self.optimizer, _, _ = deepspeed.initialize(
            model=module, optimizer=optimizer, config=self.ds_config, dist_init_required=False)
        if len(self.optimizer.param_groups) != len(groups):  # DeepSpeed keeps the groups, in order
            raise RuntimeError(f"DeepSpeed changed the optimizer groups ({len(groups)} -> "
                               f"{len(self.optimizer.param_groups)}): the per-group schedules cannot be applied")
        self._seed_rank_streams()
        self.base_optimizer = optimizer  # the torch optimizer inside DeepSpeed's wrappers
        self.trainable_params = [p for p in module.parameters() if p.requires_grad]
        self.clip_flags = self._clip_flags()
        self.gradient_layout: str | None = None
        self.micro_batches_pending = 0  # backward passes since the last optimiser step (accumulation)

        self.state = self._make_state()
        self.log = MetricsLog(self.run_dir, process.is_main)
        self.skipped_samples: list[str] = []  # named by the batches that left them out
        self.window = MetricsWindow()
        self.checkpoints = CheckpointManager(
            self.run_dir, self.engine, self.state, self.log, every=train.checkpoint_every_steps,
            last_step=self.last_step, keep=train.keep_checkpoints, rank=process.rank, device=self.device,
            engine_facts={"zero_stage": zero_stage(self.ds_config), "precision": self.precision})
        self.stop_signal: str | None = None

    # ---------------------------------------------------------------------------- hooks

    def _clip_flags(self) -> torch.Tensor:
        """Which trainable parameters per-parameter clipping limits (default: all of them)."""
        return torch.ones(len(self.trainable_params), dtype=torch.bool, device=self.device)

    def _after_backward(self) -> None:
        """After each backward pass, before any optimiser step."""

    def _set_hyperparameters(self, values: dict) -> None:
        """This step's schedule values into the optimizer groups (default: the LR into every group)."""
        for group in self.optimizer.param_groups:
            group["lr"] = values["lr"]

    def _after_step_applied(self, values: dict) -> None:
        """After an optimiser step that changed the weights."""

    def _after_step_not_applied(self) -> None:
        """After an optimiser step that was skipped (non-finite gradient, fp16 overflow)."""

    def _work_due(self, epoch: int, epoch_ended: bool) -> bool:
        """Whether `_scheduled_work` runs after this batch (epoch_ended: it was the epoch's last)."""
        return False

    def _scheduled_work(self, epoch: int) -> None:
        """Work between batches (a monitor, a validation), before the step's checkpoint, which then
        holds what it found; its time is not training time."""

    def _schedule_record(self, values: dict, epoch: int) -> dict:
        """The schedule values a log line records."""
        return {"lr": values["lr"]}

    def _describe(self) -> str:
        return self.cfg.name

    def _at_end(self, outcome: str) -> None:
        """After the loop (finished or stopped), before the log closes."""

    # ---------------------------------------------------------------------------------- setup

    def _checkpoint_to_resume(self, resume: str | None):
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if resume is None:
            if complete_tags(self.run_dir):
                raise RunRefused(f"{self.run_dir} already holds checkpoints of a run: pass --resume auto to "
                                 "continue it, or choose another --out")
            return None
        try:
            folder = find_checkpoint(self.run_dir, resume)
        except FileNotFoundError as error:
            raise RunRefused(str(error)) from None
        if folder is None:
            return None  # --resume auto on a new run: start from scratch
        self._check_checkpoint(folder, read_marker(folder))
        return folder

    def _seed_rank_streams(self) -> None:
        """Random draws (masks, dropout, mixing) differ between ranks, reproducibly."""
        seed = self.cfg.train.seed * 1000 + self.process.rank + 1
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)

    def _write_run_files(self) -> None:
        """The resolved configs of this start (each checkpoint also keeps the config it was made with)."""
        if self.process.is_main:
            (self.run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(self.cfg), sort_keys=False))
            (self.run_dir / "deepspeed_config.json").write_text(
                json.dumps(self.ds_config, indent=2))

    def _resume(self) -> None:
        saved = self.checkpoints.load(self.resume_from)
        config = saved.get("config", {})
        changed = [d for section in self.resume_sections
                   for d in config_differences(config.get(section, {}), to_dict(getattr(self.cfg, section)), section)]
        if changed:
            self._say("note: the config differs from the checkpoint's (schedules follow the new values): "
                      + "; ".join(changed))
        if saved.get("world_size") != self.process.world_size:
            self._say(f"note: the checkpoint was written by {saved.get('world_size')} processes, this run has "
                      f"{self.process.world_size}: the data order differs from an uninterrupted run")
        position, step = saved["data"], self.state.step
        self.log.event(step, "resumed", checkpoint=str(self.resume_from), epoch=position["epoch"],
                       batch=position["batch"])
        self._say(f"resumed from {self.resume_from} (step {step}, epoch {position['epoch']}, "
                  f"batch {position['batch']})")

    def _say(self, message: str) -> None:
        if self.process.is_main and not self.quiet:
            print(f"[{self.command}] {message}", flush=True)

    def autocast(self):
        """The forward's mixed precision: the matrix products in the training precision."""
        if self.precision == "fp32":
            return nullcontext()
        return torch.autocast(self.device.type, dtype=DTYPES[self.precision])

    # ------------------------------------------------------------------------------- one step

    def _on_device(self, batch):
        """The one place the loop reads a batch: its left-out samples are logged and counted, and it
        comes to the device as the loader made it."""
        for member in batch.skipped:
            self.skipped_samples.append(member)
            self.log.event(self.state.step, "sample_left_out", reason=member)
        return batch.to(self.device)

    def _optimiser_step(self, values: dict) -> bool:
        """Hyper-parameters for this step, the gradient check (and per-parameter clipping), the step,
        then the after-step hook. Returns False when the gradients were not finite on some rank: then
        nothing changed (every rank skips alike)."""
        from xkd.train.gradients import check_and_clip, loss_scale, optimizer_step_skipped

        self._set_hyperparameters(values)
        train = self.cfg.train
        per_parameter = train.clip_grad > 0 and train.clip_mode == "per_parameter"
        with phase("gradient_check"):
            check = check_and_clip(self.trainable_params, self.clip_flags if per_parameter else None,
                                   train.clip_grad, loss_scale(self.engine))
        if self.gradient_layout is None:
            self.gradient_layout = check.layout
            self.log.event(self.state.step, "gradients", layout=check.layout, parameters=len(self.trainable_params))
        # fp16: DeepSpeed finds the overflow itself and lowers the loss scale (was_step_applied is False)
        skip = not check.finite and self.precision != "fp16"
        with optimizer_step_skipped(self.base_optimizer) if skip else nullcontext(), phase("optimizer_step"):
            self.engine.step()
        if self.engine.was_step_applied() and not skip:
            with phase("after_step"):
                self._after_step_applied(values)
        else:
            self._after_step_not_applied()
        return not skip

    # ------------------------------------------------------------------------------- the loop

    def _on_signal(self, signum, _frame) -> None:
        self.stop_signal = signal.Signals(signum).name

    def run(self) -> dict:
        """Train to the last step (or a stop signal). Returns a summary dict."""
        from tqdm import tqdm

        self._write_run_files()
        if self.resume_from is not None:
            self._resume()
        else:
            self.log.event(self.state.step, "started", world_size=self.process.world_size, precision=self.precision,
                           zero_stage=zero_stage(self.ds_config), total_batch=self.total_batch,
                           iters_per_epoch=self.iters_per_epoch, last_step=self.last_step,
                           compile=self.cfg.train.compile, compiled_blocks=self.compiled_blocks)
        for problem in self.left_out_shards:
            self.log.event(self.state.step, "shard_left_out", reason=problem)
        previous = signal.signal(signal.SIGTERM, self._on_signal)
        self._say(f"{self._describe()}, {self.process.world_size} process(es) on "
                  f"{self.device.type}, ZeRO-{zero_stage(self.ds_config)} {self.precision}, total batch "
                  f"{self.total_batch}, {self.iters_per_epoch} steps/epoch, steps {self.state.step} -> {self.last_step}")
        bar = tqdm(total=self.last_step, initial=self.state.step, unit="step", dynamic_ncols=True,
                   disable=not self.process.is_main or self.quiet)
        self.window = MetricsWindow()
        outcome = "finished"
        try:
            outcome = self._train(bar)
            bar.close()
            self._at_end(outcome)
        finally:
            bar.close()
            signal.signal(signal.SIGTERM, previous)
            self.log.close()
        return {"outcome": outcome, "step": self.state.step, "epoch": self.data.epoch,
                "nonfinite_total": self.state.nonfinite_total, "skipped_samples": list(self.skipped_samples),
                "left_out_shards": list(self.left_out_shards)}

    def _train(self, bar) -> str:
        """Get a batch, step, after-step (count, log, save), until the last step, the last epoch or a stop."""
        while self.state.step < self.last_step and self.data.epoch < self.cfg.train.epochs:
            epoch = self.data.epoch
            for batch in self._timed(self.data):
                result = self._step(batch, epoch)
                with phase("bookkeeping"):  # metrics, logs, checkpoints, scheduled work
                    stop = self._after_step(result, epoch, bar)
                if stop:
                    return "stopped"
                if self.state.step >= self.last_step:
                    break
        self.checkpoints.save_unless_saved()
        return "finished"

    def _timed(self, batches):
        """The batches, the time spent waiting for each added to the metrics window."""
        waited_since = time.perf_counter()
        for batch in batches:
            self.window.data_wait += time.perf_counter() - waited_since
            yield batch
            waited_since = time.perf_counter()

    def _step(self, batch, epoch: int) -> StepResult:
        """Forward; one all-reduce that tells every rank whether any rank saw a non-finite loss or a stop
        signal (so all skip or stop together), with the loss terms in the same transfer to the host;
        then backward and, at an accumulation boundary, the optimiser step."""
        with phase("to_device"):
            batch = self._on_device(batch)
        with phase("forward"):
            losses = self._forward(batch, epoch)
        with phase("loss_check"):  # waits for the forward to finish: the step's first device sync
            stop_flag = torch.tensor(float(bool(self.stop_signal)), device=self.device)
            flags_and_terms = torch.stack([(~torch.isfinite(losses["loss"])).float(), stop_flag,
                                           *(v.detach().float() for v in losses.values())])
            all_max(flags_and_terms[:2])
            nonfinite, stop, *terms = flags_and_terms.tolist()
        if nonfinite:
            bad = sorted(k for k, v in losses.items() if not torch.isfinite(v).all())
            return StepResult(bool(stop), skipped="nonfinite_loss_skipped", bad=bad or ["on another rank"])
        with phase("backward"):
            self.engine.backward(losses["loss"])
            self._after_backward()
        result = StepResult(bool(stop), terms=dict(zip(losses, terms)),
                            clips=len(batch) * self.process.world_size)
        if not self.engine.is_gradient_accumulation_boundary():
            self.engine.step()  # DeepSpeed counts micro-steps here
            self.micro_batches_pending += 1
            return result
        self.micro_batches_pending = 0
        result.values = self.schedules.at(self.state.step)
        if self._optimiser_step(result.values):
            result.applied = True
        else:
            result.skipped, result.bad = "nonfinite_gradient_skipped", ["gradient"]
        return result

    def _after_step(self, result: StepResult, epoch: int, bar) -> bool:
        """Counters, logging and checkpoints after a batch; True when the run stops here (a stop
        signal on some rank, at an optimiser step's end: never mid-accumulation)."""
        if result.terms is not None:
            self.window.add(result.terms, result.clips)
        if result.skipped:
            self._skip_nonfinite(result.skipped, epoch, result.bad)
        elif result.applied:
            self.state.nonfinite_in_a_row = 0
            self.state.step += 1
            bar.update(1)
            if self.state.step % self.cfg.train.log_every_steps == 0 or self.state.step == self.last_step:
                self._log(result.values, epoch, bar)
                self.window = MetricsWindow()
        if self._work_due(epoch, epoch_ended=self.data.state_dict()["epoch"] > epoch):
            started = time.perf_counter()
            self._scheduled_work(epoch)
            self.window.pause(time.perf_counter() - started)  # not training time
        if result.applied:
            self.window.pause(self.checkpoints.save_if_due())  # saving is not training time either
        if not result.stop or self.micro_batches_pending:
            return False
        self.checkpoints.save_unless_saved()
        self.log.event(self.state.step, "stopped", signal=self.stop_signal or "SIGTERM (another rank)")
        self._say(f"stopped by {self.stop_signal or 'a signal to another process'} at step "
                  f"{self.state.step}; checkpoint saved; continue with --resume auto")
        return True

    def _skip_nonfinite(self, event: str, epoch: int, bad: list[str]) -> None:
        state = self.state
        state.nonfinite_total += 1
        state.nonfinite_in_a_row += 1
        self.log.event(state.step, event, epoch=epoch, terms=bad, in_a_row=state.nonfinite_in_a_row)
        limit = self.cfg.train.max_nonfinite_in_a_row
        if state.nonfinite_in_a_row >= limit:
            newest = complete_tags(self.run_dir)
            raise NonFiniteLossError(
                f"{limit} batches in a row gave a non-finite loss or gradient (at step {state.step}, epoch {epoch}; "
                f"{', '.join(bad)}): stopping. Lower train.base_lr, use bf16 instead of "
                f"fp16, or check the data; the newest complete checkpoint is "
                f"{newest[-1] if newest else 'none'} in {self.run_dir / 'checkpoints'}")

    def _log(self, values: dict, epoch: int, bar) -> None:
        window = self.window
        losses = window.mean_losses()
        names = sorted(losses)
        averaged = all_mean(torch.tensor([losses[n] for n in names], dtype=torch.float64, device=self.device))
        elapsed = window.elapsed()
        record = {
            "epoch": epoch,
            **{n: float(v) for n, v in zip(names, averaged.tolist())},
            **self._schedule_record(values, epoch),
            "clips_per_s": window.clips / elapsed,
            "clips_per_s_per_process": window.clips / elapsed / self.process.world_size,
            "data_wait_fraction": window.data_wait / elapsed,
            "nonfinite_skipped_total": self.state.nonfinite_total,
            "skipped_samples_total": len(self.skipped_samples),
            **memory_mib(self.device),
        }
        self.log.write(self.state.step, record)
        bar.set_postfix(loss=f"{record['loss']:.4f}", clips_s=f"{record['clips_per_s']:.1f}", refresh=False)
