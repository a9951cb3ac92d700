"""Captions read from files: sidecar text files, Reed et al.'s ``text_c10`` folders, COCO's
lists; turned into token ids with the tokenizer of the training split's captions.

Every image keeps K captions as token ids (N, K, L) and the training stream draws one per
sighting (``choose_caption``). K is fixed per dataset, so a split is one dense tensor: an image
with fewer than K captions repeats its own in turn (never a padding caption that would have
to be masked), and one with more keeps its first K. The vocabulary comes from the training
split only, as a held-out split's words must not leak into the model state.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from gentrain.data.core.batch import DataSpec
from gentrain.data.core.file_data import FileDataModule, FileDataset
from gentrain.data.core.images import SquareImage
from gentrain.data.core.transforms import augmentation
from gentrain.errors import GentrainError, require
from gentrain.text.tokenizer import WordTokenizer, words

# Reed et al.'s class splits (cvpr2016 data): their text-to-image models train on the
# train+val classes and are shown the test classes' captions, which they never saw.
REED_SPLITS = {"train": "trainvalclasses.txt", "test": "testclasses.txt"}
TEXT_FOLDER = "text_c10"


@dataclass(frozen=True)
class CaptionSettings:
    """``length`` tokens per caption; words seen fewer than ``min_word_count`` times in the
    training captions become ``<unk>``; ``per_image`` is K (None: the most any image has)."""

    length: int = 32
    min_word_count: int = 1
    per_image: int | None = None

    def __post_init__(self) -> None:
        for key, value in (("caption_length", self.length),
                           ("min_word_count", self.min_word_count),
                           ("captions_per_image", self.per_image)):
            if value is None and key == "captions_per_image":
                continue
            require(isinstance(value, int) and not isinstance(value, bool) and value >= 1,
                    f"data.{key}={value!r} must be a whole number >= 1.")


def caption_lines(text: str) -> list[str]:
    """The captions of one caption file: one per line. Lines without a word (blank, or
    punctuation only) are skipped: they could condition nothing."""
    return [line.strip() for line in text.splitlines() if words(line)]


def read_caption_file(path: Path, fix: str) -> list[str]:
    """The captions in ``path``, or a clear error when it holds none; ``fix`` says what to
    do. Bytes that are not UTF-8 (a few in the published caption files) are replaced."""
    captions = caption_lines(path.read_text(encoding="utf-8", errors="replace"))
    if not captions:
        raise GentrainError(
            f"The caption file {path} holds no caption (no line with a word in it). {fix}"
        )
    return captions


def exactly(captions: Sequence[str], count: int) -> list[str]:
    """``count`` captions: the first ``count``, or all of them repeated in turn."""
    return [captions[i % len(captions)] for i in range(count)]


def tokenize_splits(
    texts: Mapping[str, Sequence[Sequence[str]]], settings: CaptionSettings
) -> tuple[dict[str, Tensor], WordTokenizer]:
    """Per split, the long (N, K, L) token ids of every image's captions, and the tokenizer
    built from the ``train`` split's captions (every caption of every image, all counted)."""
    tokenizer = WordTokenizer.build(
        (caption for image in texts["train"] for caption in image), settings.length,
        settings.min_word_count,
    )
    count = settings.per_image or max(len(image) for split in texts.values() for image in split)
    tokens = {
        split: tokenizer.encode([c for image in images for c in exactly(image, count)]).view(
            len(images), count, settings.length)
        for split, images in texts.items()
    }
    return tokens, tokenizer


def captioned(spec: DataSpec, tokenizer: WordTokenizer) -> DataSpec:
    """``spec`` with the tokenizer's vocabulary and caption length (saved in checkpoints)."""
    return dataclasses.replace(spec, vocabulary=tokenizer.vocabulary,
                               caption_length=tokenizer.max_length)


# -- Reed et al.'s text_c10 layout (CUB-200-2011, Oxford-102) ---------------------------------


def read_class_list(path: Path) -> list[str]:
    """Class folder names, one per line (``001.Black_footed_Albatross``, ``class_00001``)."""
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    require(bool(names), f"The class list {path} is empty; replace it with the original file "
            "from Reed et al.'s caption archive.")
    return names


def image_key(stem: str) -> str:
    """What identifies an image within its class: the trailing numbers of its name
    (``Black_Footed_Albatross_0001_796111`` -> ``0001_796111``, ``image_06734`` -> ``06734``).
    A few of Reed's CUB caption files spell the species differently from the image files
    (``Brewers_Blackbird`` for ``Brewer_Blackbird``); the numbers always agree."""
    match = re.search(r"\d[\d_]*$", stem)
    return match.group() if match else stem


@dataclass(frozen=True)
class ReedLayout:
    """A dataset in Reed et al.'s layout: ``captions_dir`` holds ``text_c10/<class>/<image>
    .txt`` (ten lines each) and the class lists; ``image_of(class, key)`` finds an image
    (None when absent); ``readable`` turns a class folder name into a class name."""

    name: str
    captions_dir: Path
    image_of: Callable[[str, str], Path | None]
    readable: Callable[[str], str]
    images_hint: str  # where the images belong, for the error when some are missing


def reed_module(
    layout: ReedLayout, *, batch_size: int, resolution: int, load_size: int | None,
    hflip: bool, settings: CaptionSettings, num_workers: int,
) -> FileDataModule:
    """Train (train+val classes) and test (test classes) splits of every captioned image;
    labels index the sorted class folders of both lists (CUB's ``001.`` ... ``200.``)."""
    lists = {split: read_class_list(layout.captions_dir / name)
             for split, name in REED_SPLITS.items()}
    classes = sorted({name for names in lists.values() for name in names})
    files: dict[str, list[Path]] = {split: [] for split in lists}
    labels: dict[str, list[int]] = {split: [] for split in lists}
    texts: dict[str, list[list[str]]] = {split: [] for split in lists}
    missing: list[str] = []
    fix = ("Replace it with the original from Reed et al.'s caption archive, or delete it "
           "(its image is then left out).")
    for split, names in lists.items():
        for name in names:
            folder = layout.captions_dir / TEXT_FOLDER / name
            require(folder.is_dir(), f"{folder} does not exist, but {REED_SPLITS[split]} lists "
                    f"the class {name!r}. The caption archive is incomplete: unpack it again.")
            for text_file in sorted(folder.glob("*.txt")):
                image = layout.image_of(name, image_key(text_file.stem))
                if image is None:
                    missing.append(f"{name}/{text_file.stem}")
                    continue
                files[split].append(image)
                labels[split].append(classes.index(name))
                texts[split].append(read_caption_file(text_file, fix))
    if missing:
        raise GentrainError(
            f"Dataset '{layout.name}': {len(missing)} captioned image(s) have no image file, "
            f"the first {missing[0]}. {layout.images_hint}"
        )
    require(bool(files["train"]), f"Dataset '{layout.name}' has no caption file under "
            f"{layout.captions_dir / TEXT_FOLDER} for the classes of trainvalclasses.txt.")
    tokens, tokenizer = tokenize_splits(texts, settings)
    prepare = SquareImage(resolution)
    splits = {split: FileDataset(files[split], prepare, torch.tensor(labels[split]),
                                 captions=tokens[split]) for split in lists}
    spec = DataSpec(
        name=layout.name, channels=3, height=resolution, width=resolution, label_kind="class",
        num_classes=len(classes), class_names=tuple(layout.readable(c) for c in classes),
    )
    return FileDataModule(
        spec=captioned(spec, tokenizer), splits=splits, batch_size=batch_size,
        num_workers=num_workers, held_out="test",
        train_transforms=augmentation(resolution, load_size, hflip),
    )
