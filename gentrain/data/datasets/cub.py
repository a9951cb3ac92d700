"""Caltech-UCSD Birds (CUB-200-2011) with Reed et al.'s ten captions per image.

The images are CUB's own (``CUB_200_2011/images/<class>/<image>.jpg``); the captions and the
class splits come from Reed et al.'s cvpr2016 data (``cvpr2016_cub/text_c10/<class>/<image>
.txt`` and ``trainvalclasses.txt`` / ``testclasses.txt``), as their text-to-image GAN used
them: 150 train+val classes to train on, 50 unseen test classes. Neither can be downloaded
here (the captions live on Google Drive), so a missing file names where each archive goes.
"""

from __future__ import annotations

from pathlib import Path

from gentrain.data.core.file_data import FileDataModule
from gentrain.data.core.images import IMAGE_SUFFIXES
from gentrain.data.datasets.captions import (
    REED_SPLITS,
    TEXT_FOLDER,
    CaptionSettings,
    ReedLayout,
    image_key,
    reed_module,
)
from gentrain.data.storage.archive import unpack_if_present
from gentrain.data.storage.fetch import unavailable
from gentrain.data.storage.roots import resolve_root

FOLDER = "cub"
IMAGES = "CUB_200_2011"
CAPTIONS = "cvpr2016_cub"
IMAGES_URL = "https://data.caltech.edu/records/65de6-vp158"
CAPTIONS_URL = "https://drive.google.com/open?id=0B0ywwgffWnLLZW9uVHNjb2JmNlE"


def readable(folder_name: str) -> str:
    """``001.Black_footed_Albatross`` -> ``Black footed Albatross``."""
    return folder_name.partition(".")[2].replace("_", " ") or folder_name


def cub(
    *, batch_size: int = 64, root: str | None = None, resolution: int = 64,
    load_size: int | None = 76, hflip: bool = True, caption_length: int = 32,
    min_word_count: int = 1, num_workers: int = 2,
) -> FileDataModule:
    """CUB birds, centre square resized to ``resolution``, with ten captions each; labels are
    the 200 species (folder order); splits train (trainvalclasses) and test (testclasses)."""
    base = resolve_root(root)
    folder = base / FOLDER
    unpack_if_present(folder / f"{IMAGES}.tgz", folder, IMAGES)
    unpack_if_present(folder / f"{CAPTIONS}.tar.gz", folder, CAPTIONS)
    images, captions = folder / IMAGES / "images", folder / CAPTIONS
    needed = [images, captions / TEXT_FOLDER, *(captions / name for name in REED_SPLITS.values())]
    if not all(path.exists() for path in needed):
        raise unavailable(
            "cub", root=base,
            tried="CUB-200-2011 and Reed et al.'s captions are not downloaded automatically.",
            place=[f"{images}/ ({IMAGES}.tgz from {IMAGES_URL}, placed as {folder}/{IMAGES}.tgz, "
                   "is unpacked on first use)",
                   f"{captions}/ holding {TEXT_FOLDER}/, {' and '.join(REED_SPLITS.values())} "
                   f"(Reed et al.'s {CAPTIONS}.tar.gz from {CAPTIONS_URL}, placed as {folder}/"
                   f"{CAPTIONS}.tar.gz, is unpacked on first use)"],
            note="Missing now: " + ", ".join(str(p) for p in needed if not p.exists()) + ".",
        )
    return reed_module(
        ReedLayout("cub", captions, ImageIndex(images).find, readable,
                   images_hint=f"Put all of CUB-200-2011's images in {images}/<class>/ ("
                   f"{IMAGES}.tgz from {IMAGES_URL})."),
        batch_size=batch_size, resolution=resolution, load_size=load_size, hflip=hflip,
        settings=CaptionSettings(caption_length, min_word_count), num_workers=num_workers,
    )


class ImageIndex:
    """CUB's images by class folder and :func:`image_key`, each folder listed once."""

    def __init__(self, images: Path) -> None:
        self.images = images
        self.folders: dict[str, dict[str, Path]] = {}

    def find(self, class_name: str, key: str) -> Path | None:
        if class_name not in self.folders:
            folder = self.images / class_name
            files = sorted(folder.iterdir()) if folder.is_dir() else []
            self.folders[class_name] = {image_key(p.stem): p for p in files
                                        if p.suffix.lower() in IMAGE_SUFFIXES}
        return self.folders[class_name].get(key)
