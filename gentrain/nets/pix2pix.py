"""pix2pix's networks (Isola et al. 2017): the U-Net generator and the PatchGAN discriminator.

Layouts and initialisation follow the paper's appendix and its reference code: C64-…-C512
encoder, CD512-…-C64 decoder with skips, 70×70 PatchGAN for three strided layers, weights
N(0, 0.02). With batch norm the convolutions have no bias (the norm's shift replaces it).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gentrain.errors import require

NORMS = ("batch", "instance")
MAX_MULTIPLIER = 8  # widths stop doubling at 8 × base (C512 for base 64)
DROPOUT_BLOCKS = 3  # decoder blocks with dropout, next to the innermost (the paper's CD512 ×3)


def _norm(kind: str, channels: int) -> nn.Module:
    require(kind in NORMS, f"model.norm={kind!r} is not one of {', '.join(NORMS)}.")
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)


def init_weights(module: nn.Module) -> None:
    """The reference initialisation: convolutions N(0, 0.02), norm scales N(1, 0.02)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class SkipBlock(nn.Module):
    """One U-Net level: down-convolve, run the inner levels, up-convolve, concatenate the input.

    ``inner`` is None at the innermost level; the outermost level maps to the output image.
    """

    def __init__(
        self, outer: int, width: int, inner: nn.Module | None, *, norm: str,
        dropout: float = 0.0, in_channels: int | None = None, out_channels: int | None = None,
    ) -> None:
        super().__init__()
        outermost, innermost = out_channels is not None, inner is None
        bias = norm == "instance"
        down: list[nn.Module] = [] if outermost else [nn.LeakyReLU(0.2)]
        down.append(nn.Conv2d(in_channels or outer, width, 4, 2, 1, bias=bias))
        if not (outermost or innermost):
            down.append(_norm(norm, width))
        up_in = width if innermost else 2 * width
        up: list[nn.Module] = [nn.ReLU()]
        if outermost:
            up += [nn.ConvTranspose2d(up_in, out_channels, 4, 2, 1), nn.Tanh()]  # type: ignore[arg-type]
        else:
            up += [nn.ConvTranspose2d(up_in, outer, 4, 2, 1, bias=bias), _norm(norm, outer)]
            if dropout > 0:
                up.append(nn.Dropout(dropout))
        self.outermost = outermost
        self.down, self.inner, self.up = nn.Sequential(*down), inner, nn.Sequential(*up)

    def forward(self, x: Tensor) -> Tensor:
        h = self.down(x)
        if self.inner is not None:
            h = self.inner(h)
        h = self.up(h)
        return h if self.outermost else torch.cat([x, h], dim=1)


class UNetGenerator(nn.Module):
    """The pix2pix U-Net: ``num_down`` levels (log2 of the side: 8 at 256 px, 5 at 32 px).

    Sides that are not a power of two (28 px) are padded up and the output cropped back.
    """

    def __init__(
        self, in_channels: int, out_channels: int, resolution: int, *, base_channels: int = 64,
        norm: str = "batch", dropout: float = 0.5, num_down: int | None = None,
    ) -> None:
        super().__init__()
        self.resolution = resolution
        self.padded = 2 ** math.ceil(math.log2(resolution))
        num_down = num_down or int(math.log2(self.padded))
        require(1 <= num_down <= math.log2(self.padded),
                f"model.num_down={num_down} must be between 1 and {int(math.log2(self.padded))} "
                f"for {resolution} px images (each level halves the side).")

        def width(depth: int) -> int:
            return base_channels * min(2**depth, MAX_MULTIPLIER)

        block: nn.Module | None = None
        for depth in range(num_down - 1, 0, -1):  # from the innermost level outwards
            level_from_inner = num_down - 1 - depth
            drop = dropout if 1 <= level_from_inner <= DROPOUT_BLOCKS else 0.0
            block = SkipBlock(width(depth - 1), width(depth), block, norm=norm, dropout=drop)
        self.net = SkipBlock(out_channels, width(0), block, norm=norm,
                             in_channels=in_channels, out_channels=out_channels)
        init_weights(self)

    def forward(self, source: Tensor) -> Tensor:
        pad = self.padded - self.resolution
        if pad:
            source = F.pad(source, (pad // 2, pad - pad // 2, pad // 2, pad - pad // 2),
                           mode="reflect")
        out = self.net(source)
        if pad:
            keep = slice(pad // 2, pad // 2 + self.resolution)
            out = out[..., keep, keep]
        return out


class PatchDiscriminator(nn.Module):
    """PatchGAN: one logit per overlapping patch of the (source, image) pair, 70×70 for three
    strided layers."""

    def __init__(
        self, in_channels: int, *, base_channels: int = 64, num_layers: int = 3,
        norm: str = "batch",
    ) -> None:
        super().__init__()
        require(num_layers >= 1, f"model.d_layers must be at least 1, not {num_layers}.")
        bias = norm == "instance"
        layers: list[nn.Module] = [nn.Conv2d(in_channels, base_channels, 4, 2, 1),
                                   nn.LeakyReLU(0.2)]
        width = base_channels
        for n in range(1, num_layers + 1):
            wider = base_channels * min(2**n, MAX_MULTIPLIER)
            stride = 2 if n < num_layers else 1
            layers += [nn.Conv2d(width, wider, 4, stride, 1, bias=bias), _norm(norm, wider),
                       nn.LeakyReLU(0.2)]
            width = wider
        layers.append(nn.Conv2d(width, 1, 4, 1, 1))
        self.net = nn.Sequential(*layers)
        init_weights(self)

    def forward(self, pair: Tensor) -> Tensor:
        return self.net(pair)


def receptive_field(num_layers: int) -> int:
    """Side of the input patch one PatchGAN logit sees (70 for three strided layers)."""
    layers = [(4, 2)] * num_layers + [(4, 1), (4, 1)]  # (kernel, stride), input to output
    field = 1
    for kernel, stride in reversed(layers):
        field = (field - 1) * stride + kernel
    return field
