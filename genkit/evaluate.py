"""Scoring a finished run on its test set: reconstruction MSE and PSNR, sample FID and the test log-likelihood.

The likelihood is the importance-sampled estimate every VAE paper reports (Burda et al. 2016, appendix):
log p(x) ≈ log (1/K) Σ_k p(x|z_k) p(z_k) / q(z_k|x) with z_k ~ q(z|x). It is a lower bound in expectation that
tightens as K grows, so the NLL it gives is an upper bound on the model's true NLL.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from genkit.losses import importance_log_weights
from genkit.model import Model

#: the file of a run that holds what ``genkit eval`` and ``genkit compare --fid`` measured
EVAL_FILE = "eval.json"
#: decoder passes per forward (images x importance samples), to bound memory
_DECODES = 8192

Log = Callable[[str], None]


@dataclass
class LikelihoodEstimate:
    """The test negative log-likelihood, from ``samples`` importance samples per image."""

    nats: float  #: mean -log p(x) per image
    stderr: float  #: standard error of that mean over the images
    bits_per_dim: float  #: nats / (pixels x log 2)
    samples: int
    images: int
    likelihood: str  #: the decoder's p(x|z): bernoulli, gaussian (densities on [0, 1]) or logistic (256 levels)


def nll_unavailable(model: Model) -> str | None:
    """Why ``model`` has no importance-sampled likelihood, in one sentence; ``None`` when it has one."""
    label = model.name or type(model).__name__
    if not model.posterior_has_density():
        return (
            f"{label} has no NLL: its encoder gives point codes, with no density q(z|x) to importance-sample "
            "(models with a Gaussian encoder have one, e.g. vae-conv or iwae)"
        )
    if not model.prior.has_density:
        return f"{label} has no NLL: its prior {model.prior.label()} has no density log p(z) (try --prior gmm)"
    try:
        model.prior.log_prob(torch.zeros(1, model.config.latent, device=model.device))
    except Exception as exc:  # e.g. an ex-post prior that was never fitted
        return f"{label} has no NLL: its prior {model.prior.label()} cannot score codes ({exc})"
    return None


@torch.no_grad()
def log_likelihood(
    model: Model,
    images: Tensor,
    samples: int = 1000,
    *,
    seed: int = 0,
    progress: bool = False,
) -> Tensor:
    """Importance-sampled log p(x) in nats for each image, with ``samples`` draws from q(z|x) each.

    Images go through the model in batches sized so that at most a few thousand decodes run at once; the
    draws come from a generator seeded with ``seed``, so the estimate repeats exactly.
    """
    reason = nll_unavailable(model)
    if reason:
        raise ValueError(reason)
    likelihood = model.likelihood
    model.eval()
    device = model.device
    generator = torch.Generator(device=device).manual_seed(seed)
    chunk = min(samples, _DECODES)  # importance samples per pass
    batch = max(1, _DECODES // chunk)  # images per pass
    out = []
    bar = tqdm(total=len(images), desc="log-likelihood", unit="img", disable=not progress, leave=False)
    for start in range(0, len(images), batch):
        x = images[start : start + batch].to(device).float()
        posterior = model.encode(x)
        parts = []
        for done in range(0, samples, chunk):
            k = min(chunk, samples - done)
            log_w = importance_log_weights(model, posterior, x, k, likelihood, generator)
            parts.append(torch.logsumexp(log_w.double(), dim=0))
        out.append(torch.logsumexp(torch.stack(parts), dim=0) - math.log(samples))
        bar.update(len(x))
    bar.close()
    return torch.cat(out).cpu()


def estimate_nll(
    model: Model, images: Tensor, samples: int = 1000, *, seed: int = 0, progress: bool = False
) -> LikelihoodEstimate:
    """The test NLL of ``images`` (mean over images, with its standard error and bits per dimension)."""
    log_px = log_likelihood(model, images, samples, seed=seed, progress=progress)
    nll = -log_px
    pixels = math.prod(images.shape[1:])
    stderr = float(nll.std() / math.sqrt(len(nll))) if len(nll) > 1 else float("nan")
    return LikelihoodEstimate(
        float(nll.mean()),
        stderr,
        float(nll.mean()) / (pixels * math.log(2)),
        samples,
        len(images),
        model.likelihood.likelihood,
    )


def sample_fid(model: Model, test_images: Tensor, samples: int, dataset: str, log: Log = print) -> dict[str, Any]:
    """FID of ``samples`` draws from the model's prior against as many test images (pytorch-fid's InceptionV3;
    the test statistics are cached): ``{"value", "samples", "prior"}``."""
    from genkit import fid
    from genkit.report import draw_samples

    n = min(samples, len(test_images))
    log(f"FID: {n} samples from the {model.prior.name or 'own'} prior vs {n} test images")
    drawn = draw_samples(model, n, seed=0)
    value = fid.fid(drawn, test_images[:n], cache_key=f"{Path(dataset).name}-test-{n}", progress=sys.stderr.isatty())
    return {"value": value, "samples": n, "prior": model.prior.name}


def update_eval_file(run: Path, record: dict[str, Any]) -> dict[str, Any]:
    """Merge ``record`` into ``RUN/eval.json`` (keeping what earlier evaluations measured); returns the whole."""
    from genkit.checkpoint import write_json

    path = run / EVAL_FILE
    try:
        earlier = json.loads(path.read_text())
    except (OSError, ValueError):
        earlier = {}
    merged = {**(earlier if isinstance(earlier, dict) else {}), **record}
    write_json(path, merged)
    return merged


def evaluate_run(
    run_dir: str | os.PathLike[str],
    *,
    nll: bool = False,
    samples: int = 1000,
    fid_samples: int = 0,
    noise: str | None = None,
    limit: int | None = None,
    prior: str | None = None,
    device: str = "auto",
    data_dir: str | None = None,
    seed: int = 0,
    log: Log = print,
) -> dict[str, Any]:
    """Score a finished run on its test set and save the scores in ``RUN/eval.json``; returns what was measured.

    The test set is the run's own (its ``--limit`` applies, unless ``limit`` is given); a run trained on
    binarised images is scored on one fixed binarisation of it. ``prior`` swaps in a prior fitted to the
    training codes (e.g. ``gmm``) for the NLL and the samples.
    """
    from genkit.checkpoint import CONFIG_FILE, load_model, read_json
    from genkit.data import ImageData, binarize, load_dataset
    from genkit.metrics import psnr_from_mse
    from genkit.registry import get_noise
    from genkit.run import DEFAULT_EVAL_NOISE, fitted_prior, run_data
    from genkit.train import TrainConfig, Trainer, select_device

    run = Path(run_dir)
    config = read_json(run / CONFIG_FILE)
    data = run_data(config, run / CONFIG_FILE, data_dir)
    model = load_model(run, select_device(device)).eval()
    if prior is not None and prior != model.prior.name:
        log(f"{prior} prior: {fitted_prior(run, model, prior, data_dir)}")
    _, test = load_dataset(data.dataset, data.data_dir, model.config.image_size, model.config.image_channels)
    test = test.subset(limit or data.limit)
    binarized = bool((config.get("train") or {}).get("binarize"))
    images = binarize(test.images, seed) if binarized else test.images
    log(f"evaluating {run} ({config.get('model')}) on {len(images)} test images of {data.dataset}"
        + (", binarised" if binarized else ""))  # fmt: skip
    transform = get_noise(noise or data.noise or DEFAULT_EVAL_NOISE)
    trainer = Trainer(model, TrainConfig(device=device, seed=seed, progress=False))
    scores = trainer.evaluate(ImageData(images, test.labels, test.name, test.classes), transform)
    scores["psnr"] = psnr_from_mse(scores["mse"])
    record: dict[str, Any] = {
        "test": {**scores, "noise": transform.spec, "images": len(images), "binarized": binarized},
    }
    if nll:
        reason = nll_unavailable(model)
        if reason:
            record["nll"] = {"unavailable": reason, "prior": model.prior.name}
        else:
            estimate = estimate_nll(model, images, samples, seed=seed, progress=sys.stderr.isatty())
            record["nll"] = {**asdict(estimate), "prior": model.prior.name}
    if fid_samples:
        record["fid"] = sample_fid(model, test.images, fid_samples, data.dataset, log)
    update_eval_file(run, record)
    return record
