"""Tiny datasets written in the exact on-disk formats the real loaders read.

Every builder returns what a test needs to check the loader (labels, checksums). The files are
small but byte-compatible: idx headers, CIFAR pickles, CelebA list files, pix2pix A|B JPEGs.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import struct
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torchvision.datasets import CIFAR10, CelebA

CELEBA_ATTRS = [
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs",
    "Big_Lips", "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair",
    "Bushy_Eyebrows", "Chubby", "Double_Chin", "Eyeglasses", "Goatee", "Gray_Hair",
    "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open", "Mustache",
    "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline",
    "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings",
    "Wearing_Hat", "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie", "Young",
]


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------- MNIST (idx, .gz or raw)
def mnist_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Digit-like images: label k draws a bright bar at row 2k+4; grey noise elsewhere."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    images = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
    for i, label in enumerate(labels):
        images[i, 2 * label + 4, 4:24] = 255
    return images, labels


def idx_bytes(array: np.ndarray) -> bytes:
    """The idx format: 0x0000, type 0x08 (uint8), ndim, big-endian int32 sizes, data."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}i", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_mnist(root: Path, *, gz: bool, n_train: int = 40, n_test: int = 20) -> dict:
    """ROOT/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    out = {}
    for prefix, n, seed in (("train", n_train, 1), ("t10k", n_test, 2)):
        images, labels = mnist_images(n, seed)
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            data = idx_bytes(array)
            name = f"{prefix}-{kind}-ubyte"
            if gz:
                (raw / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (raw / name).write_bytes(data)
        out["train" if prefix == "train" else "test"] = (images, labels)
    return out


# ---------------------------------------------------------------- CIFAR-10 (python pickles)
CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                 "ship", "truck"]


def write_cifar10(root: Path, per_batch: int = 8) -> dict:
    """ROOT/cifar-10-batches-py/data_batch_1..5, test_batch, batches.meta; returns the data
    and the MD5s of the files (for :func:`patch_cifar_checksums`)."""
    folder = root / CIFAR10.base_folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    data = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        images = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [int(x) for x in rng.integers(0, 10, per_batch)]
        entry = {"batch_label": name, "labels": labels, "data": images,
                 "filenames": [f"{name}_{i}.png" for i in range(per_batch)]}
        (folder / name).write_bytes(pickle.dumps(entry, protocol=2))
        data[name] = (images.reshape(-1, 3, 32, 32), labels)
    meta = {"num_cases_per_batch": per_batch, "label_names": CIFAR_CLASSES, "num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    checksums = {p.name: md5(p) for p in folder.iterdir()}
    return {"data": data, "md5": checksums}


def patch_cifar_checksums(monkeypatch: pytest.MonkeyPatch, checksums: dict[str, str]) -> None:
    """Make torchvision's CIFAR10 expect the fixture files' MD5s instead of the real ones."""
    monkeypatch.setattr(CIFAR10, "train_list",
                        [[f"data_batch_{i}", checksums[f"data_batch_{i}"]] for i in range(1, 6)])
    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", checksums["test_batch"]]])
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": checksums["batches.meta"]})


# ---------------------------------------------------------------- CelebA (folder + lists)
def face(index: int) -> Image.Image:
    """A 178×218 'face': grey background, a central block whose colour encodes ``index``."""
    array = np.full((218, 178, 3), 90, dtype=np.uint8)
    array[:15] = 0  # a dark band outside the 148 centre crop (rows 35..183)
    array[80:140, 60:120] = (40 * (index % 6), 200, 255 - 20 * index % 256)
    return Image.fromarray(array)


def write_celeba(root: Path, partition: tuple[int, ...] = (0, 1, 0, 2, 0, 0, 1, 2, 0, 1, 2, 0),
                 zipped: bool = False) -> dict:
    """ROOT/celeba/img_align_celeba/NNNNNN.jpg and the five list files torchvision checks."""
    import zipfile

    folder = root / CelebA.base_folder
    images = folder / "img_align_celeba"
    images.mkdir(parents=True, exist_ok=True)
    names = [f"{i + 1:06d}.jpg" for i in range(len(partition))]
    attrs = np.where(np.random.default_rng(3).random((len(names), 40)) < 0.5, -1, 1)
    for i, name in enumerate(names):
        face(i).save(images / name, quality=95)
    n = len(names)
    rows = "\n".join(f"{name} {' '.join(f'{a:2d}' for a in attr)}"
                     for name, attr in zip(names, attrs, strict=True))
    (folder / "list_attr_celeba.txt").write_text(f"{n}\n{' '.join(CELEBA_ATTRS)} \n{rows}\n")
    (folder / "list_eval_partition.txt").write_text(
        "".join(f"{name} {p}\n" for name, p in zip(names, partition, strict=True)))
    (folder / "identity_CelebA.txt").write_text("".join(f"{name} {i % 3 + 1}\n"
                                                        for i, name in enumerate(names)))
    (folder / "list_bbox_celeba.txt").write_text(
        f"{n}\nimage_id x_1 y_1 width height\n"
        + "".join(f"{name} 95 71 226 313\n" for name in names))
    (folder / "list_landmarks_align_celeba.txt").write_text(
        f"{n}\nlefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x leftmouth_y "
        "rightmouth_x rightmouth_y\n"
        + "".join(f"{name} 69 109 106 113 77 142 73 152 108 154\n" for name in names))
    if zipped:
        with zipfile.ZipFile(folder / "img_align_celeba.zip", "w") as zf:
            for name in names:
                zf.write(images / name, f"img_align_celeba/{name}")
        for name in names:
            (images / name).unlink()
        images.rmdir()
    checksums = {p.name: md5(p) for p in folder.iterdir() if p.suffix == ".txt"}
    return {"names": names, "attrs": (attrs + 1) // 2, "partition": partition, "md5": checksums}


def patch_celeba_checksums(monkeypatch: pytest.MonkeyPatch, checksums: dict[str, str]) -> None:
    """Make torchvision's CelebA expect the fixture list files' MD5s."""
    monkeypatch.setattr(CelebA, "file_list", [
        (file_id, checksums.get(name, real_md5), name)
        for file_id, real_md5, name in CelebA.file_list
    ])


# ---------------------------------------------------------------- pix2pix tarballs
def pattern(index: int, size: int) -> np.ndarray:
    """An asymmetric grey pattern: a bright block at an index-dependent place on a horizontal
    ramp crossed by horizontal stripes (so shifts in either direction show)."""
    ramp = np.linspace(0, 120, size, dtype=np.float32)[None, :].repeat(size, 0)
    ramp += 60 * ((np.arange(size) // 4) % 2)[:, None]
    y, x = 8 + (index * 7) % (size // 2), 4 + (index * 5) % (size // 2)
    ramp[y : y + size // 4, x : x + size // 3] = 255
    return ramp.astype(np.uint8)


def side_by_side(index: int, size: int) -> Image.Image:
    """A|B: A is the pattern, B its negative, so aligned sides satisfy A + B = 255."""
    a = pattern(index, size)
    both = np.concatenate([a, 255 - a], axis=1)
    return Image.fromarray(np.stack([both] * 3, axis=-1))


def add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_pix2pix_tarball(path: Path, name: str = "facades", size: int = 64,
                          counts: dict[str, int] | None = None) -> dict[str, int]:
    """NAME.tar.gz holding NAME/{train,val,test}/K.jpg, each an A|B image of 2·size × size."""
    counts = counts or {"train": 4, "val": 2, "test": 2}
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for split, n in counts.items():
            for k in range(n):
                buffer = io.BytesIO()
                side_by_side(k, size).save(buffer, "JPEG", quality=95)
                add_bytes(tar, f"{name}/{split}/{k + 1}.jpg", buffer.getvalue())
    return counts


def write_malicious_tarballs(folder: Path, outside: Path) -> dict[str, Path]:
    """Tarballs named NAME/... that each try to escape: ``..``, absolute path, symlink out,
    hard link out, a device. ``outside`` is where a successful escape would write."""
    folder.mkdir(parents=True, exist_ok=True)
    made = {}

    def tarball(kind: str, add: Callable[[tarfile.TarFile], None]) -> None:
        path = folder / f"evil_{kind}.tar.gz"
        with tarfile.open(path, "w:gz") as tar:
            add_bytes(tar, "evil/train/1.jpg", b"not really a jpeg")
            add(tar)
        made[kind] = path

    tarball("dotdot", lambda t: add_bytes(t, "evil/../../escaped.txt", b"x"))
    tarball("absolute", lambda t: add_bytes(t, str(outside / "absolute.txt"), b"x"))

    def symlink(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo("evil/link")
        info.type, info.linkname = tarfile.SYMTYPE, "../../.."
        tar.addfile(info)
        add_bytes(tar, "evil/link/escaped.txt", b"x")

    def hardlink(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo("evil/hard")
        info.type, info.linkname = tarfile.LNKTYPE, "../outside.txt"
        tar.addfile(info)

    def device(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo("evil/dev")
        info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
        tar.addfile(info)

    tarball("symlink", symlink)
    tarball("hardlink", hardlink)
    tarball("device", device)
    return made


# ---------------------------------------------------------------- photo folders
def photo(index: int, size: tuple[int, int] = (96, 72)) -> Image.Image:
    """A synthetic photo with clear edges: a coloured disc and bar on a smooth background."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    image = np.stack([40 + 60 * xx / w, 60 + 40 * yy / h, np.full_like(xx, 90)], axis=-1)
    cx, cy = w / 2 + (index % 3 - 1) * 8, h / 2
    disc = (xx - cx) ** 2 + (yy - cy) ** 2 < (h / 4) ** 2
    image[disc] = (230, 200, 40)
    image[h // 6 : h // 6 + 4, w // 5 : 4 * w // 5] = (10, 10, 10)
    return Image.fromarray(image.astype(np.uint8))


def write_photos(folder: Path, n: int = 6) -> list[Path]:
    """A flat folder of JPEG photos (edges2cats input), non-square so cropping matters."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"cat_{i:03d}.jpg" for i in range(n)]
    for i, path in enumerate(paths):
        photo(i).save(path, quality=95)
    return paths


def write_class_folder(folder: Path, classes: tuple[str, ...] = ("cats", "dogs", "owls"),
                       per_class: int = 4) -> None:
    """FOLDER/CLASS/*.png|jpg: images whose red level encodes the class index."""
    for c, name in enumerate(classes):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            array = np.full((40, 50, 3), (60 * c + 20, 100, 100), dtype=np.uint8)
            suffix = ".png" if k % 2 else ".jpg"
            Image.fromarray(array).save(folder / name / f"img{k}{suffix}")


# ---------------------------------------------------------------- CycleGAN zips and folders
def domain_image(side: str, index: int, size: int = 20) -> Image.Image:
    """A flat image whose colour says its domain (A red, B blue) and its green level its
    index (10 per step), so a batch tells which files it holds after any crop or flip."""
    colour = (220, 10 * index, 20) if side == "A" else (20, 10 * index, 220)
    return Image.new("RGB", (size, size), colour)


def write_domain_folder(folder: Path, side: str, n: int, size: int = 20) -> None:
    """FOLDER/K.png for K < n, lossless so the colours survive exactly."""
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        domain_image(side, k, size).save(folder / f"{k:03d}.png")


def write_cyclegan_zip(path: Path, name: str = "horse2zebra", size: int = 20,
                       counts: dict[str, int] | None = None) -> dict[str, int]:
    """NAME.zip holding NAME/{trainA,trainB,testA,testB}/K.jpg (the authors' layout)."""
    import zipfile

    counts = counts or {"trainA": 4, "trainB": 6, "testA": 2, "testB": 3}
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        for split, n in counts.items():
            for k in range(n):
                buffer = io.BytesIO()
                domain_image(split[-1], k, size).save(buffer, "JPEG", quality=95)
                archive.writestr(f"{name}/{split}/{k + 1}.jpg", buffer.getvalue())
    return counts


def write_malicious_zips(folder: Path, outside: Path, name: str = "evil") -> dict[str, Path]:
    """Zips of NAME/... that each try to escape: ``..``, an absolute path, a symlink entry."""
    import stat
    import zipfile

    folder.mkdir(parents=True, exist_ok=True)
    made = {}
    link = zipfile.ZipInfo(f"{name}/trainA/link.jpg")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    entries = {"dotdot": (f"{name}/../../escaped.txt", b"x"),
               "absolute": (str(outside / "absolute.txt"), b"x"),
               "symlink": (link, b"../../../etc/passwd")}
    for kind, (entry, data) in entries.items():
        path = folder / f"{name}_{kind}.zip"
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr(f"{name}/trainA/1.jpg", b"not really a jpeg")
            archive.writestr(entry, data)
        made[kind] = path
    return made
