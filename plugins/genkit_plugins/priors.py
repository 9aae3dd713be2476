"""Learned priors: a Gaussian mixture (``mog``) and the VampPrior (``vamp``), trained with the model."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from genkit import Config, Model, ModelConfig, Posterior, Prior, option, require_density


@dataclass
class MixtureConfig(Config):
    components: int = option(10, "mixture components")

    positive: ClassVar[tuple[str, ...]] = ("components",)


def _mixture_log_prob(z: Tensor, log_weights: Tensor, means: Tensor, logvars: Tensor) -> Tensor:
    """log sum_k w_k N(z; mean_k, diag(exp(logvar_k))) for z (..., D) and K components (K, D)."""
    z = z.unsqueeze(-2)  # (..., 1, D)
    log_normal = -0.5 * (((z - means) ** 2) / logvars.exp() + logvars + math.log(2 * math.pi)).sum(-1)
    return torch.logsumexp(log_weights + log_normal, dim=-1)


def _mixture_sample(
    n: int, log_weights: Tensor, means: Tensor, logvars: Tensor, generator: torch.Generator | None
) -> Tensor:
    component = torch.multinomial(log_weights.softmax(0), n, replacement=True, generator=generator)
    eps = torch.randn(n, means.shape[1], generator=generator, device=means.device, dtype=means.dtype)
    return means[component] + (0.5 * logvars[component]).exp() * eps


class MixturePrior(Prior):
    """Mixture of diagonal Gaussians with learnable weights, means and scales, trained with the model."""

    config_class = MixtureConfig

    def __init__(self, config: MixtureConfig, dims: ModelConfig) -> None:
        super().__init__(config, dims)
        k, d = config.components, dims.latent
        # Spread the means so that components start apart; unit variances cover N(0, I) around them.
        init = torch.Generator().manual_seed(0)
        self.means = nn.Parameter(torch.randn(k, d, generator=init))
        self.logvars = nn.Parameter(torch.zeros(k, d))
        self.logits = nn.Parameter(torch.zeros(k))

    def log_prob(self, z: Tensor) -> Tensor:
        return _mixture_log_prob(z, self.logits.log_softmax(0), self.means, self.logvars)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return _mixture_sample(n, self.logits, self.means, self.logvars, generator)


@dataclass
class VampConfig(Config):
    components: int = option(50, "pseudo-inputs (mixture components)")

    positive: ClassVar[tuple[str, ...]] = ("components",)


class VampPrior(Prior):
    """VampPrior (Tomczak & Welling 2018): p(z) = mean_k q(z | u_k) at learnable pseudo-inputs u_k.

    The pseudo-inputs are images (sigmoid of a parameter) encoded by the model's own encoder, which must give
    a Gaussian posterior.
    """

    config_class = VampConfig

    def __init__(self, config: VampConfig, dims: ModelConfig) -> None:
        super().__init__(config, dims)
        shape = (config.components, dims.image_channels, dims.image_size, dims.image_size)
        init = torch.Generator().manual_seed(0)
        # Dark noisy images (sigmoid(-2) ~ 0.12), about the mean brightness of MNIST.
        self.pseudo_inputs = nn.Parameter(torch.randn(shape, generator=init) * 0.5 - 2.0)
        self.__dict__["_model"] = None  # the model whose encoder maps the pseudo-inputs (not a submodule)

    def attach(self, model: Model) -> None:
        self.__dict__["_model"] = model

    def check(self, model: Model) -> None:
        require_density(self, model, "a mixture of posteriors")

    def components(self) -> Posterior:
        """The posteriors q(z | u_k) of the pseudo-inputs."""
        model = self.__dict__["_model"]
        if model is None:
            from genkit import ConfigError

            raise ConfigError("the vamp prior needs a model's encoder: use it as the prior of a model")
        return model.encoder(torch.sigmoid(self.pseudo_inputs))

    def log_prob(self, z: Tensor) -> Tensor:
        q = self.components()
        k = q.mean.shape[0]
        log_weights = torch.full((k,), -math.log(k), device=q.mean.device, dtype=q.mean.dtype)
        return _mixture_log_prob(z, log_weights, q.mean, q.logvar)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        q = self.components()
        return _mixture_sample(n, torch.zeros(q.mean.shape[0], device=q.mean.device), q.mean, q.logvar, generator)
