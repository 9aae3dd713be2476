"""Noise-injection transforms: corrupt a batch of [0, 1] images for denoising training and evaluation."""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor

from genkit.errors import ConfigError


class NoiseTransform:
    """Base of the ``genkit.noise`` plugins: ``transform(x, generator)`` returns a corrupted copy in [0, 1].

    Subclasses implement ``corrupt``; ``level`` is the noise's one parameter (σ or p).
    """

    #: inclusive bounds of ``level`` (a probability is capped at 1).
    level_range: ClassVar[tuple[float, float]] = (0.0, math.inf)
    #: what ``level`` means, for help texts.
    level_name: ClassVar[str] = "level"
    name: str = ""

    def __init__(self, level: float) -> None:
        low, high = self.level_range
        if isinstance(level, bool) or not isinstance(level, (int, float)) or not (low <= level <= high):
            raise ConfigError(f"{type(self).__name__} {self.level_name} must be in [{low}, {high}], got {level!r}")
        self.level = float(level)

    def corrupt(self, x: Tensor, generator: torch.Generator | None) -> Tensor:  # pragma: no cover
        """The corrupted batch (before clipping); draw all randomness from ``generator``."""
        raise NotImplementedError

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return self.corrupt(x, generator).clamp_(0.0, 1.0)

    @property
    def spec(self) -> str:
        return f"{self.name}:{self.level:g}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.level_name}={self.level:g})"


def uniform_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    """Uniform [0, 1) noise shaped like ``x``, on its device, from ``generator`` when given."""
    return torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def normal_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard normal noise shaped like ``x``, on its device, from ``generator`` when given."""
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def seeded_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator on ``device`` seeded with ``seed``, for reproducible noise and sampling."""
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator
