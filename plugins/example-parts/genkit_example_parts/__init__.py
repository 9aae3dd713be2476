"""Parts for genkit — an encoder and a decoder, a prior, a loss, a noise and a preset — using only genkit's API.

Installed, they are found through the entry points in ``pyproject.toml``; nothing here is imported until used.
"""

from genkit_example_parts.cutout import Cutout
from genkit_example_parts.elbo_l1 import L1ELBOConfig, L1ELBOLoss
from genkit_example_parts.laplace import LaplaceConfig, LaplacePrior
from genkit_example_parts.linear import LinearDecoder, LinearEncoder, LinearEncoderConfig
from genkit_example_parts.presets import laplace_vae

__all__ = [
    "Cutout",
    "L1ELBOConfig",
    "L1ELBOLoss",
    "LaplaceConfig",
    "LaplacePrior",
    "LinearDecoder",
    "LinearEncoder",
    "LinearEncoderConfig",
    "laplace_vae",
]
