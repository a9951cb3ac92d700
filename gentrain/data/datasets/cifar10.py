"""CIFAR-10 as one uint8 tensor on the device, read by torchvision (its checksums included)."""

from __future__ import annotations

from typing import Any

import torch
from torchvision.datasets import CIFAR10

from gentrain.data.core.batch import DataSpec
from gentrain.data.core.tensor_data import TensorDataModule, TensorSplit
from gentrain.data.core.transforms import random_hflip
from gentrain.data.pairs.tasks import pair_tensor_module, parse_pair
from gentrain.data.storage.archive import unpack_if_present
from gentrain.data.storage.fetch import load_torchvision
from gentrain.data.storage.roots import cache_dir, resolve_root


def cifar10(
    *, batch_size: int, root: str | None = None, download: bool = True, hflip: bool = True,
    pair: str | dict[str, Any] | None = None,
) -> TensorDataModule:
    """CIFAR-10, 3×32×32, 10 classes; train (50k) and test (10k); random flips in training."""
    task = parse_pair(pair)
    base = resolve_root(root)
    folder = base / CIFAR10.base_folder
    unpack_if_present(base / CIFAR10.filename, base, CIFAR10.base_folder)
    names = [name for name, _ in CIFAR10.train_list + CIFAR10.test_list]
    train, test = load_torchvision(
        "cifar10", lambda r, d: (CIFAR10(str(r), train=True, download=d),
                                 CIFAR10(str(r), train=False, download=d)),
        root=base, download=download, url=CIFAR10.url, folder=CIFAR10.base_folder,
        expected=[folder / name for name in [*names, CIFAR10.meta["filename"]]],
        note=f"Or place {CIFAR10.filename} from {CIFAR10.url} at {base / CIFAR10.filename}; "
        "it is unpacked on first use.",
    )
    splits = {
        name: TensorSplit(
            torch.from_numpy(data.data).permute(0, 3, 1, 2).contiguous(),
            torch.tensor(data.targets, dtype=torch.long),
        )
        for name, data in (("train", train), ("test", test))
    }
    spec = DataSpec(
        name="cifar10", channels=3, height=32, width=32, label_kind="class",
        num_classes=len(train.classes), class_names=tuple(train.classes),
    )
    module = TensorDataModule(
        spec=spec, splits=splits, batch_size=batch_size,
        train_transforms=[random_hflip] if hflip else [],
    )
    return pair_tensor_module(task, module, cache_dir(base))
