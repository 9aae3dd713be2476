"""Which ex-post prior settings genkit ships: one model trains on the training split less its last images, each
candidate prior is fitted to the codes of those training images, and its samples are scored by FID against the
held-out images. The test split is never read, so a prior setting chosen here is not tuned on the test set.

    python -m benchmarks.priors --dataset mnist --model ae --holdout 5000 --samples 5000   # ~1 h on a 2-core CPU

Priors that do not apply to the model's codes (``categorical`` to an ``ae``'s) are skipped with their reason.
Results go to ``benchmarks/results/priors-<model>-<dataset>-<device>.json`` and a markdown table beside it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks import heldout
from benchmarks.results_io import write_results
from genkit import ConfigError, fid
from genkit.data import ImageData
from genkit.priors import fit_prior
from genkit.report import draw_samples
from genkit.train import select_device

#: the priors compared, as ``fit_prior(model, name, **options)``: the GMM the papers fit and a finer one, the
#: diffusion prior's defaults, and the diffusion settings most likely to matter (longer fitting; deterministic DDIM)
CANDIDATES: dict[str, tuple[str, dict[str, Any]]] = {
    "gmm components=10": ("gmm", {"components": 10}),
    "gmm components=50": ("gmm", {"components": 50}),
    "diffusion": ("diffusion", {}),
    "diffusion train_steps=16000": ("diffusion", {"train_steps": 16_000}),
    "diffusion eta=0": ("diffusion", {"eta": 0.0}),
    # over a vq-vae's quantised codes only: the per-position table, and the transformer with and without stopping
    # its fitting once held-out codes stop improving, and with a higher cap on its steps (the early stop never
    # triggered within the default 3000; under a 12000-step cap it stopped at 2800, no better: priors-vq-vae-mnist-cpu)
    "categorical": ("categorical", {}),
    "autoregressive": ("autoregressive", {}),
    "autoregressive patience=0": ("autoregressive", {"patience": 0}),
    "autoregressive train_steps=12000": ("autoregressive", {"train_steps": 12_000}),
}


def run(
    dataset: str,
    fit: ImageData,
    valid: ImageData,
    model_name: str,
    candidates: list[str],
    samples: int,
    device: torch.device,
    out: Path,
    epochs: int,
) -> dict[str, Any]:
    progress = sys.stderr.isatty()
    model, scores, train_seconds = heldout.train_and_score(model_name, {}, fit, valid, device, epochs)
    key = f"{dataset}-train-last-{len(valid)}"  # the held-out images: the last ones of the training split
    reference = fid.reference_statistics(key, valid.images, device=device, progress=progress)
    record = heldout.new_record(
        dataset,
        fit,
        valid,
        epochs,
        device,
        model=model_name,
        samples=samples,
        candidates=candidates,
        validation_mse=scores["mse"],
        train_seconds=train_seconds,
        fid_protocol=fid.protocol(),
    )
    record["results"] = []
    for name in candidates:
        print(f"== {name}", flush=True)
        prior, options = CANDIDATES[name]
        started = time.perf_counter()
        try:
            fitted = fit_prior(model, prior, fit.images, **options)
        except ConfigError as exc:  # a prior for other codes (categorical: quantised ones)
            print(f"skipped {name}: {exc}", file=sys.stderr, flush=True)
            continue
        fit_seconds = time.perf_counter() - started
        images = draw_samples(model, samples, seed=0, chunk=1000)
        mu, sigma = fid.feature_statistics(images, device=device, progress=progress)
        record["results"].append(
            {
                "candidate": name,
                "prior": prior,
                "options": options,
                "fid": fid.frechet_distance(mu, sigma, *reference),
                "fit_seconds": fit_seconds,
                "fit_steps": getattr(fitted, "fit_steps", None),  # where the fitting may stop early
            }
        )
        write_results(out, record, markdown(record))  # after every prior: a run cut short keeps what it has
    return record


def best(record: dict[str, Any]) -> str:
    """The candidate whose samples have the lowest FID against the held-out images."""
    return min(record["results"], key=lambda r: r["fid"])["candidate"]


def markdown(record: dict[str, Any]) -> str:
    t = record["training"]
    chosen = record.get("candidates", list(CANDIDATES))
    flag = f' --candidates "{",".join(chosen)}"' * (chosen != list(CANDIDATES))
    lines = [
        f"# Ex-post priors on {record['dataset']} ({record['device_name']}, {record['device']})",
        "",
        f"`{record['model']}` trains for {heldout.regime(t)} on the first {record['train_images']} training images "
        f"(validation MSE {record['validation_mse']:.4f} on the last {record['validation_images']}, held out; the "
        f"test split is not read). Each prior is fitted to the training codes; FID of {record['samples']} samples "
        f"against the {record['validation_images']} held-out images ({record['fid_protocol']['implementation']}). "
        f"Made by `python -m benchmarks.priors --dataset {record['dataset']} --model {record['model']} --epochs "
        f"{t['epochs']} --holdout "
        f"{record['validation_images']} --samples {record['samples']}{flag} --device {record['device']}`. "
        "**Bold**: the lowest FID.",
        "",
    ]
    # the fitting steps only where a prior may stop its fitting early (autoregressive)
    steps = any(r.get("fit_steps") is not None for r in record["results"])
    lines += ["| prior | FID | fit s |" + " fit steps |" * steps, "|---|---|---|" + "---|" * steps]
    for r in record["results"]:
        mark = "**" if r["candidate"] == best(record) else ""
        cells = [f"{mark}{r['candidate']}{mark}", f"{r['fid']:.2f}", f"{r['fit_seconds']:.0f}"]
        cells += [str(r.get("fit_steps") or "—")] * steps
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    heldout.add_arguments(parser, CANDIDATES)
    parser.add_argument("--model", default="ae", help="the registered model whose codes the priors fit")
    parser.add_argument("--samples", type=int, default=5000, help="samples per prior scored by FID")
    args = parser.parse_args(argv)
    candidates = heldout.chosen(parser, args.candidates, CANDIDATES)
    if args.samples < 2:
        parser.error(f"--samples must be at least 2, got {args.samples}")
    device = select_device(args.device)
    out = args.results / f"priors-{args.model}-{args.dataset}-{device.type}.json"
    fit, valid = heldout.split(parser, args)
    return run(args.dataset, fit, valid, args.model, candidates, args.samples, device, out, args.epochs)


if __name__ == "__main__":
    main()
