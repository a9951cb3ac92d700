"""torchrun with two CPU processes (gloo): one run dir, metrics from both ranks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from conftest import FAST

from gentrain.engine.checkpoint import load_checkpoint

# Rank 0 alone gets NaN weights after step 3's update (a fault no gradient explains).
POISON_RANK0 = """
import torch
from gentrain.cli import main
from gentrain.engine.trainer import Trainer

original = Trainer._optimizer_step

def step(self, *args):
    original(self, *args)
    if self.step == 2 and self.dist.rank == 0:
        with torch.no_grad():
            next(self.model.parameters()).fill_(float("nan"))

Trainer._optimizer_step = step
main()
"""


def torchrun(args: list[str], cwd: Path,
             entry: tuple[str, ...] = ("-m", "gentrain")) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         *entry, *FAST, *args],
        cwd=cwd, text=True, capture_output=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def test_ddp_two_processes_write_one_run_dir_and_resume(tmp_path: Path) -> None:
    common = ["trainer.max_steps=4", "trainer.ckpt_every=2", "trainer.log_every=2"]
    result = torchrun(common, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = [p.parent for p in (tmp_path / "outputs").rglob("summary.json")]
    assert len(runs) == 1, runs
    assert len(list((tmp_path / "outputs").glob("*/*"))) == 1  # no second dir from rank 1
    summary = json.loads((runs[0] / "summary.json").read_text())
    assert summary["world_size"] == 2
    assert summary["images_seen"] == 4 * 8 * 2  # steps × batch per rank × ranks
    state = load_checkpoint(runs[0])
    assert len(state["rng"]) == 2  # one RNG state per rank, for an exact resume
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])

    resumed = torchrun([*common, "trainer.max_steps=6", "resume=auto",
                        f"hydra.run.dir={runs[0]}"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert load_checkpoint(runs[0])["step"] == 6


def test_ddp_nonfinite_weights_on_one_rank_stop_every_rank(tmp_path: Path) -> None:
    """The check before saving is collective: both ranks raise the same error, none hangs."""
    script = tmp_path / "poisoned.py"
    script.write_text(POISON_RANK0)
    result = torchrun(["trainer.max_steps=8", "trainer.ckpt_every=4", "trainer.log_every=2"],
                      cwd=tmp_path, entry=(str(script),))
    assert result.returncode != 0
    assert result.stderr.count("gentrain: error: Non-finite weights at step 4") == 2, (
        result.stderr[-3000:])
    assert not list(tmp_path.rglob("last.pt")), "a non-finite checkpoint was written"
