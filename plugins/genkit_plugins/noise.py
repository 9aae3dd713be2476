"""The built-in noise transforms (``genkit.noise`` entry points)."""

from __future__ import annotations

import torch
from torch import Tensor

from genkit import NoiseTransform, normal_like, uniform_like


class GaussianNoise(NoiseTransform):
    """Additive Gaussian noise of standard deviation σ."""

    level_name = "sigma"

    def corrupt(self, x: Tensor, generator: torch.Generator | None) -> Tensor:
        return x + self.level * normal_like(x, generator)


class SaltAndPepper(NoiseTransform):
    """Each pixel set to 0 or 1 (equally likely) with probability p."""

    level_range = (0.0, 1.0)
    level_name = "p"

    def corrupt(self, x: Tensor, generator: torch.Generator | None) -> Tensor:
        hit = uniform_like(x, generator) < self.level
        salt = uniform_like(x, generator) < 0.5
        return torch.where(hit, salt.to(x.dtype), x)


class Masking(NoiseTransform):
    """Each pixel dropped to 0 with probability p (dropout noise)."""

    level_range = (0.0, 1.0)
    level_name = "p"

    def corrupt(self, x: Tensor, generator: torch.Generator | None) -> Tensor:
        return x * (uniform_like(x, generator) >= self.level).to(x.dtype)


class SpeckleNoise(NoiseTransform):
    """Multiplicative noise x + x·n, n ~ N(0, σ²)."""

    level_name = "sigma"

    def corrupt(self, x: Tensor, generator: torch.Generator | None) -> Tensor:
        return x + x * self.level * normal_like(x, generator)
