"""Unpaired data for CycleGAN: two folders, a CycleGAN-format zip (fetched from a local URL),
two classes of shapes; independent domains, epochs of max(len A, len B), resumable streams,
and zips that try to escape the data root."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from data_fixtures import write_cyclegan_zip, write_domain_folder, write_malicious_zips

from gentrain.data.datasets import unpaired as unpaired_sets
from gentrain.data.datasets.shapes import shapes
from gentrain.data.storage.archive import safe_extract
from gentrain.errors import GentrainError

CPU = torch.device("cpu")


def ids(images: torch.Tensor) -> list[int]:
    """The index each fixture image encodes in its green level (see data_fixtures)."""
    green = (images[:, 1].mean((1, 2)) + 1) * 127.5
    return [round(g / 10) for g in green.tolist()]


def domains(images: torch.Tensor) -> set[str]:
    red, blue = images[:, 0].mean((1, 2)), images[:, 2].mean((1, 2))
    return {"A" if r > b else "B" for r, b in zip(red.tolist(), blue.tolist(), strict=True)}


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    write_domain_folder(tmp_path / "a", "A", 5)
    write_domain_folder(tmp_path / "b", "B", 9)
    return tmp_path / "a", tmp_path / "b"


def folder_data(a: Path, b: Path) -> unpaired_sets.UnpairedDataModule:
    return unpaired_sets.unpaired(a=str(a), b=str(b), batch_size=2, resolution=16,
                                  holdout=0.0, load_size=None, num_workers=0)


def test_two_folders_give_source_from_a_and_image_from_b(folders: tuple[Path, Path]) -> None:
    data = folder_data(*folders)
    assert data.spec.unpaired and data.spec.source_channels == 3 and data.spec.channels == 3
    loader = data.train_loader(device=CPU, seed=0)
    assert loader.batches_per_epoch == 9 // 2  # max(len A, len B) per epoch, not min
    batches = [next(loader) for _ in range(loader.batches_per_epoch)]
    assert all(domains(b["source"]) == {"A"} and domains(b["image"]) == {"B"} for b in batches)
    assert batches[0]["image"].shape == (2, 3, 16, 16)
    # B has its own shuffled order: one epoch walks through distinct B images while A, the
    # shorter domain, wraps around into its next epoch.
    seen_b = [i for b in batches for i in ids(b["image"])]
    assert len(set(seen_b)) == len(seen_b) == 8
    assert seen_b != sorted(seen_b)


def test_the_domains_are_drawn_independently(tmp_path: Path) -> None:
    """With equal sizes, A's i-th example meets other B examples in other epochs (no fixed
    pairing), and the A and B orders are not the same permutation."""
    write_domain_folder(tmp_path / "a", "A", 8)
    write_domain_folder(tmp_path / "b", "B", 8)
    loader = folder_data(tmp_path / "a", tmp_path / "b").train_loader(device=CPU, seed=3)
    pairs = [set(), set()]
    orders: dict[str, list[int]] = {"a": [], "b": []}
    for epoch in range(2):
        for _ in range(loader.batches_per_epoch):
            batch = next(loader)
            a, b = ids(batch["source"]), ids(batch["image"])
            pairs[epoch] |= set(zip(a, b, strict=True))
            if epoch == 0:
                orders["a"] += a
                orders["b"] += b
    assert pairs[0] != pairs[1]
    assert orders["a"] != orders["b"]


def test_the_unpaired_stream_resumes_exactly(folders: tuple[Path, Path]) -> None:
    data = folder_data(*folders)
    straight = data.train_loader(device=CPU, seed=1)
    expected = [next(straight) for _ in range(7)]
    first = data.train_loader(device=CPU, seed=1)
    for _ in range(3):
        next(first)
    resumed = data.train_loader(device=CPU, seed=1)
    resumed.load_state_dict(first.state_dict())
    for want in expected[3:]:
        got = next(resumed)
        assert torch.equal(got["source"], want["source"])
        assert torch.equal(got["image"], want["image"])


def test_evaluation_covers_the_longer_domain_and_repeats_the_shorter(tmp_path: Path) -> None:
    write_domain_folder(tmp_path / "a", "A", 10)
    write_domain_folder(tmp_path / "b", "B", 20)
    data = unpaired_sets.unpaired(a=str(tmp_path / "a"), b=str(tmp_path / "b"), batch_size=2,
                                  resolution=16, holdout=0.2, load_size=None, num_workers=0)
    batches = list(data.eval_batches(split="test", device=CPU))
    a = [i for b in batches for i in ids(b["source"])]
    b = [i for b in batches for i in ids(b["image"])]
    assert len(a) == len(b) == 4  # max(2 held-out A, 4 held-out B)
    assert len(set(a)) == 2 and len(set(b)) == 4
    assert [len(x) for x in (list(data.eval_batches(split="test", device=CPU, limit=3)))] == [2, 2]


def test_a_cyclegan_zip_is_downloaded_extracted_and_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real download code, pointed at a local file:// URL instead of Berkeley's server."""
    counts = write_cyclegan_zip(tmp_path / "server" / "horse2zebra.zip")
    monkeypatch.setattr(unpaired_sets, "URL", (tmp_path / "server").as_uri() + "/{name}.zip")
    root = tmp_path / "root"
    data = unpaired_sets.cyclegan(dataset="horse2zebra", root=str(root), batch_size=2,
                                  resolution=16, load_size=18, num_workers=0)
    folder = root / "cyclegan" / "horse2zebra"
    assert sorted(p.name for p in folder.iterdir()) == ["testA", "testB", "trainA", "trainB"]
    assert not (root / "cyclegan" / "horse2zebra.zip").exists()  # removed once extracted
    assert data.spec.name == "horse2zebra" and data.spec.unpaired
    loader = data.train_loader(device=CPU, seed=0)
    assert loader.batches_per_epoch == max(counts["trainA"], counts["trainB"]) // 2
    batch = next(loader)
    assert batch["source"].shape == batch["image"].shape == (2, 3, 16, 16)  # cropped from 18
    assert domains(batch["source"]) == {"A"} and domains(batch["image"]) == {"B"}
    test = list(data.eval_batches(split="test", device=CPU))
    assert sum(b["image"].shape[0] for b in test) == max(counts["testA"], counts["testB"])


def test_a_missing_collection_says_where_to_put_it(tmp_path: Path) -> None:
    with pytest.raises(GentrainError, match=r"horse2zebra\.zip from https://efrosgans.*trainA"):
        unpaired_sets.cyclegan(dataset="horse2zebra", root=str(tmp_path), download=False)
    with pytest.raises(GentrainError, match="not a CycleGAN collection"):
        unpaired_sets.cyclegan(dataset="horse2unicorn", root=str(tmp_path), download=False)


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink"])
def test_malicious_zips_are_refused_and_write_nothing(tmp_path: Path, kind: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    archive = write_malicious_zips(tmp_path / "archives", outside)[kind]
    into = tmp_path / "root" / "cyclegan"
    problem = "symbolic link" if kind == "symlink" else "absolute or contains '..'"
    with pytest.raises(GentrainError, match=f"Refusing to extract .* unsafe because .*{problem}"):
        safe_extract(archive, into, "evil")
    assert list(into.iterdir()) == [] and list(outside.iterdir()) == []
    assert not {p.name for p in tmp_path.rglob("*")} & {"escaped.txt", "absolute.txt"}


def test_a_malicious_zip_in_the_data_root_stops_the_loader(tmp_path: Path) -> None:
    archive = write_malicious_zips(tmp_path / "archives", tmp_path, "horse2zebra")["symlink"]
    (tmp_path / "root" / "cyclegan").mkdir(parents=True)
    archive.rename(tmp_path / "root" / "cyclegan" / "horse2zebra.zip")
    with pytest.raises(GentrainError, match="symbolic link"):
        unpaired_sets.cyclegan(dataset="horse2zebra", root=str(tmp_path / "root"),
                               download=False)
    assert not (tmp_path / "root" / "cyclegan" / "horse2zebra").exists()


def test_two_shapes_classes_become_two_domains() -> None:
    data = shapes(batch_size=4, resolution=16, num_train=120, num_test=60,
                  unpaired="circle:square")
    assert data.spec.unpaired and data.spec.source_channels == 3
    for split in ("train", "test"):
        assert set(data.domain_a.splits[split].labels.tolist()) == {0}  # circles
        assert set(data.domain_b.splits[split].labels.tolist()) == {1}  # squares
    batch = next(data.train_loader(device=CPU, seed=0))
    assert set(batch) == {"source", "image"} and batch["source"].shape == (4, 3, 16, 16)


def test_bad_unpaired_shapes_settings_are_clear_errors() -> None:
    with pytest.raises(GentrainError, match="two different classes as A:B"):
        shapes(batch_size=4, resolution=16, num_train=60, num_test=30, unpaired="circle:blob")
    with pytest.raises(GentrainError, match="no data.pair"):
        shapes(batch_size=4, resolution=16, num_train=60, num_test=30, pair="grayscale",
               unpaired="circle:square")


def test_the_unpaired_and_collection_configs_build(
    folders: tuple[Path, Path], tmp_path: Path
) -> None:
    from conftest import compose_config

    from gentrain.data import build_data

    small = ["data.resolution=16", "data.load_size=18", "data.num_workers=0"]
    cfg = compose_config(["data=unpaired", f"data.a={folders[0]}", f"data.b={folders[1]}",
                          *small])
    assert build_data(cfg.data).spec.unpaired
    write_cyclegan_zip(tmp_path / "root" / "cyclegan" / "apple2orange.zip", "apple2orange")
    cfg = compose_config(["data=apple2orange", f"data.root={tmp_path / 'root'}",
                          "data.download=false", *small])
    data = build_data(cfg.data)
    assert data.spec.name == "apple2orange" and data.spec.source_channels == 3
    with pytest.raises(GentrainError, match="data.a=/path/to/domain_A_images"):
        build_data(compose_config(["data=unpaired"]).data)
