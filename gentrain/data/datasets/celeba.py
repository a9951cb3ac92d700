"""CelebA aligned faces with their 40 binary attributes, read from the JPEG folder.

torchvision's CelebA class checks the files (MD5 of the list files) and parses the split and
attribute lists; the loader workers then decode, centre-crop and resize the JPEGs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torchvision.datasets import CelebA

from gentrain.data.core.batch import DataSpec
from gentrain.data.core.file_data import FileDataModule, FileDataset
from gentrain.data.core.images import SquareImage
from gentrain.data.core.transforms import random_hflip
from gentrain.data.pairs.tasks import pair_file_module, parse_pair
from gentrain.data.storage.archive import unpack_if_present
from gentrain.data.storage.fetch import load_torchvision
from gentrain.data.storage.roots import cache_dir, resolve_root
from gentrain.errors import require

SPLITS = ("train", "valid", "test")
IMAGES = "img_align_celeba"
HOME = "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html"


def read_partition(path: Path, filenames: list[str]) -> list[int]:
    """The split code (0 train, 1 valid, 2 test) of each file, in torchvision's row order.

    torchvision is asked for all rows at once (parsing the lists once instead of per split),
    so the partition column is read here.
    """
    rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
    require([row[0] for row in rows] == list(filenames),
            f"{path} does not list the same images, in the same order, as the attribute list; "
            "replace both with the original CelebA files.")
    return [int(row[1]) for row in rows]


def celeba(
    *, batch_size: int, root: str | None = None, download: bool = True, resolution: int = 64,
    crop: int = 148, attributes: list[str] | None = None, hflip: bool = True,
    num_workers: int = 2, pair: str | dict[str, Any] | None = None,
) -> FileDataModule:
    """CelebA: centre ``crop`` of the 178×218 aligned faces resized to ``resolution``; labels
    are the 40 attributes as {0, 1} floats (or the named subset ``attributes``); splits
    train, valid, test as in list_eval_partition.txt."""
    task = parse_pair(pair)
    base = resolve_root(root)
    folder = base / CelebA.base_folder
    unpack_if_present(folder / f"{IMAGES}.zip", folder, IMAGES)
    lists = [name for _, _, name in CelebA.file_list if not name.endswith(".zip")]
    data = load_torchvision(
        "celeba", lambda r, d: CelebA(str(r), split="all", download=d),
        root=base, download=download, url="Google Drive (torchvision's CelebA file ids)",
        folder=CelebA.base_folder,
        expected=[folder / IMAGES, *(folder / name for name in lists)],
        note=f"{IMAGES} is the folder of the 202,599 aligned JPEGs ({IMAGES}.zip in "
        f"{folder} is unpacked on first use). Google Drive often refuses these downloads "
        f"(daily quota exceeded) and needs the gdown package; download 'Align&Cropped "
        f"Images' and the annotation and evaluation lists from {HOME} instead.",
    )
    names = [name for name in data.attr_names if name]  # the header line ends with a space
    chosen = names if attributes is None else list(attributes)
    unknown = sorted(set(chosen) - set(names))
    require(not unknown, f"Unknown CelebA attribute(s) {unknown} in data.attributes; the "
            f"attributes are {names}.")
    labels = data.attr[:, [names.index(name) for name in chosen]].float()
    files = [folder / IMAGES / Path(name) for name in data.filename]
    partition = torch.tensor(read_partition(folder / "list_eval_partition.txt", data.filename))
    prepare = SquareImage(resolution, crop)
    splits = {}
    for code, split in enumerate(SPLITS):
        rows = torch.nonzero(partition == code).flatten().tolist()
        splits[split] = FileDataset([files[i] for i in rows], prepare, labels[rows])
    spec = DataSpec(
        name="celeba", channels=3, height=resolution, width=resolution,
        label_kind="attributes", num_classes=len(chosen), class_names=tuple(chosen),
    )
    module = FileDataModule(
        spec=spec, splits=splits, batch_size=batch_size, num_workers=num_workers,
        held_out="valid", train_transforms=[random_hflip] if hflip else [],
    )
    return pair_file_module(task, module, cache_dir(base))
