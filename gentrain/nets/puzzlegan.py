"""Puzzle-GAN's networks (Lee et al. 2018): a part encoder shared by the key patches, a mask
decoder and an image decoder, U-Net style.

Each level halves the side with a 4x4 stride-2 convolution down to a 4x4 map; a 4x4 valid
convolution then gives the patch's embedding (``embed_dim``). The encoder is run on all K
patches at once and each level is summed over the patches, so the encoding does not depend on
their order (batch norm statistics are over the whole stack, also order-free). The mask
decoder grows the embedding back to full size, concatenating the summed encoder features of
each side (skips), and ends in a sigmoid; the image decoder grows [embedding; z] the same way,
concatenating the mask decoder's features of each side (which hold the encoder's too), and
ends in tanh. Widths double from ``base_channels`` per level up to 8x, DCGAN-style: batch norm
everywhere except on the encoder's input layer and the outputs, LeakyReLU(0.2) down, ReLU up,
N(0, 0.02) weights. The discriminator is DCGAN's (gentrain.nets.gan).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from gentrain.errors import require
from gentrain.nets.init import normal_init

SIDES = (16, 32, 64, 128)


def widths(resolution: int, base_channels: int) -> list[int]:
    """The width of each level, from the first (side/2) down to the 4x4 one."""
    require(resolution in SIDES, f"The Puzzle-GAN networks are built for sides of "
            f"{', '.join(map(str, SIDES))} px, not {resolution}; set data.resolution to one.")
    levels = int(math.log2(resolution)) - 2
    return [base_channels * 2 ** min(3, i) for i in range(levels)]


def _up(cin: int, cout: int, first: bool = False) -> nn.Sequential:
    conv = nn.ConvTranspose2d(cin, cout, 4, 1, 0) if first else nn.ConvTranspose2d(cin, cout, 4,
                                                                                    2, 1)
    return nn.Sequential(conv, nn.BatchNorm2d(cout), nn.ReLU())


class PartEncoder(nn.Module):
    """patches (B, K, C, H, W) -> the features of every level summed over the K patches:
    [side/2, ..., 4x4 maps, the (B, embed_dim, 1, 1) embedding]."""

    def __init__(self, channels: int, resolution: int, base_channels: int = 64,
                 embed_dim: int = 128) -> None:
        super().__init__()
        w = widths(resolution, base_channels)
        layers = [nn.Sequential(nn.Conv2d(channels, w[0], 4, 2, 1), nn.LeakyReLU(0.2))]
        for cin, cout in zip(w, w[1:], strict=False):
            layers.append(nn.Sequential(nn.Conv2d(cin, cout, 4, 2, 1, bias=False),
                                        nn.BatchNorm2d(cout), nn.LeakyReLU(0.2)))
        layers.append(nn.Sequential(nn.Conv2d(w[-1], embed_dim, 4), nn.LeakyReLU(0.2)))
        self.levels = nn.ModuleList(layers)
        normal_init(self)

    def forward(self, patches: Tensor) -> list[Tensor]:
        b, k = patches.shape[:2]
        out, summed = patches.flatten(0, 1), []
        for level in self.levels:
            out = level(out)
            summed.append(out.unflatten(0, (b, k)).sum(dim=1))
        return summed


class MaskDecoder(nn.Module):
    """The encoder's features -> (mask (B, 1, H, W) in [0, 1], the features of every side from
    4x4 up, each concatenated with the encoder's of that side)."""

    def __init__(self, resolution: int, base_channels: int = 64, embed_dim: int = 128) -> None:
        super().__init__()
        w = widths(resolution, base_channels)
        self.first = _up(embed_dim, w[-1], first=True)
        self.ups = nn.ModuleList(_up(2 * w[i], w[i - 1]) for i in range(len(w) - 1, 0, -1))
        self.out = nn.ConvTranspose2d(2 * w[0], 1, 4, 2, 1)
        normal_init(self)

    def forward(self, encoded: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        skips = encoded[-2::-1]  # the encoder's maps from 4x4 up
        h = torch.cat([self.first(encoded[-1]), skips[0]], dim=1)
        features = [h]
        for up, skip in zip(self.ups, skips[1:], strict=True):
            h = torch.cat([up(h), skip], dim=1)
            features.append(h)
        return torch.sigmoid(self.out(h)), features


class ImageDecoder(nn.Module):
    """[embedding; z] and the mask decoder's features -> image (B, C, H, W) in [-1, 1]."""

    def __init__(self, channels: int, resolution: int, base_channels: int = 64,
                 embed_dim: int = 128, latent_dim: int = 128) -> None:
        super().__init__()
        w = widths(resolution, base_channels)
        self.first = _up(embed_dim + latent_dim, w[-1], first=True)
        self.ups = nn.ModuleList(_up(3 * w[i], w[i - 1]) for i in range(len(w) - 1, 0, -1))
        self.out = nn.ConvTranspose2d(3 * w[0], channels, 4, 2, 1)
        normal_init(self)

    def forward(self, embedding: Tensor, z: Tensor, mask_features: list[Tensor]) -> Tensor:
        h = self.first(torch.cat([embedding, z[:, :, None, None]], dim=1))
        h = torch.cat([h, mask_features[0]], dim=1)
        for up, skip in zip(self.ups, mask_features[1:], strict=True):
            h = torch.cat([up(h), skip], dim=1)
        return torch.tanh(self.out(h))
