"""The convolutional encoder and decoder shared by the built-in models."""

from __future__ import annotations

from dataclasses import dataclass

from einops.layers.torch import Rearrange
from torch import Tensor, nn

from genkit import ConfigError, Decoder, Encoder, ModelConfig, Posterior, option


@dataclass
class ConvConfig(ModelConfig):
    """Two stride-2 convolutions, a fully connected layer, and the mirror image for the decoder."""

    channels: int = option(32, "channels of the first convolution (the second has twice as many)")
    hidden: int = option(256, "width of the fully connected layer between convolutions and latent")
    blocks: int = option(0, "extra 3x3 convolutions after each resolution change (a deeper network)")

    positive = (*ModelConfig.positive, "channels", "hidden")

    def validate(self) -> None:
        super().validate()
        if self.blocks < 0:
            raise ConfigError(f"blocks must be 0 or more, got {self.blocks}")
        if self.image_size % 4:
            raise ConfigError(f"image_size must be a multiple of 4 for the conv models, got {self.image_size}")


class ConvEncoder(Encoder):
    """x -> conv(c) -> conv(2c) -> fc(hidden) -> mean (and log-variance when ``gaussian``)."""

    def __init__(self, config: ConvConfig, gaussian: bool) -> None:
        super().__init__()
        c, side = config.channels, config.image_size // 4
        self.gaussian = gaussian
        self.body = nn.Sequential(
            nn.Conv2d(config.image_channels, c, 4, 2, 1),
            nn.ReLU(),
            *_refine(c, config.blocks),
            nn.Conv2d(c, 2 * c, 4, 2, 1),
            nn.ReLU(),
            *_refine(2 * c, config.blocks),
            Rearrange("n c h w -> n (c h w)"),
            nn.Linear(2 * c * side * side, config.hidden),
            nn.ReLU(),
        )
        self.head = nn.Linear(config.hidden, config.latent * (2 if gaussian else 1))

    def forward(self, x: Tensor) -> Posterior:
        out = self.head(self.body(x))
        if not self.gaussian:
            return Posterior(out)
        mean, logvar = out.chunk(2, dim=1)
        return Posterior(mean, logvar)


class ConvDecoder(Decoder):
    """z -> fc(hidden) -> fc -> transposed conv(c) -> transposed conv(image channels) logits."""

    def __init__(self, config: ConvConfig) -> None:
        super().__init__()
        c, side = config.channels, config.image_size // 4
        self.body = nn.Sequential(
            nn.Linear(config.latent, config.hidden),
            nn.ReLU(),
            nn.Linear(config.hidden, 2 * c * side * side),
            nn.ReLU(),
            Rearrange("n (c h w) -> n c h w", c=2 * c, h=side, w=side),
            *_refine(2 * c, config.blocks),
            nn.ConvTranspose2d(2 * c, c, 4, 2, 1),
            nn.ReLU(),
            *_refine(c, config.blocks),
            nn.ConvTranspose2d(c, config.image_channels, 4, 2, 1),
        )

    def forward(self, z: Tensor) -> Tensor:
        return self.body(z)


def _refine(channels: int, blocks: int) -> list[nn.Module]:
    """``blocks`` 3x3 convolutions that keep the resolution and the channel count."""
    layers: list[nn.Module] = []
    for _ in range(blocks):
        layers += [nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU()]
    return layers
