"""The one batch format every family consumes, and the facts a model needs about its data.

A batch is a plain dict of tensors on the training device:

- ``image``: float (B, C, H, W) in [-1, 1], the target images (binarised data is {-1, 1}).
- ``label`` (optional): long (B,) class index, or float (B, A) of {0, 1} attributes.
- ``source`` (optional): float (B, Cs, H, W) in [-1, 1], the input side of an image-to-image pair.
- ``label_map`` (optional): long (B, H, W) per-pixel class (0 is background).
- ``boxes``, ``patches``, ``mask``, ``shuffled`` (with ``data.patches``): K key boxes
  (B, K, 4) as (x, y, w, h) pixels, their crops (B, K, C, H, W), their union (B, 1, H, W)
  and another real image (B, C, H, W); see gentrain.data.pairs.patches.
- ``caption`` (captioned data): long (B, L) token ids of one caption per image, 0-padded
  (gentrain.text.tokenizer); datasets hold all K captions of an image as ``captions``
  (B, K, L) until :func:`gentrain.data.core.transforms.choose_caption` picks one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import Tensor

Batch = dict[str, Tensor]

LabelKind = Literal["class", "attributes"]
ValueKind = Literal["8bit", "binary"]


@dataclass(frozen=True)
class DataSpec:
    """Sizes derived from a dataset, passed to the model at instantiation.

    Models never read sizes from their own YAML: ``channels``, ``height``, ``width``,
    ``num_classes`` and ``source_channels`` flow from here.
    """

    name: str
    channels: int
    height: int
    width: int
    values: ValueKind = "8bit"
    label_kind: LabelKind | None = None
    num_classes: int = 0  # classes, or attributes when label_kind == "attributes"
    class_names: tuple[str, ...] = ()
    source_channels: int = 0  # > 0 when batches carry a paired ``source`` image
    has_label_map: bool = False
    unpaired: bool = False  # ``source`` and ``image`` come from two domains, not aligned pairs
    patches: int = 0  # K key patches per example (``data.patches``), 0: none
    vocabulary: tuple[str, ...] = ()  # captioned data: the tokenizer's words (model state)
    caption_length: int = 0  # tokens per caption

    @property
    def dims(self) -> int:
        """Number of scalar values per image (D in bits/dim)."""
        return self.channels * self.height * self.width

    @property
    def paired(self) -> bool:
        return self.source_channels > 0

    @property
    def captioned(self) -> bool:
        return bool(self.vocabulary)


def spec_from_dict(values: dict[str, object]) -> DataSpec:
    """Rebuild a :class:`DataSpec` saved as plain types (lists back to tuples)."""
    return DataSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
