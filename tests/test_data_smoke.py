"""Smoke runs: a tiny VAE trains two steps on every real dataset's format-exact fixture.

Each run goes through the whole CLI path (config composition, ``build_data``, the trainer,
checkpoints, sample grids, held-out evaluation) on the CPU, offline, in a few seconds.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import compose_config
from data_fixtures import (
    patch_celeba_checksums,
    patch_cifar_checksums,
    write_celeba,
    write_cifar10,
    write_class_folder,
    write_mnist,
    write_photos,
    write_pix2pix_tarball,
)

from gentrain.cli import run
from gentrain.errors import GentrainError

# The trainer and a tiny VAE; every dataset adds its own data.* overrides (the conftest FAST
# list holds shapes-only keys such as data.num_train, which other data configs reject).
TINY_VAE = [
    "model=vae",
    "model.base_channels=4",
    "model.latent_dim=4",
    "model.iw_samples=2",
    "trainer.max_steps=2",
    "trainer.log_every=1",
    "trainer.device=cpu",
    "trainer.progress=false",
    "trainer.eval_limit=4",
    "trainer.num_samples=4",
    "logger=none",
]


# ------------------------------------------------------------------ fixtures (written once)
@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """These models are so small that a second intra-op thread only adds synchronisation
    (on a busy 2-core machine it made each run about 5x slower); restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def mnist_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mnist")
    write_mnist(root, gz=True)
    return root


@pytest.fixture(scope="module")
def cifar_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("cifar10")
    return root, write_cifar10(root)["md5"]


@pytest.fixture(scope="module")
def celeba_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("celeba")
    return root, write_celeba(root)["md5"]


@pytest.fixture(scope="module")
def facades_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("facades")
    write_pix2pix_tarball(root / "pix2pix" / "facades.tar.gz", size=64)
    return root


@pytest.fixture(scope="module")
def cats_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("edges2cats")
    write_photos(root / "edges2cats" / "photos", n=6)
    return root


@pytest.fixture(scope="module")
def folder_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("folder")
    write_class_folder(root / "images")
    return root


@pytest.fixture
def cifar_root(cifar_files: tuple[Path, dict[str, str]], monkeypatch: pytest.MonkeyPatch) -> Path:
    root, checksums = cifar_files
    patch_cifar_checksums(monkeypatch, checksums)
    return root


@pytest.fixture
def celeba_root(celeba_files: tuple[Path, dict[str, str]],
                monkeypatch: pytest.MonkeyPatch) -> Path:
    root, checksums = celeba_files
    patch_celeba_checksums(monkeypatch, checksums)
    return root


# ------------------------------------------------------------------ data overrides per set
def mnist_data(root: Path, binarize: str) -> list[str]:
    return ["data=mnist", f"data.root={root}", "data.download=false", "data.batch_size=8",
            f"data.binarize={binarize}"]


def cifar_data(root: Path) -> list[str]:
    return ["data=cifar10", f"data.root={root}", "data.download=false", "data.batch_size=8"]


def celeba_data(root: Path) -> list[str]:
    return ["data=celeba", f"data.root={root}", "data.download=false", "data.batch_size=2",
            "data.resolution=16", "data.num_workers=0"]


def facades_data(root: Path) -> list[str]:
    return ["data=facades", f"data.root={root}", "data.download=false", "data.batch_size=2",
            "data.resolution=16", "data.load_size=18", "data.num_workers=0"]


def cats_data(root: Path) -> list[str]:
    return ["data=edges2cats", f"data.root={root}", "data.batch_size=2", "data.resolution=16",
            "data.load_size=18", "data.holdout=0.2", "data.num_workers=0"]


def folder_data(root: Path) -> list[str]:
    return ["data=folder", f"data.path={root / 'images'}", f"data.root={root}",
            "data.batch_size=4", "data.resolution=16", "data.holdout=0.25", "data.num_workers=0"]


# ------------------------------------------------------------------ helpers
def train(run_dir: Path, overrides: list[str]) -> dict[str, Any]:
    run_dir.mkdir(parents=True, exist_ok=True)
    return run(compose_config([*TINY_VAE, *overrides]), run_dir)


def assert_trained(run_dir: Path, result: dict[str, Any], name: str) -> dict[str, Any]:
    """A completed run: last.pt, sample PNGs and finite held-out metrics; returns last.pt."""
    assert result["status"] == "completed" and result["steps"] == 2
    assert result["data"] == name
    last = run_dir / "checkpoints" / "last.pt"
    assert last.is_file()
    assert list((run_dir / "samples").glob("*.png"))
    metrics = result["eval"]
    assert metrics and all(key.startswith("eval/") for key in metrics)
    assert all(math.isfinite(value) for value in metrics.values()), metrics
    assert all(math.isfinite(value) for value in result["final_metrics"].values())
    return torch.load(last, map_location="cpu", weights_only=True)


def likelihood_of(state: dict[str, Any]) -> str:
    """``logistic`` (a learned per-channel log-scale is saved) or ``bernoulli``."""
    return "logistic" if "log_scale" in state["model"] else "bernoulli"


# ------------------------------------------------------------------ smoke runs
@pytest.mark.parametrize(("binarize", "values", "likelihood"),
                         [("dynamic", "binary", "bernoulli"), ("none", "8bit", "logistic")],
                         ids=["dynamic-bernoulli", "none-logistic"])
def test_vae_on_mnist(tmp_path: Path, mnist_root: Path, binarize: str, values: str,
                      likelihood: str) -> None:
    result = train(tmp_path, mnist_data(mnist_root, binarize))
    state = assert_trained(tmp_path, result, "mnist")
    assert state["data_spec"]["values"] == values
    # likelihood=auto: Bernoulli on binarised data, else the discretised logistic.
    assert likelihood_of(state) == likelihood


def test_vae_on_cifar10(tmp_path: Path, cifar_root: Path) -> None:
    state = assert_trained(tmp_path, train(tmp_path, cifar_data(cifar_root)), "cifar10")
    assert state["model"]["log_scale"].shape == (1, 3, 1, 1)  # discretised logistic


def test_vae_on_celeba(tmp_path: Path, celeba_root: Path) -> None:
    state = assert_trained(tmp_path, train(tmp_path, celeba_data(celeba_root)), "celeba")
    assert state["data_spec"]["label_kind"] == "attributes"
    assert state["data_spec"]["height"] == 16


def test_conditional_vae_on_celeba_needs_class_labels(tmp_path: Path, celeba_root: Path) -> None:
    with pytest.raises(GentrainError, match="model.conditional=true needs class labels"):
        train(tmp_path, [*celeba_data(celeba_root), "model.conditional=true"])
    assert not (tmp_path / "checkpoints").exists()


def test_vae_on_facades(tmp_path: Path, facades_root: Path) -> None:
    state = assert_trained(tmp_path, train(tmp_path, facades_data(facades_root)), "facades")
    assert state["data_spec"]["source_channels"] == 3  # paired; the VAE models `image`
    assert likelihood_of(state) == "logistic"


def test_vae_on_edges2cats(tmp_path: Path, cats_root: Path) -> None:
    assert_trained(tmp_path, train(tmp_path, cats_data(cats_root)), "edges2cats")
    assert list((cats_root / "cache").rglob("*.png"))  # edge drawings derived and cached


@pytest.mark.parametrize("conditional", [False, True], ids=["unconditional", "conditional"])
def test_vae_on_class_folder(tmp_path: Path, folder_root: Path, conditional: bool) -> None:
    result = train(tmp_path, [*folder_data(folder_root), f"model.conditional={conditional}"])
    state = assert_trained(tmp_path, result, "folder")
    assert tuple(state["data_spec"]["class_names"]) == ("cats", "dogs", "owls")
    # A conditional decoder reads z next to the one-hot label of the 3 subfolder classes.
    assert state["model"]["decoder.net.0.weight"].shape[1] == 4 + 3 * conditional


# ------------------------------------------------------------------ previews
@pytest.mark.parametrize("which", ["facades", "folder"])
def test_preview_writes_a_grid(tmp_path: Path, facades_root: Path, folder_root: Path,
                               which: str) -> None:
    data = facades_data(facades_root) if which == "facades" else folder_data(folder_root)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    result = run(compose_config([*TINY_VAE, *data, "task=preview"]), run_dir)
    grids = list((run_dir / "samples").glob("preview_*.png"))
    assert len(grids) == 1 and Path(result["grid"]) == grids[0]
    assert not (run_dir / "checkpoints").exists()


def test_configs_stored_before_the_datasets_moved_still_build() -> None:
    """Checkpoints written before gentrain.data was regrouped name gentrain.data.shapes.shapes;
    task=sample and task=eval rebuild the run's data from that config."""
    from omegaconf import OmegaConf

    from gentrain.data import build_data

    new = OmegaConf.create({"_target_": "gentrain.data.datasets.shapes.shapes", "name": "shapes",
                            "batch_size": 4, "resolution": 8, "num_train": 16, "num_test": 8})
    old = OmegaConf.merge(new, {"_target_": "gentrain.data.shapes.shapes"})
    assert build_data(old).spec == build_data(new).spec
