"""pix2pix's networks (Isola et al. 2017): the U-Net generator and the PatchGAN discriminator.

Layouts and initialisation follow the paper's appendix and its reference code
(junyanz/pytorch-CycleGAN-and-pix2pix): encoder C64-C128-C256-C512-C512-C512-C512-C512,
decoder CD512-CD512-CD512-C512-C256-C128-C64 with skip connections at 256 px, 70x70 PatchGAN
for three strided layers, weights N(0, 0.02) and norm scales N(1, 0.02). With batch norm the
convolutions have no bias (the norm's shift replaces it), with instance norm (no affine) they
have one, as in the reference code, which also drops the bias of G's first conv.

Dropout follows the paper: the first three decoder blocks (the reference code shifts them one
block outwards, leaving the innermost without dropout and 32 px nets without any).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gentrain.errors import require
from gentrain.nets.conv import padding
from gentrain.nets.init import normal_init

NORMS = ("batch", "instance")
MAX_MULTIPLIER = 8  # widths stop doubling at 8 x base (C512 for base 64)
DROPOUT_BLOCKS = 3  # innermost decoder blocks with dropout (the paper's CD512 x3)


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)


def _check_norm(norm: str) -> None:
    require(norm in NORMS, f"model.norm={norm!r} is not one of {', '.join(NORMS)}.")


class SkipBlock(nn.Module):
    """One U-Net level, built from the inside out as in the reference: down-conv, the inner
    levels, up-conv, then the level's input concatenated to the result (the skip connection).

    The outermost level (``out_channels`` given) maps to the image through a tanh and has no
    skip. The innermost (``inner`` None) has no norm after its down-conv: at full depth its
    output is 1x1, which instance norm (or batch norm of one image) would set to zero.
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
        up_in = width if innermost else 2 * width  # the inner level's output has its skip
        up: list[nn.Module] = [nn.ReLU()]
        if out_channels is not None:
            up += [nn.ConvTranspose2d(up_in, out_channels, 4, 2, 1), nn.Tanh()]
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
    """source (B, in_channels, resolution, resolution) -> (B, out_channels, same) in [-1, 1].

    ``num_down`` levels (default: down to 1x1, log2 of the side, 8 at 256 px and 5 at 32 px),
    ``base_channels * 2**level`` wide up to 8x base. Sides not divisible by ``2**num_down``
    (28 px) are reflect-padded up and the output cropped back. Dropout is a plain nn.Dropout
    in the first three decoder blocks: the paper's only noise source, kept on at test time
    (:meth:`enable_dropout`).
    """

    def __init__(
        self, in_channels: int, out_channels: int, resolution: int, base_channels: int = 64,
        norm: str = "batch", dropout: float = 0.5, num_down: int | None = None,
    ) -> None:
        super().__init__()
        _check_norm(norm)
        require(0.0 <= dropout < 1.0, f"model.dropout must be in [0, 1), not {dropout}.")
        full_depth = math.ceil(math.log2(resolution))
        num_down = full_depth if num_down is None else num_down
        require(1 <= num_down <= full_depth,
                f"model.num_down={num_down} must be between 1 and {full_depth} for {resolution} "
                f"px images (each level halves the side, down to 1x1 at {full_depth}).")
        self.resolution, self.num_down = resolution, num_down
        self.pad = padding(resolution, num_down)

        def width(level: int) -> int:
            return base_channels * min(2**level, MAX_MULTIPLIER)

        block: nn.Module | None = None
        for level in reversed(range(1, num_down)):  # from the innermost level outwards
            drop = dropout if num_down - 1 - level < DROPOUT_BLOCKS else 0.0
            block = SkipBlock(width(level - 1), width(level), block, norm=norm, dropout=drop)
        self.net = SkipBlock(out_channels, width(0), block, norm=norm,
                             in_channels=in_channels, out_channels=out_channels)
        normal_init(self)

    def forward(self, source: Tensor) -> Tensor:
        before, after = self.pad
        if after:
            source = F.pad(source, (before, after, before, after), mode="reflect")
        keep = slice(before, before + self.resolution)
        return self.net(source)[..., keep, keep]

    def enable_dropout(self) -> None:
        """Dropout on and everything else as it is (eval mode keeps batch norm's running
        statistics): the paper samples with dropout, which ``eval()`` alone switches off."""
        for m in self.modules():
            if isinstance(m, nn.Dropout):
                m.train()


class PatchDiscriminator(nn.Module):
    """(source, image) pairs concatenated on channels (B, in_channels, H, W) -> logits
    (B, 1, h, w), one per overlapping patch: 70x70 patches and a 30x30 map at 256 px for
    ``num_layers=3``.

    ``num_layers`` stride-2 4x4 convs from ``base_channels`` wide (no norm on the first), one
    stride-1 4x4 conv doubling the width once more (8x base at most), and a stride-1 4x4 conv
    to one channel; LeakyReLU(0.2) between them.
    """

    def __init__(self, in_channels: int, base_channels: int = 64, num_layers: int = 3,
                 norm: str = "batch") -> None:
        super().__init__()
        _check_norm(norm)
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
        normal_init(self)

    def forward(self, pair: Tensor) -> Tensor:
        return self.net(pair)


def receptive_field(num_layers: int) -> int:
    """Side of the input patch one PatchGAN logit sees: 16, 34, 70, 142, 286 for 1 to 5 layers.

    Walking back from one output pixel, a layer of kernel k and stride s widens a field f to
    (f - 1) s + k.
    """
    layers = [(4, 2)] * num_layers + [(4, 1), (4, 1)]  # (kernel, stride), input to output
    field = 1
    for kernel, stride in reversed(layers):
        field = (field - 1) * stride + kernel
    return field
