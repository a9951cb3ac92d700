"""InfoGAN: the mutual-information terms against hand computations, where the info loss's
gradient goes in each phase, phase isolation on the trainer, the traversal grids (shape, and
only the traversed code changes along a row), a smoke run writing every grid, task=sample and
the configuration errors."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import FAST_RUN, run_task
from PIL import Image
from test_gan import record_phase_steps
from test_resume import straight_and_resumed

from gentrain.data.core.batch import DataSpec
from gentrain.engine.checkpoint import load_checkpoint
from gentrain.errors import GentrainError
from gentrain.models.adversarial_step import frozen
from gentrain.models.infogan import SWEEP, InfoGAN, code_nlls

NOISE, K, CONT, SIDE = 5, 3, 2, 16
TILE = SIDE + 2  # torchvision's make_grid pads 2 px
INFOGAN_FAST = [*FAST_RUN, "model=infogan", "model.base_channels=8", f"model.noise_dim={NOISE}",
                f"model.categorical={K}", f"model.continuous={CONT}", "trainer.eval_limit=8"]


def infogan_task(run_dir: Path, overrides: list[str]) -> dict[str, Any]:
    return run_task(run_dir, overrides, base=INFOGAN_FAST)


def tiny_model(**kwargs: Any) -> InfoGAN:
    torch.manual_seed(0)
    options = {"noise_dim": NOISE, "categorical": K, "continuous": CONT, "base_channels": 4,
               **kwargs}
    return InfoGAN(DataSpec("shapes", 3, SIDE, SIDE), **options)


def batch(n: int = 6) -> dict[str, torch.Tensor]:
    return {"image": torch.rand(n, 3, SIDE, SIDE) * 2 - 1}


# -- the mutual-information terms ---------------------------------------------------------------


def test_the_categorical_term_is_minus_log_softmax_at_the_true_category() -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]])
    codes = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # categories 0 and 2
    by_hand = [-(2.0 - math.log(math.exp(2.0) + 1.0 + math.exp(-1.0))),
               -(0.0 - math.log(math.exp(0.5) + math.exp(1.5) + 1.0))]
    nlls = code_nlls(logits, codes, categorical=3, continuous=0, learn_std=False)
    assert nlls["categorical"].item() == pytest.approx(sum(by_hand) / 2, rel=1e-6)
    assert nlls["accuracy"].item() == 0.5  # argmax 0 is right, argmax 1 is not
    assert "continuous" not in nlls


@pytest.mark.parametrize("learn_std", [False, True])
def test_the_continuous_term_is_the_factored_gaussian_log_likelihood(learn_std: bool) -> None:
    """One categorical value (k=2) first, then 2 means (and their log σ when learned)."""
    means, log_stds = [0.5, -0.3], [math.log(0.5), 0.2]
    codes = torch.tensor([[0.0, 1.0, 0.2, 0.9]])  # category 1, c = (0.2, 0.9)
    q = torch.tensor([[0.0, 0.0, *means, *(log_stds if learn_std else [])]])
    stds = [math.exp(s) for s in log_stds] if learn_std else [1.0, 1.0]
    by_hand = -sum(-0.5 * math.log(2 * math.pi) - math.log(s) - (c - m) ** 2 / (2 * s**2)
                   for c, m, s in zip((0.2, 0.9), means, stds, strict=True))
    nlls = code_nlls(q, codes, categorical=2, continuous=2, learn_std=learn_std)
    assert nlls["continuous"].item() == pytest.approx(by_hand, rel=1e-6)
    assert nlls["categorical"].item() == pytest.approx(math.log(2.0), rel=1e-6)  # equal logits


def test_the_info_loss_weights_each_code_and_the_logged_bound_adds_h_c() -> None:
    model = tiny_model(categorical_weight=1.0, continuous_weight=0.1)
    fake, _, latent = model._generate(batch(), keep_graph=False)
    logits, terms = model._judge_fakes(model.discriminator, fake, None, latent)
    _, q = model.discriminator(fake, with_q=True)
    nlls = code_nlls(q, latent[:, NOISE:], K, CONT, learn_std=False)
    assert logits.shape == (6,)
    assert terms["loss"].item() == pytest.approx(
        (nlls["categorical"] + 0.1 * nlls["continuous"]).item(), rel=1e-5)
    assert terms["mi_categorical"].item() == pytest.approx(
        math.log(K) - nlls["categorical"].item(), rel=1e-5)
    assert terms["mi_continuous"].item() == pytest.approx(
        CONT * math.log(2) - nlls["continuous"].item(), rel=1e-5)


# -- where the gradients go ---------------------------------------------------------------------


def grads(module: torch.nn.Module) -> dict[str, torch.Tensor | None]:
    return {name: p.grad for name, p in module.named_parameters()}


def test_the_g_steps_info_loss_reaches_g_only_and_the_d_steps_reaches_q_and_the_body() -> None:
    """G step: through the frozen D and Q to every parameter of G. D step (detached fakes): to
    the Q head and D's shared conv body, never to D's logit layer or to G."""
    model = tiny_model()
    fake, _, latent = model._generate(batch(), keep_graph=True)
    with frozen(model.discriminator) as critic:
        _, terms = model._judge_fakes(critic, fake, None, latent)
    terms["loss"].backward()
    assert all(g is not None and g.abs().sum() > 0 for g in grads(model.generator).values())
    assert all(g is None for g in grads(model.discriminator).values())

    model.zero_grad(set_to_none=True)
    _, terms = model._judge_fakes(model.discriminator, fake.detach(), None, latent)
    terms["loss"].backward()
    d = grads(model.discriminator)
    assert all(g is not None and g.abs().sum() > 0 for n, g in d.items() if n.startswith("q."))
    assert any(g is not None and g.abs().sum() > 0 for n, g in d.items()
               if n.startswith("critic.features."))
    assert all(g is None for n, g in d.items() if n.startswith("critic.out."))
    assert all(g is None for g in grads(model.generator).values())


def test_the_q_head_trains_in_the_discriminator_phase() -> None:
    model = tiny_model()
    q_head = {id(p) for p in model.discriminator.q.parameters()}
    assert q_head <= {id(p) for p in model.phase_parameters("discriminator")}
    assert not q_head & {id(p) for p in model.phase_parameters("generator")}


# -- traversal grids ----------------------------------------------------------------------------


def test_a_categorical_traversal_changes_only_c_along_each_row() -> None:
    model = tiny_model()
    latents = model.traversal_latents("categorical", torch.Generator().manual_seed(1))
    assert latents.shape == (8, K, NOISE + K + CONT)  # 8 rows of z, one column per category
    z, one_hot, cont = latents[..., :NOISE], latents[..., NOISE:NOISE + K], latents[..., NOISE + K:]
    assert torch.equal(z, z[:, :1].expand_as(z))  # one z per row
    assert not torch.equal(z[0], z[1])  # rows differ
    assert torch.equal(one_hot, torch.eye(K).expand(8, K, K))  # column j: category j
    assert torch.equal(cont, torch.zeros_like(cont))


@pytest.mark.parametrize("j", range(CONT))
def test_a_continuous_traversal_sweeps_one_code_from_minus_2_to_2(j: int) -> None:
    model = tiny_model()
    latents = model.traversal_latents(f"continuous_{j}", torch.Generator().manual_seed(1))
    columns = SWEEP[2]
    assert latents.shape == (K, columns, NOISE + K + CONT)  # one row per category
    swept = NOISE + K + j
    fixed = torch.cat([latents[..., :swept], latents[..., swept + 1:]], dim=-1)
    assert torch.equal(fixed, fixed[:, :1].expand_as(fixed))  # all else fixed along a row
    assert torch.equal(latents[..., NOISE:NOISE + K].argmax(-1),
                       torch.arange(K)[:, None].expand(K, columns))  # row r: category r
    assert torch.allclose(latents[0, :, swept], torch.linspace(-2.0, 2.0, columns))


def test_visuals_are_the_samples_and_one_grid_per_code() -> None:
    model = tiny_model().eval()
    grids = model.visuals(batch(), torch.Generator().manual_seed(0))
    assert sorted(grids) == ["categorical", "continuous_0", "continuous_1", "samples"]
    assert grids["categorical"].images.shape == (8 * K, 3, SIDE, SIDE)
    assert grids["categorical"].nrow == K
    assert grids["continuous_1"].images.shape == (K * SWEEP[2], 3, SIDE, SIDE)
    assert grids["continuous_1"].nrow == SWEEP[2]
    assert grids["samples"].images.shape[0] == 64


# -- runs ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], list[Any]]:
    """A 2-step shapes run: its dir, its summary and every optimizer step's parameters."""
    run_dir = tmp_path_factory.mktemp("infogan") / "run"
    with pytest.MonkeyPatch.context() as patch:
        steps = record_phase_steps(patch)
        result = infogan_task(run_dir, ["trainer.max_steps=2"])
    return run_dir, result, steps


def test_a_d_step_leaves_g_unchanged_and_a_g_step_leaves_d_and_q_unchanged(
    trained: tuple[Path, dict[str, Any], list[Any]]
) -> None:
    steps = trained[2]
    assert [s["phase"] for s in steps] == ["discriminator", "generator"] * 2
    for s in steps:
        other = "generator." if s["phase"] == "discriminator" else "discriminator."
        assert all(torch.equal(s["before"][k], s["after"][k]) for k in s["before"]
                   if k.startswith(other)), f"a {s['phase']} step changed {other}"
        mine = ("discriminator.q.",) if s["phase"] == "discriminator" else ("generator.",)
        assert any(not torch.equal(s["before"][k], s["after"][k]) for k in s["before"]
                   if k.startswith(mine)), f"a {s['phase']} step did not change {mine}"


def test_a_shapes_run_writes_every_grid_with_one_tile_per_latent(
        trained: tuple[Path, dict[str, Any], list[Any]]) -> None:
    result = trained[1]
    assert result["status"] == "completed"
    metrics = result["final_metrics"]
    for phase in ("discriminator", "generator"):
        assert math.isfinite(metrics[f"{phase}/loss"]) and f"{phase}/mi_categorical" in metrics
    sizes = {"samples": (8, 8), "categorical": (K, 8), "continuous_0": (SWEEP[2], K),
             "continuous_1": (SWEEP[2], K)}
    assert set(result["samples"]) == set(sizes)
    for name, (columns, rows) in sizes.items():
        with Image.open(result["samples"][name]) as grid:
            assert grid.size == (columns * TILE + 2, rows * TILE + 2), name


def test_task_sample_draws_from_an_infogan_checkpoint(
        trained: tuple[Path, dict[str, Any], list[Any]], tmp_path: Path) -> None:
    sampled = infogan_task(tmp_path, ["task=sample", f"ckpt={trained[0]}", "sample.num=4",
                                      "sample.nrow=2", "sample.individual=true"])
    with Image.open(sampled["grid"]) as grid:
        assert grid.size == (2 * TILE + 2, 2 * TILE + 2)
    assert len(list((tmp_path / "samples" / "individual").glob("*.png"))) == 4


def test_infogan_resume_is_bitwise_identical(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """D, Q and G weights and the EMA of G after an interrupted and resumed run equal those
    of a straight one."""
    setup = ["trainer.max_steps=4", "trainer.deterministic=true", "trainer.ckpt_every=100",
             "trainer.sample_every=100", "trainer.log_every=2", "model.ema.decay=0.9"]
    straight_and_resumed(infogan_task, tmp_path, setup, monkeypatch, at=2)
    a, b = load_checkpoint(tmp_path / "straight"), load_checkpoint(tmp_path / "resumed")
    assert a["step"] == b["step"] == 4
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for key, value in a["ema"]["networks"]["generator"].items():
        assert torch.equal(value, b["ema"]["networks"]["generator"][key]), key


@pytest.mark.parametrize(("override", "match"), [
    ({"categorical": 1}, "0 \\(none\\) or >= 2"),
    ({"categorical": 0, "continuous": 0}, "at least one latent code"),
    ({"continuous_weight": -1.0}, "must be >= 0"),
])
def test_bad_code_settings_are_clear_errors(override: dict[str, Any], match: str) -> None:
    with pytest.raises(GentrainError, match=match):
        tiny_model(**override)


def test_a_traversal_of_a_missing_code_is_a_clear_error() -> None:
    with pytest.raises(GentrainError, match="continuous_0..continuous_1"):
        tiny_model().traversal_latents("continuous_2")
    with pytest.raises(GentrainError, match="no categorical code"):
        tiny_model(categorical=0).traversal_latents("categorical")
