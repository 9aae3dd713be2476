"""Cutout noise, registered as ``cutout`` in ``genkit.noise``: a blank square at a random place in each image."""

from __future__ import annotations

import torch
from torch import Tensor

from genkit import NoiseTransform


class Cutout(NoiseTransform):
    """A square of side p times the image's side, at a random place in each image, set to 0 (occlusion)."""

    level_range = (0.0, 1.0)  # `genkit run --noise cutout:2` is refused, naming the range
    level_name = "p"

    def corrupt(self, x: Tensor, generator: torch.Generator | None) -> Tensor:
        n, _, height, width = x.shape
        rows, cols = round(self.level * height), round(self.level * width)
        # One corner per image, drawn from the generator only: the same seed blanks the same squares.
        corner = torch.rand(2, n, 1, generator=generator, device=x.device)
        top = (corner[0] * (height - rows + 1)).long()
        left = (corner[1] * (width - cols + 1)).long()
        row, col = torch.arange(height, device=x.device), torch.arange(width, device=x.device)
        inside_rows = (row >= top) & (row < top + rows)  # (n, height)
        inside_cols = (col >= left) & (col < left + cols)  # (n, width)
        square = inside_rows[:, None, :, None] & inside_cols[:, None, None, :]
        return x.masked_fill(square, 0.0)
