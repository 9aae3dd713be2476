"""An MLP VAE plugin for genkit, using only genkit's public API."""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor, nn

from genkit import Decoder, ELBOLoss, Encoder, Model, ModelConfig, Posterior, StandardNormal, option


@dataclass
class MLPVAEConfig(ModelConfig):
    hidden: int = option(400, "width of the hidden layer")

    positive = (*ModelConfig.positive, "hidden")


class MLPEncoder(Encoder):
    def __init__(self, config: MLPVAEConfig) -> None:
        super().__init__()
        pixels = config.image_channels * config.image_size**2
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(pixels, config.hidden), nn.ReLU())
        self.head = nn.Linear(config.hidden, 2 * config.latent)

    def forward(self, x: Tensor) -> Posterior:
        mean, logvar = self.head(self.net(x)).chunk(2, dim=1)
        return Posterior(mean, logvar)


class MLPDecoder(Decoder):
    def __init__(self, config: MLPVAEConfig) -> None:
        super().__init__()
        shape = (config.image_channels, config.image_size, config.image_size)
        self.net = nn.Sequential(
            nn.Linear(config.latent, config.hidden),
            nn.ReLU(),
            nn.Linear(config.hidden, math.prod(shape)),
            nn.Unflatten(1, shape),
        )

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)


class MLPVAE(Model):
    """VAE with one hidden fully connected layer in encoder and decoder (Kingma & Welling's MNIST model)."""

    config_class = MLPVAEConfig

    def __init__(self, config: MLPVAEConfig) -> None:
        super().__init__(
            config,
            encoder=MLPEncoder(config),
            decoder=MLPDecoder(config),
            prior=StandardNormal(config.latent),
            loss=ELBOLoss(),
        )
