"""One process of a run, however it was started: plain `xkd pretrain` (one process), `torchrun`, or
the `deepspeed` launcher (which also passes --local_rank; the environment is read instead)."""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass

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


def start_process() -> Process:
    """Initialise torch.distributed (NCCL on GPUs, gloo on CPU) through DeepSpeed."""
    on_gpu = torch.cuda.is_available()
    if not on_gpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # before DeepSpeed is imported
    if "RANK" not in os.environ:  # started by hand: a world of one
        os.environ.update({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1"})
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if on_gpu:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    import deepspeed

    if not torch.distributed.is_initialized():
        deepspeed.init_distributed(dist_backend="nccl" if on_gpu else "gloo", auto_mpi_discovery=False)
    return Process(rank, world, local_rank, device)


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


def barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
