"""Progressive GAN's networks (Karras et al. 2018), as in the official code (``networks.py``,
``G_paper`` / ``D_paper``, non-fused scaling).

Both hold a block per resolution from 4x4 to the data's, and run only up to the resolution
being trained: ``level`` is the index of the newest block (0: 4x4), ``fade`` its weight against
the path it replaces (G: the previous block's toRGB, nearest-upsampled; D: the 2x2 average-pooled
image through the previous fromRGB). Every layer has an equalized learning rate: weights drawn
from N(0, 1) and scaled at run time by gain / sqrt(fan_in), so Adam's step is the same size
for all of them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gentrain.errors import require

PIXEL_NORM_EPS = 1e-8
LEAKY_SLOPE = 0.2
HE_GAIN = math.sqrt(2)


def channels_at(stage: int, fmap_base: int, fmap_max: int, fmap_decay: float = 1.0) -> int:
    """The official ``nf(stage)``: feature maps of the block at side 2**(stage + 1)."""
    return min(int(fmap_base / 2.0 ** (stage * fmap_decay)), fmap_max)


def pixel_norm(x: Tensor, eps: float = PIXEL_NORM_EPS) -> Tensor:
    """Each pixel's feature vector scaled to unit mean square (over channels, dim 1)."""
    return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + eps)


def upsample(x: Tensor, factor: int = 2) -> Tensor:
    return x if factor == 1 else F.interpolate(x, scale_factor=factor, mode="nearest")


def downsample(x: Tensor, factor: int = 2) -> Tensor:
    return x if factor == 1 else F.avg_pool2d(x, factor)


def minibatch_stddev(x: Tensor, group_size: int = 4) -> Tensor:
    """x with one more feature map: the standard deviation of each feature over a group of
    ``group_size`` samples, averaged over features and pixels (the official layer: sample i
    belongs to group i mod (N / group_size), the statistic is computed in fp32)."""
    n, c, h, w = x.shape
    group = min(group_size, n)
    require(n % group == 0,
            f"D's minibatch standard deviation splits each batch into groups of {group} "
            f"(model.minibatch_std_group={group_size}), but this batch has {n} images. Use a "
            "batch per rank (model.growth.batch_size, data.batch_size) that the group size "
            "divides, or another group size.")
    y = x.float().reshape(group, n // group, c, h, w)
    y = (y - y.mean(dim=0, keepdim=True)).pow(2).mean(dim=0)
    y = torch.sqrt(y + 1e-8).mean(dim=(1, 2, 3), keepdim=True).to(x.dtype)  # (N/G, 1, 1, 1)
    return torch.cat([x, y.repeat(group, 1, h, w)], dim=1)


class EqualizedConv2d(nn.Module):
    """A same-padded convolution whose effective weight is ``weight * gain / sqrt(fan_in)``."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int,
                 gain: float = HE_GAIN) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.scale = gain / math.sqrt(in_channels * kernel * kernel)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight * self.scale, self.bias, padding=self.weight.shape[-1] // 2)


class EqualizedLinear(nn.Module):
    """A dense layer whose effective weight is ``weight * gain / sqrt(fan_in)``.

    ``bias=False`` leaves the bias to the caller (G's first layer adds one per feature map
    after reshaping to 4x4, as the official code does)."""

    def __init__(self, in_features: int, out_features: int, gain: float = HE_GAIN,
                 bias: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self.scale = gain / math.sqrt(in_features)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.scale, self.bias)


def _act(x: Tensor) -> Tensor:
    return F.leaky_relu(x, LEAKY_SLOPE)


class GeneratorStem(nn.Module):
    """G's 4x4 block: the (normalised) latent through a dense layer to 4x4 maps, then a conv;
    pixel norm after each."""

    def __init__(self, latent_dim: int, channels: int) -> None:
        super().__init__()
        # The official gain sqrt(2)/4 ("to match the original Theano implementation").
        self.dense = EqualizedLinear(latent_dim, channels * 16, gain=HE_GAIN / 4, bias=False)
        self.bias = nn.Parameter(torch.zeros(channels))
        self.conv = EqualizedConv2d(channels, channels, 3)

    def forward(self, z: Tensor) -> Tensor:
        x = self.dense(pixel_norm(z)).reshape(z.shape[0], -1, 4, 4)
        x = pixel_norm(_act(x + self.bias.reshape(1, -1, 1, 1)))
        return pixel_norm(_act(self.conv(x)))


class GeneratorBlock(nn.Module):
    """Nearest 2x upsampling and two 3x3 convs, each followed by leaky ReLU and pixel norm."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv0 = EqualizedConv2d(in_channels, out_channels, 3)
        self.conv1 = EqualizedConv2d(out_channels, out_channels, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = pixel_norm(_act(self.conv0(upsample(x))))
        return pixel_norm(_act(self.conv1(x)))


class Generator(nn.Module):
    """z (B, latent_dim) -> images (B, C, 4 * 2**level, ...), linear output (the official G has
    no tanh; samples are clamped to [-1, 1] for display)."""

    def __init__(self, latent_dim: int, channels: int, resolution: int, fmap_base: int,
                 fmap_max: int, fmap_decay: float = 1.0) -> None:
        super().__init__()
        log2 = int(math.log2(resolution))
        nf = [channels_at(s, fmap_base, fmap_max, fmap_decay) for s in range(log2)]
        self.blocks = nn.ModuleList(
            [GeneratorStem(latent_dim, nf[1])]
            + [GeneratorBlock(nf[res - 2], nf[res - 1]) for res in range(3, log2 + 1)])
        self.to_rgb = nn.ModuleList(
            [EqualizedConv2d(nf[res - 1], channels, 1, gain=1.0) for res in range(2, log2 + 1)])

    def forward(self, z: Tensor, level: int, fade: float = 1.0) -> Tensor:
        x = previous = self.blocks[0](z)
        for block in self.blocks[1 : level + 1]:
            previous, x = x, block(x)
        image = self.to_rgb[level](x)
        if level > 0 and fade < 1:
            image = torch.lerp(upsample(self.to_rgb[level - 1](previous)), image, fade)
        return image


class DiscriminatorBlock(nn.Module):
    """Two 3x3 convs with leaky ReLU, then 2x2 average pooling."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv0 = EqualizedConv2d(in_channels, in_channels, 3)
        self.conv1 = EqualizedConv2d(in_channels, out_channels, 3)

    def forward(self, x: Tensor) -> Tensor:
        return downsample(_act(self.conv1(_act(self.conv0(x)))))


class DiscriminatorHead(nn.Module):
    """D's 4x4 block: minibatch standard deviation (one more map), a 3x3 conv, two dense
    layers to one score (the last with gain 1, linear)."""

    def __init__(self, channels: int, hidden: int, group_size: int) -> None:
        super().__init__()
        self.group_size = group_size
        self.conv = EqualizedConv2d(channels + (1 if group_size > 1 else 0), channels, 3)
        self.dense0 = EqualizedLinear(channels * 16, hidden)
        self.dense1 = EqualizedLinear(hidden, 1, gain=1.0)

    def forward(self, x: Tensor) -> Tensor:
        if self.group_size > 1:
            x = minibatch_stddev(x, self.group_size)
        x = _act(self.conv(x))
        return self.dense1(_act(self.dense0(x.flatten(1)))).squeeze(1)


class Discriminator(nn.Module):
    """Images (B, C, 4 * 2**level, ...) -> one score per image (B,)."""

    def __init__(self, channels: int, resolution: int, fmap_base: int, fmap_max: int,
                 fmap_decay: float = 1.0, group_size: int = 4) -> None:
        super().__init__()
        log2 = int(math.log2(resolution))
        nf = [channels_at(s, fmap_base, fmap_max, fmap_decay) for s in range(log2)]
        self.blocks = nn.ModuleList(
            [DiscriminatorHead(nf[1], nf[0], group_size)]
            + [DiscriminatorBlock(nf[res - 1], nf[res - 2]) for res in range(3, log2 + 1)])
        self.from_rgb = nn.ModuleList(
            [EqualizedConv2d(channels, nf[res - 1], 1) for res in range(2, log2 + 1)])

    def forward(self, image: Tensor, level: int, fade: float = 1.0) -> Tensor:
        x = _act(self.from_rgb[level](image))
        if level > 0:
            x = self.blocks[level](x)
            if fade < 1:
                x = torch.lerp(_act(self.from_rgb[level - 1](downsample(image))), x, fade)
        for block in reversed(self.blocks[1:level]):
            x = block(x)
        return self.blocks[0](x)
