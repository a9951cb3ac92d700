"""The trainer's numeric and speed switches train correctly on the CPU."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from conftest import run_task

from gentrain.engine.checkpoint import load_checkpoint
from gentrain.errors import GentrainError
from gentrain.models.vae import VAE


@pytest.mark.parametrize(
    "options",
    [
        ["trainer.precision=bf16", "trainer.channels_last=true"],
        ["trainer.precision=16"],
        ["trainer.grad_accum=2", "trainer.clip_grad=0.5", "model.ema.decay=0.99"],
    ],
    ids=["bf16-channels_last", "fp16-gradscaler", "accum-clip-ema"],
)
def test_options_train_and_checkpoint(tmp_path: Path, options: list[str]) -> None:
    result = run_task(tmp_path, ["trainer.max_steps=3", "trainer.log_every=1", *options])
    assert result["status"] == "completed"
    assert torch.isfinite(torch.tensor(result["final_metrics"]["main/loss"]))
    state = load_checkpoint(tmp_path)
    assert state["step"] == 3
    fp16 = "trainer.precision=16" in options
    assert state["scalers"]["main"] != {} if fp16 else state["scalers"]["main"] == {}


@pytest.mark.parametrize("native", [True, False], ids=["native-bf16", "no-bf16"])
def test_precision_auto_trains_in_bf16_only_where_it_is_native(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, native: bool) -> None:
    import gentrain.engine.device as device_module

    monkeypatch.setattr(device_module, "native_bf16", lambda device: native)
    seen: list[bool] = []  # whether bf16 autocast was on during each training loss
    loss = VAE.loss

    def recording(self: VAE, *args: object, **kwargs: object) -> dict[str, torch.Tensor]:
        seen.append(torch.is_autocast_enabled("cpu")
                    and torch.get_autocast_dtype("cpu") == torch.bfloat16)
        return loss(self, *args, **kwargs)

    monkeypatch.setattr(VAE, "loss", recording)
    result = run_task(tmp_path, ["trainer.max_steps=1", "trainer.precision=auto"])
    assert result["precision"] == ("bf16" if native else "32")
    assert seen[0] is native


def _deterministic_loss(model: VAE, images: torch.Tensor) -> torch.Tensor:
    """The mean over examples of a loss without the VAE's sampling noise (z = posterior mean)."""
    mu, logvar = model.encode(images, None)
    per_example = -model.log_likelihood(model.decode(mu, None), images) + logvar.square().sum(1)
    return per_example.mean()


def test_grad_accum_counts_images_and_matches_one_big_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two micro-batches of 8 give the update of one batch of 16 on the same examples."""
    initial: list[VAE] = []
    micro_batches: list[torch.Tensor] = []

    def loss(self: VAE, batch: dict[str, torch.Tensor], phase: str,
             ctx: object = None) -> dict[str, torch.Tensor]:
        if not initial:
            initial.append(copy.deepcopy(self))  # the weights before the first update
        micro_batches.append(batch["image"].clone())
        return {"loss": _deterministic_loss(self, batch["image"])}

    monkeypatch.setattr(VAE, "loss", loss)
    lr = 1e-4  # plain SGD: the update is -lr times the gradient, so its scale shows
    accum = run_task(tmp_path, ["trainer.max_steps=1", "trainer.grad_accum=2",
                                "trainer.deterministic=true", f"model.optim.main.lr={lr}",
                                "model.optim.main._target_=torch.optim.SGD"])
    assert accum["images_seen"] == 16
    assert len(micro_batches) == 2 and not torch.equal(*micro_batches)

    # By hand: one step of the initial model on the concatenation of both micro-batches.
    model = initial[0]
    _deterministic_loss(model, torch.cat(micro_batches)).backward()
    trained = load_checkpoint(tmp_path)["model"]
    for name, p in model.named_parameters():
        expected = p.detach() - lr * p.grad
        torch.testing.assert_close(trained[name], expected, rtol=1e-5, atol=1e-6, msg=name)

    # The check has teeth: summing the micro-batch means without 1/accum doubles the update.
    doubled = {name: p.detach() - 2 * lr * p.grad for name, p in model.named_parameters()}
    assert not all(torch.allclose(trained[n], w, rtol=1e-5, atol=1e-6)
                   for n, w in doubled.items())


def test_lr_warmup_is_applied(tmp_path: Path) -> None:
    result = run_task(tmp_path, ["trainer.max_steps=2", "trainer.log_every=1",
                                 "model.schedule.warmup_steps=4"])
    # After 2 of 4 warmup steps the scheduler has the LR at 3/4 of the base LR.
    assert result["final_metrics"]["lr/main"] == pytest.approx(0.75e-3)


def test_max_epochs_and_epoch_schedules_count_training_steps(tmp_path: Path) -> None:
    """32 examples in batches of 8 are 4 steps an epoch: 2 epochs are 8 steps, and a decay
    starting at epoch 1 starts at step 4 (the LR is still the base LR at step 4)."""
    result = run_task(tmp_path, ["trainer.max_epochs=2", "data.num_train=32",
                                 "trainer.log_every=1", "model.schedule.decay=linear",
                                 "+model.schedule.decay_start_epoch=1"])
    assert result["steps"] == 8 and result["images_seen"] == 64
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    lrs = [row["lr/main"] for row in rows if "lr/main" in row]
    assert lrs[3] == pytest.approx(1e-3) and lrs[4] < 1e-3  # after 4 and 5 optimizer steps


def test_a_schedule_in_both_steps_and_epochs_is_a_clear_error() -> None:
    from gentrain.engine.schedule import schedule_in_steps

    with pytest.raises(GentrainError, match="warmup_epochs and warmup_steps"):
        schedule_in_steps({"warmup_steps": 10, "warmup_epochs": 1}, 100)
    assert schedule_in_steps({"warmup_epochs": 2, "decay_start_epoch": 3}, 10) == {
        "warmup_steps": 20, "decay_start": 30}
