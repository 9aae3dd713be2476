"""Built-in encoders and decoders (``conv``, ``fcn`` and ``mlp`` in the ``genkit.encoders``/``genkit.decoders``
groups)."""

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
class FCNConfig(Config):
    """Stride-2 convolutions only: the code is a grid of feature vectors (the decoder mirrors them)."""

    channels: int = option(32, "channels of the first convolution (the second has twice as many)")
    blocks: int = option(0, "extra 3x3 convolutions after each resolution change (a deeper network)")
    stages: int = option(0, "stride-2 convolutions; 0: 2 for images up to 32 pixels, one more per doubling")

    positive: ClassVar[tuple[str, ...]] = ("channels",)

    def validate(self) -> None:
        super().validate()
        if self.blocks < 0:
            raise ConfigError(f"blocks must be 0 or more, got {self.blocks}")
        if not 0 <= self.stages <= 8:
            raise ConfigError(f"stages must be between 0 (automatic) and 8, got {self.stages}")


@dataclass
class ConvNetConfig(FCNConfig):
    """Two stride-2 convolutions and a fully connected layer (the decoder mirrors them)."""

    hidden: int = option(256, "width of the fully connected layer between convolutions and latent")

    positive: ClassVar[tuple[str, ...]] = ("channels", "hidden")


@dataclass
class ConvEncoderConfig(ConvNetConfig):
    head: str = option("gaussian", HEAD_HELP, HEADS)


@dataclass
class FCNEncoderConfig(FCNConfig):
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


def _stages(config: FCNConfig, dims: ModelConfig) -> tuple[int, int]:
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


def _down(config: FCNConfig, dims: ModelConfig) -> tuple[list[nn.Module], int]:
    """The encoder's convolutions, image -> (2c, side, side) features, and ``side``."""
    (stages, side), c = _stages(config, dims), config.channels
    deeper: list[nn.Module] = []  # after the first two stages, so that 2-stage nets keep their layer names
    for _ in range(stages - 2):
        deeper += [nn.Conv2d(2 * c, 2 * c, 4, 2, 1), nn.ReLU(), *_refine(2 * c, config.blocks)]
    # the first convolution is built before the second: a seed gives the initial weights it always gave
    layers = [nn.Conv2d(dims.image_channels, c, 4, 2, 1), nn.ReLU(), *_refine(c, config.blocks)]
    second = nn.Conv2d(c, 2 * c, 4, 2, 1) if stages > 1 else nn.Conv2d(c, 2 * c, 3, 1, 1)  # 1 stage: keep the size
    layers += [second, nn.ReLU(), *_refine(2 * c, config.blocks), *deeper]
    return layers, side


def _up(config: FCNConfig, dims: ModelConfig) -> list[nn.Module]:
    """The decoder's transposed convolutions, (2c, side, side) features -> image logits (mirrors ``_down``)."""
    stages, c = _stages(config, dims)[0], config.channels
    layers = _refine(2 * c, config.blocks)
    for _ in range(stages - 2):
        layers += [nn.ConvTranspose2d(2 * c, 2 * c, 4, 2, 1), nn.ReLU(), *_refine(2 * c, config.blocks)]
    second = nn.ConvTranspose2d(2 * c, c, 4, 2, 1) if stages > 1 else nn.Conv2d(2 * c, c, 3, 1, 1)
    layers += [second, nn.ReLU(), *_refine(c, config.blocks)]
    return [*layers, nn.ConvTranspose2d(c, dims.image_channels, 4, 2, 1)]


class ConvEncoder(Encoder):
    """x -> conv(c) -> conv(2c) -> fc(hidden) -> mean (and log-variance with the gaussian head)."""

    config_class = ConvEncoderConfig

    def __init__(self, config: ConvEncoderConfig, dims: ModelConfig) -> None:
        super().__init__(config, dims)
        down, side = _down(config, dims)
        self.code = config.head  # kept: the vq encoder replaces self.config with its own
        self.body = nn.Sequential(
            *down,
            Rearrange("n c h w -> n (c h w)"),
            nn.Linear(2 * config.channels * side * side, config.hidden),
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
        side, c = _stages(config, dims)[1], config.channels
        self.body = nn.Sequential(
            nn.Linear(dims.latent, config.hidden),
            nn.ReLU(),
            nn.Linear(config.hidden, 2 * c * side * side),
            nn.ReLU(),
            Rearrange("n (c h w) -> n c h w", c=2 * c, h=side, w=side),
            *_up(config, dims),
        )

    def forward(self, z: Tensor) -> Tensor:
        return self.body(z)


def _grid_channels(dims: ModelConfig, side: int) -> int:
    """Channels of the fcn nets' code grid: the latent size spread over side x side positions."""
    if dims.latent % (side * side):
        raise ConfigError(
            f"the fcn encoder and decoder code a {side}x{side} grid, so latent must be a multiple of {side * side}, "
            f"got {dims.latent}: e.g. --latent {8 * side * side} for 8 channels"
        )
    return dims.latent // (side * side)


class FCNEncoder(Encoder):
    """x -> conv(c) -> conv(2c) -> 3x3 conv to a grid of codes, flattened: local codes, as in learned compressors.

    Such codes are what learned image compressors use (Ballé et al.); the latent size is grid channels x side x side.
    """

    config_class = FCNEncoderConfig

    def __init__(self, config: FCNEncoderConfig, dims: ModelConfig) -> None:
        super().__init__(config, dims)
        down, side = _down(config, dims)
        k = _grid_channels(dims, side) * (2 if config.head == "gaussian" else 1)
        self.code = config.head
        # channel-major flattening, so a gaussian head's mean and log-variance are the two halves of the vector
        self.body = nn.Sequential(*down, nn.Conv2d(2 * config.channels, k, 3, padding=1), nn.Flatten())

    def forward(self, x: Tensor) -> Posterior:
        return _posterior(self.body(x), self.code, self.training)


class FCNDecoder(Decoder):
    """The code grid -> 3x3 conv(2c) -> transposed conv(c) -> transposed conv(image channels) logits."""

    config_class = FCNConfig

    def __init__(self, config: FCNConfig, dims: ModelConfig) -> None:
        super().__init__(config, dims)
        side = _stages(config, dims)[1]
        k = _grid_channels(dims, side)
        self.body = nn.Sequential(
            nn.Unflatten(1, (k, side, side)),
            nn.Conv2d(k, 2 * config.channels, 3, padding=1),
            nn.ReLU(),
            *_up(config, dims),
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
