"""Checkpoints of a run: DeepSpeed's own files (students, optimizer, ZeRO partitions) plus, in its
`client_state`, everything XKD keeps outside the engine (fp32 teachers, KD centres, schedule
position, data position, counters, the resolved config); per-rank RNG states beside them.

A checkpoint counts only once `xkd_complete.json` is in its folder: it is written by rank 0 after
every rank has finished writing, so a run killed while saving leaves an incomplete folder that
`--resume auto` passes over (and the next save removes)."""
from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from shards.atomic import atomic_write_json
from xkd.train.distributed import barrier

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
    def __init__(self, run_dir: str | Path, keep: int, rank: int, device: torch.device):
        self.root = checkpoint_root(run_dir)
        self.keep, self.rank, self.device = max(1, keep), rank, device

    def save(self, engine, step: int, client_state: dict, marker: dict, rank_state: dict) -> Path:
        """rank_state: what differs between ranks (e.g. the data position), kept with this rank's RNG."""
        tag = tag_for(step)
        folder = self.root / tag
        if (folder / COMPLETE).is_file():
            return folder  # this step is saved already (e.g. SIGTERM right after a periodic save)
        engine.save_checkpoint(str(self.root), tag=tag, client_state=client_state, save_latest=True)
        torch.save({"rng": rng_state(self.device), **rank_state}, self.rank_file(folder))
        barrier()
        if self.rank == 0:
            atomic_write_json(str(folder / COMPLETE), {"step": step, **marker})
            self._prune(keep_tag=tag)
        barrier()
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

    def load(self, engine, folder: Path) -> tuple[dict, dict]:
        """Engine state from `folder`; restores this rank's RNG. Returns (client_state, rank_state);
        rank_state is empty when the checkpoint was written by fewer processes."""
        _, client_state = engine.load_checkpoint(str(folder.parent), tag=folder.name, load_optimizer_states=True,
                                                 load_lr_scheduler_states=False)
        if client_state is None:
            raise RuntimeError(f"{folder}: DeepSpeed could not load this checkpoint")
        rank_state = {}
        if self.rank_file(folder).is_file():
            rank_state = torch.load(self.rank_file(folder), weights_only=False)
            restore_rng(rank_state.pop("rng"), self.device)
        return client_state, rank_state
