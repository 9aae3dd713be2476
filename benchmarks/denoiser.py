"""Which denoiser the full protocol measures: each candidate autoencoder trains on noisy copies of the training
split less its last images and is scored by the PSNR of its outputs on noisy copies of those held-out images. The
test split is never read, so the architecture picked here is not tuned on the test set.

    python -m benchmarks.denoiser --dataset mnist --noise gaussian:0.5     # ~20 min on a 2-core CPU

Results go to ``benchmarks/results/denoiser-<dataset>-<device>.json`` and a markdown table beside it; a run of
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

FCN = {"encoder": "fcn", "decoder": "fcn"}
DEEPER = {"blocks": 1, "channels": 48}
#: the autoencoders compared, as ``genkit.get_model("ae", **options)`` options: the conv ae squeezes an image
#: through 16 numbers; the fully convolutional ones keep a grid of local codes (7x7 or 14x14 positions)
CANDIDATES: dict[str, dict[str, Any]] = {
    "ae (16 codes)": {},
    "fcn 7x7x8": {**FCN, "latent": 392},
    "fcn 7x7x8 blocks=1 channels=48": {**FCN, **DEEPER, "latent": 392},
    "fcn 14x14x4": {**FCN, "latent": 784, "stages": 1},
    "fcn 14x14x4 blocks=1 channels=48": {**FCN, **DEEPER, "latent": 784, "stages": 1},
    # the 7x7 grid with twice the code channels, or a deeper and wider net (its receptive field spans the digit)
    "fcn 7x7x16 blocks=1 channels=48": {**FCN, **DEEPER, "latent": 784},
    "fcn 7x7x8 blocks=2 channels=64": {**FCN, "latent": 392, "blocks": 2, "channels": 64},
    # trained on the squared error that PSNR scores, instead of the default Bernoulli cross-entropy
    "fcn 7x7x8 blocks=1 channels=48 gaussian": {**FCN, **DEEPER, "latent": 392, "loss.likelihood": "gaussian"},
}


def run(
    dataset: str,
    fit: ImageData,
    valid: ImageData,
    noise: str,
    candidates: list[str],
    device: torch.device,
    out: Path,
    epochs: int,
) -> dict[str, Any]:
    record = heldout.new_record(dataset, fit, valid, epochs, device, noise=noise)

    def measure(name: str) -> dict[str, Any]:
        model, scores, seconds = heldout.train_and_score("ae", CANDIDATES[name], fit, valid, device, epochs, noise)
        return {
            "options": CANDIDATES[name],
            "parameters": sum(p.numel() for p in model.parameters()),
            "psnr_noisy": scores["psnr_noisy"],
            "psnr_denoised": scores["psnr_denoised"],
            "wall_seconds": seconds,
        }

    return heldout.measure_each(record, out, candidates, list(CANDIDATES), measure, markdown)


def best(record: dict[str, Any]) -> str:
    """The candidate whose outputs have the highest held-out PSNR."""
    return max(record["results"], key=lambda r: r["psnr_denoised"])["candidate"]


def markdown(record: dict[str, Any]) -> str:
    t = record["training"]

    lines = [
        f"# Denoisers on {record['dataset']} with {record['noise']} noise "
        f"({' and '.join(machines(record))}, {record['device']})",
        "",
        f"Each autoencoder trains for {heldout.regime(t)} on noisy copies of the first "
        f"{record['train_images']} training images and is scored on noisy copies of the last "
        f"{record['validation_images']} (held out; the test split is not read). Made by `python -m "
        f"benchmarks.denoiser --dataset {record['dataset']} --noise {record['noise']} --device {record['device']}`. "
        "**Bold**: the highest PSNR.",
        "",
    ]
    lines += heldout.table(
        record,
        best(record),
        ["PSNR noisy → denoised (dB)"],
        lambda r: [f"{r['psnr_noisy']:.1f} → {r['psnr_denoised']:.2f}"],
    )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    heldout.add_arguments(parser, CANDIDATES)
    parser.add_argument("--noise", default="gaussian:0.5", help="the noise spec trained on and scored")
    args = parser.parse_args(argv)
    candidates = heldout.chosen(parser, args.candidates, CANDIDATES)
    device = select_device(args.device)
    out = args.results / f"denoiser-{args.dataset}-{device.type}.json"
    fit, valid = heldout.split(parser, args)
    return run(args.dataset, fit, valid, args.noise, candidates, device, out, args.epochs)


if __name__ == "__main__":
    main()
