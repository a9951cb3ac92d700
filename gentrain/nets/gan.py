"""GAN generators and discriminators sized from the data: DCGAN and SNGAN-style ResNets.

DCGAN follows Radford et al.'s rules: strided (transposed) convolutions instead of pooling,
batch norm in G and in D (not on G's output nor D's input layer), ReLU in G with a tanh
output, LeakyReLU(0.2) in D, no fully connected hidden layers, weights N(0, 0.02). The ResNets
are the CIFAR-10 networks of Gulrajani et al. (WGAN-GP) and Miyato et al. (SNGAN).

Conditional models embed the label in G (concatenated to z for DCGAN, class-conditional batch
norm for the ResNet) and use a projection discriminator (Miyato & Koyama 2018): the logit is
ψ(φ(x)) + ⟨embed(y), φ(x)⟩ with φ(x) the spatially summed last features.

28 px images (MNIST) are handled at 32 px: G crops its output to the centre 28×28 and D pads
its input with -1 (black, the digits' background in [-1, 1]).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm as sn

from gentrain.errors import GentrainError, require

ARCHS = ("dcgan", "resnet")
D_NORMS = ("batch", "layer", "none")
SIZES = (16, 28, 32, 64, 128)
DEFAULT_WIDTH = {"dcgan": 64, "resnet": 128}


def _working_side(resolution: int) -> int:
    return 32 if resolution == 28 else resolution


def _crop(images: Tensor, resolution: int) -> Tensor:
    margin = (images.shape[-1] - resolution) // 2
    return images[..., margin : margin + resolution, margin : margin + resolution]


def _pad(images: Tensor, side: int) -> Tensor:
    margin = (side - images.shape[-1]) // 2
    return F.pad(images, (margin,) * 4, value=-1.0) if margin else images


def _d_norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "layer":
        return nn.GroupNorm(1, channels)  # per-sample: keeps WGAN-GP's penalty per sample
    return nn.Identity()


def _dcgan_init(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d | nn.Linear | nn.Embedding):
            nn.init.normal_(m.weight, 0.0, 0.02)
        elif isinstance(m, nn.BatchNorm2d | nn.GroupNorm) and m.weight is not None:
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class Projection(nn.Module):
    """The unconditional logit ψ(φ) plus, when conditional, the projection ⟨embed(y), φ⟩."""

    def __init__(self, features: int, num_classes: int, spectral: bool) -> None:
        super().__init__()
        wrap = sn if spectral else (lambda m: m)
        self.linear = wrap(nn.Linear(features, 1))
        self.embed = wrap(nn.Embedding(num_classes, features)) if num_classes else None

    def forward(self, features: Tensor, label: Tensor | None) -> Tensor:
        logit = self.linear(features).squeeze(1)
        if self.embed is not None:
            require(label is not None, "A conditional discriminator needs labels.")
            logit = logit + (self.embed(label) * features).sum(dim=1)
        return logit


class DCGANGenerator(nn.Module):
    """z (and label) → a 4×4 map by a transposed convolution, then ×2 per level to the side."""

    def __init__(
        self, latent_dim: int, channels: int, resolution: int, base_channels: int = 64,
        num_classes: int = 0,
    ) -> None:
        super().__init__()
        self.resolution = resolution
        levels = int(math.log2(_working_side(resolution))) - 2  # 4 → side
        self.embed = nn.Embedding(num_classes, latent_dim) if num_classes else None
        width = base_channels * 2 ** (levels - 1)
        in_dim = latent_dim * (2 if num_classes else 1)
        layers: list[nn.Module] = [nn.ConvTranspose2d(in_dim, width, 4, 1, 0, bias=False),
                                   nn.BatchNorm2d(width), nn.ReLU()]
        for _ in range(levels - 1):
            layers += [nn.ConvTranspose2d(width, width // 2, 4, 2, 1, bias=False),
                       nn.BatchNorm2d(width // 2), nn.ReLU()]
            width //= 2
        layers += [nn.ConvTranspose2d(width, channels, 4, 2, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        _dcgan_init(self)

    def forward(self, z: Tensor, label: Tensor | None = None) -> Tensor:
        if self.embed is not None:
            require(label is not None, "A conditional generator needs labels.")
            z = torch.cat([z, self.embed(label)], dim=1)
        return _crop(self.net(z[:, :, None, None]), self.resolution)


class DCGANDiscriminator(nn.Module):
    """Strided convolutions halving the side down to 4×4, then a 4×4 convolution's features
    into the (projection) logit."""

    def __init__(
        self, channels: int, resolution: int, base_channels: int = 64, num_classes: int = 0,
        norm: str = "batch", spectral: bool = False,
    ) -> None:
        super().__init__()
        self.side = _working_side(resolution)
        levels = int(math.log2(self.side)) - 2
        wrap = sn if spectral else (lambda m: m)
        width = base_channels
        layers: list[nn.Module] = [wrap(nn.Conv2d(channels, width, 4, 2, 1)), nn.LeakyReLU(0.2)]
        for _ in range(levels - 1):
            layers += [wrap(nn.Conv2d(width, width * 2, 4, 2, 1, bias=norm == "none")),
                       _d_norm(norm, width * 2), nn.LeakyReLU(0.2)]
            width *= 2
        self.features = nn.Sequential(*layers)
        self.head = Projection(width * 16, num_classes, spectral)  # the 4×4 "convolution"
        _dcgan_init(self)

    def forward(self, x: Tensor, label: Tensor | None = None) -> Tensor:
        return self.head(self.features(_pad(x, self.side)).flatten(1), label)


class ConditionalBatchNorm(nn.Module):
    """Batch norm whose scale and shift depend on the class (1 and 0 at initialisation)."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(channels, affine=num_classes == 0)
        self.gain = nn.Embedding(num_classes, channels) if num_classes else None
        self.bias = nn.Embedding(num_classes, channels) if num_classes else None
        if self.gain is not None and self.bias is not None:
            nn.init.ones_(self.gain.weight)
            nn.init.zeros_(self.bias.weight)

    def forward(self, x: Tensor, label: Tensor | None) -> Tensor:
        h = self.norm(x)
        if self.gain is None or self.bias is None:
            return h
        require(label is not None, "A conditional generator needs labels.")
        return h * self.gain(label)[:, :, None, None] + self.bias(label)[:, :, None, None]


class UpBlock(nn.Module):
    """BN-ReLU-up-conv3-BN-ReLU-conv3 with an upsampled 1×1 shortcut."""

    def __init__(self, width: int, num_classes: int) -> None:
        super().__init__()
        self.bn1, self.bn2 = (ConditionalBatchNorm(width, num_classes) for _ in range(2))
        self.conv1, self.conv2 = (nn.Conv2d(width, width, 3, 1, 1) for _ in range(2))
        self.shortcut = nn.Conv2d(width, width, 1)

    def forward(self, x: Tensor, label: Tensor | None) -> Tensor:
        h = F.interpolate(F.relu(self.bn1(x, label)), scale_factor=2)
        h = self.conv2(F.relu(self.bn2(self.conv1(h), label)))
        return h + self.shortcut(F.interpolate(x, scale_factor=2))


class DownBlock(nn.Module):
    """(ReLU-)conv3-ReLU-conv3(-avgpool) with a 1×1 shortcut; ``first`` is SNGAN's optimised
    input block (no leading ReLU, shortcut pooled first)."""

    def __init__(self, in_width: int, width: int, *, down: bool, first: bool,
                 spectral: bool) -> None:
        super().__init__()
        wrap = sn if spectral else (lambda m: m)
        self.conv1 = wrap(nn.Conv2d(in_width, width, 3, 1, 1))
        self.conv2 = wrap(nn.Conv2d(width, width, 3, 1, 1))
        learnable = down or in_width != width
        self.shortcut = wrap(nn.Conv2d(in_width, width, 1)) if learnable else None
        self.down, self.first = down, first

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv2(F.relu(self.conv1(x if self.first else F.relu(x))))
        if self.down:
            h = F.avg_pool2d(h, 2)
        skip = x
        if self.first:
            skip = self.shortcut(F.avg_pool2d(x, 2))  # type: ignore[misc]
        elif self.shortcut is not None:
            skip = self.shortcut(x)
            skip = F.avg_pool2d(skip, 2) if self.down else skip
        return h + skip


class ResNetGenerator(nn.Module):
    """Linear z → 4×4, one up-sampling residual block per doubling, BN-ReLU-conv3-tanh."""

    def __init__(
        self, latent_dim: int, channels: int, resolution: int, base_channels: int = 128,
        num_classes: int = 0,
    ) -> None:
        super().__init__()
        self.resolution, self.width = resolution, base_channels
        levels = int(math.log2(_working_side(resolution))) - 2
        self.linear = nn.Linear(latent_dim, 4 * 4 * base_channels)
        self.blocks = nn.ModuleList(UpBlock(base_channels, num_classes) for _ in range(levels))
        self.out = nn.Sequential(nn.BatchNorm2d(base_channels), nn.ReLU(),
                                 nn.Conv2d(base_channels, channels, 3, 1, 1), nn.Tanh())

    def forward(self, z: Tensor, label: Tensor | None = None) -> Tensor:
        h = self.linear(z).view(-1, self.width, 4, 4)
        for block in self.blocks:
            h = block(h, label)
        return _crop(self.out(h), self.resolution)


class ResNetDiscriminator(nn.Module):
    """The optimised block, down blocks to 8×8, two blocks at 8×8, ReLU, sum pool, logit."""

    def __init__(
        self, channels: int, resolution: int, base_channels: int = 128, num_classes: int = 0,
        spectral: bool = True,
    ) -> None:
        super().__init__()
        self.side = _working_side(resolution)
        downs = int(math.log2(self.side)) - 3  # to 8×8
        blocks = [DownBlock(channels, base_channels, down=True, first=True, spectral=spectral)]
        blocks += [DownBlock(base_channels, base_channels, down=True, first=False,
                             spectral=spectral) for _ in range(downs - 1)]
        blocks += [DownBlock(base_channels, base_channels, down=False, first=False,
                             spectral=spectral) for _ in range(2)]
        self.blocks = nn.Sequential(*blocks)
        self.head = Projection(base_channels, num_classes, spectral)

    def forward(self, x: Tensor, label: Tensor | None = None) -> Tensor:
        h = F.relu(self.blocks(_pad(x, self.side)))
        return self.head(h.sum(dim=(2, 3)), label)


def build_gan_networks(
    arch: str, latent_dim: int, channels: int, height: int, width: int, num_classes: int,
    base_channels: int | None, d_norm: str, spectral_norm: bool,
) -> tuple[nn.Module, nn.Module]:
    """(generator, discriminator) for ``arch`` at the data's size."""
    if arch not in ARCHS:
        raise GentrainError(f"model.arch={arch!r} is not one of {', '.join(ARCHS)}.")
    require(height == width and height in SIZES,
            f"The GAN networks are built for square {', '.join(map(str, SIZES))} px images "
            f"(28 is padded to 32); the data is {height}x{width}. Set data.resolution to one "
            "of them.")
    require(d_norm in D_NORMS, f"model.d_norm={d_norm!r} is not one of {', '.join(D_NORMS)}.")
    base = base_channels or DEFAULT_WIDTH[arch]
    if arch == "dcgan":
        return (DCGANGenerator(latent_dim, channels, height, base, num_classes),
                DCGANDiscriminator(channels, height, base, num_classes, d_norm, spectral_norm))
    require(d_norm == "none", f"model.arch=resnet has no normalisation in D (spectral norm "
            f"or the gradient penalty constrain it); model.d_norm={d_norm!r} must be none or auto.")
    return (ResNetGenerator(latent_dim, channels, height, base, num_classes),
            ResNetDiscriminator(channels, height, base, num_classes, spectral_norm))
