"""Built-in losses (``genkit.losses`` group): a reconstruction term, and the (β-weighted) ELBO."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from genkit.parts import LossOutput, ModelOutput, Prior


def reconstruction_nll(logits: Tensor, target: Tensor) -> Tensor:
    """Bernoulli negative log-likelihood, summed over pixels and averaged over the batch."""
    per_pixel = F.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="none")
    return per_pixel.flatten(1).sum(1).mean()


class ReconstructionLoss:
    """Reconstruction only: the loss of a deterministic autoencoder."""

    def __call__(self, output: ModelOutput, target: Tensor, prior: Prior) -> LossOutput:
        return LossOutput({"reconstruction": reconstruction_nll(output.logits, target)})


class ELBOLoss:
    """Negative ELBO with a β weight on the KL term (β = 1 is the VAE, β > 1 the β-VAE).

    The ``kl`` term is reported already multiplied by β, so that the total is the plain sum of the terms.
    """

    def __init__(self, beta: float = 1.0) -> None:
        self.beta = beta

    def __call__(self, output: ModelOutput, target: Tensor, prior: Prior) -> LossOutput:
        kl = prior.kl(output.posterior).float().mean()
        return LossOutput({"reconstruction": reconstruction_nll(output.logits, target), "kl": self.beta * kl})
