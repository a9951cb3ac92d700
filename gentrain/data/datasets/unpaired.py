"""Unpaired image collections for CycleGAN: two folders, or the CycleGAN authors' archives.

The named sets (horse2zebra, apple2orange, ...) are zip archives of NAME/trainA, trainB,
testA and testB at ``https://efrosgans.eecs.berkeley.edu/cyclegan/datasets/NAME.zip``, fetched
into ROOT/cyclegan/ and extracted safely. Each domain is streamed on its own (see
gentrain.data.pairs.unpaired); training jitter is pix2pix's (resize to ``load_size``, random
crop to ``resolution``, flip), drawn independently for A and B as in the reference code.
"""

from __future__ import annotations

from pathlib import Path

from gentrain.data.core.batch import DataSpec
from gentrain.data.core.file_data import FileDataModule, FileDataset
from gentrain.data.core.images import SquareImage, list_images
from gentrain.data.core.transforms import augmentation
from gentrain.data.datasets.folders import image_folder
from gentrain.data.pairs.unpaired import UnpairedDataModule, unpaired_spec
from gentrain.data.storage.archive import download as fetch_url
from gentrain.data.storage.archive import safe_extract
from gentrain.data.storage.fetch import download_failed, download_off, unavailable
from gentrain.data.storage.roots import resolve_root
from gentrain.errors import GentrainError, require

URL = "https://efrosgans.eecs.berkeley.edu/cyclegan/datasets/{name}.zip"
#: The collections the CycleGAN authors publish (all RGB, trainA/trainB/testA/testB).
COLLECTIONS = (
    "horse2zebra", "apple2orange", "summer2winter_yosemite", "monet2photo", "cezanne2photo",
    "ukiyoe2photo", "vangogh2photo", "maps", "iphone2dslr_flower", "facades",
)
SPLITS = ("train", "test")


def unpaired(
    *, a: str | None = None, b: str | None = None, batch_size: int = 1, root: str | None = None,
    resolution: int = 256, channels: int = 3, holdout: float = 0.05,
    load_size: int | None = 286, hflip: bool = True, num_workers: int = 2,
) -> UnpairedDataModule:
    """Domain A from folder ``a``, domain B from folder ``b`` (recursive, each split into
    train/test with ``holdout`` as data=folder does)."""
    require(a is not None and b is not None, "data=unpaired needs both domains' folders: "
            "data.a=/path/to/domain_A_images data.b=/path/to/domain_B_images.")
    base = resolve_root(root)
    domains = [
        image_folder(name=f"unpaired-{side}", folder=Path(path).expanduser().resolve(),
                     batch_size=batch_size, resolution=resolution, channels=channels,
                     holdout=holdout, load_size=load_size, hflip=hflip,
                     num_workers=num_workers, base=base, pair=None,
                     hint=f"Put domain {side.upper()}'s images (JPEG, PNG, ...) there, or point "
                     f"data.{side} at the folder that holds them.")
        for side, path in (("a", a), ("b", b))
    ]
    spec = unpaired_spec("unpaired", domains[0].spec, domains[1].spec)
    return UnpairedDataModule(spec=spec, domain_a=domains[0], domain_b=domains[1],
                              batch_size=batch_size)


def cyclegan(
    *, dataset: str, batch_size: int = 1, root: str | None = None, download: bool = True,
    resolution: int = 256, load_size: int | None = 286, hflip: bool = True,
    num_workers: int = 2,
) -> UnpairedDataModule:
    """A CycleGAN collection by name: A = NAME/trainA (testA), B = NAME/trainB (testB)."""
    require(dataset in COLLECTIONS, f"data.dataset={dataset!r} is not a CycleGAN collection; "
            f"choose one of {', '.join(COLLECTIONS)}, or use data=unpaired data.a=DIR "
            "data.b=DIR for your own two folders.")
    folder = fetch_cyclegan(dataset, resolve_root(root) / "cyclegan", download)
    prepare = SquareImage(resolution, channels=3)
    domains = []
    for side in ("A", "B"):
        splits = {split: FileDataset(files, prepare)
                  for split in SPLITS if (files := list_images(folder / f"{split}{side}"))}
        require("train" in splits, f"{folder} has no images in train{side}/; the dataset is "
                f"incomplete. Delete {folder} and run again to download it afresh.")
        domains.append(FileDataModule(
            spec=DataSpec(name=f"{dataset}-{side}", channels=3, height=resolution,
                          width=resolution),
            splits=splits, batch_size=batch_size, num_workers=num_workers,
            held_out="test" if "test" in splits else "train",
            train_transforms=augmentation(resolution, load_size, hflip),
        ))
    require(domains[0].held_out == domains[1].held_out,
            f"{folder} has test images for one domain only (testA/ and testB/ must both exist "
            "or both be absent).")
    return UnpairedDataModule(spec=unpaired_spec(dataset, domains[0].spec, domains[1].spec),
                              domain_a=domains[0], domain_b=domains[1], batch_size=batch_size)


def fetch_cyclegan(name: str, into: Path, download: bool) -> Path:
    """``into/name``: downloaded and safely extracted when missing (the zip is removed)."""
    folder = into / name
    if folder.is_dir():
        return folder
    archive = into / f"{name}.zip"
    url = URL.format(name=name)
    if not archive.is_file():
        if not download:
            raise _missing(name, into, download_off(), url)
        try:
            fetch_url(url, archive)
        except (OSError, ValueError) as error:
            raise _missing(name, into, download_failed(url, error), url) from None
    safe_extract(archive, into, name)
    archive.unlink()
    return folder


def _missing(name: str, into: Path, tried: str, url: str) -> GentrainError:
    return unavailable(
        name, root=into.parent, tried=tried,
        place=[f"{name}.zip from {url} at {into / name}.zip (it is extracted on first use), "
               f"or its extracted folder as {into / name}/ with trainA/, trainB/, testA/ and "
               "testB/ image folders"],
    )
