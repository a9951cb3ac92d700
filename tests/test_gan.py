"""The GAN family on the multi-phase Trainer: phase ratios, isolation of D and G updates, fake
reuse, EMA of G only, schedules per phase, every loss, resume and errors."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import FAST_RUN, run_task
from test_resume import straight_and_resumed

from gentrain.data.core.batch import DataSpec
from gentrain.engine.checkpoint import load_checkpoint
from gentrain.engine.ema import EMA
from gentrain.engine.schedule import lr_multiplier, phase_schedule
from gentrain.engine.trainer import Trainer
from gentrain.errors import GentrainError
from gentrain.models.gan import GAN

GAN_FAST = [*FAST_RUN, "model=gan", "model.base_channels=8", "model.latent_dim=8",
            "trainer.eval_limit=8"]
WGAN = ["model.loss=wgan-gp", "model.critic_steps=3",
        "model.optim.discriminator.betas=[0.0,0.9]", "model.optim.generator.betas=[0.0,0.9]"]


def gan_task(run_dir: Path, overrides: list[str]) -> dict[str, Any]:
    return run_task(run_dir, overrides, base=GAN_FAST)


def record_phase_steps(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Per optimizer step: the phase, and every parameter before and after the update."""
    steps: list[dict[str, Any]] = []
    original = Trainer._optimizer_step

    def step(self: Trainer, state: Any, *args: Any) -> None:
        before = {k: v.detach().clone() for k, v in self.model.named_parameters()}
        original(self, state, *args)
        after = {k: v.detach().clone() for k, v in self.model.named_parameters()}
        steps.append({"phase": state.phase.name, "before": before, "after": after})

    monkeypatch.setattr(Trainer, "_optimizer_step", step)
    return steps


def test_wgan_gp_runs_five_to_one_style_critic_updates_on_fresh_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """3 critic updates per generator update, each critic update on its own real batch."""
    steps = record_phase_steps(monkeypatch)
    result = gan_task(tmp_path, ["trainer.max_steps=2", *WGAN])
    assert result["steps"] == 2
    assert [s["phase"] for s in steps] == ["discriminator"] * 3 + ["generator"] \
        + ["discriminator"] * 3 + ["generator"]
    assert result["images_seen"] == 2 * (3 + 1) * 8  # 3 fresh critic batches + G's batch


def test_an_epoch_of_wgan_gp_counts_every_batch_its_steps_draw(tmp_path: Path) -> None:
    """64 images in batches of 8 are 8 batches; a step draws 4 (3 critic + G's), so an epoch
    is 2 steps and shows each image once."""
    result = gan_task(tmp_path, ["trainer.max_epochs=1", "data.num_train=64", *WGAN])
    assert result["length"]["steps_per_epoch"] == 2
    assert result["steps"] == 2
    assert result["images_seen"] == 64


def test_a_d_step_leaves_g_unchanged_and_a_g_step_leaves_d_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    steps = record_phase_steps(monkeypatch)
    gan_task(tmp_path, ["trainer.max_steps=2"])
    for s in steps:
        other = "generator." if s["phase"] == "discriminator" else "discriminator."
        mine = f"{s['phase']}."
        assert all(torch.equal(s["before"][k], s["after"][k]) for k in s["before"]
                   if k.startswith(other)), f"a {s['phase']} step changed {other}"
        assert any(not torch.equal(s["before"][k], s["after"][k]) for k in s["before"]
                   if k.startswith(mine)), f"a {s['phase']} step did not change {mine}"


def test_the_g_step_reuses_the_fakes_of_the_d_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One generator forward per training step (and micro-batch), not one per phase."""
    calls = {"n": 0}
    original = GAN._generate

    def counting(self: GAN, *args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(GAN, "_generate", counting)
    gan_task(tmp_path, ["trainer.max_steps=3", "trainer.grad_accum=2",
                        "trainer.sample_every=100"])
    assert calls["n"] == 3 * 2


def test_the_ema_holds_only_the_generator(tmp_path: Path) -> None:
    gan_task(tmp_path, ["trainer.max_steps=2", "model.ema.decay=0.9"])
    state = load_checkpoint(tmp_path)
    assert list(state["ema"]["networks"]) == ["generator"]
    generator = {k.removeprefix("generator.") for k in state["model"] if k.startswith("generator.")}
    assert set(state["ema"]["networks"]["generator"]) == generator


def test_a_repeated_critic_warms_up_at_the_same_training_step_as_the_generator(
    tmp_path: Path
) -> None:
    """warmup_steps counts training steps for every phase: the last critic update of each
    training step runs at the generator's LR of that step, and the trainer uses that schedule
    (3 critic updates per step, warmup 4: the critic's LR after step s is min(1, (3s + 1) / 12))."""
    def lr(repeats: int, update: int) -> float:
        schedule = phase_schedule({"warmup_steps": 4}, repeats)
        return lr_multiplier(max_steps=10 * repeats, **schedule)(update)

    for step in range(10):
        assert lr(5, 5 * step + 4) == pytest.approx(lr(1, step))
    gan_task(tmp_path, ["trainer.max_steps=6", "trainer.log_every=1",
                        "model.schedule.warmup_steps=4", "model.optim.discriminator.lr=2e-4",
                        *WGAN])
    d_lrs = [row["lr/discriminator"] for row in _metrics(tmp_path) if "lr/discriminator" in row]
    assert d_lrs[:4] == pytest.approx([2e-4 * min(1, (3 * s + 1) / 12) for s in range(1, 5)])


def _metrics(run_dir: Path) -> list[dict[str, float]]:
    import json

    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("loss", ["minimax", "nonsaturating", "wgan-gp", "hinge"])
@pytest.mark.parametrize("conditional", [False, True])
def test_every_loss_trains_on_shapes_and_draws_a_grid(
    tmp_path: Path, loss: str, conditional: bool
) -> None:
    result = gan_task(tmp_path, ["trainer.max_steps=2", f"model.loss={loss}",
                                 f"model.conditional={str(conditional).lower()}"])
    assert result["status"] == "completed"
    metrics = result["final_metrics"]
    assert all(torch.isfinite(torch.tensor(metrics[f"{p}/loss"]))
               for p in ("discriminator", "generator"))
    grid = Path(result["samples"]["samples"])
    assert grid.is_file()


def test_resnet_with_spectral_norm_and_hinge_trains(tmp_path: Path) -> None:
    result = gan_task(tmp_path, ["trainer.max_steps=2", "model.arch=resnet",
                                 "model.loss=hinge", "model.spectral_norm=true"])
    assert result["status"] == "completed"


def test_the_r1_penalty_adds_half_gamma_times_r1_to_the_d_loss() -> None:
    spec = DataSpec(name="t", channels=3, height=32, width=32)
    torch.manual_seed(0)
    plain = GAN(spec, base_channels=8, latent_dim=8)
    with_r1 = GAN(spec, base_channels=8, latent_dim=8, r1_weight=10.0)
    with_r1.load_state_dict(plain.state_dict())
    batch = {"image": torch.rand(4, 3, 32, 32) * 2 - 1}
    torch.manual_seed(1)
    base = plain.loss(batch, "discriminator")
    torch.manual_seed(1)
    out = with_r1.loss(batch, "discriminator")
    assert out["r1_penalty"] > 0 and "r1_penalty" not in base
    assert out["loss"].item() == pytest.approx(base["loss"].item() + 5.0 * out["r1_penalty"].item(),
                                               rel=1e-5)
    with pytest.raises(GentrainError, match="model.r1_weight"):
        GAN(spec, r1_weight=-1.0)


@pytest.mark.parametrize("sees_fakes", [True, False])
def test_the_ac_gan_class_head_adds_its_losses(sees_fakes: bool) -> None:
    """AC-GAN: D's loss gains λ·(CE of its class head on the real images [+ on the fakes, the
    paper's]), G's λ·CE on the fakes; the real term is the head's cross-entropy on the labels."""
    spec = DataSpec(name="t", channels=3, height=32, width=32, label_kind="class", num_classes=6)
    torch.manual_seed(0)
    plain = GAN(spec, base_channels=8, latent_dim=8, conditional=True)
    acgan = GAN(spec, base_channels=8, latent_dim=8, conditional=True, aux_classifier_weight=2.0,
                aux_classifier_sees_fakes=sees_fakes)
    acgan.generator.load_state_dict(plain.generator.state_dict())
    acgan.discriminator.critic.load_state_dict(plain.discriminator.state_dict())
    batch = {"image": torch.rand(4, 3, 32, 32) * 2 - 1, "label": torch.tensor([0, 3, 5, 3])}
    losses = {}
    for phase in ("discriminator", "generator"):
        torch.manual_seed(1)
        base = plain.loss(batch, phase)
        torch.manual_seed(1)
        losses[phase] = out = acgan.loss(batch, phase)
        fake_term = out["aux_class_loss_fake"] if sees_fakes or phase == "generator" else 0.0
        extra = fake_term + out.get("aux_class_loss_real", 0.0)
        assert out["loss"].item() == pytest.approx(base["loss"].item() + 2.0 * float(extra),
                                                   rel=1e-5)
    assert "aux_class_loss_real" in losses["discriminator"]
    assert "aux_class_loss_real" not in losses["generator"]
    _, class_logits = acgan.discriminator(batch["image"], batch["label"], with_q=True)
    assert class_logits.shape == (4, 6)
    expected = torch.nn.functional.cross_entropy(class_logits, batch["label"])
    assert losses["discriminator"]["aux_class_loss_real"].item() == pytest.approx(
        expected.item(), rel=1e-5)
    with pytest.raises(GentrainError, match="model.conditional=true"):
        GAN(spec, aux_classifier_weight=1.0)


def test_wgan_gp_resume_is_bitwise_identical(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    setup = ["trainer.max_steps=4", "trainer.deterministic=true", "trainer.ckpt_every=100",
             "trainer.sample_every=100", "trainer.log_every=2", "model.ema.decay=0.9",
             "model.schedule.warmup_steps=2", *WGAN]
    straight_and_resumed(gan_task, tmp_path, setup, monkeypatch, at=2)
    a, b = load_checkpoint(tmp_path / "straight"), load_checkpoint(tmp_path / "resumed")
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for key, value in a["ema"]["networks"]["generator"].items():
        assert torch.equal(value, b["ema"]["networks"]["generator"][key]), key


def test_the_conditional_demo_setup_trains_and_resumes_bitwise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """experiment=gan_shapes_conditional's G and D (conditional batch norm, a real-only AC-GAN
    head) through the Trainer: the head's losses are logged, and a resume is exact."""
    setup = ["trainer.max_steps=4", "trainer.deterministic=true", "trainer.ckpt_every=100",
             "trainer.sample_every=100", "trainer.log_every=2", "model.ema.decay=0.9",
             "model.conditional=true", "model.g_label_input=batchnorm",
             "model.aux_classifier_weight=3.0", "model.aux_classifier_sees_fakes=false"]
    straight, _ = straight_and_resumed(gan_task, tmp_path, setup, monkeypatch, at=2)
    assert {"discriminator/aux_class_loss_real", "discriminator/aux_class_loss_fake",
            "generator/aux_class_loss_fake"} <= set(straight["final_metrics"])
    a, b = load_checkpoint(tmp_path / "straight"), load_checkpoint(tmp_path / "resumed")
    assert any(key.startswith("discriminator.q.") for key in a["model"])
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for key, value in a["ema"]["networks"]["generator"].items():
        assert torch.equal(value, b["ema"]["networks"]["generator"][key]), key


def test_compile_with_the_gradient_penalty_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(GentrainError, match="gradient penalty.*trainer.compile=false"):
        gan_task(tmp_path, ["trainer.max_steps=1", "trainer.compile=true", *WGAN])


def test_wgan_gp_with_a_batch_norm_critic_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(GentrainError, match="d_norm=layer"):
        gan_task(tmp_path, ["trainer.max_steps=1", "model.d_norm=batch", *WGAN])


def test_clip_grad_per_phase_names_unknown_phases(tmp_path: Path) -> None:
    with pytest.raises(GentrainError, match="critic"):
        gan_task(tmp_path, ["trainer.max_steps=1", "trainer.clip_grad={critic:1.0}"])


def test_the_penalty_runs_in_fp32_under_fp16_autocast(tmp_path: Path) -> None:
    """precision=16 trains WGAN-GP with a finite penalty (computed in fp32, see adversarial)."""
    result = gan_task(tmp_path, ["trainer.max_steps=2", "trainer.precision=16", *WGAN])
    assert result["status"] == "completed"
    assert torch.isfinite(torch.tensor(result["final_metrics"]["discriminator/gradient_penalty"]))


def test_a_discriminator_that_wins_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    from gentrain.data.core.batch import DataSpec

    model = GAN(DataSpec("x", 3, 32, 32), base_channels=8, latent_dim=4)
    warnings = [model.training_warnings({"discriminator/loss": 0.001}) for _ in range(3)]
    assert warnings[0] == [] and warnings[1] == [] and "D wins" in warnings[2][0]
    assert model.training_warnings({"discriminator/loss": 1.0}) == []


def test_the_ema_generator_samples_with_its_own_batch_norm_statistics() -> None:
    """Standing statistics (EMA.standing_statistics, drawing through the family's sampler):
    after them, the EMA G in eval mode gives what its batch statistics give; with the live G's
    copied statistics it does not. The training RNG stays untouched."""
    torch.manual_seed(0)
    gan = GAN(DataSpec("shapes", 3, 16, 16), base_channels=8, latent_dim=8)
    ema = EMA(gan, 0.5, warmup=False, networks=gan.ema_networks)
    with torch.no_grad():  # move the live G away from the average, and let its statistics follow
        for p in gan.generator.parameters():
            p.mul_(2.0)
        for _ in range(40):
            gan.generator(torch.randn(256, 8))
    ema.update(gan)
    shadow, z = ema.model.generator, torch.randn(2048, 8)

    def eval_vs_batch_statistics() -> float:
        with torch.no_grad():
            return (shadow.eval()(z) - copy.deepcopy(shadow).train()(z)).abs().mean().item()

    copied = eval_vs_batch_statistics()
    rng = torch.get_rng_state()
    ema.standing_statistics(lambda noise: ema.model.sample(256, None, noise))
    assert torch.equal(torch.get_rng_state(), rng)
    assert not shadow.training
    own = eval_vs_batch_statistics()
    assert own < 0.2 * copied, (own, copied)


def test_the_trainer_saves_the_ema_generator_with_statistics_of_its_own(tmp_path: Path) -> None:
    """After training, the checkpoint's EMA G holds batch-norm statistics re-estimated for
    its weights, not a copy of the live G's."""
    gan_task(tmp_path, ["trainer.max_steps=3", "model.ema.decay=0.9"])
    state = load_checkpoint(tmp_path)
    averaged = state["ema"]["networks"]["generator"]
    means = [k for k in averaged if k.endswith("running_mean")]
    assert means
    assert any(not torch.equal(averaged[k], state["model"][f"generator.{k}"]) for k in means)
