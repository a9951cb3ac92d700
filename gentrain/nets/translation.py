"""The ResNet image-to-image generator of Johnson et al. (2016) as CycleGAN and StarGAN use it.

c7s1-k, d2k, d4k, R4k × ``num_blocks``, u2k, uk, c7s1-out with a tanh (CycleGAN's appendix
notation: 7x7 conv-norm-ReLU, two stride-2 downsamplings, residual blocks, two stride-2
transposed-conv upsamplings). CycleGAN uses 9 blocks at 256 px and 6 at 128 px and below,
reflection padding and instance norm without affine parameters; StarGAN feeds the target
domain as extra input channels into the same layout (``in_channels`` = image + domains) with
zero padding, as its paper does: a spatially constant input channel stays constant under
reflection padding, and the instance norm after the first conv then removes it entirely, so
only zero padding (whose borders vary with it) lets such a condition reach the output.
Weights N(0, 0.02) as in the reference code.
"""

from __future__ import annotations

from torch import Tensor, nn

from gentrain.errors import require
from gentrain.nets.init import normal_init

NUM_DOWN = 2  # stride-2 downsamplings (and as many upsamplings)
PADDINGS = ("reflect", "zeros")  # CycleGAN's, StarGAN's


def _instance_norm(channels: int, affine: bool) -> nn.InstanceNorm2d:
    return nn.InstanceNorm2d(channels, affine=affine, track_running_stats=False)


def _pad(padding: str, size: int) -> nn.Module:
    return nn.ReflectionPad2d(size) if padding == "reflect" else nn.ZeroPad2d(size)


class ResidualBlock(nn.Module):
    """x + (pad, 3x3 conv, norm, ReLU, [dropout], pad, 3x3 conv, norm)(x)."""

    def __init__(self, channels: int, affine: bool, dropout: float = 0.0,
                 padding: str = "reflect") -> None:
        super().__init__()
        layers: list[nn.Module] = [
            _pad(padding, 1), nn.Conv2d(channels, channels, 3),
            _instance_norm(channels, affine), nn.ReLU(),
        ]
        if dropout:
            layers.append(nn.Dropout(dropout))
        layers += [_pad(padding, 1), nn.Conv2d(channels, channels, 3),
                   _instance_norm(channels, affine)]
        self.body = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    """(B, in_channels, H, W) -> (B, out_channels, H, W) in [-1, 1]; H and W divisible by 4."""

    def __init__(
        self, in_channels: int, out_channels: int, *, base_channels: int = 64,
        num_blocks: int = 9, affine: bool = False, dropout: float = 0.0,
        padding: str = "reflect",
    ) -> None:
        super().__init__()
        require(padding in PADDINGS, f"padding={padding!r} is not one of {', '.join(PADDINGS)}.")
        require(num_blocks >= 1, f"model.num_blocks must be at least 1, not {num_blocks}.")
        require(base_channels >= 1, f"model.base_channels must be >= 1, not {base_channels}.")
        width = base_channels
        layers: list[nn.Module] = [
            _pad(padding, 3), nn.Conv2d(in_channels, width, 7),
            _instance_norm(width, affine), nn.ReLU(),
        ]
        for _ in range(NUM_DOWN):
            layers += [nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
                       _instance_norm(2 * width, affine), nn.ReLU()]
            width *= 2
        layers += [ResidualBlock(width, affine, dropout, padding) for _ in range(num_blocks)]
        for _ in range(NUM_DOWN):
            layers += [nn.ConvTranspose2d(width, width // 2, 3, stride=2, padding=1,
                                          output_padding=1),
                       _instance_norm(width // 2, affine), nn.ReLU()]
            width //= 2
        layers += [_pad(padding, 3), nn.Conv2d(width, out_channels, 7), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        normal_init(self)

    def forward(self, x: Tensor) -> Tensor:
        require(x.shape[-1] % 2**NUM_DOWN == 0 and x.shape[-2] % 2**NUM_DOWN == 0,
                f"The ResNet generator needs sides divisible by {2**NUM_DOWN}, got "
                f"{tuple(x.shape[-2:])}; set data.resolution to a multiple of {2**NUM_DOWN}.")
        return self.net(x)
