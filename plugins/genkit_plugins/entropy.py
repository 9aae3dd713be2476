"""Learned compression (Ballé et al. 2017): a factorised entropy model over integer codes (``factorized``
prior) and the rate–distortion loss (``rd``) that trains a model to trade bits for error.

During training the rate is scored on the code plus uniform noise (a differentiable stand-in for rounding)
while the decoder sees the rounded code through a straight-through gradient (Minnen & Singh 2020); at
compression time codes are rounded and coded under integer tables taken from the trained prior
(``integer_masses``, CompressAI's ``update()``), so the bits on disk are the rate the loss minimised.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genkit import Batch, Config, ConfigError, Loss, LossOutput, Model, ModelConfig, Prior, option

#: the smallest probability a code gets while training (keeps log-masses finite far out in the tails)
MIN_MASS = 1e-9


@dataclass
class FactorizedConfig(Config):
    components: int = option(3, "logistic components per latent dimension")

    positive: ClassVar[tuple[str, ...]] = ("components",)


class FactorizedPrior(Prior):
    """Factorised entropy model: each latent dimension a learned mixture of logistics, scored on integers.

    P(k) is the mixture's mass on [k - 1/2, k + 1/2]; ``log_prob`` gives that mass at any real z, which is the
    density of z + uniform noise, so a VAE-style loss and the rate of a rounded code are the same function.
    It trains with the model; ``sample`` draws from the mixture and rounds.
    """

    config_class = FactorizedConfig

    def __init__(self, config: FactorizedConfig, dims: ModelConfig) -> None:
        super().__init__(config, dims)
        d, k = dims.latent, config.components
        self.means = nn.Parameter(torch.linspace(-1, 1, k).repeat(d, 1))  # (D, K)
        self.log_scales = nn.Parameter(torch.zeros(d, k))
        self.logits = nn.Parameter(torch.zeros(d, k))

    def _cdf_difference(self, high: Tensor, low: Tensor) -> Tensor:
        """The mixture's mass on [low, high] per dimension; ``high``, ``low``: (..., D, 1) against (D, K)."""
        scale = self.log_scales.exp()
        # Mirror upper-tail points so both CDFs are small numbers: 1 - s(a) - (1 - s(b)) loses no precision.
        sign = -torch.sign((high + low) / 2 - self.means).detach()
        sign = torch.where(sign == 0, -torch.ones_like(sign), sign)
        upper = torch.sigmoid(sign * (high - self.means) / scale)
        lower = torch.sigmoid(sign * (low - self.means) / scale)
        return ((upper - lower).abs() * self.logits.softmax(-1)).sum(-1)

    def log_mass(self, z: Tensor) -> Tensor:
        """log P(z) in nats, summed over the latent dimension: the code's rate when z holds integers."""
        z = z.float().unsqueeze(-1)
        mass = self._cdf_difference(z + 0.5, z - 0.5)
        # the bound with a straight-through gradient, so codes far out in the tails are still pulled back in
        bounded = mass + (mass.clamp_min(MIN_MASS) - mass).detach()
        return bounded.log().sum(-1)

    def log_prob(self, z: Tensor) -> Tensor:
        return self.log_mass(z)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        d = self.means.shape[0]
        component = torch.multinomial(self.logits.softmax(-1), n, replacement=True, generator=generator).T  # (n, D)
        u = torch.rand(n, d, generator=generator, device=self.device).clamp(1e-6, 1 - 1e-6)
        index = torch.arange(d, device=self.device)
        means, scales = self.means[index, component], self.log_scales[index, component].exp()
        return torch.round(means + scales * (u.log() - (-u).log1p())).detach()

    @torch.no_grad()
    def integer_masses(self, total: int = 1 << 20, tails: float = 14.0) -> tuple[Tensor, Tensor]:
        """Integer coding tables: ``offsets`` (D,) and ``counts`` (D, width), count j at dimension d standing
        for the integer offsets[d] + j. Each dimension's range covers its mixture out to ``tails`` scales; the
        end symbols take the tails beyond, and every symbol in range counts at least 1."""
        means, scales = self.means.double(), self.log_scales.double().exp()
        low = torch.floor((means - tails * scales).min(1).values).long()
        high = torch.ceil((means + tails * scales).max(1).values).long()
        width = int((high - low).max()) + 1
        if width > 1 << 16:
            raise ConfigError(f"{self.label()}: a dimension spans {width} integers; the model did not train")
        k = low[:, None] + torch.arange(width)  # (D, width)
        weights = self.logits.double().softmax(-1)

        def cdf(x: Tensor) -> Tensor:
            return (torch.sigmoid((x[..., None] - means[:, None]) / scales[:, None]) * weights[:, None]).sum(-1)

        upper = torch.where(k >= high[:, None], torch.ones_like(k, dtype=torch.double), cdf(k + 0.5))
        lower = torch.where(k <= low[:, None], torch.zeros_like(k, dtype=torch.double), cdf(k - 0.5))
        counts = torch.floor((upper - lower).clamp_min(0) * total).long() + 1
        counts[k > high[:, None]] = 0  # beyond a dimension's own range
        return low, counts


@dataclass
class RDConfig(Config):
    lmbda: float = option(0.002, "distortion weight: loss = bits/pixel + lmbda * 255^2 * MSE (larger: better, bigger)")

    positive: ClassVar[tuple[str, ...]] = ("lmbda",)


class RateDistortionLoss(Loss):
    """Rate + λ·distortion (CompressAI's scale): bits per pixel of the code under the prior plus λ·255²·MSE.

    Terms: ``rate`` (bits per pixel) and ``distortion`` (λ·255²·MSE); the test MSE is reported as usual.
    """

    config_class = RDConfig

    def check(self, model: Model) -> None:
        if not hasattr(model.prior, "log_mass") or model.prior.fitted_after_training:
            raise ConfigError(
                f"{self.label()} cannot train with {model.prior.label()}: the rate needs a trained entropy model "
                "over integer codes (--prior factorized)"
            )

    def forward(self, model: Model, batch: Batch) -> LossOutput:
        y = model.encode(batch.x).mean
        if model.training:  # uniform noise for the rate, the rounded code (straight through) for the decoder
            noisy = y + torch.rand(y.shape, generator=batch.generator, device=y.device, dtype=y.dtype) - 0.5
        else:
            noisy = torch.round(y)
        rounded = y + (torch.round(y) - y).detach()
        pixels = batch.target[0].numel() // batch.target.shape[1]
        rate = -model.prior.log_mass(noisy).mean() / (pixels * torch.log(torch.tensor(2.0)))
        mse = F.mse_loss(torch.sigmoid(model.decode_logits(rounded).float()), batch.target.float())
        return LossOutput({"rate": rate, "distortion": self.config.lmbda * 255**2 * mse})
