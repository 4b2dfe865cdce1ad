"""Checkpoints of a run: DeepSpeed's own files (students, optimizer, ZeRO partitions) plus, in its
`client_state`, the `TrainingState` (`xkd/train/state.py`: fp32 teachers, KD centres, step, data
position, counters, the resolved config); per-rank RNG states and data positions beside them.

A checkpoint counts only once `xkd_complete.json` is in its folder: it is written by rank 0 after
every rank has finished writing, so a run killed while saving leaves an incomplete folder that
`--resume auto` passes over (and the next save removes)."""
from __future__ import annotations

import json
import random
import re
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from shards.atomic import atomic_write_json
from xkd.train.distributed import barrier
from xkd.train.state import PER_RANK

COMPLETE = "xkd_complete.json"
_TAG = re.compile(r"^step(\d{9})$")


def tag_for(step: int) -> str:
    return f"step{step:09d}"


def checkpoint_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def complete_tags(run_dir: str | Path) -> list[str]:
    """Tags of complete checkpoints, oldest first."""
    root = checkpoint_root(run_dir)
    if not root.is_dir():
        return []
    tags = [p.name for p in root.iterdir() if _TAG.match(p.name) and (p / COMPLETE).is_file()]
    return sorted(tags)


def read_marker(folder: str | Path) -> dict:
    return json.loads((Path(folder) / COMPLETE).read_text())


def find_checkpoint(run_dir: str | Path, which: str = "auto") -> Path | None:
    """'auto': the newest complete checkpoint (None if there is none); otherwise a tag of run_dir
    or a checkpoint folder path."""
    if which == "auto":
        tags = complete_tags(run_dir)
        return checkpoint_root(run_dir) / tags[-1] if tags else None
    folder = Path(which) if Path(which).is_dir() else checkpoint_root(run_dir) / which
    if not (folder / COMPLETE).is_file():
        raise FileNotFoundError(f"{folder}: not a complete checkpoint (no {COMPLETE}); complete ones in "
                                f"{checkpoint_root(run_dir)}: {complete_tags(run_dir) or 'none'}")
    return folder


def rng_state(device: torch.device) -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: dict, device: torch.device) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


class CheckpointManager:
    """Saves a run's training state with its DeepSpeed engine, and decides when: every
    `train.checkpoint_every_steps` steps, at the last step, and when the run stops early."""

    def __init__(self, run_dir: str | Path, engine, state, log, *, every: int, last_step: int, keep: int,
                 rank: int, device: torch.device, engine_facts: dict):
        """state: the `xkd.train.state.TrainingState` saved; log: where each save is recorded;
        engine_facts: how the engine holds the students (ZeRO stage, precision), for the marker."""
        self.root = checkpoint_root(run_dir)
        self.engine, self.state, self.log = engine, state, log
        self.every, self.last_step = every, last_step
        self.keep, self.rank, self.device = max(1, keep), rank, device
        self.engine_facts = engine_facts
        self.last_saved: int | None = None  # the step of the newest checkpoint of this run

    def save_if_due(self) -> float:
        """Saves at the cadence's steps; returns the seconds it took (0 when not due)."""
        step = self.state.step
        if step % self.every and step != self.last_step:
            return 0.0
        started = time.perf_counter()
        self.save()
        return time.perf_counter() - started

    def save_unless_saved(self) -> None:
        """At the end of a run or a stop: the current step, unless it is saved already."""
        if self.last_saved != self.state.step:
            self.save()

    def save(self) -> Path:
        step = self.state.step
        tag = tag_for(step)
        folder = self.root / tag
        if not (folder / COMPLETE).is_file():  # else saved already (e.g. SIGTERM right after a periodic save)
            client_state = self.state.state_dict()
            self.engine.save_checkpoint(str(self.root), tag=tag, client_state=client_state, save_latest=True)
            # this rank's data position rides with its RNG state (ranks skip different bad samples)
            torch.save({"rng": rng_state(self.device), **{k: client_state[k] for k in PER_RANK}},
                       self.rank_file(folder))
            barrier()
            if self.rank == 0:
                atomic_write_json(str(folder / COMPLETE), {"step": step, **self.state.marker(), **self.engine_facts})
                self._prune(keep_tag=tag)
            barrier()
        self.log.event(step, "checkpoint", path=str(folder))
        self.last_saved = step
        return folder

    def _prune(self, keep_tag: str) -> None:
        complete = complete_tags(self.root.parent)
        doomed = complete[:-self.keep]
        doomed += [p.name for p in self.root.iterdir()
                   if _TAG.match(p.name) and p.name not in complete and p.name < keep_tag]  # killed mid-save
        for name in doomed:
            shutil.rmtree(self.root / name, ignore_errors=True)

    def rank_file(self, folder: Path) -> Path:
        return folder / f"rank{self.rank:05d}.pt"

    def load(self, folder: Path) -> dict:
        """The engine and the training state from `folder`; restores this rank's RNG. Returns the
        saved state, with this rank's own data position when it has one (not when the checkpoint was
        written by fewer processes)."""
        _, client_state = self.engine.load_checkpoint(str(folder.parent), tag=folder.name, load_optimizer_states=True,
                                                      load_lr_scheduler_states=False)
        if client_state is None:
            raise RuntimeError(f"{folder}: DeepSpeed could not load this checkpoint")
        saved = dict(client_state)
        if self.rank_file(folder).is_file():
            rank_state = torch.load(self.rank_file(folder), weights_only=False)
            restore_rng(rank_state.pop("rng"), self.device)
            saved.update(rank_state)
        self.state.load_state_dict(saved)
        self.last_saved = self.state.step
        return saved
