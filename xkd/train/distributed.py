"""One process of a run, however it was started: plain `xkd pretrain` (one process), `torchrun`, or
the `deepspeed` launcher (which also passes --local_rank; the environment is read instead)."""
from __future__ import annotations

import contextlib
import os
import socket
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass
class Process:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def clear_stale_extension_locks(max_age_s: float = 600.0) -> list[Path]:
    """On CPU, DeepSpeed JIT-builds a shared-memory comm op at start. torch's extension builder
    holds a lock file while it checks or builds, and waits forever on one left by a process killed
    meanwhile, so every later run would hang. A build takes seconds: a lock older than
    `max_age_s` is stale and removed."""
    from torch.utils.cpp_extension import get_default_build_root

    # NAME/lock under TORCH_EXTENSIONS_DIR, or pyXY_cuZ/NAME/lock under the default root
    root = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root())
    removed = []
    for lock in [*root.glob("*/lock"), *root.glob("*/*/lock")]:
        try:
            if time.time() - lock.stat().st_mtime > max_age_s:
                lock.unlink()
                removed.append(lock)
        except OSError:
            continue  # another process took care of it
    for lock in removed:
        warnings.warn(f"removed a stale torch extension build lock: {lock}", stacklevel=2)
    return removed


def launched_rank() -> tuple[int, int]:
    """(rank, world size) as the launcher set them, a world of one when started by hand: readable
    before torch.distributed starts, so a run can be refused before DeepSpeed spins up."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


_by_hand = False  # this process set RANK and WORLD_SIZE itself (it stays a world of one)


def start_process() -> Process:
    """Initialise torch.distributed (NCCL on GPUs, gloo on CPU) through DeepSpeed. DS_ACCELERATOR=cpu
    keeps a run on the CPU where a GPU is visible too (DeepSpeed's own switch, so both agree)."""
    on_gpu = torch.cuda.is_available() and os.environ.get("DS_ACCELERATOR", "cuda") != "cpu"
    if not on_gpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # before DeepSpeed is imported
        clear_stale_extension_locks()
    global _by_hand
    _by_hand = _by_hand or "RANK" not in os.environ  # started without a launcher: a world of one
    by_hand = _by_hand
    if by_hand:
        # MASTER_PORT only names DeepSpeed's CPU shared-memory segment here (unique per run); nothing binds it
        os.environ.update({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1"})
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    rank, world = launched_rank()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if on_gpu:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    import deepspeed

    backend = "nccl" if on_gpu else "gloo"
    if by_hand and not torch.distributed.is_initialized():
        # a world of one needs no rendezvous: an in-process store instead of a TCP one, so no other process
        # can take its port between picking and binding it (seen as EADDRINUSE when runs start at once)
        torch.distributed.init_process_group(backend, store=torch.distributed.HashStore(), rank=0, world_size=1)
    if not torch.distributed.is_initialized() or not deepspeed.comm.is_initialized():
        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)
        if not on_gpu:
            _unlink_shared_memory_segment(rank, world)
    return Process(rank, world, local_rank, device)


def _unlink_shared_memory_segment(rank: int, world: int) -> None:
    """DeepSpeed's CPU backend gives each rank of a one-machine world a 66 MB POSIX shared-memory
    segment (/dev/shm/deepspeed_allreduce_buffer_UID_ADDR_PORT_RANK) and never unlinks it: every
    two-process run on CPUs left 130 MB in /dev/shm (RAM) until the machine ran out and launches hung.
    Once every rank has mapped the others' segments (they do so inside init_distributed; the barrier
    says all are past it) the names are not needed any more: each rank removes its own, and the
    memory goes back when the processes exit."""
    if world < 2 or int(os.environ.get("LOCAL_SIZE", "0")) != world:
        return  # DeepSpeed makes segments only when every rank is on this machine
    torch.distributed.barrier()
    name = f"deepspeed_allreduce_buffer_{os.getuid()}_{os.environ.get('MASTER_ADDR', '')}_" \
           f"{os.environ.get('MASTER_PORT', '')}_{rank}"
    with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join("/dev/shm", name))


def all_max(tensor: torch.Tensor) -> None:
    """In place: the element-wise maximum over every process (flags all ranks must act on together)."""
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)


def all_mean(tensor: torch.Tensor) -> torch.Tensor:
    tensor = tensor.detach().clone()
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        torch.distributed.all_reduce(tensor)
        tensor /= torch.distributed.get_world_size()
    return tensor


def finish_process() -> None:
    """Every rank at once: wait for the others, then take the process group down, so that no rank
    exits with the backend's threads still running (gloo can then abort: "terminate called").
    Through DeepSpeed, which then forgets the groups it made from it: a later run in the same
    process (the demo's second fine-tuning) starts a fresh world."""
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        import deepspeed.comm

        if deepspeed.comm.is_initialized():
            deepspeed.comm.destroy_process_group()
        else:
            torch.distributed.destroy_process_group()


def barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def all_gather_objects(item) -> list:
    """Every rank's `item` (picklable), in rank order; [item] without a process group."""
    if not (torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1):
        return [item]
    gathered = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, item)
    return gathered
