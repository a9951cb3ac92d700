"""The N(0, 0.02) initialisation of DCGAN and pix2pix, shared by their networks."""

from __future__ import annotations

from torch import nn


def normal_init(module: nn.Module) -> None:
    """Conv weights N(0, 0.02), norm scales N(1, 0.02), biases 0 (Radford et al.; pix2pix)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d | nn.GroupNorm) and m.weight is not None:
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)
