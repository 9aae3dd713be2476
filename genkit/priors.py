"""The built-in standard-normal prior (registered as ``normal`` in the ``genkit.priors`` group)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from genkit.parts import Posterior, Prior


class StandardNormal(Prior):
    """N(0, I), the usual VAE prior."""

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return torch.randn(n, self.latent, generator=generator, device=self.device)

    def log_prob(self, z: Tensor) -> Tensor:
        return -0.5 * (z**2 + math.log(2 * math.pi)).sum(1)

    def kl(self, posterior: Posterior, generator: torch.Generator | None = None) -> Tensor:
        if posterior.logvar is None:
            raise ValueError("KL needs a Gaussian posterior, got a deterministic code")
        mean, logvar = posterior.mean, posterior.logvar
        return 0.5 * (mean**2 + logvar.exp() - 1.0 - logvar).sum(1)
