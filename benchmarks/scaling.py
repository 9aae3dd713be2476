"""Scaling benchmark: training throughput with 1 and N processes (DDP through torchrun, same global batch).

    python -m benchmarks.scaling --nproc 2 --device cpu

Efficiency = (images/s with N processes) / (N x images/s with 1 process). On a CPU the processes share the
machine's cores (each process gets cores/N threads), so this measures DDP's overhead more than a speed-up.
Results: ``benchmarks/results/scaling-<device>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from benchmarks.results_io import RESULTS, provenance, write_results


def measure(nproc: int, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    threads = max(1, (os.cpu_count() or 1) // nproc) if args.device == "cpu" else 1
    command = [sys.executable, "-m", "genkit", "run", args.model, "--latent", "16", "--epochs", str(args.epochs)]
    command += ["--limit", str(args.images), "--batch-size", str(args.batch_size), "--device", args.device]
    command += ["--out", str(out), "--quiet", "--nproc", str(nproc)]
    subprocess.run(command, check=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    history = json.loads((out / "metrics.json").read_text())["epochs"]
    best = max(r["images_per_second"] for r in history)  # the first epoch also pays start-up costs
    return {"processes": nproc, "threads_per_process": threads, "images_per_second": best}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--model", default="vae-conv")
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder for the JSON and markdown results")
    args = parser.parse_args(argv)
    gpus = torch.cuda.device_count()
    if args.device == "cuda" and gpus < args.nproc:
        raise SystemExit(f"only {gpus} GPU(s) here: {args.nproc}-GPU scaling cannot be measured")
    with tempfile.TemporaryDirectory() as tmp:
        rows = [measure(n, args, Path(tmp) / f"n{n}") for n in (1, args.nproc)]
    single, multi = rows[0]["images_per_second"], rows[1]["images_per_second"]
    record = {
        **provenance(args.device),
        "cpu_count": os.cpu_count(),
        "gpus": gpus,
        "settings": {k: v for k, v in vars(args).items() if k != "results"},
        "rows": rows,
        "speedup": multi / single,
        "efficiency": multi / (args.nproc * single),
    }
    lines = [
        f"# DDP scaling: {args.model} (latent 16), global batch {args.batch_size}, {args.images} images, {args.device}",
        "",
        f"Device: {record['device_name']}, {record['cpu_count']} CPU cores, {gpus} GPU(s). "
        f"Command: `python -m benchmarks.scaling --nproc {args.nproc} --device {args.device}`",
        "",
        "| processes | threads/process | images/s |",
        "|---|---|---|",
        *[f"| {r['processes']} | {r['threads_per_process']} | {r['images_per_second']:.0f} |" for r in rows],
        "",
        f"Speed-up {record['speedup']:.2f}x, scaling efficiency {100 * record['efficiency']:.0f}%.",
    ]
    write_results(args.results / f"scaling-{args.device}.json", record, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
