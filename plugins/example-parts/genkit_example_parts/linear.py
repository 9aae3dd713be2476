"""A linear encoder and decoder, registered as ``linear`` in ``genkit.encoders`` and ``genkit.decoders``."""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor, nn

from genkit import Config, Decoder, Encoder, ModelConfig, Posterior, option


@dataclass
class LinearEncoderConfig(Config):
    # The same option as the built-in encoders', so a preset's default (the ae preset sets head=deterministic)
    # applies to this encoder too.
    head: str = option(
        "gaussian",
        "gaussian: a posterior mean and log-variance; deterministic: a point code",
        ("gaussian", "deterministic"),
    )


class LinearEncoder(Encoder):
    """x -> flatten -> one linear map -> mean (and log-variance): the simplest encoder."""

    config_class = LinearEncoderConfig

    def __init__(self, config: LinearEncoderConfig, dims: ModelConfig) -> None:
        super().__init__(config, dims)
        self.gaussian = config.head == "gaussian"
        pixels = dims.image_channels * dims.image_size**2
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(pixels, dims.latent * (2 if self.gaussian else 1)))

    def forward(self, x: Tensor) -> Posterior:
        out = self.net(x)
        if not self.gaussian:
            return Posterior(out)  # logvar None: a deterministic code
        mean, logvar = out.chunk(2, dim=1)
        return Posterior(mean, logvar)


class LinearDecoder(Decoder):
    """z -> one linear map -> logits shaped like the images."""

    # no config_class: the decoder has no options (genkit.Config, the default, has no fields)

    def __init__(self, config: Config, dims: ModelConfig) -> None:
        super().__init__(config, dims)
        shape = (dims.image_channels, dims.image_size, dims.image_size)
        self.net = nn.Sequential(nn.Linear(dims.latent, math.prod(shape)), nn.Unflatten(1, shape))

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)  # logits: genkit applies the sigmoid
