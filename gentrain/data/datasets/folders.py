"""Any folder of images (class labels from subfolders, captions from sidecar NAME.txt files),
and edges2cats built from cat photos.

edges2cats was never published as a download: pix2pix trained it on about 2k cat photos with
automatically detected edges. Here it is a folder of cat photos with ``pair: edges``: the edge
drawing of each photo is derived once, cached, and paired with the photo (edges→photo).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from gentrain.data.core.batch import DataSpec
from gentrain.data.core.file_data import FileDataModule, FileDataset
from gentrain.data.core.images import SquareImage, list_images
from gentrain.data.core.seeding import derive_seed
from gentrain.data.core.transforms import augmentation
from gentrain.data.datasets.captions import (
    CaptionSettings,
    captioned,
    read_caption_file,
    tokenize_splits,
)
from gentrain.data.pairs.tasks import pair_file_module, parse_pair
from gentrain.data.storage.roots import cache_dir, resolve_root
from gentrain.errors import GentrainError, require


def holdout_split(files: list[Path], folder: Path, fraction: float) -> dict[str, list[Path]]:
    """A stable train/test split: the ``fraction`` of files with the smallest hash of their
    relative path is the test split (at least one file when there are two or more)."""
    ranked = sorted(files, key=lambda p: derive_seed("holdout", str(p.relative_to(folder))))
    count = min(len(files) - 1, max(1, round(fraction * len(files)))) if fraction > 0 else 0
    test = set(ranked[:count])
    return {"train": [p for p in files if p not in test], "test": [p for p in files if p in test]}


def class_names_of(files: list[Path], folder: Path) -> tuple[str, ...]:
    """First-level subfolder names when every image sits in one and there are two or more."""
    parts = [p.relative_to(folder).parts for p in files]
    if any(len(part) < 2 for part in parts):
        return ()
    names = tuple(sorted({part[0] for part in parts}))
    return names if len(names) >= 2 else ()


def sidecar(image: Path) -> Path:
    """Where an image's captions live: ``NAME.txt`` next to ``NAME.jpg`` (the convention of
    the common fine-tuning tools; one caption per line)."""
    return image.with_suffix(".txt")


def sidecar_captions(files: list[Path]) -> list[list[str]]:
    """Every image's captions from its sidecar file; one error for all missing files."""
    missing = [p for p in files if not sidecar(p).is_file()]
    if missing:
        raise GentrainError(
            f"data.captions=true reads each image's captions from NAME.txt next to it, and "
            f"{len(missing)} of the {len(files)} images have none: the first is "
            f"{sidecar(missing[0])}, for {missing[0].name}. Write each image's caption in its "
            "NAME.txt (several lines for several captions), or set data.captions=false."
        )
    fix = ("Write the image's caption in it (several lines for several captions), or remove "
           "the image and its caption file.")
    return [read_caption_file(sidecar(p), fix) for p in files]


def image_folder(
    *, name: str, folder: Path, batch_size: int, resolution: int, channels: int,
    holdout: float, load_size: int | None, hflip: bool, num_workers: int, base: Path,
    pair: str | dict[str, Any] | None, hint: str, captions: CaptionSettings | None = None,
) -> FileDataModule:
    """The shared builder behind ``folder`` and ``edges2cats``; with ``captions`` every image
    brings its sidecar captions and the tokenizer of the training split's goes in the spec."""
    require(channels in (1, 3), f"data.channels must be 1 or 3, not {channels}.")
    require(0 <= holdout < 1, f"data.holdout must be in [0, 1), not {holdout}.")
    task = parse_pair(pair)
    files = list_images(folder)
    if len(files) < 2:
        raise GentrainError(
            f"Dataset '{name}' needs a folder of at least two images, and {folder} has "
            f"{len(files)}. {hint}"
        )
    classes = class_names_of(files, folder)
    prepare = SquareImage(resolution, channels=channels)
    chosen = holdout_split(files, folder, holdout)
    tokens, tokenizer = (None, None) if captions is None else tokenize_splits(
        {split: sidecar_captions(paths) for split, paths in chosen.items()}, captions)
    splits = {}
    for split, paths in chosen.items():
        labels = None
        if classes:
            labels = torch.tensor([classes.index(p.relative_to(folder).parts[0]) for p in paths])
        splits[split] = FileDataset(paths, prepare, labels,
                                    captions=None if tokens is None else tokens[split])
    spec = DataSpec(
        name=name, channels=channels, height=resolution, width=resolution,
        label_kind="class" if classes else None, num_classes=len(classes), class_names=classes,
    )
    if tokenizer is not None:
        spec = captioned(spec, tokenizer)
    module = FileDataModule(
        spec=spec, splits=splits, batch_size=batch_size, num_workers=num_workers,
        held_out="test" if splits["test"] else "train",
        train_transforms=augmentation(resolution, load_size, hflip),
    )
    return pair_file_module(task, module, cache_dir(base))


def folder(
    *, batch_size: int, path: str | None = None, root: str | None = None,
    resolution: int = 64, channels: int = 3, holdout: float = 0.05,
    load_size: int | None = None, hflip: bool = True, num_workers: int = 2,
    pair: str | dict[str, Any] | None = None, captions: bool = False,
    caption_length: int = 32, min_word_count: int = 1,
) -> FileDataModule:
    """Images under ``path`` (recursive), centre-cropped and resized; ``root`` holds caches.
    ``captions`` reads each image's captions from ``NAME.txt`` beside it (see
    :func:`sidecar`): ``caption_length`` tokens each, the vocabulary the training split's
    words seen at least ``min_word_count`` times."""
    require(path is not None, "data=folder needs the images' location: data.path=/path/to/images.")
    images = Path(path).expanduser().resolve()  # type: ignore[arg-type]
    return image_folder(
        name="folder", folder=images, batch_size=batch_size, resolution=resolution,
        channels=channels, holdout=holdout, load_size=load_size, hflip=hflip,
        num_workers=num_workers, base=resolve_root(root), pair=pair,
        hint="Put the images (JPEG, PNG, ...; first-level subfolders become class labels) "
        "there, or set data.path to the folder that holds them.",
        captions=CaptionSettings(caption_length, min_word_count) if captions else None,
    )


def edges2cats(
    *, batch_size: int = 1, root: str | None = None, photos_dir: str | None = None,
    resolution: int = 256, load_size: int | None = 286, hflip: bool = True,
    holdout: float = 0.05, num_workers: int = 2, pair: str | dict[str, Any] | None = "edges",
) -> FileDataModule:
    """Cat photos (``photos_dir``, default ``ROOT/edges2cats/photos``) paired with their edges."""
    base = resolve_root(root)
    photos = base / "edges2cats" / "photos" if photos_dir is None else Path(photos_dir)
    return image_folder(
        name="edges2cats", folder=photos.expanduser().resolve(), batch_size=batch_size,
        resolution=resolution, channels=3, holdout=holdout, load_size=load_size, hflip=hflip,
        num_workers=num_workers, base=base, pair=pair,
        hint="edges2cats has no download (pix2pix never published it): put cat photos (about "
        f"2,000 JPEGs or PNGs, any size) in {photos}, or set data.photos_dir to a folder of "
        "them, or data.root=/path/to/data to use PATH/edges2cats/photos. Their edge maps are "
        "derived and cached on first use.",
    )
