"""Held-out scoring for the benchmarks that choose genkit's settings (``defaults``, ``denoiser``, ``likelihood``,
``priors``): a model trains on the training split less its last images and is scored on those. The test split is
never read, so nothing chosen this way is tuned on the test set."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import genkit
from benchmarks.results_io import RESULTS, machine, machines, plural, provenance, read_record, write_results
from genkit.data import ImageData, load_dataset
from genkit.train import TrainConfig, Trainer


def add_arguments(parser: argparse.ArgumentParser, candidates: dict[str, Any] | None = None) -> None:
    """The options every held-out benchmark takes (and ``--candidates``, a subset of ``candidates``, if given)."""
    parser.add_argument("--dataset", default="mnist", choices=["mnist", "fashion-mnist"])
    parser.add_argument("--holdout", type=int, default=10_000, help="last training images held out for scoring")
    parser.add_argument("--limit", type=int, help="use only the first N training images (tests)")
    parser.add_argument("--epochs", type=int, default=TrainConfig().epochs, help="[default: genkit run's]")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--results", type=Path, default=RESULTS)
    if candidates is not None:
        parser.add_argument("--candidates", default=",".join(candidates), help="comma-separated subset, by name")


def holdout(train: ImageData, n: int) -> tuple[ImageData, ImageData]:
    """The training split less its last ``n`` images, and those ``n`` images (the validation set)."""
    if not 0 < n < len(train):
        raise ValueError(f"--holdout must be between 1 and {len(train) - 1}, got {n}")
    cut = len(train) - n
    return (
        ImageData(train.images[:cut], train.labels[:cut], train.name, train.classes),
        ImageData(train.images[cut:], train.labels[cut:], train.name, train.classes),
    )


def split(parser: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[ImageData, ImageData]:
    """The training and held-out images ``add_arguments``' options ask for; a ``--holdout`` that the training
    images cannot give is a usage error (exit 2)."""
    train, _ = load_dataset(args.dataset)
    try:
        return holdout(train.subset(args.limit), args.holdout)
    except ValueError as exc:
        parser.error(str(exc))


def chosen(parser: argparse.ArgumentParser, names: str, known: dict[str, Any]) -> list[str]:
    """The comma-separated ``names`` of a ``--candidates`` option; an unknown one is a usage error (exit 2)."""
    candidates = names.split(",")
    unknown = [c for c in candidates if c not in known]
    if unknown:
        parser.error(f"unknown candidate(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return candidates


def new_record(
    dataset: str, fit: ImageData, valid: ImageData, epochs: int, device: torch.device, **fields: Any
) -> dict[str, Any]:
    """How a study's record starts: the data and its two parts' sizes, the training settings (genkit run's batch
    size and seed, for ``epochs``), the study's own ``fields`` and what measured it."""
    defaults = TrainConfig()
    training = {"epochs": epochs, "batch_size": defaults.batch_size, "seed": defaults.seed}
    return {
        "dataset": dataset,
        "train_images": len(fit),
        "validation_images": len(valid),
        "training": training,
        **fields,
        **provenance(device),
    }


def regime(training: dict[str, Any], also: str = "genkit run's defaults") -> str:
    """How a study's models were trained, as its table says it: ``"3 epochs (batch 128, seed 0, genkit run's
    defaults)"``; ``also`` ends the parenthesis (nothing: ``""``)."""
    rest = f", {also}" if also else ""
    return f"{plural(training['epochs'], 'epoch')} (batch {training['batch_size']}, seed {training['seed']}{rest})"


def train_and_score(
    model: str,
    options: dict[str, Any],
    fit: ImageData,
    valid: ImageData,
    device: torch.device,
    epochs: int,
    noise: str | None = None,
    **train_options: Any,
) -> tuple[genkit.Model, dict[str, float], float]:
    """Train ``genkit.get_model(model, **options)`` from seed 0 on ``fit`` (on noisy copies with ``noise``) and
    score it on ``valid``: the model, ``Trainer.evaluate``'s scores and the wall seconds of both."""
    torch.manual_seed(0)  # the same initial weights for every candidate setting
    net = genkit.get_model(model, **options)
    config = TrainConfig(epochs=epochs, device=str(device), progress=sys.stderr.isatty(), **train_options)
    started = time.perf_counter()
    trainer = Trainer(net, config, noise=genkit.get_noise(noise) if noise else None)
    trainer.fit(fit)
    scores = trainer.evaluate(valid)  # with the training noise, if any
    return net, scores, time.perf_counter() - started


#: a record's fields that say what measured it, not what was measured
PROVENANCE = ("device_name", "torch", "genkit", "commit")


def _settings(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in (*PROVENANCE, "results")}


def earlier_results(out: Path, record: dict[str, Any], redone: list[str], known: list[str]) -> list[dict[str, Any]]:
    """The results already in ``out`` if a run with ``record``'s settings on the same device kind made them, less
    those of the ``redone`` candidates and of candidates no longer ``known``: so that runs of some candidates add
    up. Each keeps the commit and the machine that measured it."""
    earlier = read_record(out)
    if earlier is None or _settings(earlier) != _settings(record):
        return []
    return [
        {
            **r,
            "commit": r.get("commit", earlier.get("commit")),
            "device_name": r.get("device_name", earlier.get("device_name")),
        }
        for r in earlier.get("results", [])
        if r.get("candidate") in known and r["candidate"] not in redone
    ]


def measure_each(
    record: dict[str, Any],
    out: Path,
    chosen: list[str],
    known: list[str],
    measure: Callable[[str], dict[str, Any]],
    table: Callable[[dict[str, Any]], str],
) -> dict[str, Any]:
    """Measure each ``chosen`` candidate (``measure(name)`` gives its result) into ``record``, beside the earlier
    results of the others, in the order of ``known``; ``out`` is rewritten after each, so a run cut short keeps
    what it has."""
    record["results"] = earlier_results(out, record, chosen, known)
    measured_by = {"commit": record["commit"], "device_name": record["device_name"]}
    for name in chosen:
        print(f"== {name}", flush=True)
        record["results"].append({"candidate": name, **measure(name), **measured_by})
        record["results"].sort(key=lambda r: known.index(r["candidate"]))
        write_results(out, record, table(record))
    return record


def table(
    record: dict[str, Any], best: str, header: list[str], cells: Callable[[dict[str, Any]], list[str]]
) -> list[str]:
    """A markdown table of the candidates' results: each one's name (bold where it is ``best``), parameters,
    ``cells(result)`` under ``header`` and wall seconds, with a machine column when several measured them (their
    wall seconds then do not compare)."""
    several = len(machines(record)) > 1
    header = ["candidate", "parameters", *header, "wall s"] + (["machine"] if several else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in record["results"]:
        mark = "**" if r["candidate"] == best else ""
        row = [f"{mark}{r['candidate']}{mark}", f"{r['parameters']:,}", *cells(r), f"{r['wall_seconds']:.0f}"]
        if several:
            row.append(machine(record, r))
        lines.append("| " + " | ".join(row) + " |")
    return lines
