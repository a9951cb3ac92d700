"""Checkpoint format and retention, atomic writes, RNG capture, EMA and LR-schedule math."""

from __future__ import annotations

import io
import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_task
from omegaconf import OmegaConf
from torch import nn

import gentrain
from gentrain.engine import checkpoint as ckpt
from gentrain.engine.checkpoint import load_checkpoint
from gentrain.engine.ema import EMA
from gentrain.engine.schedule import lr_multiplier
from gentrain.engine.trainer import Trainer
from gentrain.errors import GentrainError

RETENTION = [
    "trainer.max_steps=6",
    "trainer.ckpt_every=1",
    "trainer.keep_last=2",
    "trainer.sample_every=100",
    "trainer.log_every=1",
    "trainer.eval_limit=8",
    "trainer.num_samples=4",
    "model.iw_samples=2",
    "model.ema.decay=0.9",
    "model.optim.main.lr=0.01",
    "model.schedule.warmup_steps=2",
    "model.schedule.decay=linear",
    "model.schedule.min_lr_ratio=0.5",
]

TOP_LEVEL_KEYS = {"model", "ema", "step", "config", "optimizers", "schedulers", "scalers", "rng",
                  "data", "images_seen", "version", "family"}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six steps with a checkpoint after every step and only the newest two kept."""
    directory = tmp_path_factory.mktemp("retention") / "run"
    result = run_task(directory, RETENTION)
    assert result["steps"] == 6
    return directory


# ---------------------------------------------------------------- format


def test_last_checkpoint_loads_weights_only_with_every_key(run_dir: Path) -> None:
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    missing = TOP_LEVEL_KEYS - set(state)
    assert not missing, f"checkpoint lacks {sorted(missing)}"
    assert state["format"] == ckpt.FORMAT
    assert state["step"] == 6 and state["images_seen"] == 6 * 8
    assert state["version"] == gentrain.__version__ and state["family"] == "vae"
    assert set(state["optimizers"]) == set(state["schedulers"]) == set(state["scalers"]) == {"main"}
    assert state["schedulers"]["main"]["last_epoch"] == 6
    assert state["ema"] is not None and state["ema"]["updates"] == 6
    assert state["model"].keys() == state["ema"]["model"].keys()
    assert all(isinstance(v, torch.Tensor) for v in state["model"].values())
    assert isinstance(state["rng"], list) and len(state["rng"]) == 1  # one entry per rank
    assert {"python", "numpy", "torch"} <= set(state["rng"][0])


def test_checkpoint_config_is_the_resolved_yaml(run_dir: Path) -> None:
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert isinstance(state["config"], str)
    config = OmegaConf.create(state["config"])
    assert config.trainer.max_steps == 6 and config.trainer.keep_last == 2
    assert config.model.name == "vae" and config.model.ema.decay == 0.9
    assert state["config"] == (run_dir / ".hydra" / "resolved.yaml").read_text()


def test_load_checkpoint_accepts_run_dir_and_file(run_dir: Path) -> None:
    by_dir = ckpt.load_checkpoint(run_dir, family="vae")
    by_file = ckpt.load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert by_dir["step"] == by_file["step"] == 6
    with pytest.raises(GentrainError, match="'vae' model"):
        ckpt.load_checkpoint(run_dir, family="gan")


# ---------------------------------------------------------------- retention


def test_periodic_retention_keeps_the_newest(run_dir: Path) -> None:
    directory = run_dir / "checkpoints"
    periodic = sorted(p.name for p in directory.glob("step-*.pt"))
    assert periodic == ["step-00000005.pt", "step-00000006.pt"]
    assert (directory / "last.pt").is_file()
    assert ckpt.load_checkpoint(directory / "step-00000005.pt")["step"] == 5
    assert ckpt.load_checkpoint(directory / "step-00000006.pt")["step"] == 6
    leftovers = [p.name for p in directory.iterdir()
                 if p.name.startswith(".") or p.name.endswith(".tmp")]
    assert not leftovers, f"temp files left behind: {leftovers}"


def test_prune_periodic_sorts_by_step_number(tmp_path: Path) -> None:
    for step in (9, 10, 100, 2):
        (tmp_path / ckpt.periodic_name(step)).write_bytes(b"x")
    (tmp_path / "step-7.pt").write_bytes(b"x")  # unpadded name still counts by number
    (tmp_path / ckpt.LAST).write_bytes(b"x")
    (tmp_path / ckpt.BEST).write_bytes(b"x")
    (tmp_path / "notes-step-1.txt").write_bytes(b"x")
    ckpt.prune_periodic(tmp_path, keep_last=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [ckpt.periodic_name(10), ckpt.periodic_name(100), ckpt.LAST, ckpt.BEST,
         "notes-step-1.txt"])


# ---------------------------------------------------------------- atomic writes


def test_atomic_save_leaves_only_the_file(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "last.pt"
    ckpt.atomic_save({"step": 1, "w": torch.arange(3)}, path)
    ckpt.atomic_save({"step": 2, "w": torch.arange(4)}, path)  # overwrite
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]
    state = torch.load(path, weights_only=True)
    assert state["step"] == 2 and torch.equal(state["w"], torch.arange(4))


def test_atomic_save_failure_keeps_the_previous_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "last.pt"
    ckpt.atomic_save({"step": 1, "w": torch.ones(2)}, path)
    before = path.read_bytes()
    real_save = torch.save

    def crash_mid_write(obj: object, f: io.BufferedWriter, *args: object, **kw: object) -> None:
        buffer = io.BytesIO()
        real_save(obj, buffer)
        f.write(buffer.getvalue()[:50])  # a partial file, then the crash
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash_mid_write)
    with pytest.raises(OSError, match="disk full"):
        ckpt.atomic_save({"step": 2, "w": torch.zeros(2)}, path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    state = torch.load(path, weights_only=True)
    assert state["step"] == 1 and torch.equal(state["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"], "temp file left behind"


# ---------------------------------------------------------------- RNG


def draw() -> tuple[list[float], list[float], list[float], torch.Tensor]:
    return ([random.random() for _ in range(3)] + [random.gauss(0, 1)],
            np.random.rand(3).tolist(), np.random.randn(3).tolist(), torch.randn(5))


def test_rng_capture_restore_round_trips_through_a_checkpoint(tmp_path: Path) -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.gauss(0, 1)  # leave a cached Gaussian in Python's state
    np.random.randn(1)  # and in NumPy's (the legacy generator caches one of each pair)
    path = tmp_path / "rng.pt"
    ckpt.atomic_save({"rng": ckpt.capture_rng()}, path)
    expected = draw()
    draw()  # move every stream on
    ckpt.restore_rng(torch.load(path, weights_only=True)["rng"])
    again = draw()
    assert again[:3] == expected[:3]
    assert torch.equal(again[3], expected[3])


# ---------------------------------------------------------------- EMA


def test_ema_update_without_warmup_is_the_exact_average() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    ema = EMA(model, decay=0.9, warmup=False)
    shadow = {k: v.clone() for k, v in ema.model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
        model[1].running_mean.fill_(0.5)
    ema.update(model)
    live = model.state_dict()
    for name, p in ema.model.named_parameters():
        torch.testing.assert_close(p, 0.9 * shadow[name] + 0.1 * live[name])
    assert torch.equal(ema.model[1].running_mean, torch.full((4,), 0.5))  # buffers copied
    assert ema.updates == 1
    assert all(not p.requires_grad for p in ema.model.parameters())


def test_ema_warmup_ramps_the_decay() -> None:
    model = nn.Linear(2, 1, bias=False)
    ema = EMA(model, decay=0.99, warmup=True)
    for t in range(3):
        before = ema.model.weight.clone()
        with torch.no_grad():
            model.weight.add_(1.0)
        ema.update(model)
        decay = min(0.99, (1 + t) / (10 + t))
        torch.testing.assert_close(ema.model.weight, decay * before + (1 - decay) * model.weight)


def test_ema_state_round_trip_and_bad_decay() -> None:
    model = nn.Linear(2, 2)
    ema = EMA(model, decay=0.5, warmup=False)
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)
    other = EMA(nn.Linear(2, 2), decay=0.5)
    other.load_state_dict(ema.state_dict())
    assert other.updates == 1 and torch.equal(other.model.weight, ema.model.weight)
    for decay in (0.0, 1.0, 1.5):
        with pytest.raises((ValueError, GentrainError)):
            EMA(model, decay=decay)


# ---------------------------------------------------------------- LR schedules


def test_warmup_ramps_linearly_to_one() -> None:
    f = lr_multiplier(max_steps=100, warmup_steps=4)
    assert [f(s) for s in range(6)] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0])
    assert f(100) == 1.0  # constant after warmup


def test_cosine_decays_to_min_lr_ratio() -> None:
    f = lr_multiplier(max_steps=110, warmup_steps=10, decay="cosine", min_lr_ratio=0.1)
    assert f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0)  # decay starts where warmup ends
    assert f(60) == pytest.approx(0.1 + 0.9 * 0.5)  # half way
    assert f(110) == pytest.approx(0.1)
    assert f(500) == pytest.approx(0.1)  # stays there
    values = [f(s) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))


def test_linear_decay_respects_decay_start() -> None:
    f = lr_multiplier(max_steps=200, decay="linear", decay_start=100)
    assert f(0) == 1.0 and f(99) == 1.0 and f(100) == 1.0
    assert f(150) == pytest.approx(0.5)
    assert f(200) == pytest.approx(0.0)
    g = lr_multiplier(max_steps=200, decay="linear", decay_start=100, min_lr_ratio=0.2)
    assert g(150) == pytest.approx(0.6) and g(200) == pytest.approx(0.2)
    # decay_start before the end of warmup waits for warmup
    h = lr_multiplier(max_steps=100, warmup_steps=50, decay="linear", decay_start=10)
    assert h(49) == 1.0 and h(75) == pytest.approx(0.5)


def test_unknown_decay_is_a_user_error() -> None:
    with pytest.raises(GentrainError, match="cosine"):
        lr_multiplier(max_steps=10, decay="exp")


def test_trainer_applies_the_schedule(run_dir: Path) -> None:
    """End to end: the lr logged after each step is lr_multiplier times the configured lr."""
    logged = {row["step"]: row["lr/main"] for row in map(
        json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "lr/main" in row}
    f = lr_multiplier(max_steps=6, warmup_steps=2, decay="linear", min_lr_ratio=0.5)
    assert f(6) == 0.5 and f(1) == 1.0
    for step in range(1, 7):
        assert math.isclose(logged[step], 0.01 * f(step), rel_tol=1e-6), (step, logged)


def test_eval_cadence_keeps_best_and_the_end_repeats_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes: list[str] = []
    original = ckpt.atomic_save
    monkeypatch.setattr(ckpt, "atomic_save",
                        lambda state, path: (writes.append(path.name), original(state, path)))
    evals: list[int] = []
    original_eval = Trainer.evaluate
    monkeypatch.setattr(Trainer, "evaluate",
                        lambda self: (evals.append(self.step), original_eval(self))[1])
    result = run_task(tmp_path, ["trainer.max_steps=4", "trainer.eval_every=2",
                                 "trainer.ckpt_every=4", "trainer.sample_every=4"])
    assert evals == [2, 4]  # the final evaluation is the one of step 4, not a second one
    eval_rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().split("\n")
                 if "eval/nll_elbo_nats" in line]
    best = min(eval_rows, key=lambda row: row["eval/nll_elbo_nats"])
    assert result["best"] == {"metric": "eval/nll_elbo_nats", "mode": "min",
                              "value": best["eval/nll_elbo_nats"], "step": best["step"]}
    assert load_checkpoint(tmp_path / "checkpoints" / "best.pt")["step"] == best["step"]
    assert writes.count("last.pt") == 2  # once per step that saved (2 for best, 4), never twice
    assert writes.count("step-00000004.pt") == 1
    assert len(list((tmp_path / "samples").glob("samples_00000004.png"))) == 1
