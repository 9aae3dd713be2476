"""Which reconstruction likelihood gives a deterministic autoencoder (``ae``, latent 16) the lowest reconstruction
MSE: each candidate trains on the training split less its last images and is scored by the MSE of its
reconstructions of those held-out images. The test split is never read, so a likelihood chosen here is not tuned
on the test set. The ae's default is the Bernoulli likelihood (cross-entropy on grey levels); a Gaussian one with
a fixed sigma trains on the squared error itself.

    python -m benchmarks.likelihood --dataset mnist --candidates bernoulli,gaussian   # ~8 min on a 2-core CPU

Results go to ``benchmarks/results/likelihood-<dataset>-<device>.json`` and a markdown table beside it; a run of
some ``--candidates`` keeps the other candidates' results of the same settings.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from benchmarks import heldout
from benchmarks.results_io import machines
from genkit.data import ImageData
from genkit.train import select_device

#: the full protocol's latent size, where the ae MSE target is set
LATENT = 16
#: the deeper network of the full protocol's ``ae blocks=1 channels=48 hidden=512`` row
DEEPER = {"blocks": 1, "channels": 48, "hidden": 512}
#: the candidates, as ``genkit.get_model("ae", latent=16, **options)`` options
CANDIDATES: dict[str, dict[str, Any]] = {
    "bernoulli": {"loss.likelihood": "bernoulli"},
    "gaussian": {"loss.likelihood": "gaussian"},
    "logistic": {"loss.likelihood": "logistic"},
    "bernoulli deeper": {"loss.likelihood": "bernoulli", **DEEPER},
    "gaussian deeper": {"loss.likelihood": "gaussian", **DEEPER},
}


def run(
    dataset: str, fit: ImageData, valid: ImageData, candidates: list[str], device: torch.device, out: Path, epochs: int
) -> dict[str, Any]:
    record = heldout.new_record(dataset, fit, valid, epochs, device, latent=LATENT)

    def measure(name: str) -> dict[str, Any]:
        options = {"latent": LATENT, **CANDIDATES[name]}
        model, scores, seconds = heldout.train_and_score("ae", options, fit, valid, device, epochs)
        return {
            "options": options,
            "parameters": sum(p.numel() for p in model.parameters()),
            "validation_mse": scores["mse"],
            "wall_seconds": seconds,
        }

    return heldout.measure_each(record, out, candidates, list(CANDIDATES), measure, markdown)


def best(record: dict[str, Any]) -> str:
    """The candidate with the lowest held-out MSE."""
    return min(record["results"], key=lambda r: r["validation_mse"])["candidate"]


def markdown(record: dict[str, Any]) -> str:
    t, names = record["training"], ",".join(r["candidate"] for r in record["results"])
    trained = heldout.regime(t, also="genkit run's defaults otherwise")

    lines = [
        f"# ae reconstruction likelihoods on {record['dataset']} ({' and '.join(machines(record))}, "
        f"{record['device']})",
        "",
        f"Each ae (latent {record['latent']}) trains for {trained} on the first "
        f"{record['train_images']} training images and is scored by the MSE of its reconstructions of the last "
        f"{record['validation_images']} (held out; the test split is not read). Made by `python -m "
        f'benchmarks.likelihood --dataset {record["dataset"]} --epochs {t["epochs"]} --candidates "{names}" '
        f"--device {record['device']}`. **Bold**: the lowest MSE.",
        "",
    ]
    lines += heldout.table(record, best(record), ["validation MSE"], lambda r: [f"{r['validation_mse']:.5f}"])
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    heldout.add_arguments(parser, CANDIDATES)
    args = parser.parse_args(argv)
    candidates = heldout.chosen(parser, args.candidates, CANDIDATES)
    device = select_device(args.device)
    out = args.results / f"likelihood-{args.dataset}-{device.type}.json"
    fit, valid = heldout.split(parser, args)
    return run(args.dataset, fit, valid, candidates, device, out, args.epochs)


if __name__ == "__main__":
    main()
