"""DDPM's few-step samplers at call time: dpm_solver++ and the spacing reach the sampler, and
task=eval scores several samplers into one table (eval.samplers)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import DDPM_FAST, run_task
from test_evaluation_tasks import offline_quality

import gentrain.models.ddpm as ddpm_module
from gentrain.errors import GentrainError
from gentrain.models.ddpm import SamplerConfig
from gentrain.tasks.evaluate import sampler_rows
from gentrain.tasks.setup import model_from_checkpoint

QUALITY = ["eval/fid", "eval/kid", "eval/kid_std", "eval/is", "eval/is_std"]


@pytest.fixture(scope="module")
def ddpm_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("ddpm") / "run"
    run_task(run_dir, ["trainer.max_steps=2"], base=DDPM_FAST)
    return run_dir


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The keyword arguments of every sample_loop call the DDPM family makes."""
    calls: list[dict[str, Any]] = []
    original = ddpm_module.sample_loop

    def recording(*args: Any, **kwargs: Any) -> torch.Tensor:
        calls.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(ddpm_module, "sample_loop", recording)
    return calls


def test_eval_samplers_writes_one_row_per_sampler_to_eval_json_and_one_table(
    ddpm_run: Path, tmp_path: Path, recorded: list[dict[str, Any]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    samplers = ["ddim:3", "dpm_solver++:3:quadratic", "ancestral"]
    result = run_task(tmp_path / "eval", [
        "task=eval", f"ckpt={ddpm_run}", *offline_quality(tmp_path, samples=8),
        f"eval.samplers=[{','.join(samplers)}]", "model.sampler.eta=0.5"], base=DDPM_FAST)
    written = json.loads((ddpm_run / "checkpoints" / "eval.json").read_text())
    assert written == json.loads(json.dumps(result))
    assert list(written["samplers"]) == samplers
    for row in written["samplers"].values():
        assert sorted(row["metrics"]) == sorted(QUALITY)
        assert all(isinstance(v, float) for v in row["metrics"].values())
        assert row["seconds"] >= 0
    settings = {label: row["sampler"] for label, row in written["samplers"].items()}
    # Parts left out keep the call's model.sampler keys (eta 0.5 from the command line; the
    # checkpoint's steps 50, unused by ancestral); the rest are the row's.
    assert settings["ddim:3"] == {"name": "ddim", "steps": 3, "eta": 0.5, "guidance": 1.0,
                                  "spacing": "uniform"}
    assert settings["dpm_solver++:3:quadratic"]["spacing"] == "quadratic"
    assert settings["ancestral"]["name"] == "ancestral"
    # Each row drew its 8 images (one chunk of eval.batch_size=8) with its own sampler.
    drawn = [(c["sampler"], c["steps"], c["spacing"], c["eta"]) for c in recorded]
    assert drawn == [("ddim", 3, "uniform", 0.5), ("dpm_solver++", 3, "quadratic", 0.5),
                     ("ancestral", 50, "uniform", 0.5)]
    # The per-example metrics stay at the top; the sample-quality numbers are per sampler.
    assert "eval/bits_per_dim" in written["metrics"]
    assert not set(QUALITY) & set(written["metrics"])
    assert written["sample_quality_protocol"]["num_generated"] == 8
    table = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(table) if line.startswith("sampler "))
    assert all(name in table[header] for name in QUALITY)
    assert [line.split()[0] for line in table[header + 2:header + 5]] == samplers


def test_without_eval_samplers_eval_uses_the_models_sampler_and_writes_no_rows(
    ddpm_run: Path, tmp_path: Path, recorded: list[dict[str, Any]],
) -> None:
    result = run_task(tmp_path / "eval", ["task=eval", f"ckpt={ddpm_run}", "eval.limit=4",
                                          *offline_quality(tmp_path, samples=8)],
                      base=DDPM_FAST)
    assert "samplers" not in result and set(QUALITY) <= set(result["metrics"])
    assert [c["sampler"] for c in recorded] == ["ancestral"]  # the checkpoint's model.sampler


def test_sampler_rows_spell_model_sampler_overrides() -> None:
    assert sampler_rows(["ddim:20", "dpm_solver++:20:quadratic", "ancestral"]) == [
        ("ddim:20", {"model.sampler.name": "ddim", "model.sampler.steps": 20}),
        ("dpm_solver++:20:quadratic", {"model.sampler.name": "dpm_solver++",
                                       "model.sampler.steps": 20,
                                       "model.sampler.spacing": "quadratic"}),
        ("ancestral", {"model.sampler.name": "ancestral"}),
    ]
    # A family whose model.sampler is one value (PixelCNN's cached | naive): entries are it.
    assert sampler_rows(["cached", "naive"], mapping=False) == [
        ("cached", {"model.sampler": "cached"}), ("naive", {"model.sampler": "naive"})]
    with pytest.raises(GentrainError, match="one value"):
        sampler_rows(["cached:3"], mapping=False)


@pytest.mark.parametrize(("entries", "message"), [
    ("[ddim:x]", "not a whole number"),
    ("[ddim:3:uniform:1]", "not name"),
    ("[ddim:3,ddim:3]", "twice"),
    ("[euler:3]", r"'euler:3'.*model.sampler.name='euler' is not one of"),
    ("[ddim:3:cubic]", r"model.sampler.spacing='cubic'"),
    ("[ddim:99]", r"model.sampler.steps=99 is more than model.timesteps=20"),
    ("ddim:3", "non-empty list"),
])
def test_bad_eval_samplers_are_clear_errors_before_any_scoring(
    ddpm_run: Path, tmp_path: Path, recorded: list[dict[str, Any]], entries: str, message: str,
) -> None:
    with pytest.raises(GentrainError, match=message):
        run_task(tmp_path / "eval", ["task=eval", f"ckpt={ddpm_run}", f"eval.samplers={entries}",
                                     *offline_quality(tmp_path, samples=8)], base=DDPM_FAST)
    assert recorded == []  # nothing was sampled


def test_spacing_and_dpm_solver_are_call_time_keys_at_task_sample(
    ddpm_run: Path, tmp_path: Path, recorded: list[dict[str, Any]],
) -> None:
    run_task(tmp_path / "sample", ["task=sample", f"ckpt={ddpm_run}", "sample.num=2",
                                   "model.sampler.name=dpm_solver++", "model.sampler.steps=4",
                                   "model.sampler.spacing=quadratic"], base=DDPM_FAST)
    assert [(c["sampler"], c["steps"], c["spacing"]) for c in recorded] == [
        ("dpm_solver++", 4, "quadratic")]
    model, _, _ = model_from_checkpoint(str(ddpm_run), use_ema=True, device=torch.device("cpu"))
    assert model.sampler.spacing == "uniform"  # checkpoints without the key: uniform
    images = model.sample(2, None, torch.Generator().manual_seed(0),
                          SamplerConfig("dpm_solver++", steps=5, spacing="quadratic"))
    assert images.shape == (2, 3, 16, 16) and images.abs().max() <= 1
    with pytest.raises(GentrainError, match="model.sampler.spacing='cubic'"):
        SamplerConfig.from_mapping({"spacing": "cubic"}, "model.sampler")
