"""Losses beyond the ELBO: the importance-weighted bound (``iwae``), the WAE's MMD penalty (``wae-mmd``), the
regularised autoencoder (``rae``), InfoVAE (``info-vae``), the total-correlation decomposition (``beta-tcvae``)
and the adversarial autoencoder (``aae``, whose discriminator the trainer steps as the loss's adversary)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genkit import (
    Batch,
    ConfigError,
    Loss,
    LossOutput,
    Model,
    ModelConfig,
    option,
    require_density,
    require_trained_prior,
)
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
        log_w = importance_log_weights(model, posterior, batch.target, c.k, c, batch.generator)
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


def prior_mmd(model: Model, z: Tensor, batch: Batch, scale: float) -> Tensor:
    """The IMQ MMD between the batch's codes ``z`` and as many prior draws (kernel scale C = 2 * latent * scale)."""
    if z.shape[0] < 2:  # no pairs to compare (e.g. a last batch of one image): no MMD signal
        return z.float().sum() * 0.0
    prior_z = model.prior.sample(z.shape[0], batch.generator)
    return imq_mmd(z.float(), prior_z.float(), 2.0 * z.shape[1] * scale)


class WAEMMDLoss(Loss):
    """Wasserstein autoencoder (MMD): reconstruction + lambda * MMD(codes, prior samples), IMQ kernel."""

    config_class = WAEConfig

    def check(self, model: Model) -> None:
        require_trained_prior(self, model)

    def forward(self, model: Model, batch: Batch) -> LossOutput:
        c = self.config
        _, z, reconstruction = reconstruct(model, batch, c)
        return LossOutput({"reconstruction": reconstruction, "mmd": c.weight * prior_mmd(model, z, batch, c.scale)})


@dataclass
class RAEConfig(LikelihoodConfig):
    code_weight: float = option(1e-3, "weight beta of the code penalty beta * |z|^2 / 2")
    regulariser: str = option("l2", "decoder regulariser: l2 (weight decay) or gp (gradient penalty)", ("l2", "gp"))
    decoder_weight: float = option(1e-6, "weight lambda of the decoder regulariser")

    non_negative: ClassVar[tuple[str, ...]] = ("code_weight", "decoder_weight")


def decoder_gradient_penalty(model: Model, z: Tensor, generator: torch.Generator | None) -> Tensor:
    """|J|_F^2 of the decoder's images with respect to the code, estimated as |J^T v|^2 with v ~ N(0, I).

    The code is detached: the penalty smooths the decoder (RAE-GP), not the encoder.
    """
    code = z.detach().float().requires_grad_(True)
    with torch.enable_grad():  # also when the trainer evaluates under no_grad
        images = model.decode(code)
        v = torch.randn(images.shape, generator=generator, device=images.device, dtype=images.dtype)
        (grad,) = torch.autograd.grad((images * v).sum(), code, create_graph=model.training)
    return grad.pow(2).sum(1).mean()


class RAELoss(Loss):
    """Regularised autoencoder (Ghosh et al. 2020): reconstruction + beta |z|^2/2 + a decoder regulariser.

    ``regulariser=l2`` adds lambda times the decoder's squared weights (RAE-L2), ``gp`` lambda times the
    decoder's squared Jacobian norm (RAE-GP). Deterministic codes: sample through an ex-post prior (gmm).
    """

    config_class = RAEConfig

    def forward(self, model: Model, batch: Batch) -> LossOutput:
        c = self.config
        _, z, reconstruction = reconstruct(model, batch, c, draw=False)
        terms = {"reconstruction": reconstruction, "code": c.code_weight * 0.5 * z.float().pow(2).sum(1).mean()}
        if c.regulariser == "gp":
            terms["decoder_gp"] = c.decoder_weight * decoder_gradient_penalty(model, z, batch.generator)
        else:
            squares = sum(p.float().pow(2).sum() for p in model.decoder.parameters())
            terms["decoder_l2"] = c.decoder_weight * squares
        return LossOutput(terms)


@dataclass
class InfoVAEConfig(LikelihoodConfig):
    alpha: float = option(0.0, "alpha of Zhao et al.: the KL term is weighted 1 - alpha")
    weight: float = option(100.0, "lambda of Zhao et al.: the MMD term is weighted alpha + lambda - 1")
    scale: float = option(1.0, "kernel scale: C = 2 * latent * scale in the IMQ kernel C / (C + |x - y|^2)")

    positive: ClassVar[tuple[str, ...]] = ("sigma", "scale")

    def validate(self) -> None:
        super().validate()
        if self.alpha > 1 or self.alpha + self.weight - 1 < 0:
            raise ConfigError(f"need alpha <= 1 and alpha + weight >= 1, got alpha={self.alpha}, weight={self.weight}")


class InfoVAELoss(Loss):
    """InfoVAE (Zhao et al. 2019): reconstruction + (1 - alpha) KL + (alpha + lambda - 1) MMD(q(z), p(z)).

    The MMD between the batch's codes and prior draws is the ``wae-mmd`` loss's IMQ estimate.
    """

    config_class = InfoVAEConfig

    def check(self, model: Model) -> None:
        require_density(self, model, "the KL term")
        require_trained_prior(self, model)

    def forward(self, model: Model, batch: Batch) -> LossOutput:
        c = self.config
        posterior, z, reconstruction = reconstruct(model, batch, c)
        kl = (1 - c.alpha) * model.prior.kl(posterior, z).float().mean()
        mmd = prior_mmd(model, z, batch, c.scale)
        return LossOutput({"reconstruction": reconstruction, "kl": kl, "mmd": (c.alpha + c.weight - 1) * mmd})


@dataclass
class TCConfig(LikelihoodConfig):
    alpha: float = option(1.0, "weight of the index-code mutual information")
    beta: float = option(6.0, "weight of the total correlation")
    gamma: float = option(1.0, "weight of the dimension-wise KL")
    dataset_size: int = option(60000, "training images N, for the minibatch-weighted sampling estimate of q(z)")

    positive: ClassVar[tuple[str, ...]] = ("sigma", "dataset_size")
    non_negative: ClassVar[tuple[str, ...]] = ("alpha", "beta", "gamma")


def _log_normal(z: Tensor, mean: Tensor, logvar: Tensor) -> Tensor:
    return -0.5 * ((z - mean) ** 2 / logvar.exp() + logvar + math.log(2 * math.pi))


class BetaTCVAELoss(Loss):
    """beta-TCVAE (Chen et al. 2018): the KL split into mutual information, total correlation and dim-wise KL.

    The three terms are estimated by minibatch-weighted sampling; each is reported with its weight.
    """

    config_class = TCConfig

    def check(self, model: Model) -> None:
        require_density(self, model, "the KL decomposition")
        require_trained_prior(self, model)

    def forward(self, model: Model, batch: Batch) -> LossOutput:
        c = self.config
        posterior, z, reconstruction = reconstruct(model, batch, c)
        z, mean, logvar = z.float(), posterior.mean.float(), posterior.logvar.float()
        m = z.shape[0]
        # log q(z_i | x_j) per dimension for every pair in the batch: (M, M, D)
        pairs = _log_normal(z[:, None, :], mean[None, :, :], logvar[None, :, :])
        log_norm = math.log(c.dataset_size * m)
        log_qz = torch.logsumexp(pairs.sum(2), dim=1) - log_norm
        log_prod_qz = (torch.logsumexp(pairs, dim=1) - log_norm).sum(1)
        log_qz_x = _log_normal(z, mean, logvar).sum(1)
        log_pz = model.prior.log_prob(z).float()
        return LossOutput(
            {
                "reconstruction": reconstruction,
                "mi": c.alpha * (log_qz_x - log_qz).mean(),
                "tc": c.beta * (log_qz - log_prod_qz).mean(),
                "dim_kl": c.gamma * (log_prod_qz - log_pz).mean(),
            }
        )


@dataclass
class AAEConfig(LikelihoodConfig):
    weight: float = option(1.0, "weight of the adversarial term: the encoder's codes fooling the discriminator")
    hidden: int = option(256, "width of the discriminator's two hidden layers")

    positive: ClassVar[tuple[str, ...]] = ("sigma", "hidden")
    non_negative: ClassVar[tuple[str, ...]] = ("weight",)


class AAELoss(Loss):
    """Adversarial autoencoder (Makhzani et al. 2016): reconstruction + a discriminator telling codes from prior draws.

    The discriminator is the loss's adversary: the trainer steps it with its own optimizer on
    ``adversary_loss``, while the model learns to reconstruct and to make its codes pass for prior draws.
    """

    config_class = AAEConfig

    def __init__(self, config: AAEConfig | None = None, dims: ModelConfig | None = None) -> None:
        super().__init__(config, dims)
        h, latent = self.config.hidden, self.dims.latent
        self.discriminator = nn.Sequential(
            nn.Linear(latent, h), nn.LeakyReLU(0.2), nn.Linear(h, h), nn.LeakyReLU(0.2), nn.Linear(h, 1)
        )

    def check(self, model: Model) -> None:
        require_trained_prior(self, model)

    def adversary(self) -> nn.Module:
        return self.discriminator

    def forward(self, model: Model, batch: Batch) -> LossOutput:
        c = self.config
        _, z, reconstruction = reconstruct(model, batch, c, draw=model.training)
        logits = self.discriminator(z.float())
        fool = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))  # non-saturating
        return LossOutput({"reconstruction": reconstruction, "adversarial": c.weight * fool})

    def adversary_loss(self, model: Model, batch: Batch) -> LossOutput:
        with torch.no_grad():
            posterior = model.encode(batch.x)
            codes = posterior.sample(batch.generator).float()
            prior = model.prior.sample(codes.shape[0], batch.generator).float()
        real, fake = self.discriminator(prior), self.discriminator(codes)
        loss = F.binary_cross_entropy_with_logits(real, torch.ones_like(real)) + F.binary_cross_entropy_with_logits(
            fake, torch.zeros_like(fake)
        )
        return LossOutput({"discriminator": loss})
