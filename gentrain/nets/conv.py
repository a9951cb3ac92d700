"""Convolutional encoder and decoder stacks sized from an image's (channels, height, width).

Both pad the image side up to a multiple of ``2 ** num_down`` (28 -> 32 for MNIST), so every
stride-2 step halves an even size; the decoder crops its output back to exactly
``height x width``. Families wrap these stacks with their own heads and losses.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from gentrain.errors import require

MAX_WIDTH_MULTIPLIER = 4  # channels double per level up to this multiple of base_channels
TARGET_BOTTLENECK = 4  # default_num_down aims for a bottleneck side of at most this


def level_channels(base_channels: int, level: int) -> int:
    """Channel width at resolution level ``level`` (0 = full resolution)."""
    return base_channels * min(2**level, MAX_WIDTH_MULTIPLIER)


def default_num_down(height: int, width: int) -> int:
    """Fewest halvings (at least one) that bring the shorter padded side to <= 4 pixels."""
    num_down = 1
    while math.ceil(min(height, width) / 2**num_down) > TARGET_BOTTLENECK:
        num_down += 1
    return num_down


def checked_num_down(num_down: int | None, height: int, width: int) -> int:
    """``num_down`` (None: :func:`default_num_down`), or a clear error if it does not fit."""
    if num_down is None:
        return default_num_down(height, width)
    require(
        num_down >= 1 and 2 ** (num_down - 1) < min(height, width),
        f"model.num_down={num_down} does not fit {height}x{width} images: each "
        "halving needs a side longer than one pixel; leave it unset (null) to derive it.",
    )
    return num_down


def padding(size: int, num_down: int) -> tuple[int, int]:
    """Pixels to add before and after a side of ``size`` to make it divisible by 2**num_down."""
    step = 2**num_down
    extra = math.ceil(size / step) * step - size
    return extra // 2, extra - extra // 2


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(channels, 8), channels)


class ResBlock(nn.Module):
    """Pre-activation residual block (GroupNorm, SiLU, 3x3 conv, twice) at constant width."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _norm(channels),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            _norm(channels),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class ConvEncoder(nn.Module):
    """(B, in_channels, height, width) images -> (B, out_features) vectors."""

    def __init__(
        self,
        in_channels: int,
        base_channels: int,
        num_down: int,
        out_features: int,
        height: int,
        width: int,
    ) -> None:
        super().__init__()
        (top, bottom), (left, right) = padding(height, num_down), padding(width, num_down)
        self.pad = (left, right, top, bottom)
        layers: list[nn.Module] = [nn.Conv2d(in_channels, base_channels, 3, padding=1)]
        for level in range(num_down):
            channels = level_channels(base_channels, level)
            layers += [
                ResBlock(channels),
                nn.Conv2d(channels, level_channels(base_channels, level + 1), 3, 2, padding=1),
            ]
        channels = level_channels(base_channels, num_down)
        side_h = (height + top + bottom) // 2**num_down
        side_w = (width + left + right) // 2**num_down
        layers += [
            ResBlock(channels),
            _norm(channels),
            nn.SiLU(),
            nn.Flatten(),
            nn.Linear(channels * side_h * side_w, out_features),
        ]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(F.pad(x, self.pad))


class ConvDecoder(nn.Module):
    """(B, in_features) vectors -> (B, out_channels, height, width) maps, mirroring ConvEncoder."""

    def __init__(
        self,
        in_features: int,
        base_channels: int,
        num_up: int,
        out_channels: int,
        height: int,
        width: int,
    ) -> None:
        super().__init__()
        (top, bottom), (left, right) = padding(height, num_up), padding(width, num_up)
        self.crop = (top, left, height, width)
        channels = level_channels(base_channels, num_up)
        side_h = (height + top + bottom) // 2**num_up
        side_w = (width + left + right) // 2**num_up
        layers: list[nn.Module] = [
            nn.Linear(in_features, channels * side_h * side_w),
            nn.Unflatten(1, (channels, side_h, side_w)),
            ResBlock(channels),
        ]
        for level in reversed(range(num_up)):
            channels = level_channels(base_channels, level)
            layers += [
                nn.Upsample(scale_factor=2, mode="nearest"),
                nn.Conv2d(level_channels(base_channels, level + 1), channels, 3, padding=1),
                ResBlock(channels),
            ]
        layers += [
            _norm(base_channels),
            nn.SiLU(),
            nn.Conv2d(base_channels, out_channels, 3, padding=1),
        ]
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        top, left, height, width = self.crop
        return self.net(z)[:, :, top : top + height, left : left + width]
