"""StarGAN: its losses computed by hand, the critic's two heads, the n_critic phase ratio and the
isolation of D and G updates on the Trainer, the translation grid, resume, the recipes,
attribute labels for the shapes dataset, and the errors for data without attributes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from conftest import FAST_RUN, compose_config, run_task
from data_fixtures import patch_celeba_checksums, write_celeba
from PIL import Image
from test_gan import record_phase_steps
from test_resume import straight_and_resumed

from gentrain.data.core.batch import DataSpec
from gentrain.data.datasets.shapes import ATTRIBUTE_NAMES, SHAPE_NAMES, render_shapes, shapes
from gentrain.engine.checkpoint import load_checkpoint
from gentrain.errors import GentrainError
from gentrain.models.stargan import StarGAN, classification_loss
from gentrain.nets.stargan import StarDiscriminator

STAR_FAST = [*FAST_RUN, "model=stargan", "model.base_channels=4", "model.num_blocks=1",
             "model.d_base_channels=4", "trainer.eval_limit=8", "trainer.num_samples=8"]
SPEC = DataSpec(name="toy", channels=3, height=16, width=16, label_kind="attributes",
                num_classes=4, class_names=ATTRIBUTE_NAMES)


def star_task(run_dir: Path, overrides: list[str], base: list[str] = STAR_FAST
              ) -> dict[str, Any]:
    return run_task(run_dir, overrides, base=base)


def tiny_model(**kwargs: Any) -> StarGAN:
    torch.manual_seed(0)
    return StarGAN(SPEC, base_channels=4, num_blocks=1, d_base_channels=4,
                   exclusive_groups=[["red", "green", "blue"]], **kwargs)


def tiny_batch(n: int = 6) -> dict[str, torch.Tensor]:
    split = render_shapes(n, 16, 3, seed=1, attributes=True)
    return {"image": split.images.float() / 127.5 - 1, "label": split.labels}


def hand_bce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """−[y log σ(l) + (1 − y) log(1 − σ(l))], summed over attributes, mean over images."""
    p = torch.sigmoid(logits)
    return -(labels * p.log() + (1 - labels) * (1 - p).log()).sum() / logits.shape[0]


def test_classification_loss_is_the_per_attribute_bce_summed_over_attributes() -> None:
    logits = torch.tensor([[0.0, 2.0, -1.0], [-1.5, 0.5, 3.0]])
    labels = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    # Image 1: log 2 + softplus(2) + softplus(-1); image 2: softplus(-1.5) + softplus(-0.5)
    # + softplus(-3); the mean over the two images.
    by_formula = (F.softplus(torch.tensor([0.0, 2.0, -1.0, -1.5, -0.5, -3.0]))).sum() / 2
    assert torch.allclose(classification_loss(logits, labels), by_formula)
    assert torch.allclose(classification_loss(logits, labels), hand_bce(logits, labels))


def test_the_g_step_is_adversarial_plus_target_bce_plus_cycle_l1_by_hand() -> None:
    model, batch = tiny_model(), tiny_batch()
    x, label = batch["image"], batch["label"]
    torch.manual_seed(5)
    out = model.loss(batch, "generator")
    torch.manual_seed(5)
    target = label[torch.randperm(label.shape[0])]  # the step's targets: labels permuted
    assert not torch.equal(target, label)
    with torch.no_grad():
        fake = model.translate(x, target)
        cycle = model.translate(fake, label)  # back to the original domain
        src, cls = model.discriminator(fake)
    assert torch.allclose(out["reconstruction"], (x - cycle).abs().mean())
    assert torch.allclose(out["classification"], hand_bce(cls, target), atol=1e-5)
    assert torch.allclose(out["adversarial"], -src.mean())
    assert torch.allclose(out["loss"], out["adversarial"] + 1.0 * out["classification"]
                          + 10.0 * out["reconstruction"], atol=1e-5)


def test_the_d_step_classifies_real_images_by_their_own_labels() -> None:
    model, batch = tiny_model(), tiny_batch()
    x, label = batch["image"], batch["label"]
    torch.manual_seed(7)
    out = model.loss(batch, "discriminator")
    torch.manual_seed(7)
    target = label[torch.randperm(label.shape[0])]
    with torch.no_grad():
        real_src, real_cls = model.discriminator(x)
        fake_src, _ = model.discriminator(model.translate(x, target))
    assert torch.allclose(out["classification"], hand_bce(real_cls, label), atol=1e-5)
    assert torch.allclose(out["wasserstein_estimate"], real_src.mean() - fake_src.mean(),
                          atol=1e-6)
    assert out["gradient_penalty"] > 0
    assert torch.allclose(out["loss"], -out["wasserstein_estimate"] + out["classification"]
                          + 10.0 * out["gradient_penalty"], atol=1e-5)


def test_the_discriminator_has_a_patch_head_and_a_domain_head_sized_from_the_resolution(
) -> None:
    # The appendix at 128 px: six 4x4 stride-2 convs, doubling from 64 to 2048 (32 x base).
    paper = StarDiscriminator(3, 128, 5, base_channels=4)
    convs = [m for m in paper.body if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 6 and convs[-1].out_channels == 32 * 4
    assert all(c.kernel_size == (4, 4) and c.stride == (2, 2) for c in convs)
    assert paper.cls.kernel_size == (2, 2) and paper.src.kernel_size == (3, 3)
    src, cls = paper(torch.zeros(2, 3, 128, 128))
    assert src.shape == (2, 1, 2, 2) and cls.shape == (2, 5)
    small = StarDiscriminator(3, 32, 4, base_channels=8)
    assert sum(isinstance(m, torch.nn.Conv2d) for m in small.body) == 4
    assert small(torch.zeros(1, 3, 32, 32))[1].shape == (1, 4)


def test_grid_targets_flip_each_attribute_or_set_one_colour_of_the_group() -> None:
    model = tiny_model()
    labels = torch.tensor([[1.0, 0, 0, 0], [0, 1, 0, 1]])
    red, green, blue, light = model.domain_targets(labels)
    assert torch.equal(green, torch.tensor([[0.0, 1, 0, 0], [0, 1, 0, 1]]))
    assert torch.equal(blue, torch.tensor([[0.0, 0, 1, 0], [0, 0, 1, 1]]))
    assert torch.equal(light, torch.tensor([[1.0, 0, 0, 1], [0, 1, 0, 0]]))
    images = tiny_batch(2)["image"]
    # The target reaches G's output (under reflection padding the instance norm after the
    # first conv would erase the constant c planes: differences of 1e-6, rounding only).
    change = model.sample(2, {"image": images, "label": red}) \
        - model.sample(2, {"image": images, "label": light})
    assert change.abs().amax(dim=(1, 2, 3)).min() > 1e-3
    with pytest.raises(GentrainError, match="cond\\['label'\\]"):
        model.sample(2)


@pytest.fixture(scope="module")
def star_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, list[dict]]:
    """Two training steps with three critic updates each, every optimizer step recorded."""
    run_dir = tmp_path_factory.mktemp("stargan")
    with pytest.MonkeyPatch.context() as patch:
        steps = record_phase_steps(patch)
        result = star_task(run_dir, ["trainer.max_steps=2", "model.critic_steps=3"])
    return run_dir, result, steps


def test_n_critic_updates_per_g_update_each_leaving_the_other_network_unchanged(
    star_run: tuple[Path, dict, list[dict]]
) -> None:
    _, result, steps = star_run
    assert result["steps"] == 2
    assert [s["phase"] for s in steps] == (["discriminator"] * 3 + ["generator"]) * 2
    assert result["images_seen"] == 2 * (3 + 1) * 8  # a fresh batch per critic update + G's
    for s in steps:
        other = "generator." if s["phase"] == "discriminator" else "discriminator."
        mine = f"{s['phase']}."
        assert all(torch.equal(s["before"][k], s["after"][k]) for k in s["before"]
                   if k.startswith(other)), f"a {s['phase']} step changed {other}"
        assert any(not torch.equal(s["before"][k], s["after"][k]) for k in s["before"]
                   if k.startswith(mine)), f"a {s['phase']} step did not change {mine}"


def test_stargan_trains_on_shape_attributes_and_writes_the_translation_grid(
    star_run: tuple[Path, dict, list[dict]]
) -> None:
    run_dir, result, _ = star_run
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert {"eval/rec_l1", "eval/cls_accuracy"} <= set(result["eval"])
    metrics = summary["final_metrics"]
    assert {"generator/reconstruction", "generator/classification",
            "discriminator/gradient_penalty", "discriminator/classification"} <= set(metrics)
    grid = Image.open(summary["samples"]["translations"])
    # 8 rows of input | red | green | blue | light-background flipped, 16 px, 2 px padding.
    assert grid.size == (5 * 16 + 6 * 2, 8 * 16 + 9 * 2)


def test_task_sample_translates_test_images_to_every_domain(
    star_run: tuple[Path, dict, list[dict]], tmp_path: Path
) -> None:
    run_dir = star_run[0]
    result = run_task(tmp_path, ["task=sample", f"ckpt={run_dir}", "sample.num=4",
                                 "sample.batch_size=3"], base=FAST_RUN[:2])
    assert result["num"] == 4
    assert Image.open(result["grid"]).size == (5 * 16 + 6 * 2, 4 * 16 + 5 * 2)
    with pytest.raises(GentrainError, match="drop sample.source"):
        run_task(tmp_path, ["task=sample", f"ckpt={run_dir}", f"sample.source={tmp_path}"],
                 base=FAST_RUN[:2])


def test_stargan_resume_is_bitwise_identical(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fresh critic batches, target permutations and penalty draws all replay on resume."""
    setup = ["trainer.max_steps=4", "trainer.deterministic=true", "trainer.ckpt_every=100",
             "trainer.sample_every=100", "trainer.log_every=2", "model.critic_steps=2"]
    straight, resumed = straight_and_resumed(star_task, tmp_path, setup, monkeypatch, at=2)
    a, b = load_checkpoint(tmp_path / "straight"), load_checkpoint(tmp_path / "resumed")
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert resumed["eval"] == straight["eval"]


def test_class_labelled_data_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(GentrainError, match="data.labels=attributes"):
        star_task(tmp_path, ["trainer.max_steps=1", "data.labels=class"])


def test_shapes_with_attribute_labels() -> None:
    data = shapes(batch_size=4, resolution=16, num_train=300, num_test=8, labels="attributes")
    assert data.spec.label_kind == "attributes" and data.spec.class_names == ATTRIBUTE_NAMES
    split = data.split("train")
    labels = split.labels
    assert labels.shape == (300, 4) and labels.dtype == torch.float32
    assert set(labels.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(labels[:, :3].sum(1), torch.ones(300))  # one colour family each
    assert 0.3 < labels[:, 3].mean() < 0.7  # light and dark backgrounds both common
    images = split.images.float() / 255
    inside = split.label_maps > 0
    for image, mask, label in zip(images, inside, labels, strict=True):
        shape_rgb = image[:, mask].median(dim=1).values
        assert shape_rgb.argmax() == label[:3].argmax()  # the named family's channel leads
        background = image[:, ~mask].mean()
        assert (background > 0.7) if label[3] else (background < 0.35)
    with pytest.raises(GentrainError, match="data.channels=3"):
        shapes(batch_size=4, resolution=16, channels=1, num_train=8, num_test=8,
               labels="attributes")
    with pytest.raises(GentrainError, match="data.labels"):
        shapes(batch_size=4, resolution=16, num_train=8, num_test=8, labels="colour")


def test_default_shapes_are_unchanged_by_attribute_support() -> None:
    """The class-labelled images are bit-identical to those before attributes existed."""
    data = shapes(batch_size=4, resolution=16, num_train=8, num_test=8)
    assert data.spec.label_kind == "class" and data.spec.class_names == SHAPE_NAMES
    split = render_shapes(300, 32, 3, 0)
    digest = hashlib.sha1(split.images.numpy().tobytes() + split.labels.numpy().tobytes()
                          + split.label_maps.numpy().tobytes()).hexdigest()
    assert digest == "786796e1a08731924e85a8abe1984afe651ae8a4"  # rendered before the change


def test_the_celeba_recipe_is_the_papers_and_builds_on_a_celeba_fixture(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = compose_config(["model=stargan", "data=celeba"])
    assert (cfg.data.resolution, cfg.data.crop, cfg.data.batch_size) == (128, 178, 16)
    assert list(cfg.data.attributes) == ["Black_Hair", "Blond_Hair", "Brown_Hair", "Male",
                                         "Young"]
    assert cfg.model.critic_steps == 5 and cfg.trainer.max_steps * 5 == 200_000
    assert cfg.model.schedule.decay == "linear" and cfg.model.schedule.decay_start == 20_000
    assert cfg.model.optim.generator.lr == 1e-4 and list(cfg.model.optim.discriminator.betas) \
        == [0.5, 0.999]
    written = write_celeba(tmp_path / "data")
    patch_celeba_checksums(monkeypatch, written["md5"])
    base = [*FAST_RUN[:3], "logger=none", "model=stargan", "data=celeba",
            f"data.root={tmp_path / 'data'}", "data.download=false", "data.resolution=16",
            "data.num_workers=0", "data.batch_size=2", "model.base_channels=4",
            "model.num_blocks=1", "model.d_base_channels=4", "model.critic_steps=1",
            "trainer.num_samples=2", "trainer.max_steps=1"]
    star_task(tmp_path / "run", [], base=base)
    grid = Image.open(tmp_path / "run" / "samples" / "translations_00000001.png")
    assert grid.size[0] == 6 * 16 + 7 * 2  # input + the five domains
