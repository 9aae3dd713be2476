"""Speed benchmark: the same network and steps trained two ways in one run.

(a) the usual loop: a torchvision MNIST dataset with ``ToTensor`` behind a default ``DataLoader``;
(b) genkit's trainer: the dataset held as one tensor on the device, batches by indexing a permutation.

    python -m benchmarks.speed --device cpu --steps 200

Each variant runs in its own process (so peak memory is its own) from the same seed; both then report the
test loss after the same number of steps, to show that the fast path changes nothing but speed. A profile of
genkit's steps shows where the time goes: the operators that take it, and on a GPU how much of the wall time
the GPU is busy at all (the rest is Python and kernel-launch overhead).
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
from benchmarks.results_io import RESULTS, provenance, write_results
from genkit.data import data_root, load_dataset
from genkit.train import TrainConfig, Trainer, select_device

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
            channels_last=True,  # genkit's own conv nets: 2-12% faster here, and how the committed rows ran
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
    result = _result(model, device, seconds, args)
    if args.get("profile_steps"):
        warm.config.epochs = 3
        result["profile"] = _profile(lambda: warm.fit(train.subset(args["profile_steps"] * args["batch_size"])), device)
    return result


def _profile(work: Any, device: torch.device, top: int = 8) -> dict[str, Any]:
    """The operators that take the time of ``work``, and on a GPU the share of wall time it is busy."""
    from torch.profiler import ProfilerActivity, profile

    gpu = device.type == "cuda"
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if gpu else [])]
    started = time.perf_counter()
    with profile(activities=activities) as prof:
        work()
        if gpu:
            torch.cuda.synchronize()
    wall_us = (time.perf_counter() - started) * 1e6
    events = [e for e in prof.key_averages() if e.key.startswith("aten::") or e.key.startswith("_fused")]
    time_of = (lambda e: e.self_device_time_total) if gpu else (lambda e: e.self_cpu_time_total)
    total = sum(time_of(e) for e in events) or 1.0
    ranked = sorted(events, key=time_of, reverse=True)[:top]
    return {
        "clock": "GPU kernel time" if gpu else "CPU time",
        "operators": [
            {"name": e.key, "calls": e.count, "share": time_of(e) / total, "ms": time_of(e) / 1e3} for e in ranked
        ],
        # on a GPU: kernel time over wall time; far below 1 means launches and Python, not arithmetic, limit
        "device_busy": total / wall_us if gpu else None,
    }


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
    parser.add_argument("--profile-steps", type=int, default=20, help="genkit steps to profile (0: none)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder for the JSON and markdown results")
    args = parser.parse_args(argv)
    device = select_device(args.device)
    load_dataset("mnist")  # fail early, with genkit's message, if the data is missing
    with tempfile.TemporaryDirectory() as tmp:
        common = {**vars(args), "device": str(device), "torchvision_root": str(extracted_mnist(Path(tmp)))}
        plain = _in_child(plain_loop, {**common, "compile": False})
        fast = _in_child(genkit_trainer, {**common, "compile": False})
        extra = {}  # further genkit rows: each is compared with the plain loop too
        if device.type == "cpu":  # bf16 autocast: the default on GPUs; on a CPU an opt-in that changes arithmetic
            extra["genkit trainer, --amp (bf16 autocast on the CPU)"] = {"amp": True}
        if args.compile:
            extra["genkit trainer, torch.compile"] = {"compile": True}
        variants = {
            label: _in_child(genkit_trainer, {**common, **options, "profile_steps": 0})
            for label, options in extra.items()
        }
    loss_diff = abs(fast["test_loss"] - plain["test_loss"]) / plain["test_loss"]
    record = {
        **provenance(device),
        "threads": torch.get_num_threads(),
        "model": "vae-conv",
        "settings": {k: v for k, v in vars(args).items() if k != "results"},
        "plain_dataloader": plain,
        "genkit_trainer": fast,
        "variants": variants,
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
        f"Command: `python -m benchmarks.speed --device {r['device']} --steps {s['steps']}"
        + (" --compile`" if s["compile"] else "`"),
        "",
        "| loop | images/s | s/epoch (60 000 images) | peak memory MB | test loss after the steps |",
        "|---|---|---|---|---|",
    ]
    loops = {"plain DataLoader + ToTensor": r["plain_dataloader"], "genkit trainer": r["genkit_trainer"]}
    for name, v in {**loops, **r["variants"]}.items():
        rows.append(
            f"| {name} | {v['images_per_second']:.0f} | {v['seconds_per_epoch']:.1f} | {v['peak_memory_mb']:.0f} "
            f"| {v['test_loss']:.2f} |"
        )
    rows += [
        "",
        f"Speed-up (genkit / plain): **{r['speedup']:.2f}x**. "
        + _loss_check(r["test_loss_relative_difference"], r["test_loss_tolerance"]),
    ]
    base = r["plain_dataloader"]
    for name, v in r["variants"].items():
        diff = abs(v["test_loss"] - base["test_loss"]) / base["test_loss"]
        rows.append(
            f"{name}: **{v['images_per_second'] / base['images_per_second']:.2f}x**. "
            + _loss_check(diff, r["test_loss_tolerance"])
        )
    profile = r["genkit_trainer"].get("profile")
    if profile:
        rows += [
            "",
            f"Where genkit's step spends its time ({s['profile_steps']} profiled steps, share of {profile['clock']}):",
            "",
            "| operator | calls | share | ms |",
            "|---|---|---|---|",
            *(
                f"| `{op['name']}` | {op['calls']} | {100 * op['share']:.0f}% | {op['ms']:.1f} |"
                for op in profile["operators"]
            ),
        ]
        if profile["device_busy"] is not None:
            rows += ["", f"The GPU is busy {100 * profile['device_busy']:.0f}% of the profiled wall time."]
    return "\n".join(rows) + "\n"


def _loss_check(difference: float, tolerance: float) -> str:
    """How far a loop's test loss lies from the plain loop's, against the tolerance for "the same training"."""
    verdict = "same training" if difference <= tolerance else "OUTSIDE tolerance: not the same training"
    return f"Test loss differs by {100 * difference:.1f}% (tolerance {100 * tolerance:.0f}%: {verdict})."


if __name__ == "__main__":
    main()
