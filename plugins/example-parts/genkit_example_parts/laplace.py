"""A factorised Laplace prior p(z) = prod_j Laplace(z_j; 0, b_j), registered as ``laplace`` in ``genkit.priors``."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from genkit import Config, ModelConfig, Prior, option


@dataclass
class LaplaceConfig(Config):
    """The prior's options: ``genkit info --kind priors laplace`` lists them, ``--set prior.KEY=VALUE`` sets them."""

    scale: float = option(1.0, "scale b of every latent's Laplace(0, b) (its initial value when learned)")
    learn_scale: bool = option(False, "learn one scale per latent dimension with the model")

    positive: ClassVar[tuple[str, ...]] = ("scale",)  # fields that must be > 0


class LaplacePrior(Prior):
    """Factorised Laplace(0, b): heavier tails than N(0, I), for sparser codes."""

    config_class = LaplaceConfig

    def __init__(self, config: LaplaceConfig, dims: ModelConfig) -> None:
        super().__init__(config, dims)
        log_scale = torch.full((dims.latent,), math.log(config.scale))
        if config.learn_scale:  # a parameter: in the model's optimizer, trained with the model
            self.log_scale = nn.Parameter(log_scale)
        else:  # a buffer: moves with the model and is saved with its weights (and by fit), but is not trained
            self.register_buffer("log_scale", log_scale)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        # The difference of two Exp(1) draws is Laplace(0, 1); all randomness comes from ``generator``.
        e = torch.empty(2, n, self.latent, device=self.device).exponential_(generator=generator)
        return (e[0] - e[1]) * self.log_scale.exp()

    def log_prob(self, z: Tensor) -> Tensor:
        return (-z.abs() * torch.exp(-self.log_scale) - self.log_scale - math.log(2.0)).sum(-1)

    # kl(posterior, z) is inherited: the one-draw estimate log q(z|x) - log p(z) at the posterior draw z.

    @torch.no_grad()
    def fit(self, codes: Tensor) -> None:
        """The maximum-likelihood scales mean |z_j| of trained codes (``genkit sample RUN --prior laplace``)."""
        self.log_scale.copy_(codes.abs().mean(0).clamp_min(1e-6).log())
