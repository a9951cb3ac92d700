"""The embedded offline dataset: coloured geometric shapes drawn procedurally.

Every image holds one shape of one of several classes at a random position and size, in a
random colour on a contrasting random background. Generation is vectorised, deterministic
from the seed and takes well under a second for tens of thousands of images, so ``gentrain``
trains anywhere without a download. Exact per-pixel label maps make it a labels→image task too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from gentrain.data.core.batch import DataSpec
from gentrain.data.core.seeding import derive_seed
from gentrain.data.core.tensor_data import TensorDataModule, TensorSplit
from gentrain.data.core.transforms import random_hflip
from gentrain.data.pairs.tasks import pair_tensor_module, parse_pair
from gentrain.data.pairs.unpaired import UnpairedDataModule, unpaired_classes
from gentrain.data.storage.roots import cache_dir, resolve_root
from gentrain.errors import GentrainError, require

SHAPE_NAMES = ("circle", "square", "triangle", "diamond", "cross", "ring")
# data.labels=attributes: the shape's colour family (one of three, from its hue) and whether
# the background is light, as {0, 1} attributes a translator such as StarGAN can change.
COLOUR_FAMILIES = ("red", "green", "blue")
ATTRIBUTE_NAMES = (*COLOUR_FAMILIES, "light_background")
COLOUR_SCHEMES = ("auto", "free", "named")
LABEL_KINDS = ("class", "attributes")
SUPERSAMPLE = 2  # render at 2× and average down: anti-aliased edges
CHUNK = 512  # images rendered at once; bounds memory at high resolution


def _shape_mask(kind: int, dx: Tensor, dy: Tensor) -> Tensor:
    """Inside-mask of shape class ``kind`` in pixel offsets scaled by the shape's size."""
    ax, ay = dx.abs(), dy.abs()
    name = SHAPE_NAMES[kind]
    if name == "circle":
        return dx**2 + dy**2 <= 1.0
    if name == "square":
        return torch.maximum(ax, ay) <= 0.8
    if name == "triangle":  # apex at the top, base at the bottom
        return (dy >= -0.9) & (dy <= 0.8) & (ax <= 0.95 * (dy + 0.9) / 1.7)
    if name == "diamond":
        return ax + ay <= 1.0
    if name == "cross":
        return ((ax <= 0.3) & (ay <= 0.95)) | ((ay <= 0.3) & (ax <= 0.95))
    radius_sq = dx**2 + dy**2  # ring
    return (radius_sq >= 0.55**2) & (radius_sq <= 1.0)


def _hsv_to_rgb(hue: Tensor, saturation: Tensor, value: Tensor) -> Tensor:
    """(n,) HSV components in [0, 1] to (n, 3) RGB in [0, 1]."""
    k = (torch.tensor([5.0, 3.0, 1.0]) + hue[:, None] * 6) % 6
    ramp = torch.clamp(torch.minimum(k, 4 - k), 0, 1)
    return value[:, None] * (1 - saturation[:, None] * ramp)


def _attribute_colours(n: int, g: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """Colours for ``data.labels=attributes``: (fg, bg) RGB (n, 3) and {0, 1} attributes (n, 4).

    The shape's hue lies within ±0.05 of pure red, green or blue (one family each, vivid), and
    half of the backgrounds are light (value 0.8-0.95) instead of dark (0.05-0.3), both barely
    saturated, so each attribute is plain to see at 32 px and a translator changes it by
    recolouring the shape or the background.
    """
    family = torch.randint(len(COLOUR_FAMILIES), (n,), generator=g)
    hue = (family / len(COLOUR_FAMILIES) + 0.1 * torch.rand(n, generator=g) - 0.05) % 1
    fg = _hsv_to_rgb(hue, 0.75 + 0.25 * torch.rand(n, generator=g),
                     0.8 + 0.2 * torch.rand(n, generator=g))
    light = torch.rand(n, generator=g) < 0.5
    bg_value = torch.where(light, 0.8 + 0.15 * torch.rand(n, generator=g),
                           0.05 + 0.25 * torch.rand(n, generator=g))
    bg = _hsv_to_rgb(torch.rand(n, generator=g), 0.15 * torch.rand(n, generator=g), bg_value)
    attributes = torch.cat([F.one_hot(family, len(COLOUR_FAMILIES)), light[:, None]], dim=1)
    return fg, bg, attributes.float()


@dataclass
class ShapeDraws:
    """What was drawn for each of n images: class, size and centre (fractions of the side),
    colours, and the named colour scheme's attributes (None in the free scheme)."""

    labels: Tensor
    size: Tensor
    centre: Tensor
    fg: Tensor
    bg: Tensor
    attributes: Tensor | None


def draw_shapes(n: int, channels: int, seed: int, named_colours: bool = False,
                centred: bool = False) -> ShapeDraws:
    """The random parameters of ``n`` images; ``named_colours`` takes the attributes' scheme
    (red, green or blue shapes on light or dark grounds) instead of free colours."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(len(SHAPE_NAMES), (n,), generator=g)
    size = 0.18 + 0.17 * torch.rand(n, generator=g)
    centre = size[:, None] + (1 - 2 * size[:, None]) * torch.rand(n, 2, generator=g)
    if centred:  # after the draw, so that every other draw stays the same
        centre = torch.full_like(centre, 0.5)
    attributes = None
    if named_colours:
        require(channels == 3, "data.labels=attributes and data.captions=true name colours: "
                "use data.channels=3.")
        fg, bg, attributes = _attribute_colours(n, g)
    else:
        # A vivid shape on a dark, muted background: brightness differs by at least 0.45, so
        # every shape is visible, in colour and in grey, and colour stays a few smooth factors
        # to learn.
        fg_value = 0.75 + 0.25 * torch.rand(n, generator=g)
        bg_value = 0.05 + 0.25 * torch.rand(n, generator=g)
        fg = _hsv_to_rgb(torch.rand(n, generator=g), 0.6 + 0.4 * torch.rand(n, generator=g),
                         fg_value)
        bg = _hsv_to_rgb(torch.rand(n, generator=g), 0.5 * torch.rand(n, generator=g), bg_value)
        if channels == 1:  # grey images show the value (brightness) of the same colours
            fg, bg = fg_value[:, None], bg_value[:, None]
    return ShapeDraws(labels, size, centre, fg, bg, attributes)


def render_shapes(
    n: int, resolution: int, channels: int, seed: int, attributes: bool = False,
    centred: bool = False, named_colours: bool = False,
) -> TensorSplit:
    """``n`` shape images as uint8 (n, channels, res, res) with class labels and label maps;
    with ``attributes`` the labels are the float (n, 4) :data:`ATTRIBUTE_NAMES` instead, and
    the colours follow them, as they do with ``named_colours`` whatever the labels
    (the free-colour images stay exactly as they were); with ``centred`` every shape sits at
    the centre (aligned, as faces in CelebA), all else equal."""
    drawn = draw_shapes(n, channels, seed, attributes or named_colours, centred)
    labels, size, centre, fg, bg = drawn.labels, drawn.size, drawn.centre, drawn.fg, drawn.bg

    side = resolution * SUPERSAMPLE
    grid = (torch.arange(side) + 0.5) / side
    images, label_maps = [], []
    for start in range(0, n, CHUNK):
        sl = slice(start, start + CHUNK)
        dx = (grid[None, None, :] - centre[sl, 0, None, None]) / size[sl, None, None]
        dy = (grid[None, :, None] - centre[sl, 1, None, None]) / size[sl, None, None]
        inside = torch.zeros(dx.shape[0], 1, side, side)
        for kind in range(len(SHAPE_NAMES)):
            chosen = labels[sl] == kind
            inside[chosen, 0] = _shape_mask(kind, dx[chosen], dy[chosen]).float()
        picture = inside * fg[sl, :, None, None] + (1 - inside) * bg[sl, :, None, None]
        images.append(F.avg_pool2d(picture, SUPERSAMPLE))
        coverage = F.avg_pool2d(inside, SUPERSAMPLE)[:, 0]
        label_maps.append((coverage >= 0.5) * (labels[sl, None, None] + 1))
    pixels = (torch.cat(images) * 255).round().clamp(0, 255).to(torch.uint8)
    return TensorSplit(pixels, drawn.attributes if attributes else labels,
                       torch.cat(label_maps).to(torch.uint8))


def _captioned(splits: dict[str, TensorSplit], spec: DataSpec, channels: int, seed: int,
               centred: bool, holdout: Sequence[str], caption_length: int
               ) -> tuple[dict[str, TensorSplit], DataSpec]:
    """The splits with every image's captions as token ids, the held-out pairs dropped from
    the training split, and the spec with the tokenizer built from the training captions."""
    from gentrain.data.datasets.shape_captions import held_out, parse_holdout, shape_captions
    from gentrain.text.tokenizer import WordTokenizer

    pairs = parse_holdout(holdout)
    texts = {}
    for split, data in splits.items():
        drawn = draw_shapes(len(data), channels, derive_seed(seed, split), True, centred)
        captions = shape_captions(drawn)
        if split == "train" and pairs:
            keep = ~held_out(drawn, pairs)
            require(bool(keep.any()), "data.caption_holdout leaves no training image.")
            data = TensorSplit(*(t[keep] if t is not None else None for t in data.fields()))
            captions = [c for c, kept in zip(captions, keep.tolist(), strict=True) if kept]
        splits[split], texts[split] = data, captions
    tokenizer = WordTokenizer.build((t for c in texts["train"] for t in c), caption_length)
    splits = {split: dataclasses.replace(
        data, captions=tokenizer.encode([t for c in texts[split] for t in c]).view(
            len(data), -1, caption_length)) for split, data in splits.items()}
    return splits, dataclasses.replace(spec, vocabulary=tokenizer.vocabulary,
                                       caption_length=caption_length)


def colour_scheme(colours: str, attributes: bool, captions: bool) -> str:
    """``free`` (any vivid hue on a dark ground) or ``named`` (red, green or blue on a light
    or dark ground); ``auto`` names them where the labels or captions do. A class-labelled
    dataset with ``named`` colours is what judges a translator of the attribute scheme."""
    require(colours in COLOUR_SCHEMES, f"data.colours={colours!r} is not one of "
            f"{', '.join(COLOUR_SCHEMES)} for shapes.")
    names_colours = attributes or captions
    if colours == "auto":
        return "named" if names_colours else "free"
    require(colours == "named" or not names_colours,
            "data.colours=free draws colours that data.labels=attributes and data.captions=true "
            "cannot name: use data.colours=named or auto.")
    return colours


def shapes(
    *, batch_size: int, resolution: int = 32, channels: int = 3, num_train: int = 20000,
    num_test: int = 1000, seed: int = 0, hflip: bool = True,
    pair: str | dict[str, Any] | None = None, labels: str = "class",
    unpaired: str | None = None,  # "circle:square": two classes as unpaired domains A, B
    centred: bool = False,  # every shape at the centre (aligned objects, as for Puzzle-GAN)
    captions: bool = False, caption_holdout: Sequence[str] = (), caption_length: int = 16,
    colours: str = "auto",
) -> TensorDataModule | UnpairedDataModule:
    """The shapes dataset as a :class:`TensorDataModule` (train and test splits).

    ``pair`` makes it an image-to-image task (see pairs.py); ``pair=labels`` uses the exact
    label maps; an edge cache goes under the default data root. The argument ``labels`` is
    ``class`` (the shape) or ``attributes`` (:data:`ATTRIBUTE_NAMES`, float {0, 1}, for
    attribute translators such as StarGAN). ``captions`` adds five phrasings per image (see
    shape_captions.py) and the tokenizer built from the training split's; the shape-colour
    pairs of ``caption_holdout`` ("green triangle") leave the training split. Captions name
    left and right, so captioned images are never flipped. ``colours`` picks the colour scheme
    (see :func:`colour_scheme`).
    """
    require(channels in (1, 3), f"data.channels must be 1 or 3 for shapes, not {channels}.")
    require(resolution >= 8, f"data.resolution must be at least 8 for shapes, not {resolution}.")
    require(num_train >= 1, f"data.num_train must be at least 1 for shapes, not {num_train}.")
    require(num_test >= 1, f"data.num_test must be at least 1 for shapes, not {num_test}.")
    require(labels in LABEL_KINDS,
            f"data.labels={labels!r} is not one of {', '.join(LABEL_KINDS)} for shapes.")
    task = parse_pair(pair)
    attributes = labels == "attributes"
    named = colour_scheme(colours, attributes, captions) == "named"
    names = ATTRIBUTE_NAMES if attributes else SHAPE_NAMES
    spec = DataSpec(
        name="shapes", channels=channels, height=resolution, width=resolution,
        label_kind="attributes" if attributes else "class", num_classes=len(names),
        class_names=names, has_label_map=True,
    )
    splits = {
        split: render_shapes(n, resolution, channels, derive_seed(seed, split), attributes,
                             centred, named_colours=named)
        for split, n in (("train", num_train), ("test", num_test))
    }
    if captions:
        splits, spec = _captioned(splits, spec, channels, seed, centred, caption_holdout,
                                  caption_length)
    elif caption_holdout:
        raise GentrainError("data.caption_holdout holds shape-colour pairs out of the "
                            "captions: set data.captions=true too, or leave it empty.")
    module = TensorDataModule(
        spec=spec, splits=splits, batch_size=batch_size,
        train_transforms=[random_hflip] if hflip and not captions else [],
    )
    module = pair_tensor_module(task, module, cache_dir(resolve_root(None)))
    return module if unpaired is None else unpaired_classes(module, unpaired)
