"""``ae``: a deterministic convolutional autoencoder."""

from __future__ import annotations

from dataclasses import dataclass

from genkit import Model, ReconstructionLoss, StandardNormal
from genkit_plugins.nets import ConvConfig, ConvDecoder, ConvEncoder


@dataclass
class AEConfig(ConvConfig):
    pass


class ConvAutoencoder(Model):
    """Deterministic convolutional autoencoder (reconstruction loss only; sample with a fitted prior)."""

    config_class = AEConfig

    def __init__(self, config: AEConfig) -> None:
        super().__init__(
            config,
            encoder=ConvEncoder(config, gaussian=False),
            decoder=ConvDecoder(config),
            # N(0, I) is only a placeholder for sampling: fit a `gmm` prior for real samples.
            prior=StandardNormal(config.latent),
            loss=ReconstructionLoss(),
        )
