"""`gentrain -m`: deterministic sweep directories, summaries and plots, and sweeps that resume."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import FAST_RUN, gentrain_cli
from PIL import Image

from gentrain.sweeps.naming import safe_name, sweep_name_from_overrides, with_sweep_name
from gentrain.sweeps.summary import JobRow, rank_rows, varying_overrides

# A tiny VAE whose jobs take a second or two, so a sweep can be killed part-way.
SWEEP_BASE = [*FAST_RUN, "model.iw_samples=4", "trainer.log_every=10", "trainer.ckpt_every=10"]


def test_sweep_name_ignores_override_order_and_puts_the_swept_keys_first() -> None:
    a = sweep_name_from_overrides(["trainer.max_steps=5", "model.latent_dim=4,8"])
    b = sweep_name_from_overrides(["model.latent_dim=4,8", "trainer.max_steps=5"])
    assert a == b == "model.latent_dim=4,8,trainer.max_steps=5"


def test_long_names_keep_a_prefix_and_a_hash_and_never_hold_a_separator() -> None:
    long = ["data.root=/some/where/" + "x" * 200]
    name = safe_name(",".join(long))
    assert len(name) <= 96 and "/" not in name and name.startswith("data.root=_some")
    assert name != safe_name(",".join(long) + "y")  # the hash tells them apart


def test_a_key_both_fixed_and_swept_still_names_the_jobs() -> None:
    """``-m data.batch_size=8 data.batch_size=4,8`` (a base list plus a sweep, as scripts
    build them): the swept key must stay in the job directories, or both jobs share one."""
    out = with_sweep_name(["-m", "data.batch_size=8", "data.batch_size=4,8"])
    assert out[-1] == "hydra.job.config.override_dirname.exclude_keys=[sweep_name]"


def test_a_multirun_command_gets_its_sweep_name_and_jobs_named_by_what_varies() -> None:
    argv = ["-m", "model.latent_dim=4,8", "trainer.max_steps=5", "hydra/launcher=basic"]
    out = with_sweep_name(argv)
    assert out[:4] == argv
    assert out[4] == "sweep_name='model.latent_dim=4,8,trainer.max_steps=5'"
    assert out[5] == "hydra.job.config.override_dirname.exclude_keys=[sweep_name,trainer.max_steps]"
    assert with_sweep_name(["model.latent_dim=4"]) == ["model.latent_dim=4"]  # not a multirun
    named = ["-m", "model.latent_dim=4,8", "sweep_name=mine"]
    assert with_sweep_name(named) == [  # a chosen name is kept; jobs are still named by what varies
        *named, "hydra.job.config.override_dirname.exclude_keys=[sweep_name]"]


def test_summary_ranks_by_the_monitor_direction_and_labels_by_what_differs(
        tmp_path: Path) -> None:
    def row(job: str, value: float | None, lr: str) -> JobRow:
        return JobRow(job, "completed" if value is not None else "failed", value, 5, 1.0,
                      ["model=vae", f"model.optim.main.lr={lr}"], tmp_path / job)
    rows = [row("a", 2.0, "1e-3"), row("b", None, "3e-3"), row("c", 1.0, "1e-2"),
            row("d", math.nan, "3e-2")]
    assert [r.job for r in rank_rows(rows, higher_is_better=False)] == ["c", "a", "b", "d"]
    assert [r.job for r in rank_rows(rows, higher_is_better=True)] == ["a", "c", "b", "d"]
    assert varying_overrides(rows)["a"] == ["lr=1e-3"]


def _sweep(swept: list[str], extra: list[str] = ()) -> list[str]:
    return ["-m", *SWEEP_BASE, *extra, *swept]


def _job_dirs(tmp_path: Path) -> dict[str, Path]:
    sweeps = list((tmp_path / "outputs" / "multirun").iterdir())
    assert len(sweeps) == 1, sweeps
    return {p.name: p for p in sweeps[0].iterdir() if (p / ".hydra").is_dir()}


def test_a_2x2_multirun_writes_the_summary_table_and_comparison_plot(tmp_path: Path) -> None:
    swept = ["model.latent_dim=4,8", "model.optim.main.lr=1e-3,3e-3"]
    result = gentrain_cli(_sweep(swept, ["trainer.max_steps=20", "trainer.eval_every=10"]),
                          cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = _job_dirs(tmp_path)
    assert sorted(jobs) == [f"model.latent_dim={d},model.optim.main.lr={lr}"
                            for d in (4, 8) for lr in (0.001, 0.003)]
    sweep_dir = next(iter(jobs.values())).parent
    with open(sweep_dir / "summary.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 4 and {r["status"] for r in table} == {"completed"}
    values = [float(r["eval/nll_elbo_nats"]) for r in table]
    assert values == sorted(values)  # best (lowest -ELBO) first
    assert "eval/nll_elbo_nats" in result.stdout and "latent_dim=4 lr=0.001" in result.stdout
    with Image.open(sweep_dir / "comparison.png") as png:
        assert png.width > 400 and png.height > 200
    assert all((job / "curves.png").is_file() for job in jobs.values())


def _run_until(args: list[str], cwd: Path, ready: callable, timeout: float = 240) -> None:
    """Start the CLI and send it SIGTERM as soon as ``ready()`` holds (a user's kill)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "gentrain", *args], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"the sweep ended before the kill: {proc.stderr.read()}"
        assert time.monotonic() < deadline, "the sweep never reached the kill point"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM


def _summaries(jobs: dict[str, Path]) -> dict[str, dict]:
    return {name: json.loads((job / "summary.json").read_text())
            for name, job in jobs.items() if (job / "summary.json").is_file()}


def _completed(tmp_path: Path) -> int:
    root = tmp_path / "outputs" / "multirun"
    return sum(json.loads(p.read_text())["status"] == "completed"
               for p in root.glob("*/*/summary.json")) if root.is_dir() else 0


def _has_checkpoint_beyond(tmp_path: Path, done: int) -> bool:
    """More job directories hold a last.pt than have completed: one is mid-training."""
    root = tmp_path / "outputs" / "multirun"
    return _completed(tmp_path) == done and len(list(
        root.glob("*/*/checkpoints/last.pt"))) > done


def test_a_killed_multirun_rerun_finishes_without_redoing_finished_jobs(tmp_path: Path) -> None:
    max_steps = 150
    args = _sweep(["model.latent_dim=4,6,8"], [f"trainer.max_steps={max_steps}"])
    _run_until(args, tmp_path, lambda: _has_checkpoint_beyond(tmp_path, 1))
    jobs = _job_dirs(tmp_path)
    before = {name: s["status"] for name, s in _summaries(jobs).items()}
    assert sorted(before.values()) == ["completed", "stopped"]  # the third never started
    finished = next(name for name, status in before.items() if status == "completed")
    finished_bytes = (jobs[finished] / "summary.json").read_bytes()

    result = gentrain_cli(args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    after = _summaries(_job_dirs(tmp_path))
    assert len(after) == 3 and all(s["status"] == "completed" for s in after.values())
    assert (jobs[finished] / "summary.json").read_bytes() == finished_bytes  # reused, untouched
    trained = {name: s["steps"] - s["resumed_from_step"] for name, s in after.items()
               if name != finished}
    resumed = [s["resumed_from_step"] for name, s in after.items() if name != finished]
    assert sorted(resumed)[0] == 0 and sorted(resumed)[1] >= 10  # one new, one resumed
    assert sum(trained.values()) < 2 * max_steps  # the steps the re-run trained


def test_an_optuna_study_interrupted_after_two_trials_continues_to_four(tmp_path: Path) -> None:
    optuna = pytest.importorskip("optuna", reason="the sweep extra: pip install gentrain[sweep]")
    args = ["-m", "hparams_search=vae_shapes", *SWEEP_BASE, "hydra.sweeper.n_trials=4",
            "trainer.max_steps=150"]
    _run_until(args, tmp_path, lambda: _has_checkpoint_beyond(tmp_path, 2))
    result = gentrain_cli(args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    sweep_dir = tmp_path / "outputs" / "multirun" / next(
        p.name for p in (tmp_path / "outputs" / "multirun").iterdir())
    study = optuna.load_study(study_name="gentrain",
                              storage=f"sqlite:///{sweep_dir / 'optuna.db'}")
    states = [t.state.name for t in study.trials]
    assert states.count("COMPLETE") == 4 and states.count("FAIL") == 1  # the interrupted one
    interrupted = next(t for t in study.trials if t.state.name == "FAIL")
    rerun = [t for t in study.trials
             if t.params == interrupted.params and t.state.name == "COMPLETE"]
    assert len(rerun) == 1  # asked again with the same parameters
    summaries = _summaries(_job_dirs(tmp_path))
    assert len(summaries) == 4
    assert sorted(s["resumed_from_step"] > 0 for s in summaries.values()) == [False] * 3 + [True]
    assert (sweep_dir / "optimization_results.yaml").is_file()
    assert (sweep_dir / "summary.csv").is_file()


def test_a_job_with_bad_input_fails_the_sweep_with_its_one_paragraph(tmp_path: Path) -> None:
    """Inside a multirun a GentrainError becomes a recorded job failure, so the other jobs
    still run; the sweep then exits non-zero and the user still reads the paragraph."""
    result = gentrain_cli(_sweep(["model.latent_dim=0,4"], ["trainer.max_steps=2"]), cwd=tmp_path)
    assert result.returncode != 0
    assert "gentrain: error: model.latent_dim must be >= 1" in result.stderr
    summaries = list((tmp_path / "outputs").rglob("summary.json"))
    assert [p.parent.name for p in summaries] == ["model.latent_dim=4"]
