"""Puzzle-GAN: key patches as data (boxes per seed and example, flips, box files), the order-free
part encoding, the box-swap negatives, the L1 weights' decay, and one tiny run shared by the
smoke, sample, eval and resume checks."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import FAST_RUN, compose_config, run_task
from PIL import Image
from test_resume import straight_and_resumed

from gentrain.data import build_data
from gentrain.data.core.transforms import random_hflip
from gentrain.data.pairs.patches import (
    PatchTask,
    drawn_boxes,
    key_patches,
    label_boxes,
    parse_patches,
)
from gentrain.engine.checkpoint import load_checkpoint
from gentrain.errors import GentrainError
from gentrain.models.puzzlegan import box_swaps, l1_weight
from gentrain.nets.puzzlegan import PartEncoder

PG_FAST = [*FAST_RUN, "model=puzzlegan", "model.base_channels=4", "model.d_base_channels=4",
           "model.embed_dim=8", "model.latent_dim=4", "trainer.eval_limit=16",
           "trainer.num_samples=4"]


def pg_task(run_dir: Path, overrides: list[str]) -> dict[str, Any]:
    return run_task(run_dir, overrides, base=PG_FAST)


@pytest.fixture(scope="module")
def pg_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("puzzlegan")
    pg_task(run_dir, ["trainer.max_steps=3"])
    return run_dir


def shapes_data(**patches: Any) -> Any:
    """16-px shapes (32 train, 8 test) with ``data.patches`` set to ``patches`` (or labels)."""
    value = "{" + ",".join(f"{k}:{v}" for k, v in patches.items()) + "}" if patches else "labels"
    cfg = compose_config(["data.num_train=32", "data.num_test=8", "data.resolution=16",
                          "data.batch_size=8", f"data.patches={value}"])
    return build_data(cfg.data)


# ---------------------------------------------------------------- boxes as data


def test_boxes_are_deterministic_per_seed_and_example() -> None:
    task = PatchTask(count=3)
    few, more = drawn_boxes(task, 5, 64, "train"), drawn_boxes(task, 9, 64, "train")
    assert torch.equal(few, more[:5])  # an example's boxes do not depend on the others
    assert not torch.equal(few, drawn_boxes(PatchTask(seed=1), 5, 64, "train"))
    assert not torch.equal(few, drawn_boxes(task, 5, 64, "test"))
    sides = few[..., 2:].float() / 64
    assert sides.min() >= 0.25 - 1 / 64 and sides.max() <= 0.40 + 1 / 64
    assert (few[..., :2] >= 0).all() and (few[..., :2] + few[..., 2:] <= 64).all()
    maps = torch.zeros(4, 16, 16, dtype=torch.long)
    maps[:, 4:9, 6:12] = 1
    boxes = label_boxes(task, maps, "train")
    assert torch.equal(boxes, label_boxes(task, maps, "train"))
    for box in boxes.flatten(0, 1).tolist():  # every box overlaps the object
        x, y, w, h = box
        assert maps[0, y:y + h, x:x + w].any()
    # Built twice, the data gives every example the same boxes (a resume replays them).
    a, b = shapes_data(), shapes_data()
    assert torch.equal(a.splits["train"].boxes, b.splits["train"].boxes)
    assert a.spec.patches == 3


def test_a_flip_keeps_boxes_on_the_same_content() -> None:
    torch.manual_seed(0)
    image = torch.rand(6, 3, 16, 16) * 2 - 1
    boxes = drawn_boxes(PatchTask(), 6, 16, "train")
    generator = torch.Generator().manual_seed(1)
    flipped = random_hflip({"image": image, "boxes": boxes}, generator)
    mirrored = ~torch.isclose(flipped["image"], image).flatten(1).all(1)
    assert 0 < int(mirrored.sum()) < 6  # some flipped, some not
    before = key_patches({"image": image, "boxes": boxes}, torch.Generator().manual_seed(0))
    after = key_patches(flipped, torch.Generator().manual_seed(0))
    for i in range(6):
        if mirrored[i]:
            assert torch.allclose(after["patches"][i], before["patches"][i].flip(-1), atol=1e-6)
            assert torch.equal(after["mask"][i], before["mask"][i].flip(-1))
        else:
            assert torch.equal(after["patches"][i], before["patches"][i])
    # A crop is the box's content: a box over the whole image gives the image back.
    whole = key_patches({"image": image, "boxes": torch.tensor([[[0, 0, 16, 16]]] * 6)},
                        generator)
    assert torch.allclose(whole["patches"][:, 0], image, atol=1e-6)
    assert whole["mask"].eq(1).all()


def test_bad_box_files_give_clear_errors(tmp_path: Path) -> None:
    def build(lines: list[str], **extra: Any) -> Any:
        path = tmp_path / "boxes.txt"
        path.write_text("\n".join(lines) + "\n")
        return shapes_data(source="file", file=str(path), **extra)

    good = ["1 2 4 5 3 3 4 4 0 0 6 6"] * 40  # 32 train + 8 test images
    data = build(good)
    assert data.splits["test"].boxes[0].tolist() == [[1, 2, 4, 5], [3, 3, 4, 4], [0, 0, 6, 6]]
    scaled = build([" ".join(["0 0 8 8"] * 3)] * 40, box_resolution=32)  # 32-px boxes, 16-px data
    assert scaled.splits["train"].boxes[0, 0].tolist() == [0, 0, 4, 4]
    cases = [(good[:39], "boxes for 39 images"),
             (["1 2 4 5 3 3 4 4"] * 40, "has 8 numbers"),
             (good[:5] + ["1 2 4 5 3 3 4 4 12 0 6 6"] + good[6:], "not inside the 16x16")]
    for lines, message in cases:
        with pytest.raises(GentrainError, match=message) as error:
            build(lines)
        assert "\n" not in str(error.value)  # one paragraph
    np.save(tmp_path / "boxes.npy", np.zeros((40, 2, 4), dtype=np.int64))
    with pytest.raises(GentrainError, match=r"needs \(images, 3, 4\)"):
        shapes_data(source="file", file=str(tmp_path / "boxes.npy"))
    with pytest.raises(GentrainError, match="does not exist"):
        shapes_data(source="file", file=str(tmp_path / "missing.mat"))
    with pytest.raises(GentrainError, match="Unknown data.patches"):
        parse_patches({"source": "drawn", "k": 3})


def test_a_folder_dataset_takes_its_boxes_by_file_name(tmp_path: Path) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    for k in range(4):
        Image.new("RGB", (20, 20), (60 * k, 100, 30)).save(folder / f"{k}.png")
    (tmp_path / "boxes.txt").write_text(
        "".join(f"{k}.png {k} 0 4 4 0 {k} 5 5 1 1 3 3\n" for k in reversed(range(4))))
    cfg = compose_config(["data=folder", f"data.path={folder}", "data.resolution=16",
                          "data.num_workers=0", "data.batch_size=2", "data.holdout=0.5",
                          f"data.patches={{source:file,file:{tmp_path / 'boxes.txt'}}}"])
    data = build_data(cfg.data)
    batch = next(iter(data.eval_batches(split="test", device=torch.device("cpu"))))
    names = [int(p.stem) for p in data.splits["test"].files[:2]]
    assert batch["boxes"][:, 0, 0].tolist() == names
    assert batch["patches"].shape == (2, 3, 3, 16, 16)
    # The authors' format: a .mat 'allbbs' (images, 3, 4) in 128-px coordinates, one row per
    # image in the sorted order of the files, scaled down to the data's side (rounded down).
    scipy_io = pytest.importorskip("scipy.io")
    allbbs = np.array([[[8 * k, 0, 40, 33], [0, 0, 32, 32], [64, 64, 51, 51]]
                       for k in range(4)], dtype=np.uint8)
    scipy_io.savemat(tmp_path / "allbbs.mat", {"allbbs": allbbs})
    cfg.data.patches = {"source": "file", "file": str(tmp_path / "allbbs.mat"),
                        "box_resolution": 128}
    data = build_data(cfg.data)
    boxes = data.splits["train"].boxes
    rows = [int(p.stem) for p in data.splits["train"].files]
    assert boxes[:, 0].tolist() == [[k, 0, 5, 4] for k in rows]
    assert boxes[0, 2].tolist() == [8, 8, 6, 6]


# ---------------------------------------------------------------- the model's parts


def test_permuting_the_patches_leaves_the_encoding_unchanged() -> None:
    torch.manual_seed(0)
    encoder = PartEncoder(3, 16, base_channels=4, embed_dim=8)
    patches = torch.rand(5, 3, 3, 16, 16) * 2 - 1
    for training in (True, False):
        encoder.train(training)
        with torch.no_grad():
            a = encoder(patches)
            b = encoder(patches[:, [2, 0, 1]])
        assert len(a) == 3 and a[-1].shape == (5, 8, 1, 1)
        for x, y in zip(a, b, strict=True):
            assert torch.allclose(x, y, atol=1e-5)


def test_the_composite_negatives_hold_the_right_regions() -> None:
    image, other = torch.full((2, 3, 8, 8), 0.5), torch.full((2, 3, 8, 8), -0.5)
    boxes = torch.tensor([[[0, 0, 3, 3], [4, 4, 2, 4]]] * 2)
    mask = key_patches({"image": image, "boxes": boxes}, torch.Generator())["mask"]
    inside = mask.bool().expand_as(image)
    pasted, reverse = box_swaps(image, other, mask)
    assert (pasted[inside] == 0.5).all() and (pasted[~inside] == -0.5).all()
    assert (reverse[inside] == -0.5).all() and (reverse[~inside] == 0.5).all()
    assert int(mask.sum()) == 2 * (9 + 8)
    # The partner is another real image of the batch, never the image itself.
    images = torch.arange(6.0).view(6, 1, 1, 1).expand(6, 3, 4, 4)
    out = key_patches({"image": images, "boxes": torch.tensor([[[0, 0, 2, 2]]] * 6)},
                      torch.Generator().manual_seed(1))
    partners = out["shuffled"][:, 0, 0, 0]
    assert sorted(partners.tolist()) == list(range(6))
    assert (partners != images[:, 0, 0, 0]).all()


def test_the_l1_weights_decay_log_uniformly_from_1e_2_to_1e_4() -> None:
    values = [l1_weight(step, 101, 1e-2, 1e-4) for step in range(101)]
    assert math.isclose(values[0], 1e-2) and math.isclose(values[-1], 1e-4)
    assert math.isclose(values[50], 1e-3)
    ratios = [b / a for a, b in zip(values, values[1:], strict=False)]
    assert max(ratios) - min(ratios) < 1e-9  # a constant factor per step: log-uniform


# ---------------------------------------------------------------- one tiny run


def test_puzzlegan_trains_two_d_steps_per_g_step_and_writes_completions(pg_run: Path) -> None:
    summary = json.loads((pg_run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 3
    assert summary["images_seen"] == 3 * 2 * 8  # D on two batches, G on the second
    assert {"eval/mask_iou", "eval/appearance_l1"} <= set(summary["eval"])
    assert 0 <= summary["eval"]["eval/mask_iou"] <= 1
    assert summary["best"]["metric"] == "eval/mask_iou" and summary["best"]["mode"] == "max"
    metrics = summary["final_metrics"]
    assert {"discriminator/swap_logit", "generator/mask_l1", "generator/l1_weight"} <= set(
        metrics)
    grid = Image.open(summary["samples"]["completions"])
    assert grid.size[0] == 6 * 16 + 7 * 2  # 3 patches | mask | generated | real


def test_puzzlegan_samples_from_test_patches_and_from_a_folder_of_crops(
    pg_run: Path, tmp_path: Path
) -> None:
    result = run_task(tmp_path / "split", ["task=sample", f"ckpt={pg_run}", "sample.num=3"],
                      base=FAST_RUN[:2])
    assert result["num"] == 3 and Image.open(result["grid"]).size[0] == 6 * 16 + 7 * 2
    crops = tmp_path / "crops"
    for image in range(2):
        (crops / f"face{image}").mkdir(parents=True)
        for k in range(3):
            Image.new("RGB", (7 + k, 9), (80 * k, 40, 200)).save(
                crops / f"face{image}" / f"{k}.png")
    result = run_task(tmp_path / "folder", ["task=sample", f"ckpt={pg_run}",
                                            f"sample.source={crops}", "sample.individual=true"],
                      base=FAST_RUN[:2])
    assert result["num"] == 2 and Image.open(result["grid"]).size[0] == 5 * 16 + 6 * 2
    assert len(list((tmp_path / "folder" / "samples" / "individual").glob("*.png"))) == 2
    (crops / "face1" / "0.png").unlink()
    with pytest.raises(GentrainError, match="patch crops of one image"):
        run_task(tmp_path / "bad", ["task=sample", f"ckpt={pg_run}", f"sample.source={crops}"],
                 base=FAST_RUN[:2])


def test_puzzlegan_eval_reports_mask_iou_and_the_judges_class_agreement(
    pg_run: Path, tmp_path: Path
) -> None:
    result = run_task(tmp_path, ["task=eval", f"ckpt={pg_run}", "eval.features=domain",
                                 "eval.num_samples=16", "eval.judge.steps=5",
                                 f"eval.judge.cache={tmp_path / 'judges'}", "eval.kid_subsets=2",
                                 "eval.kid_subset_size=8"], base=PG_FAST)
    metrics = result["metrics"]
    assert 0 <= metrics["eval/mask_iou"] <= 1 and metrics["eval/appearance_l1"] >= 0
    # The share of completions the judge puts in the class of their source image.
    assert 0 <= metrics["eval/consistency_domain"] <= 1


def test_puzzlegan_needs_patches(tmp_path: Path) -> None:
    with pytest.raises(GentrainError, match="data.patches=drawn"):
        pg_task(tmp_path, ["trainer.max_steps=1", "data.patches=null"])


def test_puzzlegan_resume_is_bitwise_identical(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    setup = ["trainer.max_steps=4", "trainer.deterministic=true", "trainer.ckpt_every=100",
             "trainer.sample_every=100", "trainer.eval_every=100", "trainer.log_every=2"]
    straight, resumed = straight_and_resumed(pg_task, tmp_path, setup, monkeypatch, at=2)
    a, b = load_checkpoint(tmp_path / "straight"), load_checkpoint(tmp_path / "resumed")
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert resumed["eval"] == straight["eval"]


def test_the_recipes_are_the_authors() -> None:
    cfg = compose_config(["model=puzzlegan", "data=celeba"])
    assert cfg.data.resolution == 64 and cfg.data.crop == 108 and cfg.data.batch_size == 64
    assert list(cfg.model.optim.generator.betas) == [0.5, 0.999]
    assert cfg.model.optim.discriminator.lr == 2e-4 and cfg.model.d_steps == 2
    assert cfg.model.latent_dim == 128 and cfg.data.patches.box_resolution == 128
    shapes = compose_config(["model=puzzlegan"])
    assert shapes.data.patches == "labels" and shapes.data.centred
    from gentrain.data.datasets.shapes import render_shapes

    maps = render_shapes(8, 32, 3, seed=0, centred=True).label_maps > 0
    columns = (maps.sum(1) * torch.arange(32)).sum(1) / maps.sum((1, 2))
    assert (columns - 15.5).abs().max() < 1  # every shape about the centre (left-right)
