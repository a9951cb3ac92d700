"""The DDPM family end to end on shapes: training, samplers, guidance, resume, call-time keys."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import DDPM_FAST, FAST_RUN, compose_config, gentrain_cli, run_task
from omegaconf import OmegaConf
from test_optimizer_step import QUIET, count_reads_in_steps
from test_resume import interrupt_at

import gentrain.models.ddpm as ddpm_module
from gentrain.engine.checkpoint import load_checkpoint
from gentrain.errors import GentrainError
from gentrain.models.ddpm import DDPM, SamplerConfig
from gentrain.tasks.setup import model_from_checkpoint

TRAIN = ["trainer.max_steps=3", "trainer.log_every=1", "trainer.sample_every=3"]


def ddpm_task(run_dir: Path, overrides: list[str]) -> dict[str, Any]:
    return run_task(run_dir, overrides, base=DDPM_FAST)


@pytest.fixture(scope="module")
def ddpm_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("ddpm")
    result = ddpm_task(run_dir, TRAIN)
    assert result["status"] == "completed"
    return run_dir


@pytest.mark.parametrize(
    "options",
    [[], ["model.conditional=true", "model.grid_sampler.guidance=2.0"],
     ["trainer.precision=bf16", "trainer.channels_last=true", "model.target=v",
      "model.beta_schedule=cosine", "model.min_snr_gamma=5"]],
    ids=["unconditional", "conditional-guided", "bf16-channels_last-v-cosine-minsnr"],
)
def test_ddpm_trains_draws_grids_and_evaluates(tmp_path: Path, options: list[str]) -> None:
    result = ddpm_task(tmp_path, [*TRAIN, *options])
    assert result["status"] == "completed" and result["steps"] == 3
    assert math.isfinite(result["final_metrics"]["main/loss"])
    for grid in ("samples", "forward"):
        assert (tmp_path / "samples" / f"{grid}_00000003.png").is_file()
    bpd = result["eval"]["eval/bits_per_dim"]
    assert 0 < bpd < 100 and result["best"]["metric"] == "eval/bits_per_dim"
    state = load_checkpoint(tmp_path)
    assert state["ema"] is not None  # EMA 0.9999 by default, as in the paper


def test_sampling_with_ancestral_and_ddim_gives_images_in_range(ddpm_run: Path) -> None:
    model, _, _ = model_from_checkpoint(str(ddpm_run), use_ema=True, device=torch.device("cpu"))
    for sampler in (SamplerConfig("ancestral"), SamplerConfig("ddim", steps=5, eta=0.0),
                    SamplerConfig("ddim", steps=5, eta=1.0)):
        generator = torch.Generator().manual_seed(0)
        images = model.sample(3, None, generator, sampler)
        assert images.shape == (3, 3, 16, 16)
        assert images.min() >= -1 and images.max() <= 1 and images.std() > 0


def test_ddim_with_eta_zero_is_deterministic_given_the_start_noise(ddpm_run: Path) -> None:
    model, _, _ = model_from_checkpoint(str(ddpm_run), use_ema=True, device=torch.device("cpu"))
    sampler = SamplerConfig("ddim", steps=5, eta=0.0)
    a = model.sample(2, None, torch.Generator().manual_seed(1), sampler)
    b = model.sample(2, None, torch.Generator().manual_seed(1), sampler)
    c = model.sample(2, None, torch.Generator().manual_seed(2), sampler)
    assert torch.equal(a, b) and not torch.equal(a, c)


def _conditional_model() -> DDPM:
    cfg = compose_config([*DDPM_FAST, "model.conditional=true"])
    from gentrain.data import build_data
    from gentrain.models import build_model

    model = build_model(cfg.model, build_data(cfg.data).spec)
    with torch.no_grad():  # the zero-initialised output layers would hide the label
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def test_guidance_zero_is_unconditional_and_one_is_conditional() -> None:
    """Convention: ε̃ = ε_u + w (ε_c − ε_u), so w = 0 is the unconditional model and w = 1
    the conditional one; w = 2 extrapolates."""
    model = _conditional_model()
    x, t = torch.randn(4, 3, 16, 16), torch.tensor([3, 7, 11, 19])
    label = torch.tensor([0, 1, 2, 3])
    null = torch.full_like(label, model.num_classes)
    with torch.no_grad():
        conditional, unconditional = model.net(x, t, label), model.net(x, t, null)
        assert not torch.allclose(conditional, unconditional)
        torch.testing.assert_close(model.denoiser(label, 0.0)(x, t), unconditional)
        torch.testing.assert_close(model.denoiser(label, 1.0)(x, t), conditional)
        torch.testing.assert_close(model.denoiser(label, 2.0)(x, t),
                                   unconditional + 2 * (conditional - unconditional))
    sampler_w0 = SamplerConfig("ddim", steps=4, guidance=0.0)
    guided = model.sample(4, {"label": label}, torch.Generator().manual_seed(0), sampler_w0)
    plain = model.sample(4, {"label": null}, torch.Generator().manual_seed(0),
                         SamplerConfig("ddim", steps=4))
    torch.testing.assert_close(guided, plain)


def test_label_dropout_trains_the_null_token() -> None:
    model = _conditional_model().train()
    seen: list[torch.Tensor] = []
    model.net.register_forward_hook(lambda _m, args, _out: seen.append(args[2]))
    batch = {"image": torch.rand(512, 3, 16, 16) * 2 - 1, "label": torch.zeros(512).long()}
    torch.manual_seed(0)
    model.loss(batch, "main")
    dropped = (seen[0] == model.num_classes).float().mean().item()
    assert dropped == pytest.approx(model.label_dropout, abs=0.04)


def test_min_snr_gamma_weights_each_example_and_null_is_the_papers_loss() -> None:
    from gentrain.data import build_data
    from gentrain.models import build_model

    batch = {"image": torch.rand(8, 3, 16, 16) * 2 - 1}
    losses = {}
    for gamma in ("null", "5.0", "1e30"):
        cfg = compose_config([*DDPM_FAST, "model.target=eps", f"model.min_snr_gamma={gamma}"])
        torch.manual_seed(0)
        model = build_model(cfg.model, build_data(cfg.data).spec)
        torch.manual_seed(1)
        losses[gamma] = model.loss(batch, "main")["loss"].item()
    # ε-prediction: a γ above every SNR weighs every timestep 1, the paper's L_simple.
    assert losses["1e30"] == pytest.approx(losses["null"], rel=1e-6)
    # γ = 5 caps the low-noise steps, whose SNR is far above 5, so the loss falls.
    assert losses["5.0"] < losses["null"]


def test_resume_is_bitwise_identical_including_the_ema(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    setup = ["trainer.max_steps=6", "trainer.deterministic=true", "trainer.ckpt_every=100",
             "trainer.sample_every=100", "trainer.log_every=2", "trainer.clip_grad=1.0",
             "model.ema.decay=0.9", "model.schedule.warmup_steps=2"]
    straight = ddpm_task(tmp_path / "straight", setup)
    with monkeypatch.context() as patch:
        interrupt_at(patch, 3)
        first = ddpm_task(tmp_path / "resumed", setup)
    assert first["status"] == "stopped" and first["steps"] == 3
    second = ddpm_task(tmp_path / "resumed", [*setup, "resume=auto"])
    assert second["steps"] == 6
    a, b = load_checkpoint(tmp_path / "straight"), load_checkpoint(tmp_path / "resumed")
    for part in ("model", "ema"):
        weights_a = a[part] if part == "model" else a[part]["model"]
        weights_b = b[part] if part == "model" else b[part]["model"]
        for key in weights_a:
            assert torch.equal(weights_a[key], weights_b[key]), f"{part}.{key} differs"
    assert second["eval"] == straight["eval"]


def test_command_line_sampler_override_changes_the_sampler_at_task_sample(
    ddpm_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[dict[str, Any]] = []
    original = ddpm_module.sample_loop

    def recording(*args: Any, **kwargs: Any) -> torch.Tensor:
        calls.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(ddpm_module, "sample_loop", recording)
    ddpm_task(tmp_path / "default", ["task=sample", f"ckpt={ddpm_run}", "sample.num=2"])
    assert calls[-1]["sampler"] == "ancestral"  # the checkpoint's model.sampler
    ddpm_task(tmp_path / "ddim", ["task=sample", f"ckpt={ddpm_run}", "sample.num=5",
                                  "sample.batch_size=2", "model.sampler.name=ddim",
                                  "model.sampler.steps=3", "model.sampler.eta=0.5"])
    assert [c["sampler"] for c in calls[1:]] == ["ddim"] * 3  # 5 images in chunks of 2
    assert calls[-1]["steps"] == 3 and calls[-1]["eta"] == 0.5


@pytest.mark.parametrize("override", ["model.net.base_channels=32", "model.timesteps=10",
                                      "model.net.attention_resolutions=[8]"])
def test_a_network_changing_override_at_task_sample_is_a_clear_error(
    ddpm_run: Path, tmp_path: Path, override: str
) -> None:
    key = override.split("=")[0]
    with pytest.raises(GentrainError, match=f"{re.escape(key)}=.* would change the ddpm "
                       "network .* only the family's inference-time keys"):
        ddpm_task(tmp_path, ["task=sample", f"ckpt={ddpm_run}", override])


def test_another_model_group_at_task_sample_is_a_clear_error(
    ddpm_run: Path, tmp_path: Path
) -> None:
    with pytest.raises(GentrainError, match="model=vae does not match the checkpoint"):
        run_task(tmp_path, ["task=sample", f"ckpt={ddpm_run}", "model=vae"], base=FAST_RUN)


def test_overrides_equal_to_the_checkpoint_are_accepted(ddpm_run: Path, tmp_path: Path) -> None:
    """Re-running the training command line with task=sample works."""
    result = ddpm_task(tmp_path, ["task=sample", f"ckpt={ddpm_run}", "sample.num=2", *TRAIN])
    assert result["num"] == 2


def test_cli_sample_takes_the_model_from_the_checkpoint(ddpm_run: Path, tmp_path: Path) -> None:
    """The issue's command: no model=ddpm, sampler keys and N individual PNGs."""
    done = gentrain_cli(
        ["task=sample", f"ckpt={ddpm_run}", "model.sampler.name=ddim", "model.sampler.steps=3",
         "sample.num=3", "sample.individual=true", "trainer.device=cpu",
         f"hydra.run.dir={tmp_path}"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert len(list((tmp_path / "samples" / "individual").glob("*.png"))) == 3


def test_eval_reports_the_bound_with_call_time_timesteps(ddpm_run: Path, tmp_path: Path) -> None:
    bound_only = ["task=eval", f"ckpt={ddpm_run}", "eval.limit=4", "eval.sample_quality=[]"]
    estimate = ddpm_task(tmp_path / "k2", bound_only)
    exact = ddpm_task(tmp_path / "all", [*bound_only, "model.vb_timesteps=null"])
    for result in (estimate, exact):
        assert 0 < result["metrics"]["eval/bits_per_dim"] < 100
    assert estimate["metrics"] != exact["metrics"]  # the override reached the model


def test_vae_importance_samples_are_a_call_time_key(tmp_path: Path) -> None:
    run_dir = tmp_path / "vae"
    run_task(run_dir, ["trainer.max_steps=1"])
    cfg = compose_config(["task=eval", "model.iw_samples=77"])
    model, _, trained = model_from_checkpoint(
        str(run_dir), use_ema=True, device=torch.device("cpu"), cfg=cfg,
        overrides=["task=eval", "model.iw_samples=77"])
    assert trained.model.iw_samples == 4 and model.iw_samples == 77


def test_the_cifar10_recipe_is_the_papers() -> None:
    """`gentrain model=ddpm data=cifar10` composes Ho et al.'s constants."""
    cfg = compose_config(["model=ddpm", "data=cifar10"])
    expected = {
        "model.timesteps": 1000, "model.beta_schedule": "linear", "model.target": "eps",
        "model.variance": "fixedlarge", "model.net.base_channels": 128,
        "model.net.channel_mult": [1, 2, 2, 2], "model.net.num_res_blocks": 2,
        "model.net.attention_resolutions": [16], "model.net.dropout": 0.1,
        "model.optim.main._target_": "torch.optim.Adam", "model.optim.main.lr": 2e-4,
        "model.schedule.warmup_steps": 5000, "model.schedule.decay": "constant",
        "model.ema.decay": 0.9999, "trainer.clip_grad": 1.0, "trainer.max_steps": 800000,
        "data.batch_size": 128, "data.hflip": True,
    }
    for key, value in expected.items():
        actual = OmegaConf.select(cfg, key)
        actual = OmegaConf.to_container(actual) if OmegaConf.is_config(actual) else actual
        assert actual == value, f"{key} is {actual}, the paper uses {value}"


def test_the_ddpm_optimizer_step_makes_no_host_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Timesteps, noise, label dropout and the schedule's coefficients stay on the device."""
    record = count_reads_in_steps(monkeypatch)
    result = ddpm_task(tmp_path, ["trainer.max_steps=3", "model.conditional=true",
                                  "trainer.clip_grad=1.0", *QUIET])
    assert result["status"] == "completed" and record["steps"] == 3
    assert record["reads"] == []
