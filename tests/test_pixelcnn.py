"""The PixelCNN family: an exactly normalised likelihood, training, sequential sampling,
evaluation in bits/dim and nats, and exact resume."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import FAST_RUN, run_task
from data_fixtures import write_mnist
from test_resume import straight_and_resumed

from gentrain.data.core.batch import DataSpec
from gentrain.engine.checkpoint import load_checkpoint
from gentrain.errors import GentrainError
from gentrain.likelihoods import from_levels, to_levels
from gentrain.models.pixelcnn import PixelCNNModel

PIXELCNN_FAST = [*FAST_RUN, "model=pixelcnn", "model.hidden=12", "model.layers=2",
                 "model.grid_samples=4", "trainer.eval_limit=8", "trainer.num_samples=4",
                 "data.resolution=8"]


def pixelcnn_task(run_dir: Path, overrides: list[str]) -> dict[str, Any]:
    return run_task(run_dir, overrides, base=PIXELCNN_FAST)


@pytest.mark.parametrize("arch", ["pixelcnn", "gated"])
def test_the_likelihood_of_every_binary_image_sums_to_one(arch: str) -> None:
    """The chain rule with causal masks defines a distribution: over all 2^(2·3) binary 2x3
    images the probabilities sum to 1 (a leak from a later pixel would break this)."""
    torch.manual_seed(0)
    spec = DataSpec(name="tiny", channels=1, height=2, width=3, values="binary")
    model = PixelCNNModel(spec, arch=arch, hidden=8, layers=2, kernel_size=3).double()
    images = torch.tensor(list(itertools.product([-1.0, 1.0], repeat=6)), dtype=torch.float64)
    with torch.no_grad():
        log_p = model.log_prob(images.view(-1, 1, 2, 3), None)
    assert torch.allclose(log_p.exp().sum(), torch.tensor(1.0, dtype=torch.float64), atol=1e-9)


@pytest.mark.parametrize("setup", [
    ["model.arch=gated", "model.output=softmax"],
    ["model.arch=pixelcnn", "model.output=logistic_mixture", "model.mixtures=2"],
    ["model.arch=gated", "model.conditional=true"],
], ids=["gated-softmax", "pixelcnn-mixture", "gated-conditional"])
def test_training_sampling_and_evaluation_on_shapes(setup: list[str], tmp_path: Path) -> None:
    result = pixelcnn_task(tmp_path, ["trainer.max_steps=3", *setup])
    assert 0 < result["eval"]["eval/bits_per_dim"] < 20
    grid = load_checkpoint(tmp_path)  # the run finished with a checkpoint
    assert grid["family"] == "pixelcnn"
    assert list((tmp_path / "samples").glob("samples_*.png"))
    evaluated = pixelcnn_task(tmp_path / "eval", ["task=eval", f"ckpt={tmp_path}",
                                                  "eval.limit=8"])
    assert set(evaluated["metrics"]) == {"eval/bits_per_dim", "eval/nll_nats"}


def test_samples_lie_on_the_8bit_grid_and_follow_the_labels(tmp_path: Path) -> None:
    spec = DataSpec(name="tiny", channels=3, height=4, width=4, label_kind="class",
                    num_classes=3)
    model = PixelCNNModel(spec, hidden=12, layers=2, conditional=True)
    generator = torch.Generator().manual_seed(0)
    x = model.sample(5, {"label": torch.tensor([0, 1, 2, 0, 1])}, generator)
    assert x.shape == (5, 3, 4, 4) and torch.equal(from_levels(to_levels(x)), x)
    again = model.sample(5, {"label": torch.tensor([0, 1, 2, 0, 1])},
                         torch.Generator().manual_seed(0))
    assert torch.equal(x, again)  # the seed decides the samples


def test_binarised_mnist_gets_a_bernoulli_output_in_nats(tmp_path: Path) -> None:
    write_mnist(tmp_path / "data", gz=True)
    result = run_task(tmp_path / "run", [
        "model=pixelcnn", "data=mnist", f"data.root={tmp_path / 'data'}", "data.download=false",
        "data.binarize=static", "model.hidden=8", "model.layers=1", "trainer.max_steps=2",
        "model.grid_samples=1", "trainer.eval_limit=4", "trainer.num_samples=1",
        "data.batch_size=4"], base=FAST_RUN[:4] + ["logger=none"])
    state = load_checkpoint(tmp_path / "run")
    assert "bernoulli" in state["config"] and result["eval"]["eval/nll_nats"] > 0


def test_a_bernoulli_output_on_8bit_images_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(GentrainError, match="bernoulli for binarised data"):
        pixelcnn_task(tmp_path, ["model.output=bernoulli", "trainer.max_steps=1"])


def test_pixelcnn_resume_is_bitwise_identical(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    setup = ["trainer.max_steps=4", "trainer.deterministic=true", "trainer.ckpt_every=100",
             "trainer.sample_every=100", "trainer.log_every=2"]
    straight_and_resumed(pixelcnn_task, tmp_path, setup, monkeypatch, at=2)
    a, b = load_checkpoint(tmp_path / "straight"), load_checkpoint(tmp_path / "resumed")
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key


def test_sampler_is_a_call_time_key_and_both_draw_the_same_samples(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """model.sampler=naive overrides a checkpoint trained with the default (cached) at
    task=sample, and from the same sample.seed both samplers write the same images."""
    used: list[tuple[str, torch.Tensor]] = []
    original = PixelCNNModel.sample

    def recording(self: PixelCNNModel, *args: Any, **kwargs: Any) -> torch.Tensor:
        images = original(self, *args, **kwargs)
        used.append((self.sampler, images.clone()))
        return images

    pixelcnn_task(tmp_path / "run", ["trainer.max_steps=1", "model.output=softmax"])
    monkeypatch.setattr(PixelCNNModel, "sample", recording)
    for sampler in ("cached", "naive"):
        pixelcnn_task(tmp_path / sampler, ["task=sample", f"ckpt={tmp_path / 'run'}",
                                           "sample.num=3", f"model.sampler={sampler}"])
    assert [name for name, _ in used] == ["cached", "naive"]
    assert torch.equal(used[0][1], used[1][1])
    with pytest.raises(GentrainError, match="model.sampler must be one of cached, naive"):
        pixelcnn_task(tmp_path / "bad", ["task=sample", f"ckpt={tmp_path / 'run'}",
                                         "model.sampler=fast"])
