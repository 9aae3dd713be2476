"""Speed benchmark: the same network and steps trained two ways in one run.

(a) the usual loop: a torchvision MNIST dataset with ``ToTensor`` behind a default ``DataLoader``;
(b) genkit's trainer: the dataset held as one tensor on the device, batches by indexing a permutation.

    python -m benchmarks.speed --device cpu --steps 200

Each variant runs in its own process (so peak memory is its own) from the same seed; both then report the
test loss after the same number of steps, to show that the fast path changes nothing but speed.
Results: ``benchmarks/results/speed-<device>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import gzip
import multiprocessing as mp
import resource
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import genkit
from benchmarks.results_io import write_results
from genkit.data import data_root, load_dataset
from genkit.train import TrainConfig, Trainer, device_name, select_device

RESULTS = Path(__file__).parent / "results"
#: relative difference in test loss after equal steps that still counts as "the same training"
LOSS_TOLERANCE = 0.05


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _test_loss(model: genkit.Model, device: torch.device) -> float:
    _, test = load_dataset("mnist")
    model.eval()
    with torch.no_grad():
        losses = [model.loss(test.images[i : i + 1000].to(device)).total.item() for i in range(0, len(test), 1000)]
    return sum(losses) / len(losses)


def plain_loop(args: dict[str, Any]) -> dict[str, Any]:
    """What most VAE code does: torchvision dataset + ToTensor + DataLoader, default settings."""
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    device = torch.device(args["device"])
    torch.manual_seed(args["seed"])
    model = genkit.get_model("vae-conv", latent=args["latent"]).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    dataset = datasets.MNIST(args["torchvision_root"], train=True, download=False, transform=transforms.ToTensor())
    loader = DataLoader(dataset, batch_size=args["batch_size"], shuffle=True)
    step, started, timed_from = 0, None, args["warmup"]
    model.train()
    while step < args["warmup"] + args["steps"]:
        for x, _ in loader:
            if step == timed_from:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                started = time.perf_counter()
            x = x.to(device)
            loss = model.loss(x).total
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            if step == args["warmup"] + args["steps"]:
                break
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    return _result(model, device, seconds, args)


def genkit_trainer(args: dict[str, Any]) -> dict[str, Any]:
    """genkit's common trainer, with the same network, batch size and number of steps."""
    device = torch.device(args["device"])
    torch.manual_seed(args["seed"])
    model = genkit.get_model("vae-conv", latent=args["latent"])
    train, _ = load_dataset("mnist")
    # one "epoch" of exactly warmup (then steps) batches, so that both variants take the same steps
    warm = Trainer(
        model,
        TrainConfig(
            epochs=1,
            batch_size=args["batch_size"],
            device=args["device"],
            progress=False,
            compile=args["compile"],
            amp=args.get("amp"),
        ),
    )
    warm.fit(train.subset(args["warmup"] * args["batch_size"]))
    if device.type == "cuda":
        torch.cuda.synchronize()
    warm.config.epochs = 2
    started = time.perf_counter()
    warm.fit(train.subset(args["steps"] * args["batch_size"]))
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    return _result(model, device, seconds, args)


def _result(model: genkit.Model, device: torch.device, seconds: float, args: dict[str, Any]) -> dict[str, Any]:
    images_per_second = args["steps"] * args["batch_size"] / seconds
    return {
        "seconds": seconds,
        "images_per_second": images_per_second,
        "seconds_per_epoch": 60_000 / images_per_second,
        "peak_memory_mb": _peak_memory_mb(device),
        "test_loss": _test_loss(model, device),
    }


def _in_child(fn: Any, args: dict[str, Any]) -> dict[str, Any]:
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, (args,))


def extracted_mnist(tmp: Path) -> Path:
    """torchvision's MNIST class needs the raw files un-gzipped: extract a copy (never into the data folder)."""
    raw = data_root() / "MNIST" / "raw"
    out = tmp / "MNIST" / "raw"
    out.mkdir(parents=True)
    for stem in (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ):
        if (raw / stem).is_file():
            shutil.copy(raw / stem, out / stem)
        else:
            with gzip.open(raw / f"{stem}.gz") as src, open(out / stem, "wb") as dst:
                shutil.copyfileobj(src, dst)
    return tmp


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=200, help="timed training steps per variant")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--latent", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compile", action="store_true", help="also use torch.compile in genkit's trainer")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder for the JSON and markdown results")
    args = parser.parse_args(argv)
    device = select_device(args.device)
    load_dataset("mnist")  # fail early, with genkit's message, if the data is missing
    with tempfile.TemporaryDirectory() as tmp:
        common = {**vars(args), "device": str(device), "torchvision_root": str(extracted_mnist(Path(tmp)))}
        plain = _in_child(plain_loop, common)
        fast = _in_child(genkit_trainer, common)
        # bf16 autocast: the default on GPUs; on a CPU an opt-in (--amp) that changes the arithmetic
        bf16 = _in_child(genkit_trainer, {**common, "amp": True}) if device.type == "cpu" else None
    loss_diff = abs(fast["test_loss"] - plain["test_loss"]) / plain["test_loss"]
    record = {
        "device": str(device),
        "device_name": device_name(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "model": "vae-conv",
        "settings": {k: v for k, v in vars(args).items() if k != "results"},
        "plain_dataloader": plain,
        "genkit_trainer": fast,
        "genkit_trainer_bf16": bf16,
        "speedup": fast["images_per_second"] / plain["images_per_second"],
        "test_loss_relative_difference": loss_diff,
        "test_loss_tolerance": LOSS_TOLERANCE,
        "same_training": loss_diff <= LOSS_TOLERANCE,
    }
    write_results(args.results / f"speed-{device.type}.json", record, markdown(record))
    return record


def markdown(r: dict[str, Any]) -> str:
    s = r["settings"]
    rows = [
        f"# Training speed: vae-conv (latent {s['latent']}), batch {s['batch_size']}, {s['steps']} timed steps",
        "",
        f"Device: {r['device_name']} ({r['device']}, {r['threads']} threads), torch {r['torch']}. "
        f"Command: `python -m benchmarks.speed --device {r['device']} --steps {s['steps']}`"
        + (" --compile" if s["compile"] else ""),
        "",
        "| loop | images/s | s/epoch (60 000 images) | peak memory MB | test loss after the steps |",
        "|---|---|---|---|---|",
    ]
    loops = [("plain DataLoader + ToTensor", "plain_dataloader"), ("genkit trainer", "genkit_trainer")]
    if r.get("genkit_trainer_bf16"):
        loops.append(("genkit trainer, --amp (bf16 autocast on the CPU)", "genkit_trainer_bf16"))
    for name, key in loops:
        v = r[key]
        rows.append(
            f"| {name} | {v['images_per_second']:.0f} | {v['seconds_per_epoch']:.1f} | {v['peak_memory_mb']:.0f} "
            f"| {v['test_loss']:.2f} |"
        )
    rows += [
        "",
        f"Speed-up (genkit / plain): **{r['speedup']:.2f}x**. Test loss differs by "
        f"{100 * r['test_loss_relative_difference']:.1f}% (tolerance {100 * r['test_loss_tolerance']:.0f}%: "
        f"{'same training' if r['same_training'] else 'OUTSIDE tolerance'}).",
    ]
    if r.get("genkit_trainer_bf16"):
        v, base = r["genkit_trainer_bf16"], r["plain_dataloader"]
        diff = abs(v["test_loss"] - base["test_loss"]) / base["test_loss"]
        rows.append(
            f"With `--amp` (bf16 on the CPU): **{v['images_per_second'] / base['images_per_second']:.2f}x**, "
            f"test loss differs by {100 * diff:.1f}%."
        )
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    main()
