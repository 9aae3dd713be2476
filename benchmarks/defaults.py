"""Which training defaults genkit ships: each candidate setting trains a model for ``genkit run``'s default
epochs on the training split less its last images, and is scored on those held-out images. The test split is
never read, so a default chosen here is not tuned on the test set.

    python -m benchmarks.defaults --dataset mnist --models ae,vae-conv     # ~30 min on a 2-core CPU

Results go to ``benchmarks/results/defaults-<dataset>-<device>.json`` and a markdown table beside it.
"""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from benchmarks import heldout
from benchmarks.results_io import write_results
from genkit.data import ImageData
from genkit.train import TrainConfig, select_device

#: the settings compared: the learning rate, its schedule and warm-up (the rest stays at the defaults)
CANDIDATES: dict[str, dict[str, Any]] = {
    "lr 0.001, constant": {"lr": 1e-3, "lr_schedule": "constant", "lr_warmup": 0},
    "lr 0.002, constant": {"lr": 2e-3, "lr_schedule": "constant", "lr_warmup": 0},
    "lr 0.001, cosine": {"lr": 1e-3, "lr_schedule": "cosine", "lr_warmup": 0},
    "lr 0.002, cosine, warm-up 1": {"lr": 2e-3, "lr_schedule": "cosine", "lr_warmup": 1},
}


def current_setting() -> str | None:
    """The candidate that is TrainConfig's default today (None if the defaults match no candidate)."""
    defaults = {f.name: f.default for f in fields(TrainConfig)}
    return next((name for name, s in CANDIDATES.items() if all(defaults[k] == v for k, v in s.items())), None)


def run(
    dataset: str, fit: ImageData, valid: ImageData, models: list[str], device: torch.device, out: Path, epochs: int
) -> dict[str, Any]:
    record = heldout.new_record(dataset, fit, valid, epochs, device, current=current_setting())
    record["results"] = []
    for name in models:
        for setting, options in CANDIDATES.items():
            print(f"== {name}: {setting}", flush=True)
            _, scores, seconds = heldout.train_and_score(name, {}, fit, valid, device, epochs, **options)
            record["results"].append(
                {
                    "model": name,
                    "setting": setting,
                    "validation_loss": scores["loss"],
                    "validation_mse": scores["mse"],
                    "wall_seconds": seconds,
                }
            )
            write_results(out, record, markdown(record))  # after every run: a run cut short keeps what it has
    return record


def best(record: dict[str, Any], model: str) -> str:
    """The setting with the lowest validation loss for ``model``."""
    return min((r for r in record["results"] if r["model"] == model), key=lambda r: r["validation_loss"])["setting"]


def markdown(record: dict[str, Any]) -> str:
    t = record["training"]
    lines = [
        f"# Training defaults on {record['dataset']} ({record['device_name']}, {record['device']})",
        "",
        f"Each setting trains the model's defaults for {heldout.regime(t, also='')} on the first "
        f"{record['train_images']} training images and is scored on the last {record['validation_images']} (held "
        "out; the test split is not read). "
        f"Loss: the model's own, per image. The default when measured: {record['current'] or 'none of these'}. "
        "**Bold**: the lowest validation loss per model.",
        "",
        "| model | setting | validation loss | validation MSE | wall s |",
        "|---|---|---|---|---|",
    ]
    for r in record["results"]:
        mark = "**" if r["setting"] == best(record, r["model"]) else ""
        default = " (default)" if r["setting"] == record["current"] else ""
        lines.append(
            f"| {r['model']} | {mark}{r['setting']}{mark}{default} | {r['validation_loss']:.4f} "
            f"| {r['validation_mse']:.5f} | {r['wall_seconds']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    heldout.add_arguments(parser)
    parser.add_argument("--models", default="ae,vae-conv", help="comma-separated registered model names")
    args = parser.parse_args(argv)
    device = select_device(args.device)
    out = args.results / f"defaults-{args.dataset}-{device.type}.json"
    fit, valid = heldout.split(parser, args)
    return run(args.dataset, fit, valid, args.models.split(","), device, out, args.epochs)


if __name__ == "__main__":
    main()
