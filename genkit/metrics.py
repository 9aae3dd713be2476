"""Image-quality metrics on [0, 1] images: reconstruction MSE and PSNR (data range 1.0)."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def mse(output: Tensor, target: Tensor) -> float:
    """Mean squared error per pixel."""
    return torch.mean((output.float() - target.float()) ** 2).item()


def mean_image_mse(images: Tensor) -> float:
    """The MSE of the best constant guess, the mean image (each pixel's variance, averaged): a model that
    reconstructs no better learned nothing."""
    return images.float().var(0, correction=0).mean().item()


def psnr(output: Tensor, target: Tensor, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB over a batch: per-image PSNR, averaged over images."""
    per_image = ((output.float() - target.float()) ** 2).flatten(1).mean(1).clamp_min(1e-12)
    return torch.mean(10.0 * torch.log10(data_range**2 / per_image)).item()


def psnr_from_mse(value: float, data_range: float = 1.0) -> float:
    """PSNR in dB of a mean squared error."""
    return 10.0 * math.log10(data_range**2 / max(value, 1e-12))
