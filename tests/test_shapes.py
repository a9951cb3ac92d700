"""The embedded dataset and its on-device loader: deterministic, labelled, shardable."""

from __future__ import annotations

import pytest
import torch

from gentrain.data.core.tensor_data import DeviceBatchLoader, TensorSplit
from gentrain.data.core.transforms import random_hflip
from gentrain.data.datasets.shapes import SHAPE_NAMES, render_shapes, shapes
from gentrain.errors import GentrainError

CPU = torch.device("cpu")


def test_same_seed_same_images_other_seed_other_images() -> None:
    a, b, c = (render_shapes(64, 16, 3, seed) for seed in (1, 1, 2))
    assert torch.equal(a.images, b.images) and torch.equal(a.label_maps, b.label_maps)
    assert not torch.equal(a.images, c.images)


def test_label_maps_match_labels_and_every_class_appears() -> None:
    split = render_shapes(600, 32, 3, seed=0)
    assert split.images.dtype == torch.uint8 and split.images.shape == (600, 3, 32, 32)
    assert set(split.labels.tolist()) == set(range(len(SHAPE_NAMES)))
    for image_map, label in zip(split.label_maps, split.labels, strict=True):
        values = set(image_map.unique().tolist())
        assert values == {0, int(label) + 1}  # background and exactly this image's shape


def test_shape_pixels_differ_from_background() -> None:
    split = render_shapes(200, 32, 1, seed=3)
    inside = split.label_maps > 0
    for image, mask in zip(split.images[:, 0].float(), inside, strict=True):
        # Medians skip the anti-aliased rim: they are the shape and background values.
        assert image[mask].median() - image[~mask].median() >= 0.45 * 255 - 1


def test_ranks_get_disjoint_shards_and_resume_replays() -> None:
    data = shapes(batch_size=8, resolution=8, num_train=64, num_test=8, hflip=False)
    seen = []
    for rank in (0, 1):
        loader = data.train_loader(device=CPU, seed=5, rank=rank, world_size=2)
        seen.append(torch.cat([next(loader)["image"] for _ in range(4)]))  # one epoch each
    flat = [img.flatten() for img in torch.cat(seen)]
    assert len({tuple(x.tolist()) for x in flat}) == len(flat)  # no image on both ranks

    loader = data.train_loader(device=CPU, seed=5)
    first = [next(loader)["image"] for _ in range(11)]  # crosses an epoch boundary
    state = loader.state_dict()
    after = [next(loader)["image"] for _ in range(3)]
    again = data.train_loader(device=CPU, seed=5)
    again.load_state_dict(state)
    assert state == {"epoch": 1, "index": 3} and first
    for expected in after:
        assert torch.equal(next(again)["image"], expected)


def test_flip_moves_image_and_label_map_together() -> None:
    split = render_shapes(32, 16, 3, seed=4)
    loader = DeviceBatchLoader(split, batch_size=32, seed=0, device=CPU, transform=random_hflip)
    batch = next(loader)
    order = loader._epoch_order()[:32]
    original = split.batch(order)
    flipped = ~torch.equal(batch["image"], original["image"])
    assert flipped
    for i in range(32):
        same = torch.equal(batch["image"][i], original["image"][i])
        mirrored = torch.equal(batch["image"][i], original["image"][i].flip(-1))
        assert same or mirrored
        expected_map = original["label_map"][i] if same else original["label_map"][i].flip(-1)
        assert torch.equal(batch["label_map"][i], expected_map)


def test_colour_scheme_named_keeps_class_labels_and_draws_the_attribute_images() -> None:
    """data.colours=named with class labels draws the attribute scheme's images (what judges a
    translator of it); auto keeps the free colours for class labels; free cannot be named."""
    def test_split(**keys: object) -> TensorSplit:
        return shapes(batch_size=4, resolution=16, num_train=8, num_test=64, **keys).split("test")

    named = test_split(colours="named")
    attributes = test_split(labels="attributes")
    assert torch.equal(named.images, attributes.images)
    assert torch.equal(named.labels, test_split().labels)  # the shape classes, 0-5
    assert torch.equal(test_split(colours="auto").images, test_split(colours="free").images)
    assert not torch.equal(test_split(colours="free").images, named.images)
    with pytest.raises(GentrainError, match="data.colours=free"):
        test_split(labels="attributes", colours="free")
    with pytest.raises(GentrainError, match="data.colours='grey'"):
        test_split(colours="grey")
