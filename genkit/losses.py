"""Built-in losses (``genkit.losses`` group): ``reconstruction`` and the (β-weighted, warmed-up) ``elbo``.

Every loss here and in ``genkit_plugins.losses`` scores reconstructions with the same likelihood options
(``LikelihoodConfig``): Bernoulli on the decoder's logits, a Gaussian of fixed ``sigma`` around
``sigmoid(logits)`` (squared error, as many published nets train), or a discretised logistic over the 256 grey
levels of 8-bit images (``logistic``: a real probability mass, so -log p(x) in bits is a lossless code length),
of fixed scale ``sigma`` or (``scale=decoded``) a scale the decoder predicts for every pixel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from genkit.config import Config, ModelConfig, option
from genkit.errors import ConfigError
from genkit.parts import Batch, Loss, LossOutput, Posterior, require_density, require_trained_prior

if TYPE_CHECKING:
    from genkit.model import Model

LIKELIHOODS = ("bernoulli", "gaussian", "logistic")
#: where the ``logistic`` likelihood's scale comes from: ``sigma`` itself, or the decoder (a second output per pixel)
SCALES = ("fixed", "decoded")
#: a decoded scale stays within sigma * e^(+-LOG_SCALE_RANGE) (a soft bound, so its gradient never vanishes)
LOG_SCALE_RANGE = 4.0
#: grey levels of the ``logistic`` likelihood (8-bit images)
LEVELS = 256
#: how far past black and white the ``gaussian`` likelihood's mean and the ``logistic`` likelihood's location reach
#: by default: pure black and white get mass near 1 (MNIST is mostly exact 0 and 255: at scale 0.06 a black pixel
#: costs the logistic 0.01 bits, where 0.1 cost 0.24), and lie at finite logits
MARGIN = 0.3
#: where the end bins of the ``logistic`` likelihood stop, in [0, 1] units (their mass beyond is below 1e-80)
FAR = 1e4
#: the smallest log-mass a grey level gets (keeps losses finite for levels far from the location)
MIN_LOG_MASS = -80.0


@dataclass
class LikelihoodConfig(Config):
    """How reconstructions are scored: log p(x|z)."""

    likelihood: str = option("bernoulli", "reconstruction likelihood p(x|z)", LIKELIHOODS)
    sigma: float = option(0.1, "standard deviation of the gaussian likelihood; scale of the logistic (in [0, 1] units)")
    margin: float = option(
        MARGIN, "how far past black and white the gaussian's mean and the logistic's location reach (in [0, 1] units)"
    )
    scale: str = option("fixed", "the logistic's scale: sigma, or decoded (sigma x a second decoder output)", SCALES)

    positive: ClassVar[tuple[str, ...]] = ("sigma",)

    def validate(self) -> None:
        super().validate()
        if not 0 <= self.margin <= 10:
            raise ConfigError(f"margin must be between 0 and 10, got {self.margin}")
        if self.scale == "decoded" and self.likelihood != "logistic":
            raise ConfigError(
                f"scale=decoded needs the logistic likelihood, not {self.likelihood}: --set loss.likelihood=logistic"
            )

    @property
    def outputs(self) -> int:
        """Decoder outputs per image channel: 2 when the decoder also gives each pixel's scale."""
        return 2 if self.scale == "decoded" else 1


def likelihood_of(config: Config) -> LikelihoodConfig:
    """The likelihood options in a loss's ``config``; a plugin's config may name some of them (Bernoulli by default)."""
    if isinstance(config, LikelihoodConfig):
        return config
    return LikelihoodConfig(**{k: getattr(config, k) for k in LikelihoodConfig.defaults() if hasattr(config, k)})


DEFAULT_LIKELIHOOD = LikelihoodConfig()


def reconstruction_log_likelihood(
    logits: Tensor, target: Tensor, likelihood: LikelihoodConfig = DEFAULT_LIKELIHOOD
) -> Tensor:
    """log p(target | z) per image (summed over pixels), from the decoder's ``logits``."""
    logits, target = logits.float(), target.float()
    sigma = likelihood.sigma
    if likelihood.likelihood == "bernoulli":
        per_pixel = -F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    elif likelihood.likelihood == "gaussian":
        mean = stretched_sigmoid(logits, likelihood.margin)
        per_pixel = -0.5 * ((mean - target) / sigma) ** 2 - math.log(sigma * math.sqrt(2 * math.pi))
    elif likelihood.likelihood == "logistic":
        # the end bins reach far, not to infinity: inf / scale would give a decoded scale NaN gradients
        lo, hi = (edge.clamp(-FAR, FAR) for edge in level_edges(torch.round(target * (LEVELS - 1))))
        location, scale = logistic_parameters(logits, likelihood)
        per_pixel = _log_bin_mass((lo - location) / scale, (hi - location) / scale)
    else:
        raise ConfigError(f"unknown likelihood {likelihood.likelihood!r}: use {' or '.join(LIKELIHOODS)}")
    return per_pixel.flatten(1).sum(1)


def _log_bin_mass(lo: Tensor, hi: Tensor) -> Tensor:
    """log(CDF(hi) - CDF(lo)) of the standard logistic, for bins [lo, hi] (either end may be infinite)."""
    # CDF(hi) - CDF(lo) below the centre and SF(lo) - SF(hi) above it, in logs: both small numbers there, so
    # neither tail loses its precision (the clamp keeps the branch torch.where drops free of inf gradients)
    below = F.logsigmoid(hi) + torch.log1p(-torch.exp(F.logsigmoid(lo) - F.logsigmoid(hi)).clamp_max(1 - 1e-6))
    above = F.logsigmoid(-lo) + torch.log1p(-torch.exp(F.logsigmoid(-hi) - F.logsigmoid(-lo)).clamp_max(1 - 1e-6))
    return torch.where(lo + hi > 0, above, below).clamp_min(MIN_LOG_MASS)


def logistic_parameters(logits: Tensor, likelihood: LikelihoodConfig) -> tuple[Tensor, Tensor | float]:
    """The ``logistic`` likelihood's location, sigmoid(logits) stretched to reach ``margin`` past black and white,
    and its scale: ``sigma``, or with ``scale=decoded`` sigma times e^s for the decoder's second output s."""
    logits = logits.float()
    scale: Tensor | float = likelihood.sigma
    if likelihood.scale == "decoded":
        logits, s = logits.chunk(2, dim=1)
        scale = likelihood.sigma * torch.exp(LOG_SCALE_RANGE * torch.tanh(s / LOG_SCALE_RANGE))
    return stretched_sigmoid(logits, likelihood.margin), scale


def stretched_sigmoid(logits: Tensor, margin: float) -> Tensor:
    """sigmoid(logits) stretched to reach ``margin`` past 0 and 1: black and white lie at finite logits, so a
    likelihood centred there never pushes the logits towards -inf, where the sigmoid's gradient underflows."""
    return (1 + 2 * margin) * torch.sigmoid(logits.float()) - margin


def likelihood_images(logits: Tensor, likelihood: LikelihoodConfig = DEFAULT_LIKELIHOOD) -> Tensor:
    """The images in [0, 1] that the decoder's ``logits`` stand for: sigmoid(logits) under the ``bernoulli``
    likelihood; under the others their mean (or location), which reaches past black and white, clamped."""
    if likelihood.likelihood == "bernoulli":
        return torch.sigmoid(logits)
    return stretched_sigmoid(logits.chunk(likelihood.outputs, dim=1)[0], likelihood.margin).clamp(0, 1)


def level_edges(levels: Tensor) -> tuple[Tensor, Tensor]:
    """The bin [lo, hi] of each grey level (0..255) in [0, 1] units; the end bins reach to -inf and inf."""
    lo = torch.where(levels > 0, (levels - 0.5) / (LEVELS - 1), -torch.inf)
    hi = torch.where(levels < LEVELS - 1, (levels + 0.5) / (LEVELS - 1), torch.inf)
    return lo, hi


def importance_log_weights(
    model: Model,
    posterior: Posterior,
    target: Tensor,
    k: int,
    likelihood: LikelihoodConfig = DEFAULT_LIKELIHOOD,
    generator: torch.Generator | None = None,
) -> Tensor:
    """log p(target, z_i) - log q(z_i | x) for ``k`` draws z_i from ``posterior`` = q(z|x), shaped (k, N).

    ``logsumexp`` over the draws minus log k is the importance-weighted bound on log p(target) (Burda et al.).
    """
    z = posterior.sample_n(k, generator)  # (k, N, D)
    flat = z.flatten(0, 1)
    targets = target.expand(k, *target.shape).flatten(0, 1)
    log_px = reconstruction_log_likelihood(model.decode_logits(flat), targets, likelihood).view(k, -1)
    log_pz = model.prior.log_prob(flat).float().view(k, -1)
    return log_px + log_pz - posterior.log_prob(z).float()


def reconstruction_nll(logits: Tensor, target: Tensor, likelihood: LikelihoodConfig = DEFAULT_LIKELIHOOD) -> Tensor:
    """Negative log-likelihood of the reconstruction, summed over pixels and averaged over the batch."""
    return -reconstruction_log_likelihood(logits, target, likelihood).mean()


def reconstruct(
    model: Model, batch: Batch, config: LikelihoodConfig, draw: bool = True
) -> tuple[Posterior, Tensor, Tensor]:
    """The posterior of ``batch.x``, its code z (a draw from ``batch.generator``, or the mean when ``draw`` is
    false) and the batch-mean reconstruction NLL of the target from z: the first step of most losses."""
    posterior = model.encode(batch.x)
    z = posterior.sample(batch.generator) if draw else posterior.mean
    logits = model.decode_logits(z)
    return posterior, z, reconstruction_nll(logits, batch.target, config)


def ramp(progress: float | None, epochs: float) -> float:
    """A linear ramp from 0 to 1 over ``epochs`` epochs; 1 without warm-up or outside training."""
    return 1.0 if progress is None or epochs <= 0 else min(1.0, progress / epochs)


class ReconstructionLoss(Loss):
    """Reconstruction only: the loss of a deterministic autoencoder."""

    config_class = LikelihoodConfig

    def forward(self, model: Model, batch: Batch) -> LossOutput:
        return LossOutput({"reconstruction": reconstruct(model, batch, self.config, draw=model.training)[2]})


@dataclass
class ELBOConfig(LikelihoodConfig):
    beta: float = option(1.0, "weight of the KL term (1 gives the plain VAE, >1 the beta-VAE)")
    kl_warmup: int = option(0, "epochs over which the KL weight ramps linearly from 0 to beta")

    def validate(self) -> None:
        super().validate()
        if self.beta < 0 or self.kl_warmup < 0:
            raise ConfigError(f"beta and kl_warmup must be >= 0, got {self.beta} and {self.kl_warmup}")


class ELBOLoss(Loss):
    """Negative ELBO: reconstruction plus β·KL(q(z|x) || p(z)), with an optional KL warm-up.

    The ``kl`` term is reported already multiplied by β; during warm-up the total weights it by the ramp.
    """

    config_class = ELBOConfig

    def __init__(
        self, config: ELBOConfig | None = None, dims: ModelConfig | None = None, *, beta: float | None = None
    ) -> None:
        if config is None and beta is not None:
            config = ELBOConfig(beta=beta)
        super().__init__(config, dims)

    def check(self, model: Model) -> None:
        require_density(self, model, "the KL term")
        require_trained_prior(self, model)

    def forward(self, model: Model, batch: Batch) -> LossOutput:
        c = self.config
        posterior, z, reconstruction = reconstruct(model, batch, c)
        kl = c.beta * model.prior.kl(posterior, z).float().mean()
        weight = ramp(batch.progress, c.kl_warmup)
        total = reconstruction + weight * kl if weight != 1 else None  # None: the plain sum of the terms
        return LossOutput({"reconstruction": reconstruction, "kl": kl}, total)
