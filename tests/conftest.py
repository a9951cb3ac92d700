"""Shared helpers: compose the real config tree and run tasks in-process on the CPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import DictConfig

import gentrain.cli  # noqa: F401  (registers the gentrain_stamp resolver)
from gentrain.cli import run

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Under `pytest -n 2` (the README's command) each worker has one core: a second torch
    # thread per worker, or per subprocess it starts, would only contend for it.
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"

# Tiny and fast: every test trains a few steps of a small model on a small dataset.
FAST_RUN = [
    "trainer.device=cpu",
    "trainer.progress=false",
    "trainer.eval_limit=32",
    "trainer.num_samples=16",
    "data.batch_size=8",
    "data.num_train=256",
    "data.num_test=64",
    "data.resolution=16",
    "logger=none",
]
FAST = [*FAST_RUN, "model.base_channels=8", "model.latent_dim=4", "model.iw_samples=4"]
# DDPM: the tiny U-Net's sizes (as keys, so that tests composing a config by hand get them
# too; model/net=tiny in run_task would do the same over the ddpm_shapes recipe), a
# 20-step process, a 2-term estimate of the bound, 4-step DDIM grids.
DDPM_FAST = [
    *FAST_RUN,
    "model=ddpm",
    "model.net.base_channels=16",
    "model.net.channel_mult=[1,2]",
    "model.net.num_res_blocks=1",
    "model.net.attention_resolutions=[]",
    "model.net.dropout=0.0",
    "model.timesteps=20",
    "model.vb_timesteps=2",
    "model.grid_sampler.steps=4",
    "model.schedule.warmup_steps=0",
    "model.ema.warmup=true",
    "trainer.eval_limit=8",
    "trainer.precision=32",  # the recipe's auto is bf16 on some machines only
]

torch.set_num_threads(1)  # tiny models: a second thread costs more than it gives


def compose_config(overrides: list[str]) -> DictConfig:
    with initialize_config_module(config_module="gentrain.configs", version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def run_task(run_dir: Path, overrides: list[str], base: list[str] = FAST) -> dict[str, Any]:
    """Compose ``base + overrides`` and run its task in ``run_dir`` (as the command line),
    with Hydra's config search path set up as in the app (a ``model/net=`` choice reads it)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with initialize_config_module(config_module="gentrain.configs", version_base="1.3"):
        cfg = compose(config_name="train", overrides=[*base, *overrides])
        return run(cfg, run_dir, [*base, *overrides])


def gentrain_cli(args: list[str], cwd: Path, timeout: float = 300,
                 **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run ``python -m gentrain ARGS`` in a subprocess, as a user would."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "0"}
    return subprocess.run(
        [sys.executable, "-m", "gentrain", *args], cwd=cwd, env=env, text=True,
        capture_output=True, timeout=timeout, **kwargs,
    )


@pytest.fixture
def fast_overrides() -> list[str]:
    return list(FAST)
