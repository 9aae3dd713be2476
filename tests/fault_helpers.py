"""Helpers shared by the fault, bad-input and fuzz tests: the one-line error check, generated data, tiny runs."""

from __future__ import annotations

import os
import signal
import struct
import sys
import zlib
from pathlib import Path

import torch

from genkit.config import DataConfig
from genkit.run import start_run
from genkit.train import TrainConfig

#: a very small ae: runs train in a fraction of a second on a CPU.
TINY = {"latent": 2, "channels": 2, "hidden": 8}
TINY_ARGS = ["--latent", "2", "--set", "channels=2", "--set", "hidden=8"]
#: the environment of genkit subprocesses: no debug tracebacks, one thread (the machines running tests are shared).
ENV = {**{k: v for k, v in os.environ.items() if k != "GENKIT_DEBUG"}, "OMP_NUM_THREADS": "1"}


def genkit_cmd(*args: object) -> list[str]:
    """The command line of ``genkit ARGS`` as a user runs it."""
    return [sys.executable, "-m", "genkit", *map(str, args)]


def interruptible() -> None:
    """``preexec_fn`` for a child that the test interrupts: a shell's background job (a CI runner, ``cmd &``)
    starts with SIGINT ignored, and Python keeps it ignored, so Ctrl-C would not reach genkit at all."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def one_error_line(err: str) -> str:
    """The single ``genkit: error: ...`` line that ``err`` must consist of (no traceback, nothing else)."""
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1 and err.endswith("\n"), f"expected one line on stderr, got {len(lines)}:\n{err}"
    assert lines[0].startswith("genkit: error: "), err
    return lines[0]


def write_images(folder: Path, n: int, size: int = 28, channels: int = 1, seed: int = 0) -> Path:
    """``n`` random PNG images of ``size`` x ``size`` pixels in ``folder``."""
    from torchvision.utils import save_image

    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    for i in range(n):
        save_image(torch.rand(channels, size, size, generator=g), folder / f"{i:04d}.png")
    return folder


def tiny_run(out: Path, images: Path, epochs: int = 1) -> Path:
    """A finished run of the tiny ae on ``images`` in ``out``."""
    config = TrainConfig(epochs=epochs, batch_size=16, progress=False)
    return start_run("ae", dict(TINY), config, DataConfig(str(images)), out=out, log=lambda _: None)


def png_bomb(path: Path, side: int = 30000) -> Path:
    """A tiny PNG file whose header claims ``side`` x ``side`` pixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return path
