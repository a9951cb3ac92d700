"""Batch transforms that run on the training device, randomness drawn from a given generator.

A transform is ``f(batch, generator) -> batch``. Loaders seed the generator from the batch
position, so an augmentation is replayed exactly after a resume. Spatial transforms move
``image``, ``source`` and ``label_map`` together, so paired data stays aligned.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from gentrain.data.batch import Batch

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
    return out


def dynamic_binarize(batch: Batch, generator: torch.Generator) -> Batch:
    """Resample binary pixels with P(1) = intensity each time an image is seen.

    This is the dynamic binarisation of the IWAE paper (Burda et al.); images map to {-1, 1}.
    """
    image = batch["image"]
    probability = (image + 1) / 2
    noise = torch.rand(image.shape, generator=generator, device=image.device)
    return {**batch, "image": torch.where(noise < probability, 1.0, -1.0).to(image.dtype)}
