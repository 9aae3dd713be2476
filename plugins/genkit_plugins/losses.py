"""Losses beyond the ELBO: the importance-weighted bound (``iwae``) and the WAE's MMD penalty (``wae-mmd``)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from genkit import Batch, Loss, LossOutput, Model, option, require_density, require_trained_prior
from genkit.losses import LikelihoodConfig, importance_log_weights, reconstruct


@dataclass
class IWAEConfig(LikelihoodConfig):
    k: int = option(5, "importance samples per image (k=1 is the ELBO)")

    positive: ClassVar[tuple[str, ...]] = ("sigma", "k")


class IWAELoss(Loss):
    """Importance-weighted bound (Burda et al. 2016): -log mean_i p(x, z_i)/q(z_i|x) over k draws.

    Tighter than the ELBO as ``k`` grows; the ``iwae`` term is the negative bound in nats per image.
    """

    config_class = IWAEConfig

    def check(self, model: Model) -> None:
        require_density(self, model, "an importance weight")
        require_trained_prior(self, model)

    def forward(self, model: Model, batch: Batch) -> LossOutput:
        c = self.config
        posterior = model.encode(batch.x)
        log_w = importance_log_weights(model, posterior, batch.target, c.k, c.likelihood, c.sigma, batch.generator)
        bound = torch.logsumexp(log_w, dim=0) - math.log(c.k)
        return LossOutput({"iwae": -bound.mean()})


@dataclass
class WAEConfig(LikelihoodConfig):
    weight: float = option(100.0, "weight lambda of the MMD penalty")
    scale: float = option(1.0, "kernel scale: C = 2 * latent * scale in the kernel C / (C + |x - y|^2)")

    positive: ClassVar[tuple[str, ...]] = ("sigma", "scale")

    def validate(self) -> None:
        super().validate()
        if self.weight < 0:
            from genkit import ConfigError

            raise ConfigError(f"weight must be >= 0, got {self.weight}")


def imq_mmd(x: Tensor, y: Tensor, c: float) -> Tensor:
    """Unbiased squared MMD between samples ``x`` and ``y`` (n, D) with the inverse multiquadratic kernel
    k(a, b) = c / (c + |a - b|^2)."""
    n = x.shape[0]
    if n < 2:
        raise ValueError("the MMD estimate needs at least 2 codes per batch")

    def kernel(a: Tensor, b: Tensor) -> Tensor:
        return c / (c + torch.cdist(a, b).pow(2))

    off = ~torch.eye(n, dtype=torch.bool, device=x.device)
    within = (kernel(x, x)[off].sum() + kernel(y, y)[off].sum()) / (n * (n - 1))
    return within - 2 * kernel(x, y).mean()


class WAEMMDLoss(Loss):
    """Wasserstein autoencoder (MMD): reconstruction + lambda * MMD(codes, prior samples), IMQ kernel."""

    config_class = WAEConfig

    def check(self, model: Model) -> None:
        require_trained_prior(self, model)

    def forward(self, model: Model, batch: Batch) -> LossOutput:
        c = self.config
        _, z, reconstruction = reconstruct(model, batch, c)
        if z.shape[0] < 2:  # no pairs to compare (e.g. a last batch of one image): no MMD signal
            mmd = z.float().sum() * 0.0
        else:
            prior_z = model.prior.sample(z.shape[0], batch.generator).to(z.dtype)
            mmd = imq_mmd(z.float(), prior_z.float(), 2.0 * z.shape[1] * c.scale)
        return LossOutput({"reconstruction": reconstruction, "mmd": c.weight * mmd})
