"""The built-in standard-normal prior (``normal`` in the ``genkit.priors`` group), and ex-post prior fitting."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from genkit.parts import Posterior, Prior

if TYPE_CHECKING:
    from genkit.model import Model


class StandardNormal(Prior):
    """N(0, I), the usual VAE prior."""

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return torch.randn(n, self.latent, generator=generator, device=self.device)

    def log_prob(self, z: Tensor) -> Tensor:
        return -0.5 * (z**2 + math.log(2 * math.pi)).sum(-1)

    def kl(self, posterior: Posterior, z: Tensor | None = None) -> Tensor:
        """The closed form for a Gaussian posterior (``z`` is not needed)."""
        if posterior.logvar is None:
            raise ValueError("KL needs a Gaussian posterior, got a deterministic code")
        mean, logvar = posterior.mean, posterior.logvar
        return 0.5 * (mean**2 + logvar.exp() - 1.0 - logvar).sum(1)


def fit_prior(model: Model, name: str, images: Tensor, **options: Any) -> Prior:
    """Fit the registered prior ``name`` to the latent codes of ``images`` and install it on ``model``.

    This is ex-post density estimation: it lets a deterministic autoencoder generate, and often improves
    a VAE's samples. ``genkit sample RUN --prior NAME`` caches the fitted prior beside the run.
    """
    from genkit.registry import build_part

    prior = build_part("prior", name, options, model.config).to(model.device)
    prior.fit(model.codes(images))
    model.prior = prior
    return prior
