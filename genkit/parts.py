"""The four parts of a model: Encoder, Decoder, Prior and Loss, and the typed values they pass."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn


@dataclass
class Posterior:
    """What an encoder returns: a code (``logvar is None``) or a diagonal Gaussian q(z|x)."""

    mean: Tensor
    logvar: Tensor | None = None

    @property
    def deterministic(self) -> bool:
        return self.logvar is None

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        """Reparameterised draw z = mean + sigma * eps (the mean itself for a deterministic code)."""
        if self.logvar is None:
            return self.mean
        eps = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + torch.exp(0.5 * self.logvar) * eps

    def log_prob(self, z: Tensor) -> Tensor:
        """log q(z|x) summed over latent dimensions (one value per sample)."""
        if self.logvar is None:
            raise ValueError("a deterministic code has no density")
        return -0.5 * (((z - self.mean) ** 2) / self.logvar.exp() + self.logvar + math.log(2 * math.pi)).sum(1)


@dataclass
class ModelOutput:
    """One forward pass: the posterior, the latent draw and the decoder's logits."""

    posterior: Posterior
    z: Tensor
    logits: Tensor


@dataclass
class LossOutput:
    """Named loss terms (each a scalar, batch mean); the total is their sum."""

    terms: dict[str, Tensor]

    @property
    def total(self) -> Tensor:
        return self.weighted({})

    def weighted(self, weights: dict[str, float]) -> Tensor:
        """The sum of the terms, each scaled by ``weights.get(name, 1)`` (used by KL warm-up)."""
        return sum(weights.get(name, 1.0) * value for name, value in self.terms.items())  # type: ignore[return-value]


class Encoder(nn.Module):
    """x (N, C, H, W) in [0, 1] -> ``Posterior`` over a latent of size ``latent``."""

    def forward(self, x: Tensor) -> Posterior:  # pragma: no cover - abstract
        """Encode a batch of images into their posterior (or deterministic code)."""
        raise NotImplementedError


class Decoder(nn.Module):
    """z (N, latent) -> logits (N, C, H, W); ``sigmoid(logits)`` is the reconstruction in [0, 1]."""

    def forward(self, z: Tensor) -> Tensor:  # pragma: no cover - abstract
        """Decode latent codes into logits shaped like the images."""
        raise NotImplementedError


class Prior(nn.Module):
    """p(z): draws latent codes and scores them."""

    def __init__(self, latent: int) -> None:
        super().__init__()
        self.latent = latent
        # A buffer so that ``.to(device)`` moves the prior and samples land on the model's device.
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)

    @property
    def device(self) -> torch.device:
        return self._anchor.device

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:  # pragma: no cover
        """``n`` latent codes (n, latent) on the prior's device."""
        raise NotImplementedError

    def log_prob(self, z: Tensor) -> Tensor:  # pragma: no cover
        """log p(z), one value per code."""
        raise NotImplementedError

    def kl(self, posterior: Posterior, generator: torch.Generator | None = None) -> Tensor:
        """KL(q(z|x) || p(z)) per sample; one-draw Monte Carlo unless a prior has a closed form."""
        z = posterior.sample(generator)
        return posterior.log_prob(z) - self.log_prob(z)

    def fit(self, codes: Tensor) -> None:
        """Fit the prior to latent codes after training (ex-post density estimation); a no-op by default."""


@runtime_checkable
class Loss(Protocol):
    """Any callable that scores a forward pass against its target."""

    def __call__(self, output: ModelOutput, target: Tensor, prior: Prior) -> LossOutput:
        """Score ``output`` against ``target`` (clean images in [0, 1]) under ``prior``."""
        ...
