"""A resumed run is the same run: bitwise-equal weights, same data order and RNG streams."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import run_task

from gentrain.engine.checkpoint import load_checkpoint
from gentrain.engine.trainer import Trainer

SETUP = [
    "trainer.max_steps=8",
    "trainer.deterministic=true",
    "trainer.ckpt_every=100",
    "trainer.sample_every=100",
    "trainer.log_every=2",
    "trainer.clip_grad=1.0",
    "model.ema.decay=0.9",
    "model.schedule.warmup_steps=3",
    "model.schedule.decay=cosine",
]


def interrupt_at(monkeypatch: pytest.MonkeyPatch, step: int) -> None:
    """Send this process SIGTERM right after training step ``step``."""
    original = Trainer._cadences

    def cadences(self: Trainer, bar: object) -> None:
        original(self, bar)  # type: ignore[arg-type]
        if self.step == step:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(Trainer, "_cadences", cadences)


def straight_and_resumed(
    task: Callable[[Path, list[str]], dict[str, Any]], tmp_path: Path, setup: list[str],
    monkeypatch: pytest.MonkeyPatch, at: int,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Summaries of a straight run and of one stopped by SIGTERM after step ``at`` and resumed;
    their checkpoints are in tmp_path/straight and tmp_path/resumed."""
    straight = task(tmp_path / "straight", setup)
    with monkeypatch.context() as patch:
        interrupt_at(patch, at)
        assert task(tmp_path / "resumed", setup)["steps"] == at
    resumed = task(tmp_path / "resumed", [*setup, "resume=auto"])
    assert resumed["images_seen"] == straight["images_seen"]
    return straight, resumed


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    return {**state["model"], **{f"ema.{k}": v for k, v in state["ema"]["model"].items()}}


def test_interrupt_and_resume_is_bitwise_identical(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    straight = run_task(tmp_path / "straight", SETUP)
    assert straight["status"] == "completed" and straight["steps"] == 8

    with monkeypatch.context() as patch:
        interrupt_at(patch, 4)
        first = run_task(tmp_path / "resumed", SETUP)
    assert first["status"] == "stopped" and first["stop_signal"] == "SIGTERM"
    assert first["steps"] == 4
    assert load_checkpoint(tmp_path / "resumed")["step"] == 4

    second = run_task(tmp_path / "resumed", [*SETUP, "resume=auto"])
    assert second["status"] == "completed" and second["steps"] == 8
    assert second["images_seen"] == straight["images_seen"]

    a, b = weights(tmp_path / "straight"), weights(tmp_path / "resumed")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs after resume"
    assert second["eval"] == straight["eval"]


def test_resume_from_explicit_checkpoint_path(tmp_path: Path) -> None:
    run_task(tmp_path / "a", [*SETUP, "trainer.max_steps=3"])
    checkpoint = tmp_path / "a" / "checkpoints" / "last.pt"
    result = run_task(tmp_path / "b", [*SETUP, "trainer.max_steps=5", f"resume={checkpoint}"])
    assert result["steps"] == 5
    assert result["images_seen"] == 5 * 8


def test_resume_auto_without_checkpoint_starts_fresh(tmp_path: Path) -> None:
    result = run_task(tmp_path / "fresh", [*SETUP, "trainer.max_steps=2", "resume=auto"])
    assert result["steps"] == 2
