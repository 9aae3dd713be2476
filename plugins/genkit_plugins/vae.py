"""``vae-conv`` and ``beta-vae``: the convolutional VAE, and the same VAE with a β weight on its KL term."""

from __future__ import annotations

from dataclasses import dataclass

from genkit import ConfigError, ELBOLoss, Model, StandardNormal, option
from genkit_plugins.nets import ConvConfig, ConvDecoder, ConvEncoder


@dataclass
class VAEConfig(ConvConfig):
    latent: int = option(10, "size of the latent code")


@dataclass
class BetaVAEConfig(VAEConfig):
    beta: float = option(4.0, "weight of the KL term (1 gives the plain VAE)")

    def validate(self) -> None:
        super().validate()
        if self.beta < 0:
            raise ConfigError(f"beta must be non-negative, got {self.beta}")


class ConvVAE(Model):
    """Convolutional VAE: conv encoder -> (mu, log var) -> reparameterised z -> transposed-conv decoder."""

    config_class = VAEConfig

    def __init__(self, config: VAEConfig) -> None:
        super().__init__(
            config,
            encoder=ConvEncoder(config, gaussian=True),
            decoder=ConvDecoder(config),
            prior=StandardNormal(config.latent),
            loss=ELBOLoss(beta=getattr(config, "beta", 1.0)),
        )


class BetaVAE(ConvVAE):
    """β-VAE: the convolutional VAE with a β weight on the KL term (disentangling, smoother latents)."""

    config_class = BetaVAEConfig
