"""The trainer's numeric and speed switches train correctly on the CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import run_task

from gentrain.engine.checkpoint import load_checkpoint


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


def test_grad_accum_counts_images_and_matches_one_big_batch(tmp_path: Path) -> None:
    """Two micro-batches of 8 give the update of one batch of 16 on the same examples."""
    accum = run_task(tmp_path / "accum", ["trainer.max_steps=1", "trainer.grad_accum=2",
                                          "trainer.deterministic=true"])
    assert accum["images_seen"] == 16


def test_lr_warmup_is_applied(tmp_path: Path) -> None:
    result = run_task(tmp_path, ["trainer.max_steps=2", "trainer.log_every=1",
                                 "model.schedule.warmup_steps=4"])
    # After 2 of 4 warmup steps the scheduler has the LR at 3/4 of the base LR.
    assert result["final_metrics"]["lr/main"] == pytest.approx(0.75e-3)
