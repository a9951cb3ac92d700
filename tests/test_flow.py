"""The flow family: dequantised bits/dim, data-dependent actnorm initialisation that runs
once (never on resume, identical across ranks), temperature at call time, exact resume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import FAST_RUN, run_task
from test_distributed import COMPARE_WEIGHTS, torchrun
from test_resume import straight_and_resumed

from gentrain.engine.checkpoint import load_checkpoint
from gentrain.errors import GentrainError
from gentrain.models.flow import Flow

FLOW_FAST = [*FAST_RUN, "model=flow", "model.levels=2", "model.steps=2", "model.hidden=8",
             "trainer.eval_limit=8", "trainer.num_samples=4", "data.resolution=8"]


def flow_task(run_dir: Path, overrides: list[str]) -> dict[str, Any]:
    return run_task(run_dir, overrides, base=FLOW_FAST)


def count_inits(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    original = Flow.data_dependent_init

    def spy(self: Flow, batch: dict) -> bool:
        ran = original(self, batch)
        calls.append(int(ran))
        return ran

    monkeypatch.setattr(Flow, "data_dependent_init", spy)
    return calls


@pytest.mark.parametrize("setup", [
    ["model.arch=glow", "model.coupling=affine"],
    ["model.arch=glow", "model.coupling=additive", "model.conditional=true"],
    ["model.arch=realnvp", "model.preprocess=logit"],
], ids=["glow-affine", "glow-additive-conditional", "realnvp-logit"])
def test_training_sampling_and_evaluation_on_shapes(setup: list[str], tmp_path: Path) -> None:
    result = flow_task(tmp_path, ["trainer.max_steps=3", *setup])
    assert 0 < result["eval"]["eval/bits_per_dim"] < 16
    state = load_checkpoint(tmp_path)
    actnorm_flags = [v for k, v in state["model"].items() if k.endswith("initialized")]
    assert all(bool(flag) for flag in actnorm_flags)
    assert list((tmp_path / "samples").glob("samples_t0.7_*.png"))


def test_actnorm_is_initialised_once_and_never_again_on_resume(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    setup = ["trainer.max_steps=4", "trainer.deterministic=true", "trainer.ckpt_every=100",
             "trainer.sample_every=100", "trainer.log_every=2"]
    calls = count_inits(monkeypatch)
    straight_and_resumed(flow_task, tmp_path, setup, monkeypatch, at=2)
    # straight run: ran once; interrupted run: ran once; resumed run: not called at step 2.
    assert calls == [1, 1]
    a, b = load_checkpoint(tmp_path / "straight"), load_checkpoint(tmp_path / "resumed")
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key


def test_temperature_is_a_call_time_key_and_zero_is_deterministic(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    flow_task(run_dir, ["trainer.max_steps=2"])
    grids = []
    for seed in (1, 2):
        out = flow_task(tmp_path / f"s{seed}", ["task=sample", f"ckpt={run_dir}", "sample.num=4",
                                                f"sample.seed={seed}", "model.temperature=0.0"])
        grids.append(Path(out["grid"]).read_bytes())
    assert grids[0] == grids[1]
    with pytest.raises(GentrainError, match="model.hidden"):
        flow_task(tmp_path / "bad", ["task=sample", f"ckpt={run_dir}", "model.hidden=16"])


@pytest.mark.parametrize("n_bits", [5, 8])
def test_a_uniform_density_on_the_dequantised_cube_scores_exactly_n_bits_per_dim(
        n_bits: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the flow's density replaced by the uniform density on [-1/2, 1/2)^D (log p = 0),
    every n-bit image has probability 2^(-n·D): the family must report exactly n bits/dim."""
    from conftest import compose_config

    from gentrain.data import build_data
    from gentrain.models import build_model

    cfg = compose_config([*FLOW_FAST, f"model.n_bits={n_bits}"])
    data = build_data(cfg.data)
    model = build_model(cfg.model, data.spec)
    batch = data.fixed_batch(4, torch.device("cpu"))
    monkeypatch.setattr(model.net, "log_prob", lambda y, label=None: torch.zeros(y.shape[0]))
    bpd = model.evaluate(batch)["bits_per_dim"]
    assert torch.allclose(bpd, torch.full((4,), float(n_bits)), atol=1e-6)


def test_sides_that_do_not_divide_by_the_levels_are_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(GentrainError, match="divisible by 2\\^levels"):
        flow_task(tmp_path, ["data.resolution=12", "model.levels=3", "trainer.max_steps=1"])


def test_two_ranks_with_different_shards_end_with_identical_actnorms(tmp_path: Path) -> None:
    script = tmp_path / "compare.py"
    script.write_text(COMPARE_WEIGHTS)
    result = torchrun(["trainer.max_steps=1"], cwd=tmp_path, entry=(str(script),),
                      base=FLOW_FAST)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "rank 1 weights equal rank 0: True" in result.stdout, result.stdout[-2000:]


def test_an_overflowing_sample_becomes_grey_pixels_not_nan() -> None:
    from conftest import compose_config

    from gentrain.data import build_data
    from gentrain.models import build_model

    cfg = compose_config(FLOW_FAST)
    model = build_model(cfg.model, build_data(cfg.data).spec)
    z = torch.tensor([[[[float("nan"), float("inf")], [-float("inf"), 0.1]]]])
    images = model.from_flow_output(z)
    assert torch.isfinite(images).all() and images.min() >= -1 and images.max() <= 1
