"""CycleGAN: the cycle loss, the history pool (its probability and its place in the
checkpoint), G-then-D steps sharing the fakes, a smoke run on circles ↔ squares with grids,
bitwise resume, translation of a folder in both directions, and the data it refuses."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import FAST_RUN, compose_config, run_task
from PIL import Image
from test_resume import straight_and_resumed
from torch import nn

from gentrain.data.core.batch import DataSpec
from gentrain.engine.checkpoint import load_checkpoint
from gentrain.errors import GentrainError
from gentrain.models.cyclegan import CycleGAN, ImagePool

CG_FAST = [*FAST_RUN, "model=cyclegan", "data.unpaired=circle:square", "model.base_channels=4",
           "model.num_blocks=1", "model.d_base_channels=4", "model.d_layers=1",
           "trainer.eval_limit=8", "trainer.num_samples=4"]
SPEC = DataSpec("pairs", 3, 16, 16, source_channels=3, unpaired=True)


def cg_task(run_dir: Path, overrides: list[str], base: list[str] = CG_FAST) -> dict[str, Any]:
    return run_task(run_dir, overrides, base=base)


PHASES: list[str] = []  # the phases cg_run's training steps ran, "+fakes" where G's were there


@pytest.fixture(scope="module")
def cg_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("cyclegan")
    original = CycleGAN.loss

    def recording(self: CycleGAN, batch: Any, phase: str, ctx: Any = None) -> Any:
        PHASES.append(phase + ("+fakes" if ctx is not None and "fakes" in ctx.scratch else ""))
        return original(self, batch, phase, ctx)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(CycleGAN, "loss", recording)
        cg_task(run_dir, ["trainer.max_steps=3"])
    return run_dir


def tiny(**kwargs: Any) -> CycleGAN:
    return CycleGAN(SPEC, base_channels=4, num_blocks=1, d_base_channels=4, d_layers=1, **kwargs)


def test_cycle_and_identity_losses_are_exactly_zero_for_identity_generators() -> None:
    model = tiny()
    model.generator_ab, model.generator_ba = nn.Identity(), nn.Identity()
    batch = {"source": torch.rand(2, 3, 16, 16) * 2 - 1, "image": torch.rand(2, 3, 16, 16) * 2 - 1}
    out = tiny().loss(batch, "generator")  # real generators: the losses are not trivially 0
    assert out["cycle_a"] > 0 and out["identity"] > 0
    out = model.loss(batch, "generator")
    assert out["cycle_a"] == 0 and out["cycle_b"] == 0 and out["identity"] == 0
    assert out["loss"] == out["gan_ab"] + out["gan_ba"]  # only the adversarial terms remain


def query_one_by_one(pool: ImagePool, values: range) -> list[float]:
    return [pool(torch.full((1, 1, 1, 1), float(v)))[0].item() for v in values]


def test_the_pool_stores_until_full_then_returns_a_past_fake_half_the_time() -> None:
    torch.manual_seed(0)
    pool = ImagePool(50, (1, 1, 1))
    assert query_one_by_one(pool, range(50)) == list(range(50))  # filling: the new fake back
    assert pool.count.item() == 50
    draws = 4000
    returned = query_one_by_one(pool, range(1000, 1000 + draws))
    past = [r for r, new in zip(returned, range(1000, 1000 + draws), strict=True) if r != new]
    # Binomial(4000, 1/2): sd 0.008, so ±0.03 is nearly 4 sd.
    assert abs(len(past) / draws - 0.5) < 0.03
    assert all(r < v for r, v in zip(returned, range(1000, 1000 + draws), strict=True)
               if r != v)  # what comes back instead is always an earlier fake
    assert len(set(past)) > 500  # from all over the history, not one slot


def test_the_pool_survives_a_state_dict_round_trip() -> None:
    torch.manual_seed(1)
    pool = ImagePool(5, (1, 1, 1))
    query_one_by_one(pool, range(20))
    copy = ImagePool(5, (1, 1, 1))
    copy.load_state_dict(pool.state_dict())
    assert torch.equal(copy.images, pool.images) and copy.count.item() == 5
    state = torch.get_rng_state()
    after = query_one_by_one(pool, range(100, 140))
    torch.set_rng_state(state)
    assert query_one_by_one(copy, range(100, 140)) == after
    assert "pool_b.images" in tiny().state_dict() and "pool_a.count" in tiny().state_dict()


def test_cyclegan_on_circles_and_squares_writes_six_column_grids(cg_run: Path) -> None:
    summary = json.loads((cg_run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 3
    assert {"eval/cycle_a", "eval/cycle_b", "eval/cycle_l1"} <= set(summary["eval"])
    assert summary["best"]["metric"] == "eval/cycle_l1"
    assert {"generator/cycle_a", "generator/identity", "discriminator/d_b"} <= \
        set(summary["final_metrics"])
    grid = Image.open(summary["samples"]["translations"])
    # A | G(A) | F(G(A)) | B | F(B) | G(F(B)): 6 columns of 16 px with 2 px padding.
    assert grid.size == (6 * 16 + 7 * 2, 4 * 16 + 5 * 2)


def test_each_step_is_a_g_step_then_a_d_step_on_its_fakes(cg_run: Path) -> None:
    assert PHASES == ["generator", "discriminator+fakes"] * 3


def test_cyclegan_resume_is_bitwise_identical_pool_included(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A pool of 4 is full after the first step, so the resumed steps draw its coin flips.
    setup = ["trainer.max_steps=4", "trainer.deterministic=true", "trainer.ckpt_every=100",
             "trainer.sample_every=100", "trainer.log_every=2", "model.pool_size=4"]
    straight, resumed = straight_and_resumed(cg_task, tmp_path, setup, monkeypatch, at=2)
    a, b = load_checkpoint(tmp_path / "straight"), load_checkpoint(tmp_path / "resumed")
    assert a["model"]["pool_b.count"].item() == 4
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert resumed["eval"] == straight["eval"]


def test_cyclegan_translates_a_folder_in_both_directions(cg_run: Path, tmp_path: Path) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    for k in range(3):
        Image.new("RGB", (20, 24), (40 * k, 200, 90)).save(folder / f"{k}.png")
    outputs = {}
    for direction in ("AtoB", "BtoA"):
        result = cg_task(tmp_path / direction, [
            "task=sample", f"ckpt={cg_run}", f"sample.source={folder}", "sample.individual=true",
            f"model.direction={direction}"])  # model=cyclegan: the CLI adds it from the ckpt
        assert result["num"] == 3
        assert Image.open(result["grid"]).size[0] == 2 * 16 + 3 * 2  # input | output
        files = sorted((tmp_path / direction / "samples" / "individual").glob("*.png"))
        outputs[direction] = [torch.from_numpy(np.array(Image.open(f))) for f in files]
    assert len(outputs["AtoB"]) == 3
    assert any(not torch.equal(a, b) for a, b in zip(*outputs.values(), strict=True))  # G ≠ F


def test_bto_a_on_the_test_split_translates_domain_b(cg_run: Path) -> None:
    from gentrain.tasks.setup import model_from_checkpoint

    model, _, _ = model_from_checkpoint(str(cg_run), use_ema=True, device=torch.device("cpu"))
    batch = {"source": torch.rand(2, 3, 16, 16) * 2 - 1, "image": torch.rand(2, 3, 16, 16) * 2 - 1}
    assert torch.equal(model.sample(2, model.condition(batch)),
                       model.generator_ab(batch["source"]).clamp(-1, 1))
    model.direction = "BtoA"
    assert torch.equal(model.sample(2, model.condition(batch)),
                       model.generator_ba(batch["image"]).clamp(-1, 1))


def test_cyclegan_needs_two_domains(tmp_path: Path) -> None:
    with pytest.raises(GentrainError, match="data.unpaired=circle:square"):
        cg_task(tmp_path, ["trainer.max_steps=1", "data.unpaired=null"])


def test_cyclegan_also_trains_on_paired_data_ignoring_the_alignment() -> None:
    spec = DataSpec("edges", 3, 16, 16, source_channels=1)  # paired, grey -> colour
    model = CycleGAN(spec, base_channels=4, num_blocks=1, d_base_channels=4, d_layers=1,
                     identity_weight=0)
    batch = {"source": torch.rand(2, 1, 16, 16) * 2 - 1, "image": torch.rand(2, 3, 16, 16) * 2 - 1}
    for phase in ("generator", "discriminator"):
        loss = model.loss(batch, phase)["loss"]
        loss.backward()
        assert torch.isfinite(loss)
    assert model.sample(2, model.condition(batch)).shape == (2, 3, 16, 16)


def test_the_identity_loss_needs_equal_channels() -> None:
    with pytest.raises(GentrainError, match="model.identity_weight=0"):
        CycleGAN(DataSpec("g", 3, 16, 16, source_channels=1), base_channels=4, num_blocks=1,
                 d_layers=1)


def test_pix2pix_refuses_unpaired_data(tmp_path: Path) -> None:
    with pytest.raises(GentrainError, match="pix2pix needs aligned pairs.*model=cyclegan"):
        run_task(tmp_path, ["model=pix2pix", "data.pair=null", "data.unpaired=circle:square",
                            "trainer.max_steps=1"], base=FAST_RUN)


def test_the_horse2zebra_recipe_is_the_papers() -> None:
    cfg = compose_config(["model=cyclegan", "data=horse2zebra"])
    assert cfg.trainer.max_epochs == 200 and cfg.model.schedule.decay_start_epoch == 100
    assert cfg.model.schedule.decay == "linear" and cfg.model.schedule.min_lr_ratio == 0.0
    assert cfg.data.batch_size == 1 and cfg.data.resolution == 256 and cfg.data.load_size == 286
    assert cfg.model.num_blocks == 9 and cfg.model.pool_size == 50
    assert cfg.model.cycle_weight == 10.0 and cfg.model.identity_weight == 0.5
    for phase in ("generator", "discriminator"):
        assert cfg.model.optim[phase].lr == 2e-4
        assert list(cfg.model.optim[phase].betas) == [0.5, 0.999]
    assert compose_config(["model=cyclegan"]).data.unpaired == "circle:square"  # the CPU demo


def test_fid_of_b_to_a_translations_is_against_domain_a(cg_run: Path, tmp_path: Path) -> None:
    """task=eval with model.direction=BtoA compares the translations with domain A (the
    batches' ``source``), under a reference cache of its own, and records which images."""
    from test_evaluation_tasks import offline_quality

    results = {d: cg_task(tmp_path / d, ["task=eval", f"ckpt={cg_run}", f"model.direction={d}",
                                         *offline_quality(tmp_path)]) for d in ("AtoB", "BtoA")}
    assert results["AtoB"]["sample_quality_protocol"]["reference"]["images"] == "image"
    assert results["BtoA"]["sample_quality_protocol"]["reference"]["images"] == "source"
    cached = {path.name: torch.load(path, weights_only=True)
              for path in (tmp_path / "reference").glob("*.pt")}
    assert len(cached) == 2 and sum("-source-" in name for name in cached) == 1
    first, second = cached.values()
    assert not torch.allclose(first["sum"], second["sum"])  # circles and squares differ
