"""Captions of the shapes dataset, written from what was drawn for each image.

Every caption names the shape and its colour family, the two facts a judge of shapes can
check in a sample; the size, the position and the background come in some phrasings and not
in others, so the wording varies as it does in human captions (several per image, as CUB's ten
or COCO's five). Shape-colour pairs can be held out of the training split to test composition:
a model that draws a green triangle never saw one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from gentrain.data.datasets.shapes import COLOUR_FAMILIES, SHAPE_NAMES, ShapeDraws
from gentrain.errors import GentrainError

#: Phrasings of one image; each names the colour and the shape.
TEMPLATES = (
    "a {size} {colour} {shape} on a {ground} background",
    "{colour} {shape}, {position}",
    "a {colour} {shape} at the {position} of a {ground} image",
    "{ground} background with a {size} {colour} {shape}",
    "the {shape} is {colour} and {size}",
)
SIZES = ("small", "medium", "large")
SIZE_EDGES = (0.24, 0.30)  # shapes are 0.18-0.35 of the side across
THIRD = (0.4, 0.6)  # a centre coordinate below / above these is left (top) / right (bottom)


def _size_word(size: float) -> str:
    return SIZES[sum(size >= edge for edge in SIZE_EDGES)]


def _position_words(x: float, y: float) -> str:
    """'upper left', 'top', 'right', 'centre', ... from the shape's centre."""
    vertical = "upper" if y < THIRD[0] else "lower" if y > THIRD[1] else ""
    horizontal = "left" if x < THIRD[0] else "right" if x > THIRD[1] else ""
    if vertical and horizontal:
        return f"{vertical} {horizontal}"
    if vertical:
        return "top" if vertical == "upper" else "bottom"
    return horizontal or "centre"


def shape_captions(drawn: ShapeDraws) -> list[tuple[str, ...]]:
    """Every phrasing of :data:`TEMPLATES` for each drawn image (named colours only)."""
    if drawn.attributes is None:
        raise GentrainError("Shapes captions name the colour family: draw with named colours.")
    family = drawn.attributes[:, : len(COLOUR_FAMILIES)].argmax(1).tolist()
    light = drawn.attributes[:, -1].tolist()
    captions = []
    for i, kind in enumerate(drawn.labels.tolist()):
        facts = {
            "shape": SHAPE_NAMES[kind], "colour": COLOUR_FAMILIES[family[i]],
            "size": _size_word(float(drawn.size[i])),
            "position": _position_words(*drawn.centre[i].tolist()),
            "ground": "light" if light[i] else "dark",
        }
        captions.append(tuple(t.format(**facts) for t in TEMPLATES))
    return captions


def parse_holdout(pairs: Sequence[str]) -> list[tuple[int, int]]:
    """``["green triangle", ...]`` as (colour family, shape class) index pairs."""
    parsed = []
    for pair in pairs:
        parts = str(pair).lower().split()
        if len(parts) != 2 or parts[0] not in COLOUR_FAMILIES or parts[1] not in SHAPE_NAMES:
            raise GentrainError(
                f"data.caption_holdout entry {pair!r} is not '<colour> <shape>'; colours are "
                f"{', '.join(COLOUR_FAMILIES)} and shapes {', '.join(SHAPE_NAMES)}, e.g. "
                "data.caption_holdout='[green triangle]'."
            )
        parsed.append((COLOUR_FAMILIES.index(parts[0]), SHAPE_NAMES.index(parts[1])))
    return parsed


def combination_of(drawn: ShapeDraws) -> tuple[Tensor, Tensor]:
    """Each image's (colour family, shape class), long (n,) each."""
    assert drawn.attributes is not None
    return drawn.attributes[:, : len(COLOUR_FAMILIES)].argmax(1), drawn.labels


def held_out(drawn: ShapeDraws, pairs: Sequence[tuple[int, int]]) -> Tensor:
    """Bool (n,): the images whose shape-colour pair is one of ``pairs``."""
    colour, shape = combination_of(drawn)
    mask = torch.zeros_like(shape, dtype=torch.bool)
    for c, k in pairs:
        mask |= (colour == c) & (shape == k)
    return mask
