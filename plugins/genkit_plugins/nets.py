"""Built-in encoders and decoders (``conv`` and ``mlp`` in the ``genkit.encoders``/``genkit.decoders`` groups)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from einops.layers.torch import Rearrange
from torch import Tensor, nn

from genkit import Config, ConfigError, Decoder, Encoder, ModelConfig, Posterior, option

HEADS = ("gaussian", "deterministic", "integer")
HEAD_HELP = (
    "gaussian: a posterior mean and log-variance; deterministic: a point code; integer: a point code, rounded "
    "outside training (for the rd loss)"
)


@dataclass
class ConvNetConfig(Config):
    """Two stride-2 convolutions and a fully connected layer (the decoder mirrors them)."""

    channels: int = option(32, "channels of the first convolution (the second has twice as many)")
    hidden: int = option(256, "width of the fully connected layer between convolutions and latent")
    blocks: int = option(0, "extra 3x3 convolutions after each resolution change (a deeper network)")
    stages: int = option(0, "stride-2 convolutions; 0: 2 for images up to 32 pixels, one more per doubling")

    positive: ClassVar[tuple[str, ...]] = ("channels", "hidden")

    def validate(self) -> None:
        super().validate()
        if self.blocks < 0:
            raise ConfigError(f"blocks must be 0 or more, got {self.blocks}")
        if not 0 <= self.stages <= 8:
            raise ConfigError(f"stages must be between 0 (automatic) and 8, got {self.stages}")


@dataclass
class ConvEncoderConfig(ConvNetConfig):
    head: str = option("gaussian", HEAD_HELP, HEADS)


@dataclass
class MLPNetConfig(Config):
    """Fully connected layers of one width."""

    hidden: int = option(512, "width of each hidden layer")
    layers: int = option(2, "hidden layers")

    positive: ClassVar[tuple[str, ...]] = ("hidden", "layers")


@dataclass
class MLPEncoderConfig(MLPNetConfig):
    head: str = option("gaussian", HEAD_HELP, HEADS)


def _stages(config: ConvNetConfig, dims: ModelConfig) -> tuple[int, int]:
    """(stride-2 stages, side of the smallest feature map): 2 stages up to 32 pixels (28 -> 7, 32 -> 8), then one
    more per doubling (64 -> 8), unless ``config.stages`` fixes the number."""
    stages = config.stages or 2 + max(0, math.ceil(math.log2(dims.image_size / 32)))
    if dims.image_size % 2**stages:
        raise ConfigError(
            f"image_size must be a multiple of {2**stages} for the conv encoder and decoder with {stages} stages, "
            f"got {dims.image_size}"
        )
    return stages, dims.image_size // 2**stages


def _posterior(out: Tensor, head: str, training: bool) -> Posterior:
    if head == "integer" and not training:  # training sees the real-valued code (the loss adds noise or rounds)
        return Posterior(torch.round(out))
    if head != "gaussian":
        return Posterior(out)
    mean, logvar = out.chunk(2, dim=1)
    return Posterior(mean, logvar)


class ConvEncoder(Encoder):
    """x -> conv(c) -> conv(2c) -> fc(hidden) -> mean (and log-variance with the gaussian head)."""

    config_class = ConvEncoderConfig

    def __init__(self, config: ConvEncoderConfig, dims: ModelConfig) -> None:
        super().__init__(config, dims)
        (stages, side), c = _stages(config, dims), config.channels
        self.code = config.head  # kept: the vq encoder replaces self.config with its own
        deeper: list[nn.Module] = []  # after the first two stages, so that 2-stage nets keep their layer names
        for _ in range(stages - 2):
            deeper += [nn.Conv2d(2 * c, 2 * c, 4, 2, 1), nn.ReLU(), *_refine(2 * c, config.blocks)]
        self.body = nn.Sequential(
            nn.Conv2d(dims.image_channels, c, 4, 2, 1),
            nn.ReLU(),
            *_refine(c, config.blocks),
            nn.Conv2d(c, 2 * c, 4, 2, 1),
            nn.ReLU(),
            *_refine(2 * c, config.blocks),
            *deeper,
            Rearrange("n c h w -> n (c h w)"),
            nn.Linear(2 * c * side * side, config.hidden),
            nn.ReLU(),
        )
        self.head = nn.Linear(config.hidden, dims.latent * (2 if self.code == "gaussian" else 1))

    def forward(self, x: Tensor) -> Posterior:
        return _posterior(self.head(self.body(x)), self.code, self.training)


class ConvDecoder(Decoder):
    """z -> fc(hidden) -> fc -> transposed conv(c) -> transposed conv(image channels) logits."""

    config_class = ConvNetConfig

    def __init__(self, config: ConvNetConfig, dims: ModelConfig) -> None:
        super().__init__(config, dims)
        (stages, side), c = _stages(config, dims), config.channels
        deeper: list[nn.Module] = []
        for _ in range(stages - 2):
            deeper += [nn.ConvTranspose2d(2 * c, 2 * c, 4, 2, 1), nn.ReLU(), *_refine(2 * c, config.blocks)]
        self.body = nn.Sequential(
            nn.Linear(dims.latent, config.hidden),
            nn.ReLU(),
            nn.Linear(config.hidden, 2 * c * side * side),
            nn.ReLU(),
            Rearrange("n (c h w) -> n c h w", c=2 * c, h=side, w=side),
            *_refine(2 * c, config.blocks),
            *deeper,
            nn.ConvTranspose2d(2 * c, c, 4, 2, 1),
            nn.ReLU(),
            *_refine(c, config.blocks),
            nn.ConvTranspose2d(c, dims.image_channels, 4, 2, 1),
        )

    def forward(self, z: Tensor) -> Tensor:
        return self.body(z)


def _refine(channels: int, blocks: int) -> list[nn.Module]:
    """``blocks`` 3x3 convolutions that keep the resolution and the channel count."""
    layers: list[nn.Module] = []
    for _ in range(blocks):
        layers += [nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU()]
    return layers


def _mlp(width_in: int, hidden: int, layers: int) -> list[nn.Module]:
    out: list[nn.Module] = []
    for i in range(layers):
        out += [nn.Linear(width_in if i == 0 else hidden, hidden), nn.ReLU()]
    return out


class MLPEncoder(Encoder):
    """x -> flatten -> fully connected layers -> mean (and log-variance)."""

    config_class = MLPEncoderConfig

    def __init__(self, config: MLPEncoderConfig, dims: ModelConfig) -> None:
        super().__init__(config, dims)
        self.code = config.head
        pixels = dims.image_channels * dims.image_size**2
        self.body = nn.Sequential(nn.Flatten(), *_mlp(pixels, config.hidden, config.layers))
        self.head = nn.Linear(config.hidden, dims.latent * (2 if self.code == "gaussian" else 1))

    def forward(self, x: Tensor) -> Posterior:
        return _posterior(self.head(self.body(x)), self.code, self.training)


class MLPDecoder(Decoder):
    """z -> fully connected layers -> logits shaped like the images."""

    config_class = MLPNetConfig

    def __init__(self, config: MLPNetConfig, dims: ModelConfig) -> None:
        super().__init__(config, dims)
        shape = (dims.image_channels, dims.image_size, dims.image_size)
        self.body = nn.Sequential(
            *_mlp(dims.latent, config.hidden, config.layers),
            nn.Linear(config.hidden, math.prod(shape)),
            nn.Unflatten(1, shape),
        )

    def forward(self, z: Tensor) -> Tensor:
        return self.body(z)
