"""MNIST, CIFAR-10 and shapes through the real loaders, on format-exact files, offline."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
from data_fixtures import patch_cifar_checksums, write_cifar10, write_mnist

from gentrain.data.datasets.cifar10 import cifar10
from gentrain.data.datasets.mnist import mnist
from gentrain.data.datasets.shapes import shapes
from gentrain.errors import GentrainError

CPU = torch.device("cpu")


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No network, whatever the machine has: every connection attempt fails at once."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("network is off in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.mark.parametrize("gz", [True, False], ids=["idx.gz", "idx"])
def test_mnist_reads_idx_files(tmp_path: Path, gz: bool) -> None:
    written = write_mnist(tmp_path, gz=gz)
    data = mnist(batch_size=8, root=str(tmp_path), download=False)
    assert data.spec.channels == 1 and data.spec.height == 28 and data.spec.values == "8bit"
    assert data.spec.label_kind == "class" and data.spec.num_classes == 10
    for split in ("train", "test"):
        images, labels = written[split]
        loaded = data.split(split)
        assert loaded.images.dtype == torch.uint8
        assert loaded.images.shape == (len(images), 1, 28, 28)
        assert torch.equal(loaded.images[:, 0], torch.from_numpy(images))
        assert torch.equal(loaded.labels, torch.from_numpy(labels).long())
    batch = next(iter(data.train_loader(device=CPU, seed=0)))
    assert batch["image"].shape == (8, 1, 28, 28) and batch["image"].dtype == torch.float32
    assert batch["image"].min() >= -1 and batch["image"].max() <= 1
    # The bar drawn at row 2k+4 identifies the label: labels travel with their images.
    rows = batch["image"][:, 0, :, 10].argmax(dim=1)
    assert torch.equal(rows, 2 * batch["label"] + 4)


def test_mnist_pads_to_32_and_binarises(tmp_path: Path) -> None:
    write_mnist(tmp_path, gz=True)
    padded = mnist(batch_size=4, root=str(tmp_path), download=False, resolution=32)
    images = padded.split("train").images
    assert images.shape[-2:] == (32, 32) and images[..., :2, :].max() == 0
    static = mnist(batch_size=4, root=str(tmp_path), download=False, binarize="static")
    again = mnist(batch_size=4, root=str(tmp_path), download=False, binarize="static")
    assert static.spec.values == "binary"
    assert set(static.split("train").images.unique().tolist()) <= {0, 255}
    assert torch.equal(static.split("train").images, again.split("train").images)  # fixed
    dynamic = mnist(batch_size=4, root=str(tmp_path), download=False, binarize="dynamic")
    loader = dynamic.train_loader(device=CPU, seed=0)
    first, second = next(loader), next(loader)
    for batch in (first, second):
        assert set(batch["image"].unique().tolist()) <= {-1.0, 1.0}
    assert dynamic.spec.values == "binary"


def test_cifar10_reads_the_python_pickles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    written = write_cifar10(tmp_path)
    patch_cifar_checksums(monkeypatch, written["md5"])
    data = cifar10(batch_size=4, root=str(tmp_path), download=False)
    assert data.spec.class_names[:2] == ("airplane", "automobile") and data.spec.channels == 3
    train, test = data.split("train"), data.split("test")
    assert train.images.shape == (40, 3, 32, 32) and test.images.shape == (8, 3, 32, 32)
    images, labels = written["data"]["data_batch_1"]
    assert torch.equal(train.images[:8], torch.from_numpy(images))
    assert train.labels[:8].tolist() == labels
    assert torch.equal(test.images, torch.from_numpy(written["data"]["test_batch"][0]))


def test_cifar10_with_wrong_checksums_is_refused(tmp_path: Path) -> None:
    write_cifar10(tmp_path)  # real torchvision checksums: these files do not match them
    with pytest.raises(GentrainError) as error:
        cifar10(batch_size=4, root=str(tmp_path), download=False)
    assert "did not pass torchvision's format or checksum check" in str(error.value)
    assert "data_batch_1" in str(error.value)


def assert_one_paragraph(message: str, *needles: str) -> None:
    assert "\n" not in message and "Traceback" not in message
    for needle in needles:
        assert needle in message, needle


def test_missing_mnist_with_download_off(tmp_path: Path) -> None:
    with pytest.raises(GentrainError) as error:
        mnist(batch_size=4, root=str(tmp_path), download=False)
    assert_one_paragraph(str(error.value), "'mnist'", "data.download=false",
                         str(tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"),
                         "data.root=")


def test_failed_downloads_explain_and_leave_nothing(tmp_path: Path, offline: None) -> None:
    with pytest.raises(GentrainError) as error:
        mnist(batch_size=4, root=str(tmp_path), download=True)
    assert_one_paragraph(str(error.value), "Downloading from https://", "failed",
                         str(tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"))
    with pytest.raises(GentrainError) as error:
        cifar10(batch_size=4, root=str(tmp_path), download=True)
    assert_one_paragraph(str(error.value), "cifar-10-python.tar.gz", "data_batch_5")
    assert list(tmp_path.iterdir()) == []  # staging folders removed, nothing half-written


def test_corrupt_mnist_gz_is_reported(tmp_path: Path) -> None:
    write_mnist(tmp_path, gz=True)
    packed = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte.gz"
    packed.write_bytes(packed.read_bytes()[:40])
    with pytest.raises(GentrainError, match="Could not unpack"):
        mnist(batch_size=4, root=str(tmp_path), download=False)
    assert not (tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte").exists()


def test_shapes_labels_pair_is_colour_coded_label_map() -> None:
    data = shapes(batch_size=8, num_train=64, num_test=16, pair="labels")
    assert data.spec.source_channels == 3 and data.spec.has_label_map
    batch = next(iter(data.train_loader(device=CPU, seed=0)))
    background = batch["label_map"] == 0
    assert (batch["source"].permute(0, 2, 3, 1)[background] == -1).all()
    assert (batch["source"].permute(0, 2, 3, 1)[~background] > -1).any(dim=-1).all()


def test_label_pair_needs_label_maps(tmp_path: Path) -> None:
    write_mnist(tmp_path, gz=False)
    with pytest.raises(GentrainError, match="label maps"):
        mnist(batch_size=4, root=str(tmp_path), download=False, pair="labels")
