"""StarGAN's discriminator (Choi et al. 2018, appendix): one body, two heads.

The body is ``num_layers`` stride-2 4x4 convolutions (zero padding 1) from ``base_channels``,
doubling the width each time, with LeakyReLU(0.01) and no normalisation (WGAN-GP penalises
each sample's gradient, which batch statistics would couple). At 128 px the paper's six layers
leave a 2x2 map of 2048 channels; by default the depth follows the resolution so that every
size ends at 2x2 (5 layers at 64 px, 4 at 32 px). Heads: D_src, a 3x3 conv to one channel
(a PatchGAN-style map of real/fake scores), and D_cls, a conv whose kernel is the final map
size, giving one logit per domain. Neither head has a bias, and the weights keep PyTorch's
default initialisation, as in the reference code (yunjey/stargan).
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from gentrain.errors import require

LEAK = 0.01
FINAL_SIDE = 2  # the map the body leaves at the default depth (2x2 at 128 px with 6 layers)


def default_layers(resolution: int) -> int:
    """Body depth that halves ``resolution`` down to a 2x2 map: 6 at 128 px, 4 at 32 px."""
    return max(1, round(math.log2(resolution / FINAL_SIDE)))


class StarDiscriminator(nn.Module):
    """images (B, C, H, W) -> (D_src logits (B, 1, h, w), D_cls logits (B, num_domains))."""

    def __init__(
        self, in_channels: int, resolution: int, num_domains: int, *, base_channels: int = 64,
        num_layers: int | None = None,
    ) -> None:
        super().__init__()
        num_layers = default_layers(resolution) if num_layers is None else num_layers
        require(num_layers >= 1 and resolution % 2**num_layers == 0,
                f"model.d_layers={num_layers} must be >= 1 and halve {resolution} px images "
                f"evenly ({resolution} divisible by 2**d_layers); the default (null) takes "
                f"{default_layers(resolution)} layers here.")
        require(base_channels >= 1, f"model.d_base_channels must be >= 1, not {base_channels}.")
        layers: list[nn.Module] = []
        width, channels = base_channels, in_channels
        for _ in range(num_layers):
            layers += [nn.Conv2d(channels, width, 4, stride=2, padding=1), nn.LeakyReLU(LEAK)]
            channels, width = width, 2 * width
        self.body = nn.Sequential(*layers)
        side = resolution // 2**num_layers
        self.src = nn.Conv2d(channels, 1, 3, padding=1, bias=False)
        self.cls = nn.Conv2d(channels, num_domains, side, bias=False)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        features = self.body(images)
        return self.src(features), self.cls(features).flatten(1)
