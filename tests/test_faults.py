"""Nothing is lost: signals checkpoint and stop, SIGKILL never corrupts, NaN never lands."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import FAST, gentrain_cli, run_task

from gentrain.engine.checkpoint import load_checkpoint
from gentrain.errors import GentrainError
from gentrain.models.vae import VAE


def _wait_for(predicate, timeout: float, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            output = proc.stdout.read() if proc.stdout else ""
            raise AssertionError(f"process ended early:\n{output}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("timed out waiting")
        time.sleep(0.005)


def _start(run_dir: Path, extra: list[str]) -> subprocess.Popen[str]:
    args = [*FAST, f"hydra.run.dir={run_dir}", *extra]
    return subprocess.Popen(
        [sys.executable, "-m", "gentrain", *args], stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGUSR1])
def test_signal_saves_checkpoint_then_resume_finishes(tmp_path: Path, sig: signal.Signals) -> None:
    run_dir = tmp_path / "run"
    # Steps are slow enough (a larger net) that the signal arrives mid-training.
    common = ["trainer.max_steps=400", "trainer.ckpt_every=1000", "trainer.log_every=1",
              "model.base_channels=32"]
    proc = _start(run_dir, common)
    metrics = run_dir / "metrics.jsonl"
    _wait_for(lambda: metrics.exists() and metrics.read_text().count("\n") >= 2, 120, proc)
    proc.send_signal(sig)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig.value, output
    assert "Traceback" not in output
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert 2 <= state["step"] < 400
    resumed = gentrain_cli([*FAST, f"hydra.run.dir={run_dir}", *common, "resume=auto",
                            "trainer.max_steps=" + str(state["step"] + 2)], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert load_checkpoint(run_dir)["step"] == state["step"] + 2
    # The finished run says where it is and what it scored.
    closing = f"Trained vae on shapes for {state['step'] + 2} steps"
    assert closing in resumed.stdout + resumed.stderr and str(run_dir) in resumed.stdout


def test_sigkill_while_checkpointing_leaves_loadable_last(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    ckpt_dir = run_dir / "checkpoints"
    # A bigger model makes each save take long enough to be caught in the middle of it.
    proc = _start(run_dir, ["trainer.max_steps=10000", "trainer.ckpt_every=1",
                            "trainer.keep_last=1", "model.base_channels=64"])
    last = ckpt_dir / "last.pt"
    _wait_for(last.exists, 120, proc)
    _wait_for(lambda: any(ckpt_dir.glob(".last.pt.*.tmp")), 120, proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    state = torch.load(last, map_location="cpu", weights_only=True)
    assert state["step"] >= 1
    for tensor in state["model"].values():
        assert torch.isfinite(tensor).all()


def _poison(monkeypatch: pytest.MonkeyPatch, bad_calls: set[int]) -> None:
    """Make ``VAE.loss`` return NaN on the given call numbers (0-based)."""
    original = VAE.loss
    calls = {"n": 0}

    def loss(self: VAE, batch, phase, ctx=None):  # type: ignore[no-untyped-def]
        out = original(self, batch, phase, ctx)
        if calls["n"] in bad_calls:
            out = {**out, "loss": out["loss"] * math.nan}
        calls["n"] += 1
        return out

    monkeypatch.setattr(VAE, "loss", loss)


def test_nonfinite_step_is_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   caplog: pytest.LogCaptureFixture) -> None:
    _poison(monkeypatch, {2, 3})
    result = run_task(tmp_path, ["trainer.max_steps=6", "trainer.ckpt_every=3"])
    assert result["status"] == "completed" and result["steps"] == 6
    # Counted on the device and reported at the next read (here the final log), not per step.
    assert "2 update(s) of phase main skipped for a non-finite loss" in caplog.text
    assert result["final_metrics"]["main/nonfinite_skipped"] == 2
    state = load_checkpoint(tmp_path)
    assert all(torch.isfinite(t).all() for t in state["model"].values())


@pytest.mark.parametrize("precision", ["32", "16"])
def test_nonfinite_streak_stops_with_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 precision: str) -> None:
    _poison(monkeypatch, set(range(4, 100)))
    # The streak is read before each checkpoint write: at step 6 it is 2, at step 8 it is 4.
    with pytest.raises(GentrainError, match="diverged: 4 non-finite updates in a row in phase "
                                            "main by step 8 \\(trainer.max_nonfinite=3\\)"):
        run_task(tmp_path, ["trainer.max_steps=20", "trainer.ckpt_every=2",
                            "trainer.max_nonfinite=3", f"trainer.precision={precision}"])
    # Skipped updates leave the weights of step 4 untouched; every checkpoint stays NaN-free.
    last = load_checkpoint(tmp_path)
    good = load_checkpoint(tmp_path / "checkpoints" / "step-00000004.pt")
    assert last["step"] == 6
    for key, tensor in last["model"].items():
        assert torch.isfinite(tensor).all()
        assert torch.equal(tensor, good["model"][key])
