"""The optimizer step never waits for the device; a non-finite update is still never applied."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import run_task

from gentrain.engine.checkpoint import load_checkpoint
from gentrain.engine.phase import NonfiniteStreak
from gentrain.engine.trainer import Trainer
from gentrain.errors import GentrainError
from gentrain.models.vae import VAE

# Every way Python code reads a tensor's value on the host (each one a device sync on a GPU).
HOST_READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__")
QUIET = ["trainer.log_every=100", "trainer.ckpt_every=100", "trainer.sample_every=100"]


def count_reads_in_steps(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Count host reads made inside ``Trainer._optimizer_step`` (and only there)."""
    record: dict[str, Any] = {"steps": 0, "reads": [], "trainer": None}
    original = Trainer._optimizer_step

    def counting(name: str, read: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            record["reads"].append(name)
            return read(self, *args, **kwargs)

        return wrapper

    def step(self: Trainer, *args: Any) -> None:
        record["steps"] += 1
        record["trainer"] = self
        with pytest.MonkeyPatch.context() as patch:
            for name in HOST_READS:
                patch.setattr(torch.Tensor, name, counting(name, getattr(torch.Tensor, name)))
            original(self, *args)

    monkeypatch.setattr(Trainer, "_optimizer_step", step)
    return record


def poison(monkeypatch: pytest.MonkeyPatch, bad_calls: set[int]) -> None:
    """Make ``VAE.loss`` return NaN on the given call numbers (0-based)."""
    original = VAE.loss
    calls = {"n": 0}

    def loss(self: VAE, batch: Any, phase: str, ctx: Any = None) -> dict[str, torch.Tensor]:
        out = original(self, batch, phase, ctx)
        if calls["n"] in bad_calls:
            out = {**out, "loss": out["loss"] * math.nan}
        calls["n"] += 1
        return out

    monkeypatch.setattr(VAE, "loss", loss)


@pytest.mark.parametrize("precision", ["32", "16"])
def test_optimizer_step_makes_no_host_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           precision: str) -> None:
    record = count_reads_in_steps(monkeypatch)
    poison(monkeypatch, {1})  # the skip of a non-finite step reads nothing either
    result = run_task(tmp_path, ["trainer.max_steps=4", f"trainer.precision={precision}",
                                 "trainer.clip_grad=1.0", "trainer.grad_accum=2", *QUIET])
    assert result["status"] == "completed" and record["steps"] == 4
    assert record["trainer"].phases[0].optimizer.defaults["fused"] is True
    assert record["reads"] == []


@pytest.mark.parametrize("precision", ["32", "16"])
def test_optimizers_without_fused_kernel_read_on_the_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, precision: str
) -> None:
    """RMSprop has no fused kernel: the step reads the non-finite flag (and the counter works)."""
    record = count_reads_in_steps(monkeypatch)
    run_task(tmp_path, ["trainer.max_steps=2", f"trainer.precision={precision}", *QUIET,
                        "model.optim.main._target_=torch.optim.RMSprop"])
    assert not record["trainer"].phases[0].skips_on_device
    assert len(record["reads"]) >= 2  # one per step: bool() in fp32, GradScaler's .item()


def built_optimizer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                    overrides: list[str]) -> torch.optim.Optimizer:
    trainers: list[Trainer] = []
    original = Trainer.fit
    monkeypatch.setattr(Trainer, "fit", lambda self: (trainers.append(self), original(self))[1])
    run_task(tmp_path, ["trainer.max_steps=1", *overrides])
    return trainers[0].phases[0].optimizer


@pytest.mark.parametrize(
    ("overrides", "fused"),
    [
        ([], True),
        (["model.optim.main._target_=torch.optim.AdamW"], True),
        (["model.optim.main._target_=torch.optim.SGD"], True),
        (["+model.optim.main.foreach=true"], None),  # the user's choice wins
        (["model.optim.main._target_=torch.optim.RMSprop"], None),  # no fused kernel
    ],
    ids=["adam", "adamw", "sgd", "adam-foreach", "rmsprop"],
)
def test_fused_is_chosen_when_available(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        overrides: list[str], fused: bool | None) -> None:
    optimizer = built_optimizer(tmp_path, monkeypatch, overrides)
    assert optimizer.defaults.get("fused") is fused


def test_resume_keeps_this_runs_kernel_choice(tmp_path: Path) -> None:
    """An older checkpoint (fused unset) resumes into a fused optimizer that still skips."""
    run_task(tmp_path / "a", ["trainer.max_steps=2"])
    state = load_checkpoint(tmp_path / "a")
    for group in state["optimizers"]["main"]["param_groups"]:
        group["fused"] = None
    torch.save(state, tmp_path / "old.pt")
    result = run_task(tmp_path / "b", ["trainer.max_steps=3", f"resume={tmp_path / 'old.pt'}"])
    assert result["steps"] == 3
    assert load_checkpoint(tmp_path / "b")["optimizers"]["main"]["param_groups"][0]["fused"]


def checkpoints_by_step(run_dir: Path) -> dict[int, dict[str, Any]]:
    return {int(p.stem.split("-")[1]): load_checkpoint(p)
            for p in (run_dir / "checkpoints").glob("step-*.pt")}


def assert_same_weights(a: dict[str, Any], b: dict[str, Any], same: bool) -> None:
    equal = all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert equal is same, f"steps {a['step']} and {b['step']}: weights equal={equal}"


@pytest.mark.parametrize(
    ("precision", "bad_step"),
    # fp16 starts at a GradScaler scale of 2**16 that overflows for the first 13 steps of this
    # model (calibration: those are skipped too); its NaN step comes after.
    [("32", 3), ("16", 16)],
)
def test_nonfinite_update_is_never_applied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           precision: str, bad_step: int) -> None:
    poison(monkeypatch, {bad_step - 1})
    run_task(tmp_path, [f"trainer.max_steps={bad_step + 1}", f"trainer.precision={precision}",
                        "trainer.ckpt_every=1", f"trainer.keep_last={bad_step + 1}",
                        "trainer.log_every=100"])
    ckpts = checkpoints_by_step(tmp_path)
    before, bad, after = ckpts[bad_step - 1], ckpts[bad_step], ckpts[bad_step + 1]
    assert_same_weights(ckpts[bad_step - 2], before, same=False)  # updates are applied
    assert_same_weights(before, bad, same=True)  # but not the non-finite one
    assert_same_weights(bad, after, same=False)
    moments = before["optimizers"]["main"]["state"], bad["optimizers"]["main"]["state"]
    for key in moments[0]:
        for name in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(moments[0][key][name], moments[1][key][name]), (key, name)
    if precision == "16":  # GradScaler's own skip also lowered its scale
        assert bad["scalers"]["main"]["scale"] == before["scalers"]["main"]["scale"] / 2
    assert bad["step"] == bad_step and bad["images_seen"] == bad_step * 8


@pytest.mark.parametrize(("bad_calls", "stops"), [({2, 3, 4}, True), ({2, 3}, False)],
                         ids=["streak-of-3", "streak-of-2"])
def test_streak_ending_between_two_reads_still_stops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bad_calls: set[int], stops: bool
) -> None:
    """Steps 3-5 are non-finite, step 6 on are fine; the read at step 8 still stops the run."""
    poison(monkeypatch, bad_calls)
    overrides = ["trainer.max_steps=10", "trainer.log_every=8", "trainer.ckpt_every=100",
                 "trainer.max_nonfinite=3"]
    if not stops:
        result = run_task(tmp_path, overrides)
        assert result["status"] == "completed"
        return
    with pytest.raises(GentrainError, match="diverged: 3 non-finite updates in a row in phase "
                                            "main by step 8"):
        run_task(tmp_path, overrides)


def test_fp16_calibration_overflows_do_not_count(tmp_path: Path) -> None:
    """The GradScaler's first ~13 overflowing steps at a finite loss are not divergence."""
    result = run_task(tmp_path, ["trainer.max_steps=16", "trainer.precision=16",
                                 "trainer.max_nonfinite=2", "trainer.log_every=8"])
    assert result["status"] == "completed"
    assert result["final_metrics"]["main/nonfinite_skipped"] == 0


def test_streak_counts_on_the_device() -> None:
    streak = NonfiniteStreak(torch.device("cpu"))
    for bad in (1.0, 1.0, 0.0, 1.0):
        streak.record(torch.tensor(bad))
    assert streak.stats().tolist() == [2.0, 3.0]  # longest 2, 3 skipped
    streak.reset()
    assert streak.stats().tolist() == [1.0, 0.0]  # the running streak carries on
    streak.record(torch.tensor(1.0))
    assert streak.stats().tolist() == [2.0, 1.0]
