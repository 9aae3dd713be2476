"""Multi-process training on torch.distributed: DDP under ``torchrun``, NCCL on GPUs, gloo on CPUs.

genkit starts nothing itself: ``torchrun --nproc-per-node N -m genkit run ...`` (or ``genkit run --nproc N``,
which calls torchrun) sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``, and the trainer joins the process group.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist

from genkit.errors import ConfigError


def launched() -> bool:
    """True inside a torchrun-launched process group of more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    """True once this process has joined a process group."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank (0 outside a process group)."""
    return dist.get_rank() if active() else 0


def world_size() -> int:
    """Number of processes (1 outside a process group)."""
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Only the main process writes files."""
    return rank() == 0


def setup(device: str) -> torch.device | None:
    """Join the process group torchrun describes (once); returns this rank's device, or None when not launched."""
    if not launched():
        return None
    if not dist.is_available():
        raise ConfigError("this PyTorch build has no torch.distributed: run without torchrun/--nproc")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device in ("auto", "cuda")
    if not active():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over all processes (a no-op in a single process)."""
    if active():
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def broadcast(value: Any) -> Any:
    """The main process's ``value``, on every process."""
    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    """Wait for every process (a no-op in a single process)."""
    if active():
        dist.barrier()


def shutdown() -> None:
    """Leave the process group (gloo aborts the interpreter at exit if it is left open)."""
    if active():
        dist.destroy_process_group()


def torchrun_command(nproc: int, args: list[str]) -> list[str]:
    """The torchrun command that runs ``genkit ARGS`` in ``nproc`` processes on this machine."""
    import sys

    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "genkit",
        *args,
    ]
