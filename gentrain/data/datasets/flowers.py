"""Oxford-102 Flowers with Reed et al.'s ten captions per image.

The images are torchvision's Flowers102 download (``flowers-102/jpg/image_XXXXX.jpg``, fetched
with torchvision's own URL, checksum and extraction); the captions and class splits come from
Reed et al.'s cvpr2016 data (``cvpr2016_flowers/text_c10/class_XXXXX/image_XXXXX.txt``,
``trainvalclasses.txt`` / ``testclasses.txt``: 82 classes to train on, 20 unseen ones to
test). The class folders carry the Oxford label numbers, so they also name the class.
Reed's class split replaces Oxford's image split, so the label files torchvision also fetches
(and reads with scipy) are not needed.
"""

from __future__ import annotations

import re
from pathlib import Path

from torchvision.datasets import Flowers102
from torchvision.datasets.utils import download_and_extract_archive

from gentrain.data.core.file_data import FileDataModule
from gentrain.data.datasets.captions import (
    REED_SPLITS,
    TEXT_FOLDER,
    CaptionSettings,
    ReedLayout,
    reed_module,
)
from gentrain.data.storage.archive import unpack_if_present
from gentrain.data.storage.fetch import load_torchvision, unavailable
from gentrain.data.storage.roots import resolve_root

FOLDER = "flowers-102"  # torchvision's folder under the data root
CAPTIONS = "cvpr2016_flowers"
CAPTIONS_URL = "https://drive.google.com/open?id=0B0ywwgffWnLLcms2WWJQRFNSWXM"


def image_archive() -> tuple[str, str]:
    """torchvision's URL and MD5 of the Oxford-102 images (102flowers.tgz)."""
    name, md5 = Flowers102._file_dict["image"]
    return Flowers102._download_url_prefix + name, md5


def fetch_images(root: Path, download: bool) -> Path:
    """``root/flowers-102/jpg``, downloaded and extracted as torchvision does when asked;
    FileNotFoundError when it is not there."""
    folder = root / FOLDER
    if download:
        url, md5 = image_archive()
        download_and_extract_archive(url, str(folder), md5=md5)
    if not (folder / "jpg").is_dir():
        raise FileNotFoundError(folder / "jpg")
    return folder / "jpg"


def readable(folder_name: str) -> str:
    """``class_00077`` -> ``passion flower`` (Oxford's label 77, torchvision's names)."""
    match = re.fullmatch(r"class_(\d+)", folder_name)
    number = int(match.group(1)) if match else 0
    return Flowers102.classes[number - 1] if 1 <= number <= len(Flowers102.classes) else (
        folder_name)


def flowers(
    *, batch_size: int = 64, root: str | None = None, download: bool = True,
    resolution: int = 64, load_size: int | None = 76, hflip: bool = True,
    caption_length: int = 32, min_word_count: int = 1, num_workers: int = 2,
) -> FileDataModule:
    """Oxford-102 flowers, centre square resized to ``resolution``, ten captions each; labels
    are the 102 classes; splits train (trainvalclasses) and test (testclasses)."""
    base = resolve_root(root)
    folder = base / FOLDER
    captions = folder / CAPTIONS
    unpack_if_present(folder / f"{CAPTIONS}.tar.gz", folder, CAPTIONS)
    needed = [captions / TEXT_FOLDER, *(captions / name for name in REED_SPLITS.values())]
    place = (f"{captions}/ holding {TEXT_FOLDER}/, {' and '.join(REED_SPLITS.values())} (Reed "
             f"et al.'s {CAPTIONS}.tar.gz from {CAPTIONS_URL}, placed as {folder}/{CAPTIONS}"
             ".tar.gz, is unpacked on first use)")
    if not all(path.exists() for path in needed):  # before the images: no download in vain
        raise unavailable(
            "flowers", root=base, tried="Reed et al.'s captions are not downloaded "
            "automatically (the Oxford-102 images are, with data.download=true).",
            place=[place], note="Missing now: "
            + ", ".join(str(p) for p in needed if not p.exists()) + ".",
        )
    url, _ = image_archive()
    images = load_torchvision(
        "flowers", fetch_images, root=base, download=download, url=url, folder=FOLDER,
        expected=[folder / "jpg"],
        note=f"jpg/ is the folder of the 8,189 images in 102flowers.tgz from {url}.",
    )
    return reed_module(
        ReedLayout("flowers", captions, lambda _, key: present(images / f"image_{key}.jpg"),
                   readable, images_hint=f"Put all 8,189 Oxford-102 images in {images}/ "
                   f"(102flowers.tgz from {url}), or delete {folder / 'jpg'} and run again "
                   "with data.download=true."),
        batch_size=batch_size, resolution=resolution, load_size=load_size, hflip=hflip,
        settings=CaptionSettings(caption_length, min_word_count), num_workers=num_workers,
    )


def present(path: Path) -> Path | None:
    return path if path.is_file() else None
