"""genkit's conformance suites applied to this package's parts, as installed (found through the entry points)."""

from typing import Any, ClassVar

import torch

import genkit
from genkit.testing import DecoderConformance, EncoderConformance, LossConformance, ModelConformance, PriorConformance


class TestLinearEncoder(EncoderConformance):
    part_name = "linear"


class TestLinearDecoder(DecoderConformance):
    part_name = "linear"


class TestLaplacePrior(PriorConformance):
    part_name = "laplace"


class TestLearnedLaplacePrior(PriorConformance):
    part_name = "laplace"
    options: ClassVar[dict[str, Any]] = {"scale": 0.5, "learn_scale": True}


class TestL1ELBO(LossConformance):
    part_name = "elbo-l1"
    options: ClassVar[dict[str, Any]] = {"beta": 0.5}


class TestLaplaceVAE(ModelConformance):  # the preset: genkit's conv nets with the prior and loss above
    model_name = "laplace-vae"


def test_cutout_blanks_one_square_per_image_reproducibly():
    noise = genkit.get_noise("cutout:0.5")
    clean = torch.ones(4, 1, 28, 28)
    noisy = noise(clean, genkit.seeded_generator(0))
    assert ((noisy == 0).flatten(1).sum(1) == 14 * 14).all()
    assert torch.equal(noisy, noise(clean, genkit.seeded_generator(0)))
