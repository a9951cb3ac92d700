"""CelebA, pix2pix sets, image folders and edges2cats through the real loaders, offline."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from data_fixtures import (
    patch_celeba_checksums,
    write_celeba,
    write_class_folder,
    write_photos,
    write_pix2pix_tarball,
)

from gentrain.data.datasets.celeba import celeba
from gentrain.data.datasets.folders import edges2cats, folder
from gentrain.data.datasets.pix2pix import pix2pix
from gentrain.data.pairs import edge_cache
from gentrain.data.pairs.edges import edge_drawing
from gentrain.errors import GentrainError

CPU = torch.device("cpu")


@pytest.fixture
def celeba_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, dict]:
    written = write_celeba(tmp_path)
    patch_celeba_checksums(monkeypatch, written["md5"])
    return tmp_path, written


def test_celeba_splits_attributes_and_crop(celeba_root: tuple[Path, dict]) -> None:
    root, written = celeba_root
    data = celeba(batch_size=2, root=str(root), download=False, resolution=32, num_workers=0)
    assert data.spec.label_kind == "attributes" and data.spec.num_classes == 40
    assert data.spec.class_names[0] == "5_o_Clock_Shadow" and data.eval_split == "valid"
    assert {name: len(split) for name, split in data.splits.items()} == {
        "train": 6, "valid": 3, "test": 3}
    for code, split in enumerate(("train", "valid", "test")):
        rows = [i for i, p in enumerate(written["partition"]) if p == code]
        labels = torch.cat([b["label"] for b in data.eval_batches(split=split, device=CPU)])
        assert labels.dtype == torch.float32
        assert torch.equal(labels, torch.from_numpy(written["attrs"][rows]).float())
    batch = next(data.eval_batches(split="train", device=CPU))
    assert batch["image"].shape == (2, 3, 32, 32) and batch["image"].dtype == torch.float32
    # The dark band at the top of the 178x218 face lies outside the 148 centre crop.
    assert (batch["image"][:, :, 0] > -0.5).all()
    train = next(iter(data.train_loader(device=CPU, seed=0)))
    assert train["image"].shape == (2, 3, 32, 32) and train["label"].shape == (2, 40)


def test_celeba_attribute_subset_zip_and_pairs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    written = write_celeba(tmp_path, zipped=True)
    patch_celeba_checksums(monkeypatch, written["md5"])
    data = celeba(batch_size=3, root=str(tmp_path), download=False, resolution=16,
                  num_workers=0, attributes=["Male", "Smiling"], pair="grayscale")
    assert (tmp_path / "celeba" / "img_align_celeba" / "000001.jpg").is_file()  # unpacked
    assert data.spec.class_names == ("Male", "Smiling") and data.spec.source_channels == 1
    batch = next(data.eval_batches(split="test", device=CPU))
    rows = [i for i, p in enumerate(written["partition"]) if p == 2]
    attrs = torch.from_numpy(written["attrs"][rows][:, [20, 31]]).float()
    assert torch.equal(batch["label"], attrs)
    luma = (batch["image"] * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1)
    assert torch.allclose(batch["source"][:, 0], luma, atol=1e-5)
    with pytest.raises(GentrainError, match="Unknown CelebA attribute"):
        celeba(batch_size=3, root=str(tmp_path), download=False, attributes=["Smiles"])


def test_missing_celeba_names_files_and_quota(tmp_path: Path) -> None:
    with pytest.raises(GentrainError) as error:
        celeba(batch_size=2, root=str(tmp_path), download=False)
    message = str(error.value)
    assert "\n" not in message and "quota" in message
    for name in ("img_align_celeba", "list_attr_celeba.txt", "list_eval_partition.txt",
                 "identity_CelebA.txt", "list_bbox_celeba.txt", "list_landmarks_align_celeba.txt"):
        assert str(tmp_path / "celeba" / name) in message


def facades(root: Path, **overrides: object):
    if not (root / "pix2pix" / "facades").exists():
        write_pix2pix_tarball(root / "pix2pix" / "facades.tar.gz", size=64)
    settings = dict(dataset="facades", root=str(root), download=False, direction="BtoA",
                    resolution=64, load_size=72, batch_size=2, num_workers=0)
    return pix2pix(**{**settings, **overrides})


def test_facades_tarball_splits_and_direction(tmp_path: Path) -> None:
    data = facades(tmp_path)
    assert not (tmp_path / "pix2pix" / "facades.tar.gz").exists()  # extracted, then removed
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 4, "val": 2, "test": 2}
    assert data.eval_split == "val" and data.spec.source_channels == 3
    batch = next(data.eval_batches(split="val", device=CPU))
    assert batch["image"].shape == batch["source"].shape == (2, 3, 64, 64)
    # BtoA: the target is A (the pattern, a bright block), the input B (its negative).
    assert batch["image"].amax() > 0.9 and batch["source"].amin() < -0.9
    assert (batch["image"] + batch["source"]).abs().mean() < 0.05
    flipped = facades(tmp_path, direction="AtoB")
    other = next(flipped.eval_batches(split="val", device=CPU))
    assert torch.allclose(other["image"], batch["source"]) and torch.allclose(
        other["source"], batch["image"])


def test_pix2pix_jitter_keeps_both_sides_aligned(tmp_path: Path) -> None:
    data = facades(tmp_path, batch_size=4)
    plain = next(data.eval_batches(split="train", device=CPU))["image"]
    loader = data.train_loader(device=CPU, seed=3)
    jittered = [next(loader) for _ in range(4)]
    for batch in jittered:
        assert batch["image"].shape == (4, 3, 64, 64)
        assert (batch["image"] + batch["source"]).abs().mean() < 0.06  # aligned: A + B = 255
        # The check has power: flipping or shifting one side only breaks it.
        for moved in (batch["source"].flip(-1), batch["source"].roll(4, dims=-2)):
            assert (batch["image"] + moved).abs().mean() > 0.1
    images = torch.cat([b["image"] for b in jittered])
    # Jitter happened: no training image equals an un-augmented one.
    assert all(min((im - p).abs().mean() for p in plain) > 0.01 for im in images)


def take(loader, n: int) -> list[dict[str, torch.Tensor]]:
    return [next(loader) for _ in range(n)]


def assert_same(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for key in x:
            assert torch.equal(x[key], y[key]), key


def test_file_loader_resume_replays_and_ignores_worker_count(tmp_path: Path) -> None:
    data = facades(tmp_path)  # 4 training pairs, batch 2: an epoch is 2 batches
    reference = take(data.train_loader(device=CPU, seed=7), 5)
    first = data.train_loader(device=CPU, seed=7)
    take(first, 3)
    state = first.state_dict()
    assert state == {"epoch": 1, "index": 1}
    resumed = facades(tmp_path, num_workers=2).train_loader(device=CPU, seed=7)
    resumed.load_state_dict(state)
    assert_same(take(resumed, 2), reference[3:])
    with_workers = facades(tmp_path, num_workers=2).train_loader(device=CPU, seed=7)
    assert_same(take(with_workers, 5), reference)


def test_tensor_loader_resume_replays() -> None:
    from gentrain.data.datasets.shapes import shapes

    data = shapes(batch_size=8, num_train=40, num_test=8, pair={"kind": "mask", "hole": 0.25})
    reference = take(data.train_loader(device=CPU, seed=1), 8)
    first = data.train_loader(device=CPU, seed=1)
    take(first, 6)
    resumed = data.train_loader(device=CPU, seed=1)
    resumed.load_state_dict(first.state_dict())
    assert_same(take(resumed, 2), reference[6:])


def test_ranks_partition_each_epoch() -> None:
    from gentrain.data.core.file_data import EpochBatchSampler

    shards = []
    for rank in (0, 1):
        sampler = EpochBatchSampler(21, 3, seed=5, rank=rank, world_size=2)
        sampler.epoch = 2
        shards.append([i for batch in sampler for i in batch])
    assert len(shards[0]) == len(shards[1]) == 9  # 10 per rank, the incomplete batch dropped
    assert not set(shards[0]) & set(shards[1])
    sampler.start = 2
    assert [i for batch in sampler for i in batch] == shards[1][6:]


def test_folder_labels_from_subfolders(tmp_path: Path) -> None:
    write_class_folder(tmp_path / "images")
    data = folder(batch_size=4, path=str(tmp_path / "images"), root=str(tmp_path),
                  resolution=16, holdout=0.25, num_workers=0)
    assert data.spec.class_names == ("cats", "dogs", "owls") and data.spec.label_kind == "class"
    assert len(data.split("train")) == 9 and len(data.split("test")) == 3
    for split in ("train", "test"):
        for batch in data.eval_batches(split=split, device=CPU):
            red = (batch["image"][:, 0, 8, 8] + 1) * 127.5
            assert torch.equal(((red - 20) / 60).round().long(), batch["label"])
    with pytest.raises(GentrainError, match="data.path"):
        folder(batch_size=4)


def test_edges2cats_pairs_are_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_photos(tmp_path / "edges2cats" / "photos", n=6)
    settings = dict(root=str(tmp_path), batch_size=2, resolution=32, load_size=36,
                    num_workers=0, holdout=0.2)
    data = edges2cats(**settings)
    assert data.spec.source_channels == 1 and data.spec.channels == 3
    batches = [*data.eval_batches(split="train", device=CPU),
               *data.eval_batches(split="test", device=CPU)]
    for batch in batches:
        drawn = batch["source"] < 0
        assert 0.01 < drawn.float().mean() < 0.3  # thin black lines on white
        recomputed = edge_drawing(((batch["image"] + 1) * 127.5).round().to(torch.uint8))
        assert torch.equal(recomputed.float() / 127.5 - 1, batch["source"])
    cached = sorted((tmp_path / "cache").rglob("*.png"))
    assert len(cached) == 6
    stamps = [p.stat().st_mtime_ns for p in cached]

    def no_recompute(*args: object, **kwargs: object) -> None:
        raise AssertionError("edges were recomputed instead of read from the cache")

    monkeypatch.setattr(edge_cache, "edge_drawing", no_recompute)
    again = edges2cats(**settings)
    for batch, old in zip(again.eval_batches(split="train", device=CPU), batches, strict=False):
        assert torch.equal(batch["source"], old["source"])
    take(again.train_loader(device=CPU, seed=0), 3)
    assert sorted((tmp_path / "cache").rglob("*.png")) == cached
    assert [p.stat().st_mtime_ns for p in cached] == stamps
    # Other settings are another cache entry.
    monkeypatch.undo()
    edges2cats(**settings, pair={"kind": "edges", "sigma": 2.0}).split("test")[0]
    assert len(list((tmp_path / "cache").iterdir())) == 2


def test_missing_photo_folder_explains(tmp_path: Path) -> None:
    with pytest.raises(GentrainError) as error:
        edges2cats(root=str(tmp_path))
    assert "never published" in str(error.value)
    assert str(tmp_path / "edges2cats" / "photos") in str(error.value)
