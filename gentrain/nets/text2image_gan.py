"""GAN-INT-CLS's networks (Reed et al. 2016): DCGAN's G and D, each conditioned on a caption's
embedding through a projection of its own.

Both compress the embedding to ``projection_dim`` (the paper's 128) with a linear layer and
LeakyReLU(0.2) (D's with batch norm between them, as in the authors' code, reedscot/icml2016).
G concatenates it with z and runs DCGAN's generator on the result. D runs DCGAN's convolutions
down to a 4x4 map, tiles the compressed embedding over the 4x4 positions, concatenates it to
the map's channels, mixes them with a 1x1 conv (then batch norm and LeakyReLU), and ends with
DCGAN's 4x4 conv to the logit: the image and the text meet only after the image has been
reduced to features, so D can tell whether they match.

The authors' "v2" networks add a residual block at 4x4 and 8x8 in G and at 4x4 in D; these are
the paper's plain DCGAN ones.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from gentrain.nets.gan import DCGANDiscriminator, DCGANGenerator
from gentrain.nets.init import normal_init


def text_projection(text_dim: int, projection_dim: int, norm: bool = False) -> nn.Sequential:
    """The embedding compressed to ``projection_dim``: linear, (batch norm,) LeakyReLU(0.2)."""
    return nn.Sequential(nn.Linear(text_dim, projection_dim, bias=not norm),
                         nn.BatchNorm1d(projection_dim) if norm else nn.Identity(),
                         nn.LeakyReLU(0.2))


class TextGenerator(nn.Module):
    """(z (B, latent_dim), embedding (B, text_dim)) -> images (B, channels, side, side) in
    [-1, 1]: DCGAN's generator of [z, projection(embedding)]."""

    def __init__(self, latent_dim: int, text_dim: int, projection_dim: int, channels: int,
                 resolution: int, base_channels: int) -> None:
        super().__init__()
        self.text = text_projection(text_dim, projection_dim)
        self.image = DCGANGenerator(latent_dim + projection_dim, channels, resolution,
                                    base_channels)

    def forward(self, z: Tensor, embedding: Tensor) -> Tensor:
        return self.image(torch.cat([z, self.text(embedding)], dim=1))


class TextDiscriminator(DCGANDiscriminator):
    """(images (B, channels, side, side), embedding (B, text_dim)) -> logits (B,).

    DCGAN's discriminator (batch norm, no class projection) whose head first joins the 4x4
    features with the tiled projection (linear, batch norm, LeakyReLU) of the embedding: a 1x1
    conv back to the features' width, batch norm, LeakyReLU(0.2), then DCGAN's 4x4 conv to
    the logit.
    """

    def __init__(self, channels: int, resolution: int, text_dim: int, projection_dim: int,
                 base_channels: int) -> None:
        super().__init__(channels, resolution, base_channels)
        width = self.feature_dim // 16  # the 4x4 map's channels
        self.text = text_projection(text_dim, projection_dim, norm=True)
        self.joint = nn.Sequential(nn.Conv2d(width + projection_dim, width, 1, bias=False),
                                   nn.BatchNorm2d(width), nn.LeakyReLU(0.2))
        normal_init(self.joint)

    def forward(self, x: Tensor, embedding: Tensor) -> Tensor:  # type: ignore[override]
        h = self.body(x)
        text = self.text(embedding)[:, :, None, None].expand(-1, -1, *h.shape[2:])
        return self.out(self.joint(torch.cat([h, text], dim=1))).flatten()
