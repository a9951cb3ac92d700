"""Batch transforms that run on the training device, randomness drawn from a given generator.

A transform is ``f(batch, generator) -> batch``. Loaders seed the generator from the batch
position, so an augmentation is replayed exactly after a resume. Spatial transforms move
``image``, ``source`` and ``label_map`` together, so paired data stays aligned.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from gentrain.data.core.batch import Batch

BatchTransform = Callable[[Batch, torch.Generator], Batch]
SPATIAL_KEYS = ("image", "source", "label_map")


def compose(transforms: Sequence[BatchTransform]) -> BatchTransform:
    """Apply ``transforms`` in order (the identity when empty)."""

    def apply(batch: Batch, generator: torch.Generator) -> Batch:
        for transform in transforms:
            batch = transform(batch, generator)
        return batch

    return apply


def random_hflip(batch: Batch, generator: torch.Generator) -> Batch:
    """Mirror each example left-right with probability 1/2 (all spatial keys together)."""
    image = batch["image"]
    flip = torch.rand(image.shape[0], generator=generator, device=image.device) < 0.5
    out = dict(batch)
    for key in SPATIAL_KEYS:
        if key in batch:
            value = batch[key]
            mask = flip.view(-1, *([1] * (value.dim() - 1)))
            out[key] = torch.where(mask, value.flip(-1), value)
    if "boxes" in batch:  # (B, K, 4) key-patch boxes (x, y, w, h) move with their image
        boxes = batch["boxes"]
        mirrored = boxes.clone()
        mirrored[..., 0] = image.shape[-1] - boxes[..., 0] - boxes[..., 2]
        out["boxes"] = torch.where(flip.view(-1, 1, 1), mirrored, boxes)
    return out


def choose_caption(at_random: bool) -> BatchTransform:
    """Turn ``captions`` (B, K, L), every caption of each image, into ``caption`` (B, L): one
    drawn at random per image while training (each sighting of an image may bring another
    phrasing), caption 0 in eval passes so that held-out grids and metrics stay fixed."""

    def apply(batch: Batch, generator: torch.Generator) -> Batch:
        out = dict(batch)
        captions = out.pop("captions")
        count = captions.shape[1]
        if at_random and count > 1:
            pick = torch.randint(count, (captions.shape[0],), generator=generator,
                                 device=captions.device)
        else:
            pick = torch.zeros(captions.shape[0], dtype=torch.long, device=captions.device)
        out["caption"] = captions[torch.arange(captions.shape[0], device=captions.device), pick]
        return out

    return apply


def dynamic_binarize(batch: Batch, generator: torch.Generator) -> Batch:
    """Resample binary pixels with P(1) = intensity each time an image is seen.

    This is the dynamic binarisation of the IWAE paper (Burda et al.); images map to {-1, 1}.
    """
    image = batch["image"]
    probability = (image + 1) / 2
    noise = torch.rand(image.shape, generator=generator, device=image.device)
    return {**batch, "image": torch.where(noise < probability, 1.0, -1.0).to(image.dtype)}


def _crop(value: torch.Tensor, top: torch.Tensor, left: torch.Tensor, size: int) -> torch.Tensor:
    """Per-example ``size``×``size`` crops of (B, C, H, W) or (B, H, W) at (top, left)."""
    steps = torch.arange(size, device=value.device)
    rows = (top[:, None] + steps)[:, :, None]
    cols = (left[:, None] + steps)[:, None, :]
    batch = torch.arange(value.shape[0], device=value.device)[:, None, None]
    if value.dim() == 3:
        return value[batch, rows, cols]
    return value.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2).contiguous()


def pix2pix_jitter(load_size: int, crop_size: int) -> BatchTransform:
    """pix2pix's random jitter: resize to ``load_size`` (bicubic; label maps nearest), then one
    random ``crop_size`` crop per example, the same for every spatial key of that example."""

    def apply(batch: Batch, generator: torch.Generator) -> Batch:
        image = batch["image"]
        n, device = image.shape[0], image.device
        top = torch.randint(load_size - crop_size + 1, (n,), generator=generator, device=device)
        left = torch.randint(load_size - crop_size + 1, (n,), generator=generator, device=device)
        out = dict(batch)
        size = (load_size, load_size)
        for key in SPATIAL_KEYS:
            if key not in batch:
                continue
            value = batch[key]
            if key == "label_map":
                big = F.interpolate(value[:, None].float(), size=size, mode="nearest")
                resized = big[:, 0].to(value.dtype)
            else:
                resized = F.interpolate(value, size=size, mode="bicubic", align_corners=False)
                resized = resized.clamp(-1, 1)
            out[key] = _crop(resized, top, left, crop_size)
        return out

    return apply


def augmentation(resolution: int, load_size: int | None, hflip: bool) -> list[BatchTransform]:
    """Training augmentation: pix2pix jitter when ``load_size`` is set, then flips."""
    jitter = [pix2pix_jitter(load_size, resolution)] if load_size is not None else []
    return [*jitter, random_hflip] if hflip else jitter
