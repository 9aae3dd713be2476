"""An ELBO with a Laplace (L1) pixel likelihood, registered as ``elbo-l1`` in ``genkit.losses``."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from genkit import Batch, Config, ConfigError, Loss, LossOutput, Model, option, require_density, require_trained_prior


@dataclass
class L1ELBOConfig(Config):
    """The loss's options: ``genkit info --kind losses elbo-l1`` lists them, ``--set loss.KEY=VALUE`` sets them."""

    pixel_scale: float = option(0.1, "scale b of the Laplace likelihood: -log p(x|z) = |x - x_hat| / b + log 2b")
    beta: float = option(1.0, "weight of the KL term")

    positive: ClassVar[tuple[str, ...]] = ("pixel_scale",)

    def validate(self) -> None:
        super().validate()  # types, choices and the positive fields
        if self.beta < 0:
            raise ConfigError(f"beta must be >= 0, got {self.beta}")


class L1ELBOLoss(Loss):
    """Negative ELBO with a Laplace (L1) pixel likelihood: sum |x - x_hat| / b + beta * KL(q(z|x) || p(z))."""

    config_class = L1ELBOConfig

    def check(self, model: Model) -> None:
        require_density(self, model, "the KL term")  # a point code has no log q(z|x)
        require_trained_prior(self, model)  # a prior fitted after training (gmm) has no density yet

    def forward(self, model: Model, batch: Batch) -> LossOutput:
        c = self.config
        posterior = model.encode(batch.x)
        z = posterior.sample(batch.generator)  # the loss's only draw, from the run's generator
        x_hat = torch.sigmoid(model.decode_logits(z).float())
        per_pixel = (batch.target.float() - x_hat).abs() / c.pixel_scale + math.log(2 * c.pixel_scale)
        reconstruction = per_pixel.flatten(1).sum(1).mean()
        kl = c.beta * model.prior.kl(posterior, z).float().mean()  # whatever the prior: closed form or one draw
        return LossOutput({"reconstruction": reconstruction, "kl": kl})
