"""Multi-process training on torch.distributed: DDP under ``torchrun``, NCCL on GPUs, gloo on CPUs.

genkit starts nothing itself: ``torchrun --nproc-per-node N -m genkit run ...`` (or ``genkit run --nproc N``,
which calls torchrun) sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``, and the trainer joins the process group.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TYPE_CHECKING, Any

from genkit.errors import ConfigError

if TYPE_CHECKING:
    import torch


def _dist() -> Any:
    """``torch.distributed``, imported when first needed (the CLI's error handling asks ``active()`` early)."""
    import torch.distributed

    return torch.distributed


def launched() -> bool:
    """True inside a torchrun-launched process group of more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    """True once this process has joined a process group (never before it imported torch)."""
    return "torch" in sys.modules and _dist().is_available() and _dist().is_initialized()


def rank() -> int:
    """This process's rank: torchrun's, before the group is joined too (0 outside a launched group)."""
    if active():
        return _dist().get_rank()
    return int(os.environ.get("RANK", "0")) if launched() else 0


def world_size() -> int:
    """Number of processes (1 outside a process group)."""
    return _dist().get_world_size() if active() else 1


def is_main() -> bool:
    """Only the main process writes files."""
    return rank() == 0


def setup(device: str) -> torch.device | None:
    """Join the process group torchrun describes (once); returns this rank's device, or None when not launched."""
    import torch

    if not launched():
        return None
    if not _dist().is_available():
        raise ConfigError("this PyTorch build has no torch.distributed: run without torchrun/--nproc")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device in ("auto", "cuda")
    if not active():
        _dist().init_process_group(backend="nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over all processes (a no-op in a single process)."""
    if active():
        _dist().all_reduce(values, op=_dist().ReduceOp.SUM)
    return values


def broadcast(value: Any) -> Any:
    """The main process's ``value``, on every process."""
    if not active():
        return value
    box = [value]
    _dist().broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    """Wait for every process (a no-op in a single process)."""
    if active():
        _dist().barrier()


def shutdown() -> None:
    """Leave the process group (gloo aborts the interpreter at exit if it is left open)."""
    if active():
        _dist().destroy_process_group()


def launch(nproc: int, args: list[str], verbose: bool = False) -> int:
    """Run ``genkit ARGS`` in ``nproc`` processes on this machine, as torchrun does; returns the exit code.

    torchrun itself would end a failed run with a traceback of its own and log lines from every process;
    the processes' own one-line errors are what a user needs, so those are left alone (``verbose`` keeps all).
    """
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    if not verbose:  # torch's elastic modules each set their own level: quiet them one by one
        for name in list(logging.root.manager.loggerDict):
            if name.startswith("torch.distributed.elastic"):
                logging.getLogger(name).setLevel(logging.CRITICAL)
    # torchrun would set 1 thread per process (with a warning); share the cores out instead
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    options = torchrun.parse_args(["--standalone", f"--nproc-per-node={nproc}", "-m", "genkit", *args])
    try:
        torchrun.run(options)
    except SignalException as exc:  # Ctrl-C or kill: the processes were stopped; report it as Python does
        raise KeyboardInterrupt from exc
    except ChildFailedError as exc:
        if verbose:
            raise
        return exc.get_first_failure()[1].exitcode or 1
    return 0
