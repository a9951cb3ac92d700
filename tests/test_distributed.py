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


def torchrun(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "gentrain", *FAST, *args],
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
