"""Differentiable augmentation for GAN training (DiffAugment, Zhao et al. 2020).

D sees every image, real or generated, through the same random, differentiable transforms,
in both phases: D cannot memorise the real images, and G's gradient passes through the
transform to G (augmenting the reals alone would teach G to draw the augmentations). The
three policies of the paper, on images in [-1, 1]:

- ``color``: brightness + U(-0.5, 0.5), saturation × U(0, 2), contrast × U(0.5, 1.5), each drawn
  per image;
- ``translation``: a shift of up to 1/8 of the side per axis, filled with zeros;
- ``cutout``: a square of half the side, at a random place, set to zero.

Draws come from the global RNG, which the trainer saves and restores, so a resume is exact.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from gentrain.errors import require

TRANSLATION_RATIO = 0.125
CUTOUT_RATIO = 0.5


def _per_image(x: Tensor) -> Tensor:
    """U(0, 1) draws, one per image, shaped to broadcast over (C, H, W)."""
    return torch.rand(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype)


def color(x: Tensor) -> Tensor:
    x = x + (_per_image(x) - 0.5)
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (_per_image(x) * 2) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (_per_image(x) + 0.5) + mean


def translation(x: Tensor, ratio: float = TRANSLATION_RATIO) -> Tensor:
    """Shift each image by whole pixels, (dy, dx) each in [-s, s] with s = round(ratio·side)."""
    n, _, h, w = x.shape
    sy, sx = int(h * ratio + 0.5), int(w * ratio + 0.5)
    dy = torch.randint(-sy, sy + 1, (n, 1, 1), device=x.device)
    dx = torch.randint(-sx, sx + 1, (n, 1, 1), device=x.device)
    # out[i, y, x] = in[i, y - dy, x - dx] (zero outside): read the zero-padded input there.
    rows = torch.arange(h, device=x.device)[None, :, None] - dy + sy
    cols = torch.arange(w, device=x.device)[None, None, :] - dx + sx
    padded = F.pad(x, [sx, sx, sy, sy])
    batch = torch.arange(n, device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)


def cutout(x: Tensor, ratio: float = CUTOUT_RATIO) -> Tensor:
    """Zero a square of side round(ratio·side) centred anywhere in each image (clipped)."""
    n, _, h, w = x.shape
    size_y, size_x = int(h * ratio + 0.5), int(w * ratio + 0.5)
    top = torch.randint(0, h + (1 - size_y % 2), (n, 1, 1), device=x.device) - size_y // 2
    left = torch.randint(0, w + (1 - size_x % 2), (n, 1, 1), device=x.device) - size_x // 2
    rows = torch.arange(h, device=x.device)[None, :, None]
    cols = torch.arange(w, device=x.device)[None, None, :]
    inside = (rows >= top) & (rows < top + size_y) & (cols >= left) & (cols < left + size_x)
    return x * (~inside)[:, None].to(x.dtype)


POLICIES: dict[str, Callable[[Tensor], Tensor]] = {
    "color": color, "translation": translation, "cutout": cutout}


def diff_augment(policy: Sequence[str]) -> Callable[[Tensor], Tensor] | None:
    """The transform applying ``policy``'s augmentations in turn (None for an empty policy)."""
    unknown = [name for name in policy if name not in POLICIES]
    require(not unknown, f"model.diffaugment has {unknown}, which is not among "
            f"{', '.join(POLICIES)}; give a list of them, e.g. [color,translation,cutout], or [] "
            "for none.")
    if not policy:
        return None
    steps = [POLICIES[name] for name in policy]

    def augment(x: Tensor) -> Tensor:
        for step in steps:
            x = step(x)
        return x

    return augment
