"""Decoding and the fixed (non-random) geometry of file datasets, run in loader workers.

Each preparer turns one file into uint8 CHW tensors at the dataset's resolution. Random
augmentation happens later, on whole batches on the training device (see transforms.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image
from torch import Tensor

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")
Direction = Literal["AtoB", "BtoA"]


def open_image(path: Path, channels: int = 3) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("L" if channels == 1 else "RGB")


def to_uint8_tensor(image: Image.Image) -> Tensor:
    """PIL image → uint8 (C, H, W)."""
    array = np.asarray(image, dtype=np.uint8)
    array = array[:, :, None] if array.ndim == 2 else array
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def square(image: Image.Image, resolution: int, crop: int | None = None) -> Image.Image:
    """Central ``crop``×``crop`` (None: the largest centred square), resized to ``resolution``."""
    w, h = image.size
    side = min(w, h) if crop is None else min(crop, w, h)
    left, top = (w - side) // 2, (h - side) // 2
    box = (left, top, left + side, top + side)
    return image.resize((resolution, resolution), Image.Resampling.BICUBIC, box=box)


@dataclass(frozen=True)
class SquareImage:
    """One image per file: centre square (or ``crop``) resized to ``resolution``."""

    resolution: int
    crop: int | None = None
    channels: int = 3

    def __call__(self, path: Path) -> dict[str, Tensor]:
        image = square(open_image(path, self.channels), self.resolution, self.crop)
        return {"image": to_uint8_tensor(image)}


@dataclass(frozen=True)
class SideBySide:
    """pix2pix files: A (left half) | B (right half); ``direction`` says which is the input."""

    resolution: int
    direction: Direction

    def __call__(self, path: Path) -> dict[str, Tensor]:
        image = open_image(path)
        w, h = image.size
        size = (self.resolution, self.resolution)
        a = image.resize(size, Image.Resampling.BICUBIC, box=(0, 0, w // 2, h))
        b = image.resize(size, Image.Resampling.BICUBIC, box=(w // 2, 0, 2 * (w // 2), h))
        source, target = (a, b) if self.direction == "AtoB" else (b, a)
        return {"image": to_uint8_tensor(target), "source": to_uint8_tensor(source)}


def list_images(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursive, hidden entries skipped), in a stable order."""
    return sorted(
        p for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
