"""The adversarial autoencoder: D's real/fake labels, the latent priors, which networks each
phase updates, code reuse, smoke runs with grids and the code scatter, the trainer's figures
hook, task=sample and task=eval on a checkpoint, and clear errors."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from conftest import FAST_RUN, run_task
from PIL import Image
from test_gan import record_phase_steps
from test_resume import straight_and_resumed

from gentrain.data.core.batch import DataSpec
from gentrain.engine.checkpoint import load_checkpoint
from gentrain.errors import GentrainError
from gentrain.models.aae import AAE
from gentrain.models.vae import VAE
from gentrain.priors import SWISSROLL_TURNS, LatentPrior

AAE_FAST = [*FAST_RUN, "model=aae", "model.base_channels=8", "model.latent_dim=2",
            "model.d_hidden=16", "trainer.eval_limit=8"]
SPEC = DataSpec("toy", 1, 8, 8, label_kind="class", num_classes=3)


def aae_task(run_dir: Path, overrides: list[str]) -> dict[str, Any]:
    return run_task(run_dir, overrides, base=AAE_FAST)


def tiny(**kwargs: Any) -> AAE:
    torch.manual_seed(0)
    return AAE(SPEC, base_channels=4, latent_dim=2, d_hidden=8, **kwargs)


def toy_batch(n: int = 6) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {"image": torch.rand(n, 1, 8, 8, generator=g) * 2 - 1,
            "label": torch.arange(n) % SPEC.num_classes}


# ---------------------------------------------------------------- the discriminator's labels


@pytest.mark.parametrize("conditional", [False, True])
def test_the_discriminator_calls_prior_samples_real_and_codes_fake(
    monkeypatch: pytest.MonkeyPatch, conditional: bool
) -> None:
    """The D loss is BCE(D(prior), 1) + BCE(D(E(x)), 0), computed by hand from the very prior
    samples the D step drew (conditional: from each example's label, with D seeing it)."""
    model, batch = tiny(prior="mixture", conditional=conditional), toy_batch()
    drawn: dict[str, Any] = {}
    sample = LatentPrior.sample

    def spy(self: LatentPrior, n: int, labels: Any = None, *args: Any, **kwargs: Any) -> Any:
        drawn["z"], drawn["labels"] = sample(self, n, labels, *args, **kwargs), labels
        return drawn["z"]

    monkeypatch.setattr(LatentPrior, "sample", spy)
    out = model.loss(batch, "discriminator")
    codes = model.encoder(batch["image"])

    def logits(z: torch.Tensor) -> torch.Tensor:
        if conditional:
            z = torch.cat([z, F.one_hot(batch["label"], SPEC.num_classes).float()], dim=1)
        return model.discriminator(z).squeeze(1)

    real, fake = logits(drawn["z"]), logits(codes)
    expected = (F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
                + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake)))
    swapped = (F.binary_cross_entropy_with_logits(real, torch.zeros_like(real))
               + F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake)))
    assert not torch.allclose(expected, swapped)  # the check can tell the labels apart
    torch.testing.assert_close(out["loss"], expected)
    torch.testing.assert_close(out["real_logit"], real.mean())
    torch.testing.assert_close(out["fake_logit"], fake.mean())
    if conditional:
        assert torch.equal(drawn["labels"], batch["label"])
    else:
        assert drawn["labels"] is None


def test_the_encoder_is_trained_to_make_d_call_its_codes_real() -> None:
    """Generator loss = BCE(D(E(x)), 1), the non-saturating -log D(E(x))."""
    model, batch = tiny(prior="gaussian"), toy_batch()
    fake = model.discriminator(model.encoder(batch["image"])).squeeze(1)
    expected = F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake))
    torch.testing.assert_close(model.loss(batch, "generator")["loss"], expected)


# ---------------------------------------------------------------- priors


def test_the_gaussian_prior_is_standard_normal() -> None:
    z = LatentPrior("gaussian", 3).sample(20000, generator=torch.Generator().manual_seed(0))
    assert z.shape == (20000, 3) and z.dtype == torch.float32
    torch.testing.assert_close(z.mean(0), torch.zeros(3), atol=0.03, rtol=0)
    torch.testing.assert_close(z.std(0), torch.ones(3), atol=0.03, rtol=0)


def test_mixture_means_lie_evenly_on_the_circle_and_labels_pick_their_component() -> None:
    prior = LatentPrior("mixture", 4, components=10, radius=4.0, std=0.5)
    means = prior.means()
    torch.testing.assert_close(means.norm(dim=1), torch.full((10,), 4.0))
    gaps = torch.atan2(means[:, 1], means[:, 0]).diff() % (2 * math.pi)
    torch.testing.assert_close(gaps, torch.full((9,), 2 * math.pi / 10))
    labels = torch.arange(10).repeat(2000)
    z = prior.sample(labels.shape[0], labels, torch.Generator().manual_seed(0))
    assert z.shape == (20000, 4)
    per_class = z.view(2000, 10, 4)
    torch.testing.assert_close(per_class[..., :2].mean(0), means, atol=0.05, rtol=0)
    torch.testing.assert_close(per_class[..., :2].std(0), torch.full((10, 2), 0.5),
                               atol=0.03, rtol=0)
    torch.testing.assert_close(z[:, 2:].std(0), torch.ones(2), atol=0.03, rtol=0)  # N(0, 1)
    nearest = torch.cdist(z[:, :2], means).argmin(1)
    assert (nearest == labels).float().mean() > 0.97


def test_an_unconditional_mixture_uses_every_component_equally() -> None:
    prior = LatentPrior("mixture", 2, components=5)
    z = prior.sample(10000, generator=torch.Generator().manual_seed(0))
    counts = torch.bincount(torch.cdist(z, prior.means()).argmin(1), minlength=5)
    assert (counts - 2000).abs().max() < 150


def test_swissroll_samples_lie_on_the_spiral_and_labels_pick_their_segment() -> None:
    prior = LatentPrior("swissroll", 2, components=4, radius=3.0)
    labels = torch.arange(4).repeat(500)
    z = prior.sample(labels.shape[0], labels, torch.Generator().manual_seed(0))
    t = z.norm(dim=1) / 3.0  # sqrt(u): position along the roll, 0 at the centre, 1 outside
    u = t**2
    assert ((u >= labels / 4 - 1e-5) & (u < (labels + 1) / 4 + 1e-5)).all()
    angle = torch.atan2(z[:, 1], z[:, 0]) % (2 * math.pi)
    on_spiral = (2 * math.pi * SWISSROLL_TURNS * t) % (2 * math.pi)
    wrapped = (angle - on_spiral + math.pi) % (2 * math.pi) - math.pi
    assert wrapped.abs().max() < 1e-3
    free = prior.sample(4000, generator=torch.Generator().manual_seed(1))
    assert (free.norm(dim=1) <= 3.0 + 1e-5).all()
    assert torch.histc((free.norm(dim=1) / 3.0) ** 2, bins=4, min=0, max=1).min() > 850


def test_priors_are_reproducible_from_their_generator() -> None:
    prior = LatentPrior("mixture", 3, components=6)
    draws = [prior.sample(5, generator=torch.Generator().manual_seed(7)) for _ in range(2)]
    assert torch.equal(*draws)
    assert not torch.equal(draws[0], prior.sample(5, generator=torch.Generator().manual_seed(8)))


def test_bad_prior_labels_are_clear_errors() -> None:
    with pytest.raises(GentrainError, match="no components"):
        LatentPrior("gaussian", 2).sample(2, torch.tensor([0, 1]))
    with pytest.raises(GentrainError, match="prior_components"):
        LatentPrior("mixture", 2, components=3).sample(2, torch.tensor([0, 3]))
    with pytest.raises(GentrainError, match="latent_dim >= 2"):
        LatentPrior("swissroll", 1)


# ---------------------------------------------------------------- phases in the trainer


def test_each_phase_updates_only_its_networks_in_the_papers_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """reconstruction: encoder and decoder; discriminator: D only; generator: encoder only."""
    steps = record_phase_steps(monkeypatch)
    result = aae_task(tmp_path, ["trainer.max_steps=2", "model.prior=mixture"])
    assert result["steps"] == 2 and result["images_seen"] == 2 * 8  # one shared batch a step
    assert [s["phase"] for s in steps] == ["reconstruction", "discriminator", "generator"] * 2
    trains = {"reconstruction": ("encoder.", "decoder."), "discriminator": ("discriminator.",),
              "generator": ("encoder.",)}
    for s in steps:
        for key in s["before"]:
            changed = not torch.equal(s["before"][key], s["after"][key])
            if not key.startswith(trains[s["phase"]]):
                assert not changed, f"a {s['phase']} step changed {key}"
        for prefix in trains[s["phase"]]:
            assert any(not torch.equal(s["before"][k], s["after"][k]) for k in s["before"]
                       if k.startswith(prefix)), f"a {s['phase']} step did not change {prefix}"


def test_the_generator_phase_reuses_the_codes_of_the_discriminator_phase(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two encoder passes a step and micro-batch (reconstruction, then D's codes that G
    reuses), never three."""
    calls = {"n": 0}
    original = AAE._encode

    def counting(self: AAE, x: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        return original(self, x)

    monkeypatch.setattr(AAE, "_encode", counting)
    aae_task(tmp_path, ["trainer.max_steps=3", "trainer.grad_accum=2"])
    assert calls["n"] == 3 * 2 * 2


def test_resume_is_bitwise_identical(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The prior's draws come from the training RNG, which the checkpoint carries."""
    setup = ["trainer.max_steps=4", "trainer.deterministic=true", "trainer.ckpt_every=100",
             "trainer.sample_every=100", "model.prior=mixture", "model.conditional=true"]
    straight_and_resumed(aae_task, tmp_path, setup, monkeypatch, at=2)
    a, b = load_checkpoint(tmp_path / "straight"), load_checkpoint(tmp_path / "resumed")
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key


# ---------------------------------------------------------------- smoke runs and pictures


@pytest.mark.parametrize(("conditional", "prior"), [(False, "gaussian"), (True, "mixture"),
                                                    (True, "swissroll")])
def test_aae_trains_on_shapes_and_writes_grids_and_the_code_scatter(
    tmp_path: Path, conditional: bool, prior: str
) -> None:
    result = aae_task(tmp_path, ["trainer.max_steps=2", f"model.prior={prior}",
                                 f"model.conditional={str(conditional).lower()}"])
    assert result["status"] == "completed"
    assert all(math.isfinite(result["final_metrics"][f"{p}/loss"])
               for p in ("reconstruction", "discriminator", "generator"))
    assert set(result["samples"]) == {"samples", "reconstructions", "manifold", "codes"}
    with Image.open(result["samples"]["samples"]) as grid:
        rows = 6 if conditional else 8  # one row per shape class when conditional
        assert grid.height == rows * (16 + 2) + 2
    with Image.open(result["samples"]["codes"]) as scatter:
        assert scatter.format == "PNG" and scatter.width >= 300 and scatter.height >= 300
    assert math.isfinite(result["eval"]["eval/recon_mse"])


def test_no_lattice_for_larger_codes_but_a_scatter_of_the_first_two_dims() -> None:
    model, batch = AAE(SPEC, base_channels=4, latent_dim=3, d_hidden=8), toy_batch()
    assert set(model.visuals(batch, torch.Generator().manual_seed(0))) == {"samples",
                                                                           "reconstructions"}
    with Image.open(io.BytesIO(model.figures(batch)["codes"])) as scatter:
        assert scatter.format == "PNG"


def test_the_trainer_writes_a_familys_figures_next_to_its_grids(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The generic hook: whatever PNG bytes ``figures`` returns land in samples/ at the
    visuals cadence, named like the grids, and are listed in the summary."""
    image = Image.new("RGB", (5, 3), (255, 0, 0))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    monkeypatch.setattr(VAE, "figures", lambda self, batch: {"probe": buffer.getvalue()})
    result = run_task(tmp_path, ["trainer.max_steps=2", "trainer.sample_every=1"])
    written = sorted((tmp_path / "samples").glob("probe_*.png"))
    assert [p.name for p in written] == ["probe_00000001.png", "probe_00000002.png"]
    assert written[-1].read_bytes() == buffer.getvalue()
    assert result["samples"]["probe"] == str(written[-1])


# ---------------------------------------------------------------- tasks on a checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("aae") / "run"
    run_task(run_dir, ["trainer.max_steps=2", "model.prior=mixture", "model.conditional=true"],
             base=AAE_FAST)
    return run_dir


def test_eval_on_a_checkpoint_reports_the_reconstruction_error(checkpoint: Path,
                                                               tmp_path: Path) -> None:
    result = aae_task(tmp_path, ["task=eval", f"ckpt={checkpoint}"])
    written = json.loads((checkpoint / "checkpoints" / "eval.json").read_text())
    assert set(written["metrics"]) == {"eval/recon_mse"}
    assert written["metrics"] == result["metrics"] and written["metrics"]["eval/recon_mse"] > 0


def test_sample_on_a_checkpoint_draws_the_asked_classes(checkpoint: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[torch.Tensor] = []
    sample = LatentPrior.sample

    def spy(self: LatentPrior, n: int, labels: Any = None, *args: Any, **kwargs: Any) -> Any:
        asked.append(labels)
        return sample(self, n, labels, *args, **kwargs)

    monkeypatch.setattr(LatentPrior, "sample", spy)
    result = aae_task(tmp_path, ["task=sample", f"ckpt={checkpoint}", "sample.num=4",
                                 "sample.nrow=2", "sample.individual=true", "sample.labels=[2]"])
    with Image.open(result["grid"]) as grid:
        assert grid.width == 2 * (16 + 2) + 2
    assert len(list((tmp_path / "samples" / "individual").glob("*.png"))) == 4
    assert torch.equal(torch.cat(asked), torch.full((4,), 2))


# ---------------------------------------------------------------- errors


def test_conditional_with_the_gaussian_prior_is_a_clear_error() -> None:
    with pytest.raises(GentrainError, match="model.prior=mixture or model.prior=swissroll"):
        AAE(SPEC, base_channels=4, conditional=True, prior="gaussian")


def test_too_few_components_for_the_classes_is_a_clear_error() -> None:
    with pytest.raises(GentrainError, match="fewer than the 3 classes"):
        AAE(SPEC, base_channels=4, conditional=True, prior="mixture", prior_components=2)


def test_conditional_without_class_labels_is_a_clear_error() -> None:
    with pytest.raises(GentrainError, match="needs class labels"):
        AAE(DataSpec("plain", 1, 8, 8), base_channels=4, conditional=True, prior="mixture")
