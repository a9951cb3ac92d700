"""Progressive GAN: the growing schedule against the official formula, the fade-in blends of G,
D and the real images, the layers' arithmetic, and a tiny 4 -> 8 -> 16 px run resumed
mid-fade (bitwise, across a batch-size change and optimizer resets) and on two DDP ranks."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import FAST_RUN, run_task
from test_distributed import COMPARE_WEIGHTS, torchrun
from test_resume import interrupt_at

from gentrain.data.core.batch import DataSpec
from gentrain.engine.checkpoint import load_checkpoint
from gentrain.engine.growth import GrowthSchedule
from gentrain.errors import GentrainError
from gentrain.models.base import StepContext
from gentrain.models.progan import ProGAN, fade_reals
from gentrain.nets.progan import (
    Discriminator,
    EqualizedConv2d,
    EqualizedLinear,
    Generator,
    minibatch_stddev,
)
from gentrain.tasks.setup import model_from_checkpoint


def official_schedule(cur_nimg: int, resolution_log2: int, lod_initial_resolution: int,
                      lod_training_kimg: float, lod_transition_kimg: float) -> tuple[float, int]:
    """The official TrainingSchedule's lod and resolution (train.py, numpy as there)."""
    kimg = cur_nimg / 1000.0
    phase_dur = lod_training_kimg + lod_transition_kimg
    phase_idx = int(np.floor(kimg / phase_dur)) if phase_dur > 0 else 0
    phase_kimg = kimg - phase_idx * phase_dur
    lod = resolution_log2
    lod -= np.floor(np.log2(lod_initial_resolution))
    lod -= phase_idx
    if lod_transition_kimg > 0:
        lod -= max(phase_kimg - lod_training_kimg, 0.0) / lod_transition_kimg
    lod = max(lod, 0.0)
    return lod, 2 ** (resolution_log2 - int(np.floor(lod)))


@pytest.mark.parametrize(("final", "initial", "kimg"), [(1024, 4, 600), (1024, 4, 800),
                                                        (32, 4, 400), (128, 8, 600)])
def test_schedule_matches_the_official_formula(final: int, initial: int, kimg: int) -> None:
    schedule = GrowthSchedule(final, 16, initial, kimg, kimg, batch_size={256: 14})
    counts = [0, 1, 599_999, 600_000, 600_001, 900_000, 1_199_999, 1_200_000, 2_345_678,
              4_000_000, 7_654_321, 11_000_000, 30_000_000]
    for images in counts:
        lod, resolution = official_schedule(images, int(math.log2(final)), initial, kimg, kimg)
        stage = schedule.at(images)
        assert stage.lod == lod and stage.resolution == resolution, images
        assert stage.fade == 1 - (lod - math.floor(lod))
        assert stage.batch_size == (14 if resolution == 256 else 16)
    # By hand, the TF default 600k + 600k at 1024 px: halfway through fading in 8x8.
    half = GrowthSchedule(1024, 16).at(900_000)
    assert (half.resolution, half.fade, half.lod) == (8, 0.5, 7.5)
    assert GrowthSchedule(1024, 16).at(100_000_000).resolution == 1024


def tiny_nets(resolution: int = 16) -> tuple[Generator, Discriminator]:
    torch.manual_seed(0)
    return Generator(8, 3, resolution, 32, 16), Discriminator(3, resolution, 32, 16)


def test_fade_weight_zero_is_the_smaller_networks_upsampled_or_pooled() -> None:
    generator, discriminator = tiny_nets()
    z = torch.randn(4, 8)
    for level in (1, 2):
        smaller = generator(z, level - 1)
        grown = generator(z, level, fade=0.0)
        assert torch.equal(grown, F.interpolate(smaller, scale_factor=2, mode="nearest"))
        assert not torch.equal(generator(z, level, fade=0.5), grown)
        images = torch.randn(4, 3, 4 * 2**level, 4 * 2**level)
        assert torch.equal(discriminator(images, level, fade=0.0),
                           discriminator(F.avg_pool2d(images, 2), level - 1))


def test_minibatch_stddev_against_a_hand_computation() -> None:
    x = torch.randn(8, 2, 3, 3)
    out = minibatch_stddev(x, group_size=4)
    assert out.shape == (8, 3, 3, 3) and torch.equal(out[:, :2], x)
    for member in range(8):  # groups as the official reshape makes them: i mod (8 / 4)
        group = x[member % 2 :: 2]
        mean = sum(group) / 4
        std = torch.sqrt(sum((g - mean) ** 2 for g in group) / 4 + 1e-8)
        assert torch.allclose(out[member, 2], std.mean().expand(3, 3), atol=1e-6)
    with pytest.raises(GentrainError, match="groups of 4"):
        minibatch_stddev(torch.randn(6, 2, 3, 3), group_size=4)
    assert minibatch_stddev(torch.randn(3, 2, 3, 3)).shape == (3, 3, 3, 3)  # group = batch


def test_equalized_layers_scale_unit_normal_weights_at_run_time() -> None:
    torch.manual_seed(0)
    conv, linear = EqualizedConv2d(64, 32, 3), EqualizedLinear(256, 128, gain=1.0)
    assert abs(conv.weight.std().item() - 1) < 0.02 and abs(linear.weight.std().item() - 1) < 0.02
    assert torch.equal(conv.bias, torch.zeros(32))
    x = torch.randn(2, 64, 5, 5)
    effective = conv.weight * math.sqrt(2) / math.sqrt(64 * 9)
    assert torch.allclose(conv(x), F.conv2d(x, effective, conv.bias, padding=1), atol=1e-6)
    v = torch.randn(2, 256)
    assert torch.allclose(linear(v), F.linear(v, linear.weight / 16, linear.bias), atol=1e-6)


def test_real_images_fade_with_their_down_up_sampled_copy() -> None:
    images = torch.randn(2, 3, 16, 16)
    at8 = images.reshape(2, 3, 8, 2, 8, 2).mean(dim=(3, 5))  # 2x2 box average
    assert torch.allclose(fade_reals(images, 8, lod=1.0), at8, atol=1e-6)
    blocks = at8.reshape(2, 3, 4, 2, 4, 2).mean(dim=(3, 5), keepdim=True)
    blurred = blocks.expand(2, 3, 4, 2, 4, 2).reshape(2, 3, 8, 8)
    faded = fade_reals(images, 8, lod=1.25)  # fade 0.75: a quarter of the blurred copy
    assert torch.allclose(faded, 0.75 * at8 + 0.25 * blurred, atol=1e-6)


def spec(height: int = 16, width: int = 16) -> DataSpec:
    return DataSpec(name="toy", channels=3, height=height, width=width)


def test_drift_term_is_a_thousandth_of_the_mean_squared_real_score() -> None:
    torch.manual_seed(0)
    model = ProGAN(spec(), latent_dim=8, fmap_base=32, fmap_max=16)
    model.lod = 0.5  # 16 px, half faded in
    batch = {"image": torch.rand(4, 3, 16, 16) * 2 - 1}
    out = model.loss(batch, "discriminator")
    real = model.discriminator(fade_reals(batch["image"], 16, 0.5), 2, 0.5)
    assert torch.allclose(out["drift"], real.pow(2).mean())
    expected = (out["fake_logit"] - out["real_logit"] + 10 * out["gradient_penalty"]
                + 0.001 * out["drift"])
    assert torch.allclose(out["loss"], expected, atol=1e-5)


def test_the_nonsaturating_game_with_r1_replaces_wgan_gp() -> None:
    """loss=nonsaturating: softplus losses, R1 on the (faded) real images, no gradient penalty;
    the drift term stays as configured."""
    torch.manual_seed(0)
    model = ProGAN(spec(), latent_dim=8, fmap_base=32, fmap_max=16, loss="nonsaturating",
                   r1_weight=10.0)
    model.lod = 0.5
    batch = {"image": torch.rand(4, 3, 16, 16) * 2 - 1}
    out = model.loss(batch, "discriminator")
    assert "gradient_penalty" not in out
    real = fade_reals(batch["image"], 16, 0.5).requires_grad_(True)
    score = model.discriminator(real, 2, 0.5)
    (grad,) = torch.autograd.grad(score.sum(), real)
    r1 = grad.pow(2).flatten(1).sum(1).mean()
    torch.testing.assert_close(out["r1_penalty"], r1, rtol=1e-4, atol=1e-6)
    with pytest.raises(GentrainError, match="model.loss='hinged'"):
        ProGAN(spec(), fmap_base=32, fmap_max=16, loss="hinged")


def test_lazy_r1_is_weighted_k_times_on_every_kth_d_update_only() -> None:
    """model.r1_every=4 (StyleGAN2's lazy regularisation): D's loss carries 4·γ/2·R1 on D
    updates 0, 4, 8, ... (counted from the trainer's step) and no R1 on the others."""
    torch.manual_seed(0)
    model = ProGAN(spec(), latent_dim=8, fmap_base=32, fmap_max=16, loss="nonsaturating",
                   r1_weight=10.0, r1_every=4)
    model.lod = 0.5
    batch = {"image": torch.rand(4, 3, 16, 16) * 2 - 1}

    def d_loss(step: int, r1_weight: float) -> dict[str, torch.Tensor]:
        model.r1_weight = r1_weight
        torch.manual_seed(1)  # the same fakes
        return model.loss(batch, "discriminator", StepContext(step=step))

    for step, lazy in ((0, True), (1, False), (3, False), (4, True), (6, False)):
        out, plain = d_loss(step, 10.0), d_loss(step, 0.0)
        if lazy:
            torch.testing.assert_close(out["loss"] - plain["loss"],
                                       4 * 10.0 / 2 * out["r1_penalty"])
        else:
            assert "r1_penalty" not in out
            torch.testing.assert_close(out["loss"], plain["loss"])
    with pytest.raises(GentrainError, match="model.r1_every"):
        ProGAN(spec(), fmap_base=32, fmap_max=16, r1_weight=1.0, r1_every=0)


def test_bad_data_and_batches_are_clear_errors() -> None:
    with pytest.raises(GentrainError, match="power of two"):
        ProGAN(spec(12, 12))
    with pytest.raises(GentrainError, match="power of two"):
        ProGAN(spec(16, 32))
    model = ProGAN(spec(), fmap_base=32, fmap_max=16)
    with pytest.raises(GentrainError, match="256 px \\(14\\)"):
        model.check_growth({128: 16, 256: 14})
    model.check_growth({4: 16, 8: 3})  # a batch smaller than the group is one group


# A tiny run that grows 4 -> 8 -> 16 px: 32 images to stabilise, 32 to fade; 8 images a batch
# at 4 px, then 4; Adam's rate halved at 16 px; optimizer resets when each fade starts and ends.
# The paper's game and rate (the family's defaults), not the shapes recipe's.
TINY = [*FAST_RUN, "model=progan", "data.num_train=64", "data.num_test=16",
        "model.loss=wgan-gp", "model.r1_weight=0", "model.optim.generator.lr=0.001",
        "model.optim.discriminator.lr=0.001",
        "model.latent_dim=8", "model.fmap_base=32", "model.fmap_max=16", "model.ema.decay=0.9",
        "model.growth.stabilise_kimg=0.032", "model.growth.fade_kimg=0.032",
        "model.growth.batch_size={8:4,16:4}", "model.growth.lr={16:0.0005}",
        "trainer.deterministic=true",
        "trainer.log_every=2", "trainer.ckpt_every=100", "trainer.sample_every=100",
        "trainer.max_steps=22"]
INTERRUPT_AT = 8  # 56 images: fading in 8 px, after the batch-size change and a reset


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A straight run, and one stopped mid-fade and resumed (shared by the tests below)."""
    root = tmp_path_factory.mktemp("progan")
    straight = run_task(root / "straight", [], base=TINY)
    with pytest.MonkeyPatch.context() as patch:
        interrupt_at(patch, INTERRUPT_AT)
        stopped = run_task(root / "resumed", [], base=TINY)
    resumed = run_task(root / "resumed", ["resume=auto"], base=TINY)
    return {"root": root, "straight": straight, "stopped": stopped, "resumed": resumed}


def test_resume_mid_fade_is_bitwise_identical(runs: dict[str, Any]) -> None:
    stopped, straight, resumed = runs["stopped"], runs["straight"], runs["resumed"]
    assert stopped["steps"] == INTERRUPT_AT
    assert stopped["growth"]["resolution"] == 8 and 0 < stopped["growth"]["fade"] < 1
    assert straight["growth"]["resolution"] == 16 and 0 < straight["growth"]["fade"] < 1
    assert resumed["images_seen"] == straight["images_seen"]
    a = load_checkpoint(runs["root"] / "straight")
    b = load_checkpoint(runs["root"] / "resumed")
    assert a["model"]["_extra_state"] == b["model"]["_extra_state"]
    weights = [(a["model"], b["model"]),
               (a["ema"]["networks"]["generator"], b["ema"]["networks"]["generator"])]
    for mine, theirs in weights:
        for key, value in mine.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, theirs[key]), f"{key} differs after resume"
    for phase in ("discriminator", "generator"):  # Adam's moments and step counts too
        mine, theirs = a["optimizers"][phase]["state"], b["optimizers"][phase]["state"]
        assert mine.keys() == theirs.keys()
        for index, moments in mine.items():
            for key, value in moments.items():
                assert torch.equal(value, theirs[index][key]), (phase, index, key)


def test_batch_size_follows_the_schedule_and_logs_show_the_growth(runs: dict[str, Any]
                                                                  ) -> None:
    schedule = GrowthSchedule(16, 8, stabilise_kimg=0.032, fade_kimg=0.032,
                              batch_size={8: 4, 16: 4})
    images, levels = 0, []
    for _ in range(22):
        stage = schedule.at(images)
        levels.append(stage.level)
        images += stage.batch_size
    straight = runs["straight"]
    assert straight["images_seen"] == images == 5 * 8 + 17 * 4
    assert len(set(levels)) == 4  # 4 px; fading in 8; 8 stable; fading in 16
    metrics = straight["final_metrics"]
    assert metrics["growth/resolution"] == 16 and metrics["growth/fade"] == pytest.approx(
        straight["growth"]["fade"])
    assert "discriminator/drift" in metrics
    assert metrics["lr/generator"] == metrics["lr/discriminator"] == 0.0005  # growth.lr at 16 px
    assert runs["stopped"]["final_metrics"]["lr/generator"] == 0.001  # model.optim's at 8 px
    run_dir = runs["root"] / "straight"
    grid = sorted((run_dir / "samples").glob("samples_*.png"))[-1]
    from PIL import Image
    assert Image.open(grid).size == (8 * 16 + 9 * 2, 8 * 16 + 9 * 2)  # shown at 16 px


def test_sample_and_eval_at_the_final_resolution(runs: dict[str, Any]) -> None:
    run_dir = runs["root"] / "straight"
    model, state, _ = model_from_checkpoint(str(run_dir), use_ema=True,
                                            device=torch.device("cpu"))
    assert model.lod == runs["straight"]["growth"]["lod"]
    assert model.sample(3).shape == (3, 3, 16, 16)
    out = run_task(runs["root"] / "eval", [
        "task=eval", f"ckpt={run_dir}", "eval.features=standin", "eval.num_samples=16",
        "eval.reference_split=test", f"eval.reference_cache={runs['root'] / 'ref'}",
        "eval.kid_subset_size=8", "eval.kid_subsets=2", "eval.is_splits=2",
        "eval.sample_quality=[fid]"], base=TINY)
    assert out["family"] == "progan" and out["sample_quality_protocol"]["num_generated"] == 16
    assert "eval/fid" in out["metrics"] and math.isfinite(out["metrics"]["eval/fid"])


def test_ddp_two_processes_grow_through_a_resolution_change(tmp_path: Path) -> None:
    """Two ranks of 4 images each: 4 px for 3 steps, then fading in 8 px; the ranks end with
    the same weights."""
    script = tmp_path / "compare.py"
    script.write_text(COMPARE_WEIGHTS)
    args = ["trainer.max_steps=4", "data.batch_size=4", "model.growth.stabilise_kimg=0.016",
            "model.growth.fade_kimg=0.032", "trainer.log_every=2"]
    result = torchrun(args, cwd=tmp_path, entry=(str(script),),
                      base=[a for a in TINY if "batch_size" not in a and "max_steps" not in a])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "rank 1 weights equal rank 0: True" in result.stdout, result.stdout[-2000:]
    summary = json.loads(next((tmp_path / "outputs").rglob("summary.json")).read_text())
    assert summary["world_size"] == 2 and summary["images_seen"] == 4 * 4 * 2
    assert summary["growth"]["resolution"] == 8 and summary["growth"]["fade"] < 1
