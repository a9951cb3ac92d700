"""COCO captions (2017): ``annotations/captions_{train,val}2017.json`` and the images in
``train2017/`` and ``val2017/``.

Each image has five captions, a few six or seven. Every image keeps exactly
``captions_per_image`` (5) of them, the first by annotation id: the split stays one dense
(N, 5, L) tensor, every image weighs the same in training whatever its number of captions,
and five is what COCO's caption benchmarks use as references; all that is lost is the sixth
and seventh captions of a few hundred images (about 0.3%). The images are 19 GB and not
downloaded here; zips placed in the dataset's folder are unpacked on first use.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from gentrain.data.core.batch import DataSpec
from gentrain.data.core.file_data import FileDataModule, FileDataset
from gentrain.data.core.images import SquareImage
from gentrain.data.core.transforms import augmentation
from gentrain.data.datasets.captions import CaptionSettings, captioned, tokenize_splits
from gentrain.data.storage.archive import unpack_if_present
from gentrain.data.storage.fetch import unavailable
from gentrain.data.storage.roots import resolve_root
from gentrain.errors import GentrainError, require
from gentrain.text.tokenizer import words

FOLDER = "coco"
SPLITS = {"train": "train2017", "val": "val2017"}
ANNOTATIONS = "annotations"
ANNOTATIONS_ZIP = "annotations_trainval2017.zip"
URL = "http://images.cocodataset.org"


def caption_file(folder: Path, split: str) -> Path:
    return folder / ANNOTATIONS / f"captions_{SPLITS[split]}.json"


def read_captions(path: Path) -> list[tuple[str, list[str]]]:
    """(file name, captions in annotation-id order) of every image with a caption, in
    image-id order; captions without a word are skipped, as in caption files."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        names = {image["id"]: image["file_name"] for image in data["images"]}
        by_image: dict[int, list[tuple[int, str]]] = defaultdict(list)
        for note in data["annotations"]:
            if words(note["caption"]):
                by_image[note["image_id"]].append((note["id"], note["caption"].strip()))
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise GentrainError(
            f"{path} is not a COCO captions file ({type(error).__name__}: {error}). Replace it "
            f"with the original from {ANNOTATIONS_ZIP} ({URL}/annotations/{ANNOTATIONS_ZIP})."
        ) from None
    return [(names[i], [text for _, text in sorted(by_image[i])])
            for i in sorted(names) if by_image.get(i)]


def coco(
    *, batch_size: int = 64, root: str | None = None, resolution: int = 64,
    load_size: int | None = 76, hflip: bool = True, caption_length: int = 32,
    min_word_count: int = 1, captions_per_image: int = 5, num_workers: int = 2,
) -> FileDataModule:
    """COCO 2017 images, centre square resized to ``resolution``, each with its first
    ``captions_per_image`` captions; splits train and val (held out)."""
    settings = CaptionSettings(caption_length, min_word_count, captions_per_image)
    base = resolve_root(root)
    folder = base / FOLDER
    unpack_if_present(folder / ANNOTATIONS_ZIP, folder, ANNOTATIONS)
    for name in SPLITS.values():
        unpack_if_present(folder / f"{name}.zip", folder, name)
    needed = [*(caption_file(folder, split) for split in SPLITS),
              *(folder / name for name in SPLITS.values())]
    if not all(path.exists() for path in needed):
        raise unavailable(
            "coco", root=base, tried="COCO's images (19 GB) are not downloaded automatically.",
            place=[f"{folder / ANNOTATIONS}/ holding captions_train2017.json and "
                   f"captions_val2017.json ({URL}/annotations/{ANNOTATIONS_ZIP})",
                   *(f"{folder / name}/ ({URL}/zips/{name}.zip)" for name in SPLITS.values())],
            note=f"Zips placed in {folder} are unpacked on first use. Missing now: "
            + ", ".join(str(p) for p in needed if not p.exists()) + ".",
        )
    files, texts = {}, {}
    for split, name in SPLITS.items():
        images = read_captions(caption_file(folder, split))
        require(bool(images), f"{caption_file(folder, split)} captions no image; replace it "
                f"with the original from {URL}/annotations/{ANNOTATIONS_ZIP}.")
        files[split] = [folder / name / file_name for file_name, _ in images]
        texts[split] = [captions for _, captions in images]
        absent = [path for path in files[split] if not path.is_file()]
        if absent:
            raise GentrainError(
                f"{len(absent)} of the {len(images)} images that {caption_file(folder, split)}"
                f" captions are missing from {folder / name}, the first {absent[0].name}. "
                f"Unpack all of {URL}/zips/{name}.zip there."
            )
    tokens, tokenizer = tokenize_splits(texts, settings)
    prepare = SquareImage(resolution)
    splits = {split: FileDataset(files[split], prepare, captions=tokens[split])
              for split in SPLITS}
    spec = DataSpec(name="coco", channels=3, height=resolution, width=resolution)
    return FileDataModule(
        spec=captioned(spec, tokenizer), splits=splits, batch_size=batch_size,
        num_workers=num_workers, held_out="val",
        train_transforms=augmentation(resolution, load_size, hflip),
    )
