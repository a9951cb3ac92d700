"""MNIST as one uint8 tensor on the device, read by torchvision (its file checks included)."""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torchvision.datasets import MNIST

from gentrain.data.core.batch import DataSpec
from gentrain.data.core.seeding import derive_seed
from gentrain.data.core.tensor_data import TensorDataModule, TensorSplit
from gentrain.data.core.transforms import dynamic_binarize
from gentrain.data.pairs.tasks import pair_tensor_module, parse_pair
from gentrain.data.storage.archive import gunzip
from gentrain.data.storage.fetch import load_torchvision
from gentrain.data.storage.roots import cache_dir, resolve_root
from gentrain.errors import GentrainError, require

Binarize = Literal["none", "static", "dynamic"]
RAW_FILES = tuple(name.removesuffix(".gz") for name, _ in MNIST.resources)


def unpack_gz_files(raw: Path) -> None:
    """Unpack ``NAME.gz`` files placed by hand next to where torchvision expects ``NAME``."""
    for name in RAW_FILES:
        packed = raw / f"{name}.gz"
        if packed.is_file() and not (raw / name).exists():
            try:
                gunzip(packed, raw / name)
            except (OSError, EOFError, zlib.error) as error:
                raise GentrainError(
                    f"Could not unpack {packed} ({error}); the file is incomplete or not a "
                    "gzip file. Delete it and download it again."
                ) from None


def binarize_static(images: torch.Tensor, split: str) -> torch.Tensor:
    """One fixed stochastic binarisation (P(1) = intensity, fixed seed per split), as in the
    standard binarised-MNIST benchmark; pixels become 0 or 255."""
    generator = torch.Generator().manual_seed(derive_seed("mnist-static-binarization", split))
    on = torch.rand(images.shape, generator=generator) < images.float() / 255
    return on.to(torch.uint8) * 255


def mnist(
    *, batch_size: int, root: str | None = None, download: bool = True, resolution: int = 28,
    binarize: Binarize = "none", pair: str | dict[str, Any] | None = None,
) -> TensorDataModule:
    """MNIST digits, 1×28×28 (or zero-padded to 32×32), 10 classes; train and test splits."""
    require(resolution in (28, 32), f"data.resolution must be 28 or 32 for MNIST, not "
            f"{resolution} (32 pads 2 black pixels on every side).")
    require(binarize in ("none", "static", "dynamic"),
            f"data.binarize must be none, static or dynamic, not {binarize!r}.")
    task = parse_pair(pair)
    base = resolve_root(root)
    raw = base / "MNIST" / "raw"
    unpack_gz_files(raw)
    train, test = load_torchvision(
        "mnist", lambda r, d: (MNIST(str(r), train=True, download=d),
                               MNIST(str(r), train=False, download=d)),
        root=base, download=download, url=" and ".join(MNIST.mirrors), folder="MNIST",
        expected=[raw / name for name in RAW_FILES],
        note="The .gz files of the same names work too; they are unpacked on first use.",
    )
    splits = {}
    for name, data in (("train", train), ("test", test)):
        images = data.data.unsqueeze(1)
        if resolution == 32:
            images = F.pad(images, (2, 2, 2, 2))
        if binarize == "static":
            images = binarize_static(images, name)
        splits[name] = TensorSplit(images.contiguous(), data.targets.long())
    spec = DataSpec(
        name="mnist", channels=1, height=resolution, width=resolution,
        values="8bit" if binarize == "none" else "binary", label_kind="class",
        num_classes=10, class_names=tuple(str(i) for i in range(10)),
    )
    module = TensorDataModule(
        spec=spec, splits=splits, batch_size=batch_size,
        transforms=[dynamic_binarize] if binarize == "dynamic" else [],
    )
    return pair_tensor_module(task, module, cache_dir(base))
