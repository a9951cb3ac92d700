"""Pixel statistics of samples that need no judge: the brightness of each image's border and
the colour moments of each image.

A generator can draw the right objects on the wrong ground (a diffusion model's low-frequency
error shows first as a bright or saturated background where the data's is dark). The border,
the one-pixel frame of the image, is background in most object datasets; its brightness is the
HSV value (the largest of R, G, B) averaged over the frame. The distance between the samples'
and the data's distributions of it is the 1-Wasserstein distance of the two empirical
distributions, in brightness units (0..1).

A judge trained to name shapes or digits is blind to colour by design, so a generator whose
samples all take one hue can score a low judge distance. Each image's colour moments, the mean
and standard deviation of each of R, G and B over its pixels (in [0, 1]), catch that: the
Fréchet distance between the samples' and the data's Gaussians of them is ``colour_fd``.
"""

from __future__ import annotations

import torch
from torch import Tensor

QUANTILES = 1000  # the quantile functions are compared at this many evenly spaced levels


def border_brightness(pixels: Tensor) -> Tensor:
    """Per image (B,): the mean HSV value of the one-pixel frame of uint8 (B, C, H, W) images,
    in [0, 1]."""
    value = pixels.float().amax(dim=1) / 255  # (B, H, W)
    frame = torch.cat([value[:, 0, :], value[:, -1, :], value[:, 1:-1, 0], value[:, 1:-1, -1]],
                      dim=1)
    return frame.mean(dim=1)


def colour_moments(pixels: Tensor) -> Tensor:
    """Per image (B, 2C): the mean and the standard deviation of each channel of uint8
    (B, C, H, W) images over their pixels, in [0, 1]."""
    values = pixels.float().flatten(2) / 255
    return torch.cat([values.mean(dim=2), values.std(dim=2)], dim=1)


def wasserstein_1d(a: Tensor, b: Tensor) -> float:
    """W1 between the empirical distributions of the values ``a`` and ``b`` (any counts): the
    mean absolute difference of their quantile functions."""
    levels = (torch.arange(QUANTILES, dtype=torch.float64) + 0.5) / QUANTILES
    qa = torch.quantile(a.double().flatten().cpu(), levels)
    qb = torch.quantile(b.double().flatten().cpu(), levels)
    return float((qa - qb).abs().mean())
