"""GAN-INT-CLS (model=text2image_gan): the matching-aware D's three terms, interpolated captions
in G's loss only, the text encoder trained through D alone, training on shapes' captions with
a titled grid, bitwise resume, and sampling from a reloaded checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from conftest import FAST_RUN, compose_config, run_task
from PIL import Image
from test_resume import straight_and_resumed
from torch import Tensor, nn

from gentrain.data import build_data
from gentrain.data.core.seeding import generator_for
from gentrain.engine.checkpoint import load_checkpoint
from gentrain.engine.run_log import RunLog
from gentrain.errors import GentrainError
from gentrain.models import build_model
from gentrain.models.base import Grid
from gentrain.models.text2image_gan import GRID_COLUMNS, GRID_ROWS, Text2ImageGAN
from gentrain.tasks.setup import model_from_checkpoint

TINY_MODEL = ["model=text2image_gan", "model.base_channels=8", "model.d_base_channels=8",
              "model.latent_dim=4", "model.projection_dim=8", "model.text.width=16",
              "model.text.heads=2", "model.text.layers=1"]
# data=shapes picks up the text2image_gan_shapes recipe (captions on, a held-out pair); the
# recipe's size and length are brought back down to the suite's.
T2I_FAST = [*FAST_RUN, *TINY_MODEL, "trainer.eval_limit=8", "trainer.log_every=1"]


def t2i_task(run_dir: Path, overrides: list[str]) -> dict[str, Any]:
    return run_task(run_dir, overrides, base=T2I_FAST)


def tiny_model_and_batch(**model: Any) -> tuple[Text2ImageGAN, dict[str, Tensor]]:
    """A tiny model on shapes' captions and a training batch of 4 with 4 different captions."""
    cfg = compose_config([*T2I_FAST, *(f"model.{k}={v}" for k, v in model.items())])
    data = build_data(cfg.data)
    torch.manual_seed(0)
    built = build_model(cfg.model, data.spec)
    assert isinstance(built, Text2ImageGAN)
    batch = next(iter(data.train_loader(device=torch.device("cpu"), seed=0)))
    batch = {k: v[:4] for k, v in batch.items()}
    assert len({tuple(c.tolist()) for c in batch["caption"]}) == 4
    return built, batch


class ScriptedCritic(nn.Module):
    """A D whose logits the test sets: one vector per pair it may be shown (real or fake image,
    right or wrong text), told apart by comparing its inputs with the batch's."""

    def __init__(self, real: Tensor, right: Tensor, logits: dict[str, Tensor]) -> None:
        super().__init__()
        self.real, self.right, self.logits = real, right, logits
        self.scale = nn.Parameter(torch.ones(()))  # something for D's phase to train
        self.shown: list[str] = []

    def forward(self, images: Tensor, embedding: Tensor) -> Tensor:
        image = "real" if torch.equal(images, self.real) else "fake"
        if torch.allclose(embedding, self.right, atol=1e-5):
            text = "right"
        elif torch.allclose(embedding, self.right.roll(1, 0), atol=1e-5):
            text = "wrong"
        else:
            text = "other"
        self.shown.append(f"{image}/{text}")
        return self.scale * self.logits[f"{image}/{text}"]


def test_the_matching_aware_d_loss_is_real_plus_half_wrong_text_plus_half_fake() -> None:
    """L_D = softplus(−s_r) + 0.5·softplus(s_w) + 0.5·softplus(s_f), each a batch mean, with
    s_r on (real, right text), s_w on (real, wrong text = the next example's) and s_f on (fake,
    right text); G's matching term is softplus(−s_f) with the text G drew from."""
    model, batch = tiny_model_and_batch(interpolation_weight=0)
    model.eval()  # the encoder's embedding the same in every call
    with torch.no_grad():
        right = model.text_encoder(batch["caption"])[0]
    logits = {"real/right": torch.tensor([2.0, -1.0, 0.5, 3.0]),
              "real/wrong": torch.tensor([0.5, 3.0, -2.0, 1.0]),
              "fake/right": torch.tensor([-2.0, 1.0, 0.0, 4.0])}
    model.discriminator = ScriptedCritic(batch["image"], right, logits)
    out = model.loss(batch, "discriminator")
    expected = (F.softplus(-logits["real/right"]).mean()
                + 0.5 * F.softplus(logits["real/wrong"]).mean()
                + 0.5 * F.softplus(logits["fake/right"]).mean())
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert sorted(model.discriminator.shown) == ["fake/right", "real/right", "real/wrong"]
    assert out["real_wrong_logit"].item() == pytest.approx(logits["real/wrong"].mean().item())
    assert out["fake_right_logit"].item() == pytest.approx(logits["fake/right"].mean().item())
    model.discriminator.shown.clear()
    g = model.loss(batch, "generator")
    assert model.discriminator.shown == ["fake/right"]
    assert g["loss"].item() == pytest.approx(F.softplus(-logits["fake/right"]).mean().item())


def record_text_inputs(module: nn.Module, into: list[Tensor]) -> None:
    """Record the embeddings ``module`` (a projection of G or D) is given."""
    module.register_forward_pre_hook(lambda _, args: into.append(args[0].detach().clone()))


def test_interpolated_captions_reach_gs_loss_and_never_ds() -> None:
    """GAN-INT: in G's phase, G draws from 0.5·t + 0.5·t̂ and D judges those fakes with it,
    and G's loss grows by exactly that term; D's phase never sees the interpolation, and its
    loss is the same with GAN-INT on or off."""
    model, batch = tiny_model_and_batch()
    model.eval()  # batch norm and the encoder deterministic: the same t in every call
    with torch.no_grad():
        t = model.text_encoder(batch["caption"])[0]
    mixed = 0.5 * t + 0.5 * t.roll(1, 0)
    seen: dict[str, list[Tensor]] = {"discriminator": [], "generator": []}
    losses: dict[tuple[str, float], dict[str, Tensor]] = {}
    for weight in (1.0, 0.0):
        model.interpolation_weight = weight
        for phase in ("discriminator", "generator"):
            shown: list[Tensor] = []
            record_text_inputs(model.discriminator.text, shown)
            record_text_inputs(model.generator.text, shown)
            torch.manual_seed(1)
            losses[phase, weight] = model.loss(batch, phase)
            model.discriminator.text._forward_pre_hooks.clear()
            model.generator.text._forward_pre_hooks.clear()
            if weight == 1.0:
                seen[phase] = shown
    assert not any(torch.allclose(x, mixed, atol=1e-5) for x in seen["discriminator"])
    wrong = t.roll(1, 0)
    assert any(torch.allclose(x, wrong, atol=1e-5) for x in seen["discriminator"])
    assert sum(torch.allclose(x, mixed, atol=1e-5) for x in seen["generator"]) == 2  # G and D
    assert torch.equal(losses["discriminator", 1.0]["loss"], losses["discriminator", 0.0]["loss"])
    with_int, without = losses["generator", 1.0], losses["generator", 0.0]
    assert with_int["interpolation_loss"] > 0
    assert with_int["loss"].item() == pytest.approx(
        without["loss"].item() + with_int["interpolation_loss"].item(), rel=1e-6)


def test_the_text_encoder_trains_through_ds_loss_alone() -> None:
    """D's loss gives the encoder gradients; G's (interpolations included) gives it none."""
    model, batch = tiny_model_and_batch()
    model.loss(batch, "generator")["loss"].backward()
    assert all(p.grad is None for p in model.text_encoder.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0
               for p in model.generator.parameters())
    model.loss(batch, "discriminator")["loss"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0
               for p in model.text_encoder.parameters())
    assert set(model.phase_parameters("discriminator")) >= set(model.text_encoder.parameters())


def test_uncaptioned_data_and_missing_captions_are_clear_errors(tmp_path: Path) -> None:
    model, batch = tiny_model_and_batch()
    with pytest.raises(GentrainError, match="data.captions=true"):
        t2i_task(tmp_path, ["data.captions=false", "trainer.max_steps=1"])
    with pytest.raises(GentrainError, match="sample.prompt"):
        model.sample(2)
    with pytest.raises(GentrainError, match=r"shape \(2, 16\)"):
        model.sample(2, {"caption": batch["caption"][:3]})
    with pytest.raises(GentrainError, match="batches of 2 or more"):
        model.loss({k: v[:1] for k, v in batch.items()}, "discriminator")


@pytest.fixture(scope="module")
def t2i_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Grid]]:
    """A 3-step run with an EMA, and every grid it wrote."""
    run_dir = tmp_path_factory.mktemp("t2i")
    grids: list[Grid] = []
    original = RunLog.grid

    def keep(self: RunLog, step: int, name: str, grid: Grid) -> Path | None:
        grids.append(grid)
        return original(self, step, name, grid)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(RunLog, "grid", keep)
        result = t2i_task(run_dir, ["trainer.max_steps=3", "model.ema.decay=0.9"])
    assert result["status"] == "completed"
    return run_dir, grids


def test_training_on_shapes_captions_writes_a_grid_titled_with_its_captions(
    t2i_run: tuple[Path, list[Grid]]
) -> None:
    run_dir, grids = t2i_run
    summary = load_checkpoint(run_dir)
    cfg = compose_config(T2I_FAST)
    assert cfg.data.captions and list(cfg.data.caption_holdout) == ["green triangle"]
    fixed = build_data(cfg.data).fixed_batch(GRID_ROWS, torch.device("cpu"))
    model, _, _ = model_from_checkpoint(str(run_dir), use_ema=True, device=torch.device("cpu"))
    grid = grids[-1]
    assert grid.nrow == GRID_COLUMNS and grid.images.shape[0] == GRID_ROWS * GRID_COLUMNS
    assert grid.titles == tuple(model.tokenizer.decode(fixed["caption"]))  # type: ignore[operator]
    assert all(t.split()[0] in ("a", "the") or "," in t or "background" in t
               for t in grid.titles)
    png = run_dir / "samples" / f"samples_{summary['step']:08d}.png"
    with Image.open(png) as image:
        untitled = GRID_COLUMNS * (16 + 2) + 2
        assert image.width > untitled + 40  # the strip of titles on the left


def test_sampling_from_the_reloaded_checkpoint_equals_the_runs_last_grid(
    t2i_run: tuple[Path, list[Grid]]
) -> None:
    """The checkpoint brings back the EMA G, its encoder and the vocabulary: the grid drawn
    after reloading is the one the run drew last, bit for bit, with the same titles."""
    run_dir, grids = t2i_run
    model, state, _ = model_from_checkpoint(str(run_dir), use_ema=True,
                                            device=torch.device("cpu"))
    cfg = compose_config(T2I_FAST)
    fixed = build_data(cfg.data).fixed_batch(cfg.trainer.num_samples, torch.device("cpu"))
    again = model.visuals(fixed, generator_for(torch.device("cpu"), cfg.seed, "samples"))
    assert torch.equal(again["samples"].images, grids[-1].images)
    assert again["samples"].titles == grids[-1].titles
    captions = fixed["caption"][:3]
    one = model.sample(3, {"caption": captions}, torch.Generator().manual_seed(5))
    two = model.sample(3, {"caption": captions}, torch.Generator().manual_seed(5))
    assert torch.equal(one, two) and one.shape == (3, 3, 16, 16)
    assert list(state["ema"]["networks"]) == ["generator", "text_encoder"]


def test_task_sample_draws_a_prompt_and_needs_one(
    t2i_run: tuple[Path, list[Grid]], tmp_path: Path
) -> None:
    run_dir, _ = t2i_run
    out = t2i_task(tmp_path / "one", ["task=sample", f"ckpt={run_dir}", "sample.num=4",
                                      "sample.prompt=a green triangle on a zebra background"])
    assert out["num"] == 4 and Path(out["grid"]).is_file()
    with pytest.raises(GentrainError, match="captions only"):
        t2i_task(tmp_path / "none", ["task=sample", f"ckpt={run_dir}", "sample.num=4"])


def test_resume_is_bitwise_identical(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    setup = ["trainer.max_steps=4", "trainer.deterministic=true", "trainer.ckpt_every=100",
             "trainer.sample_every=100", "trainer.log_every=2", "model.ema.decay=0.9"]
    straight_and_resumed(t2i_task, tmp_path, setup, monkeypatch, at=2)
    a, b = load_checkpoint(tmp_path / "straight"), load_checkpoint(tmp_path / "resumed")
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for name, weights in a["ema"]["networks"].items():
        for key, value in weights.items():
            assert torch.equal(value, b["ema"]["networks"][name][key]), f"ema {name}.{key}"
