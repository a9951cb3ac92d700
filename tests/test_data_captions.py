"""The caption datasets through their real loaders, offline, on tiny files in the exact formats:
sidecar NAME.txt files (data=folder), Reed et al.'s text_c10 folders and class lists (CUB,
Oxford-102), COCO's captions_*2017.json.

Every image is one flat colour and every caption names that colour, so a batch shows whether
each image came with one of its own captions, after any flip or crop.
"""

from __future__ import annotations

import json
import tarfile
import zipfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.datasets import Flowers102

from gentrain.data.core.file_data import FileDataModule
from gentrain.data.datasets import flowers as flowers_module
from gentrain.data.datasets.captions import exactly, image_key
from gentrain.data.datasets.coco import coco
from gentrain.data.datasets.cub import cub
from gentrain.data.datasets.flowers import flowers
from gentrain.data.datasets.folders import folder
from gentrain.errors import GentrainError
from gentrain.text.tokenizer import tokenizer_of, words

CPU = torch.device("cpu")
PALETTE = {
    "red": (220, 30, 30), "green": (30, 190, 40), "blue": (30, 40, 220),
    "yellow": (235, 220, 40), "purple": (140, 40, 170), "orange": (240, 140, 20),
    "white": (245, 245, 245), "black": (12, 12, 12), "pink": (240, 150, 190),
}


@pytest.fixture(autouse=True)
def one_thread() -> Iterable[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------ writers
def save_flat(path: Path, colour: str, size: tuple[int, int] = (28, 22)) -> None:
    """A flat image of a palette colour (non-square, so the centre crop runs)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, PALETTE[colour]).save(path, quality=95)


def phrasings(colour: str, n: int, thing: str = "bird") -> list[str]:
    """``n`` different captions, each naming ``colour``: "A red bird, told 3 ways."."""
    return [f"A {colour} {thing}, told {j} ways." for j in range(n)]


def normal(text: str) -> str:
    return " ".join(words(text))


CUB_CLASSES = {  # class folder -> species as the image files spell it
    "001.Black_footed_Albatross": "Black_Footed_Albatross",
    "009.Brewer_Blackbird": "Brewer_Blackbird",
    "014.Indigo_Bunting": "Indigo_Bunting",
}
CUB_COLOURS = {"001.Black_footed_Albatross": ("red", "green"),
               "009.Brewer_Blackbird": ("blue", "yellow"),
               "014.Indigo_Bunting": ("purple", "black")}  # the test class: unseen colours


def write_reed_captions(folder: Path, captions: dict[str, dict[str, list[str]]],
                        trainval: list[str], test: list[str]) -> None:
    """FOLDER/text_c10/<class>/<stem>.txt (one caption per line) and the class lists of
    Reed et al.'s cvpr2016 data (allclasses, trainclasses, valclasses, trainvalclasses,
    testclasses)."""
    for name, files in captions.items():
        for stem, lines in files.items():
            path = folder / "text_c10" / name / f"{stem}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(f"{line}\n" for line in lines))
    lists = {"allclasses": sorted(captions), "trainvalclasses": trainval, "testclasses": test,
             "trainclasses": trainval[:-1], "valclasses": trainval[-1:]}
    for name, classes in lists.items():
        (folder / f"{name}.txt").write_text("".join(f"{c}\n" for c in classes))


def write_cub(root: Path, captions_as_tarball: bool = False) -> dict[Path, list[str]]:
    """ROOT/cub/CUB_200_2011/images/<class>/<Species>_<NNNN>_<id>.jpg and Reed's
    ROOT/cub/cvpr2016_cub/; returns each image's ten captions. As in the published files, one
    species is spelt differently in the caption file names (Brewers_ for Brewer_)."""
    folder = root / "cub"
    images, texts, written = folder / "CUB_200_2011" / "images", {}, {}
    for c, (name, species) in enumerate(CUB_CLASSES.items()):
        texts[name] = {}
        for k, colour in enumerate(CUB_COLOURS[name]):
            stem = f"{species}_{k + 1:04d}_{7000 + 10 * c + k}"
            save_flat(images / name / f"{stem}.jpg", colour)
            caption_stem = stem.replace("Brewer_", "Brewers_")
            texts[name][caption_stem] = written[images / name / f"{stem}.jpg"] = phrasings(
                colour, 10)
    captions = folder / "cvpr2016_cub"
    write_reed_captions(captions, texts, trainval=list(CUB_CLASSES)[:2],
                        test=list(CUB_CLASSES)[2:])
    if captions_as_tarball:
        with tarfile.open(folder / "cvpr2016_cub.tar.gz", "w:gz") as tar:
            tar.add(captions, arcname="cvpr2016_cub")
        for path in sorted(captions.rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
        captions.rmdir()
    return written


FLOWER_CLASSES = {"class_00001": {6734: "pink", 6735: "white"},
                  "class_00077": {1: "orange", 2: "yellow"},
                  "class_00052": {3: "purple"}}  # the test class


def write_flowers(root: Path, images: bool = True) -> dict[Path, list[str]]:
    """ROOT/flowers-102/jpg/image_XXXXX.jpg (torchvision's folder) and Reed's
    ROOT/flowers-102/cvpr2016_flowers/text_c10/class_XXXXX/image_XXXXX.txt."""
    folder = root / "flowers-102"
    texts, written = {}, {}
    for name, members in FLOWER_CLASSES.items():
        texts[name] = {}
        for number, colour in members.items():
            path = folder / "jpg" / f"image_{number:05d}.jpg"
            if images:
                save_flat(path, colour)
            texts[name][path.stem] = written[path] = phrasings(colour, 10, "flower")
    write_reed_captions(folder / "cvpr2016_flowers", texts,
                        trainval=["class_00001", "class_00077"], test=["class_00052"])
    return written


# ------------------------------------------------------------------ checks
def colour_of(image: torch.Tensor) -> str:
    """The palette colour nearest to an image's mean pixel."""
    mean = ((image.mean(dim=(1, 2)) + 1) * 127.5).tolist()
    return min(PALETTE, key=lambda c: sum((a - b) ** 2 for a, b in zip(PALETTE[c], mean,
                                                                          strict=True)))


def decoded_pairs(data: FileDataModule, batches: Iterable[dict[str, torch.Tensor]]
                  ) -> list[tuple[str, str]]:
    """(colour of the image, its decoded caption) for every example of ``batches``."""
    tokenizer = tokenizer_of(data.spec)
    pairs = []
    for batch in batches:
        assert batch["caption"].shape == (batch["image"].shape[0], data.spec.caption_length)
        assert batch["caption"].dtype == torch.long and "captions" not in batch
        for image, text in zip(batch["image"], tokenizer.decode(batch["caption"]), strict=True):
            pairs.append((colour_of(image), text))
    return pairs


def expected(data: FileDataModule, caption: str) -> str:
    """``caption`` as the tokenizer gives it back: its words, unknown ones as <unk>."""
    vocabulary = set(data.spec.vocabulary)
    return " ".join(w if w in vocabulary else "<unk>" for w in words(caption))


def assert_every_caption_reachable(data: FileDataModule, written: dict[Path, list[str]],
                                   batches: int) -> None:
    """Training batches pair each image with its own captions and, over ``batches``
    batches, with every one of them."""
    loader = data.train_loader(device=CPU, seed=3)
    seen = decoded_pairs(data, (next(loader) for _ in range(batches)))
    train = {str(p) for p in data.split("train").files}
    wanted = {(colour_of_file(p), normal(c)) for p, caps in written.items() if str(p) in train
              for c in caps}
    assert set(seen) == wanted


def colour_of_file(path: Path) -> str:
    pixel = np.asarray(Image.open(path).convert("RGB"))[5, 5].tolist()
    return min(PALETTE, key=lambda c: sum((a - b) ** 2 for a, b in zip(PALETTE[c], pixel,
                                                                          strict=True)))


# ------------------------------------------------------------------ data=folder, sidecars
def write_captioned_folder(folder_path: Path, colours: dict[str, list[str]]) -> None:
    """FOLDER/<name>.{jpg,png} with FOLDER/<name>.txt beside each (one caption per line)."""
    for k, (colour, captions) in enumerate(colours.items()):
        suffix = ".png" if k % 2 else ".jpg"
        save_flat(folder_path / f"img_{k}{suffix}", colour)
        (folder_path / f"img_{k}.txt").write_text("\n".join(captions) + "\n")


def test_folder_reads_sidecar_captions(tmp_path: Path) -> None:
    colours = {c: phrasings(c, 3, "block") for c in ("red", "green", "blue", "yellow", "pink")}
    colours["orange"] = ["an orange block", "", "..."]  # blank and word-less lines are skipped
    write_captioned_folder(tmp_path / "images", colours)
    data = folder(batch_size=5, path=str(tmp_path / "images"), root=str(tmp_path),
                  resolution=16, holdout=0.2, num_workers=0, captions=True, caption_length=8)
    spec = data.spec
    assert spec.captioned and spec.caption_length == 8 and spec.vocabulary[:2] == (
        "<pad>", "<unk>")
    assert len(data.split("train")) == 5 and len(data.split("test")) == 1
    assert data.split("train").captions.shape == (5, 3, 8)  # K: the most any image has
    # The vocabulary is the training split's: the held-out image's colour is unknown.
    held_out = colour_of_file(data.split("test").files[0])
    assert held_out not in spec.vocabulary and "block" in spec.vocabulary
    for split in ("train", "test"):
        for colour, text in decoded_pairs(data, data.eval_batches(split=split, device=CPU)):
            assert text == expected(data, colours[colour][0])  # eval passes take caption 0
    written = {p: [c for c in colours[colour_of_file(p)] if words(c)]
               for p in data.split("train").files}
    assert_every_caption_reachable(data, written, batches=40)
    assert not folder(batch_size=5, path=str(tmp_path / "images"), root=str(tmp_path),
                      holdout=0.2, num_workers=0).spec.captioned  # captions are opt-in


def test_folder_caption_settings(tmp_path: Path) -> None:
    colours = {"red": ["a red block with a very long caption that runs on"],
               "green": ["a green block"], "blue": ["a blue block"]}
    write_captioned_folder(tmp_path / "images", colours)
    data = folder(batch_size=3, path=str(tmp_path / "images"), holdout=0.0, resolution=16,
                  num_workers=0, captions=True, caption_length=4, min_word_count=2)
    assert data.spec.vocabulary == ("<pad>", "<unk>", "a", "block")  # seen twice or more
    tokenizer = tokenizer_of(data.spec)
    texts = tokenizer.decode(data.split("train").captions[:, 0])
    assert sorted(texts) == ["a <unk> block", "a <unk> block", "a <unk> block <unk>"]
    with pytest.raises(GentrainError, match="data.caption_length=0 must be"):
        folder(batch_size=3, path=str(tmp_path / "images"), captions=True, caption_length=0)


def test_folder_missing_or_empty_sidecar_is_explained(tmp_path: Path) -> None:
    images = tmp_path / "images"
    write_captioned_folder(images, {c: [f"a {c} block"] for c in ("red", "green", "blue")})
    (images / "img_1.txt").unlink()
    (images / "img_2.txt").unlink()
    settings = dict(batch_size=2, path=str(images), holdout=0.0, num_workers=0, captions=True)
    with pytest.raises(GentrainError) as error:
        folder(**settings)
    message = str(error.value)
    assert "2 of the 3 images" in message and str(images / "img_1.txt") in message
    assert "data.captions=false" in message and "\n" not in message
    (images / "img_1.txt").write_text("a green block\n")
    (images / "img_2.txt").write_text("\n  \n")
    with pytest.raises(GentrainError, match="holds no caption") as error:
        folder(**settings)
    assert str(images / "img_2.txt") in str(error.value)


# ------------------------------------------------------------------ CUB, Reed's text_c10
def test_cub_captions_labels_and_class_split(tmp_path: Path) -> None:
    written = write_cub(tmp_path)
    data = cub(batch_size=2, root=str(tmp_path), resolution=16, load_size=18, num_workers=0)
    spec = data.spec
    assert spec.name == "cub" and spec.captioned and spec.caption_length == 32
    assert spec.class_names == ("Black footed Albatross", "Brewer Blackbird", "Indigo Bunting")
    assert data.eval_split == "test"
    assert {split: len(data.split(split)) for split in ("train", "test")} == {"train": 4,
                                                                              "test": 2}
    assert data.split("train").captions.shape == (4, 10, 32)
    # Every image, the Brewers_/Brewer_ one included, has its own ten captions and class.
    for split in ("train", "test"):
        dataset = data.split(split)
        tokenizer = tokenizer_of(spec)
        for path, label, tokens in zip(dataset.files, dataset.labels, dataset.captions,
                                       strict=True):
            assert list(CUB_CLASSES)[int(label)] == path.parent.name
            assert tokenizer.decode(tokens) == [expected(data, c) for c in written[path]]
    test_colours = {colour for colour, _ in decoded_pairs(
        data, data.eval_batches(split="test", device=CPU))}
    assert test_colours == {"purple", "black"}
    assert "purple" not in spec.vocabulary  # the unseen classes' words are not model state
    batch = next(data.eval_batches(split="train", device=CPU))
    assert batch["image"].shape == (2, 3, 16, 16) and batch["label"].tolist() == [0, 0]
    for colour, text in decoded_pairs(data, [batch]):
        assert text == normal(f"A {colour} bird, told 0 ways.")
    assert_every_caption_reachable(data, written, batches=300)  # 150 sightings per image


def test_cub_unpacks_the_caption_archive(tmp_path: Path) -> None:
    write_cub(tmp_path, captions_as_tarball=True)
    data = cub(batch_size=2, root=str(tmp_path), resolution=16, num_workers=0)
    assert (tmp_path / "cub" / "cvpr2016_cub" / "text_c10").is_dir()
    assert len(data.split("train")) == 4


def test_missing_cub_names_both_archives(tmp_path: Path) -> None:
    with pytest.raises(GentrainError) as error:
        cub(batch_size=2, root=str(tmp_path))
    message = str(error.value)
    assert "\n" not in message and "data.root" in message
    for part in (tmp_path / "cub" / "CUB_200_2011" / "images", tmp_path / "cub" / "cvpr2016_cub",
                 "CUB_200_2011.tgz", "cvpr2016_cub.tar.gz", "trainvalclasses.txt",
                 "testclasses.txt", "text_c10", "data.caltech.edu", "drive.google.com"):
        assert str(part) in message


def test_cub_broken_files_are_explained(tmp_path: Path) -> None:
    write_cub(tmp_path)
    text_c10 = tmp_path / "cub" / "cvpr2016_cub" / "text_c10"
    empty = text_c10 / "014.Indigo_Bunting" / "Indigo_Bunting_0001_7020.txt"
    empty.write_text("")
    with pytest.raises(GentrainError, match="holds no caption") as error:
        cub(batch_size=2, root=str(tmp_path), num_workers=0)
    assert str(empty) in str(error.value)
    empty.write_text("a purple bird\n")
    image = tmp_path / "cub" / "CUB_200_2011" / "images" / "009.Brewer_Blackbird"
    (image / "Brewer_Blackbird_0002_7011.jpg").unlink()
    with pytest.raises(GentrainError, match="1 captioned image") as error:
        cub(batch_size=2, root=str(tmp_path), num_workers=0)
    assert "Brewers_Blackbird_0002_7011" in str(error.value) and str(image.parent) in str(
        error.value)


def test_image_keys_and_fixed_caption_count() -> None:
    assert image_key("Black_Footed_Albatross_0001_796111") == "0001_796111"
    assert image_key("Brewers_Blackbird_0002_2278") == image_key("Brewer_Blackbird_0002_2278")
    assert image_key("image_06734") == "06734" and image_key("cover") == "cover"
    assert exactly(["a", "b", "c", "d", "e", "f"], 5) == ["a", "b", "c", "d", "e"]
    assert exactly(["a", "b"], 5) == ["a", "b", "a", "b", "a"]


# ------------------------------------------------------------------ Oxford-102 flowers
def test_flowers_captions_and_class_names(tmp_path: Path) -> None:
    written = write_flowers(tmp_path)
    data = flowers(batch_size=2, root=str(tmp_path), download=False, resolution=16,
                   load_size=None, num_workers=0)
    assert data.spec.class_names == ("pink primrose", "wild pansy", "passion flower")
    assert [len(data.split(s)) for s in ("train", "test")] == [4, 1]
    tokenizer = tokenizer_of(data.spec)
    for split in ("train", "test"):
        dataset = data.split(split)
        for path, tokens in zip(dataset.files, dataset.captions, strict=True):
            assert tokenizer.decode(tokens) == [expected(data, c) for c in written[path]]
    labels = {p.name: int(label) for p, label in zip(data.split("train").files,
                                                     data.split("train").labels, strict=True)}
    assert labels == {"image_06734.jpg": 0, "image_06735.jpg": 0, "image_00001.jpg": 2,
                      "image_00002.jpg": 2}
    assert_every_caption_reachable(data, written, batches=300)


def test_flowers_images_come_from_torchvision_download(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    written = write_flowers(tmp_path, images=False)
    calls = []

    def fake_download(url: str, folder: str, md5: str) -> None:
        calls.append((url, md5))
        for path in written:
            save_flat(Path(folder) / "jpg" / path.name, "red")

    monkeypatch.setattr(flowers_module, "download_and_extract_archive", fake_download)
    data = flowers(batch_size=2, root=str(tmp_path), resolution=16, num_workers=0)
    name, md5 = Flowers102._file_dict["image"]
    assert calls == [(Flowers102._download_url_prefix + name, md5)]
    assert (tmp_path / "flowers-102" / "jpg" / "image_00001.jpg").is_file()
    assert len(data.split("train")) == 4


def test_missing_flowers_files_are_placed(tmp_path: Path) -> None:
    with pytest.raises(GentrainError) as error:
        flowers(batch_size=2, root=str(tmp_path), download=False)
    message = str(error.value)
    for part in (tmp_path / "flowers-102" / "cvpr2016_flowers", "cvpr2016_flowers.tar.gz",
                 "text_c10", "trainvalclasses.txt", "drive.google.com"):
        assert str(part) in message
    write_flowers(tmp_path, images=False)
    with pytest.raises(GentrainError) as error:
        flowers(batch_size=2, root=str(tmp_path), download=False)
    message = str(error.value)
    assert "data.download=false" in message and "102flowers.tgz" in message
    assert str(tmp_path / "flowers-102" / "jpg") in message


# ------------------------------------------------------------------ COCO captions
COCO_SPLITS = {  # image id -> (colour, number of captions); 0 captions: listed, never captioned
    "train2017": {9: ("red", 5), 25: ("green", 6), 30: ("blue", 7), 34: ("yellow", 5),
                  36: ("pink", 0)},
    "val2017": {139: ("orange", 5), 285: ("white", 6)},
}


def write_coco(root: Path, zipped_annotations: bool = False) -> dict[Path, list[str]]:
    """ROOT/coco/{train2017,val2017}/<12-digit id>.jpg and annotations/captions_*.json in
    COCO's format (info, licenses, images, annotations), annotations in no particular order;
    returns each captioned image's captions in annotation-id order."""
    folder = root / "coco"
    written = {}
    files = {}
    rng = np.random.default_rng(0)
    next_id = 600000
    for split, images in COCO_SPLITS.items():
        entries, notes = [], []
        for image_id, (colour, count) in images.items():
            name = f"{image_id:012d}.jpg"
            save_flat(folder / split / name, colour, size=(32, 24))
            entries.append({"license": 1, "file_name": name, "height": 24, "width": 32,
                            "coco_url": f"http://images.cocodataset.org/{split}/{name}",
                            "date_captured": "2013-11-14 17:02:52", "id": image_id,
                            "flickr_url": f"http://farm1.staticflickr.com/{name}"})
            captions = [f"A {colour} bus parked in street {j}. " for j in range(count)]
            for caption in captions:
                next_id += int(rng.integers(1, 50))
                notes.append({"image_id": image_id, "id": next_id, "caption": caption})
            if count:
                written[folder / split / name] = captions
        notes = [notes[i] for i in rng.permutation(len(notes))]
        files[f"annotations/captions_{split}.json"] = json.dumps(
            {"info": {"description": "COCO 2017 Dataset", "version": "1.0", "year": 2017},
             "licenses": [{"url": "http://creativecommons.org/licenses/by-nc-sa/2.0/",
                           "id": 1, "name": "Attribution-NonCommercial-ShareAlike License"}],
             "images": entries, "annotations": notes})
    if zipped_annotations:
        with zipfile.ZipFile(folder / "annotations_trainval2017.zip", "w") as archive:
            for name, text in files.items():
                archive.writestr(name, text)
    else:
        for name, text in files.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(text)
    return written


def test_coco_keeps_the_first_five_captions(tmp_path: Path) -> None:
    written = write_coco(tmp_path)
    data = coco(batch_size=2, root=str(tmp_path), resolution=16, load_size=18, num_workers=0)
    assert data.spec.captioned and data.spec.label_kind is None and data.eval_split == "val"
    train, val = data.split("train"), data.split("val")
    assert [p.name for p in train.files] == [f"{i:012d}.jpg" for i in (9, 25, 30, 34)]
    assert train.captions.shape == (4, 5, 32) and val.captions.shape == (2, 5, 32)
    tokenizer = tokenizer_of(data.spec)
    for dataset in (train, val):
        for path, tokens in zip(dataset.files, dataset.captions, strict=True):
            assert tokenizer.decode(tokens) == [expected(data, c) for c in written[path][:5]]
    for colour, text in decoded_pairs(data, data.eval_batches(split="val", device=CPU)):
        assert text == expected(data, f"A {colour} bus parked in street 0.")
    assert_every_caption_reachable(
        data, {p: caps[:5] for p, caps in written.items()}, batches=150)
    seven = coco(batch_size=2, root=str(tmp_path), resolution=16, num_workers=0,
                 captions_per_image=7)
    texts = tokenizer_of(seven.spec).decode(seven.split("train").captions[0])
    assert texts == [normal(c) for c in exactly(written[train.files[0]], 7)]


def test_coco_unpacks_annotations_and_explains_missing_files(tmp_path: Path) -> None:
    with pytest.raises(GentrainError) as error:
        coco(batch_size=2, root=str(tmp_path))
    message = str(error.value)
    for part in ("captions_train2017.json", "captions_val2017.json",
                 "annotations_trainval2017.zip", "zips/train2017.zip", "zips/val2017.zip",
                 str(tmp_path / "coco" / "train2017")):
        assert part in message
    written = write_coco(tmp_path, zipped_annotations=True)
    data = coco(batch_size=2, root=str(tmp_path), resolution=16, num_workers=0)
    assert (tmp_path / "coco" / "annotations" / "captions_val2017.json").is_file()
    assert len(data.split("train")) == 4
    next(iter(written)).unlink()
    with pytest.raises(GentrainError, match="1 of the 4 images") as error:
        coco(batch_size=2, root=str(tmp_path), num_workers=0)
    assert "000000000009.jpg" in str(error.value)
    save_flat(next(iter(written)), "red")
    (tmp_path / "coco" / "annotations" / "captions_val2017.json").write_text('{"images": []}')
    with pytest.raises(GentrainError, match="not a COCO captions file"):
        coco(batch_size=2, root=str(tmp_path), num_workers=0)

