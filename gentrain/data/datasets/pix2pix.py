"""The pix2pix datasets: tarballs of side-by-side A|B JPEGs in train/val/test folders."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from gentrain.data.core.batch import DataSpec
from gentrain.data.core.file_data import FileDataModule, FileDataset
from gentrain.data.core.images import Direction, SideBySide, list_images
from gentrain.data.core.transforms import augmentation
from gentrain.data.pairs.tasks import pair_file_module, parse_pair
from gentrain.data.storage.archive import download as fetch_url
from gentrain.data.storage.archive import safe_extract
from gentrain.data.storage.fetch import download_failed, download_off, unavailable
from gentrain.data.storage.roots import cache_dir, resolve_root
from gentrain.errors import GentrainError, require

URL = "http://efrosgans.eecs.berkeley.edu/pix2pix/datasets/{name}.tar.gz"
SPLITS = ("train", "val", "test")


def pix2pix(
    *, dataset: str, batch_size: int = 1, root: str | None = None, download: bool = True,
    direction: Direction = "AtoB", resolution: int = 256, load_size: int | None = 286,
    hflip: bool = True, num_workers: int = 2, pair: str | dict[str, Any] | None = None,
) -> FileDataModule:
    """A pix2pix set by name; ``image`` is the output side, ``source`` the input side.

    Training jitter as in the paper: resize to ``load_size``, random crop to ``resolution``,
    flip, identical on both sides (``load_size: null`` turns it off); eval images are only
    resized. In facades A is the photo and B the label map, so labels→photo is ``BtoA``.
    """
    require(re.fullmatch(r"[A-Za-z0-9_]+", dataset) is not None,
            f"data.dataset must be a pix2pix dataset name such as facades, not {dataset!r}.")
    require(direction in ("AtoB", "BtoA"), f"data.direction must be AtoB or BtoA, not "
            f"{direction!r}.")
    task = parse_pair(pair)
    base = resolve_root(root)
    folder = fetch_pix2pix(dataset, base / "pix2pix", download)
    prepare = SideBySide(resolution, direction)
    splits = {
        split: FileDataset(files, prepare)
        for split in SPLITS if (files := list_images(folder / split))
    }
    require("train" in splits, f"{folder} has no images in train/; the pix2pix dataset is "
            f"incomplete. Delete {folder} and run again to download it afresh.")
    spec = DataSpec(name=dataset, channels=3, height=resolution, width=resolution,
                    source_channels=3)
    module = FileDataModule(
        spec=spec, splits=splits, batch_size=batch_size, num_workers=num_workers,
        held_out="val" if "val" in splits else "test" if "test" in splits else "train",
        train_transforms=augmentation(resolution, load_size, hflip),
    )
    return pair_file_module(task, module, cache_dir(base))


def fetch_pix2pix(name: str, into: Path, download: bool) -> Path:
    """``into/name``: downloaded and safely extracted when missing (the tarball is removed)."""
    folder = into / name
    if folder.is_dir():
        return folder
    tarball = into / f"{name}.tar.gz"
    url = URL.format(name=name)
    if not tarball.is_file():
        if not download:
            raise _missing(name, into, download_off(), url)
        try:
            fetch_url(url, tarball)
        except (OSError, ValueError) as error:
            raise _missing(name, into, download_failed(url, error), url) from None
    safe_extract(tarball, into, name)
    tarball.unlink()
    return folder


def _missing(name: str, into: Path, tried: str, url: str) -> GentrainError:
    return unavailable(
        name, root=into.parent, tried=tried,
        place=[f"{name}.tar.gz from {url} at {into / name}.tar.gz (it is extracted on first "
               f"use), or its extracted folder as {into / name}/ with train/, val/ and test/ "
               "subfolders of A|B JPEGs"],
    )
