"""pix2pix on the multi-phase Trainer: one generator pass per step, paired data (shapes label
maps, a facades-format fixture), validation metrics, translation of an image folder, resume."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import FAST_RUN, run_task
from data_fixtures import write_pix2pix_tarball
from PIL import Image
from test_resume import straight_and_resumed

from gentrain.engine.checkpoint import load_checkpoint
from gentrain.errors import GentrainError
from gentrain.nets.pix2pix import UNetGenerator

P2P_FAST = [*FAST_RUN, "model=pix2pix", "data.pair=labels", "model.base_channels=4",
            "model.d_base_channels=4", "model.d_layers=1", "trainer.eval_limit=8",
            "trainer.num_samples=4"]


def p2p_task(run_dir: Path, overrides: list[str], base: list[str] = P2P_FAST) -> dict[str, Any]:
    return run_task(run_dir, overrides, base=base)


@pytest.fixture(scope="module")
def p2p_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("p2p")
    p2p_task(run_dir, ["trainer.max_steps=3"])
    return run_dir


def test_pix2pix_on_shapes_label_maps_writes_triplets_and_validation_metrics(
    p2p_run: Path
) -> None:
    summary = json.loads((p2p_run / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert {"eval/l1", "eval/psnr", "eval/ssim"} <= set(summary["eval"])
    assert summary["best"]["metric"] == "eval/l1"
    grid = Image.open(summary["samples"]["translations"])
    # 3 columns (source | output | target) of 16 px images with 2 px padding.
    assert grid.size[0] == 3 * 16 + 4 * 2


def test_the_g_step_reuses_the_output_of_the_d_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One generator forward per training step while training (grids and eval aside)."""
    calls = {"n": 0}
    original = UNetGenerator.forward

    def counting(self: UNetGenerator, *args: Any) -> torch.Tensor:
        if self.training and torch.is_grad_enabled():
            calls["n"] += 1
        return original(self, *args)

    monkeypatch.setattr(UNetGenerator, "forward", counting)
    p2p_task(tmp_path, ["trainer.max_steps=4", "trainer.sample_every=100"])
    assert calls["n"] == 4


def test_pix2pix_on_a_facades_format_fixture(tmp_path: Path) -> None:
    write_pix2pix_tarball(tmp_path / "data" / "pix2pix" / "facades.tar.gz", size=32)
    base = [*FAST_RUN[:4], "logger=none", "model=pix2pix", "data=facades",
            f"data.root={tmp_path / 'data'}", "data.download=false", "data.resolution=32",
            "data.load_size=36", "data.num_workers=0", "model.base_channels=4",
            "model.d_base_channels=4", "trainer.num_samples=2"]
    result = p2p_task(tmp_path / "run", ["trainer.max_epochs=null", "trainer.max_steps=2"],
                      base=base)
    assert result["status"] == "completed" and result["images_seen"] == 2
    assert 0 <= result["eval"]["eval/ssim"] <= 1


def test_pix2pix_translates_an_image_folder(p2p_run: Path, tmp_path: Path) -> None:
    sources = tmp_path / "sources"
    sources.mkdir()
    for k in range(3):
        Image.new("RGB", (20, 24), (40 * k, 200, 90)).save(sources / f"{k}.png")
    result = run_task(tmp_path / "out", ["task=sample", f"ckpt={p2p_run}",
                                         f"sample.source={sources}", "sample.individual=true"],
                      base=FAST_RUN[:2])
    assert result["num"] == 3
    outputs = sorted((tmp_path / "out" / "samples" / "individual").glob("*.png"))
    assert len(outputs) == 3 and Image.open(outputs[0]).size == (16, 16)
    assert Image.open(result["grid"]).size[0] == 2 * 16 + 3 * 2  # source | output


def test_pix2pix_translates_the_test_split_by_default(p2p_run: Path, tmp_path: Path) -> None:
    result = run_task(tmp_path, ["task=sample", f"ckpt={p2p_run}", "sample.num=4"],
                      base=FAST_RUN[:2])
    assert result["num"] == 4
    assert Image.open(result["grid"]).size[0] == 3 * 16 + 4 * 2  # source | output | target


def test_pix2pix_needs_paired_data(tmp_path: Path) -> None:
    with pytest.raises(GentrainError, match="data.pair=labels"):
        p2p_task(tmp_path, ["trainer.max_steps=1", "data.pair=null"])


def test_generation_keeps_dropout_on_as_in_the_paper(p2p_run: Path) -> None:
    from gentrain.tasks.setup import model_from_checkpoint

    model, _, _ = model_from_checkpoint(str(p2p_run), use_ema=True, device=torch.device("cpu"))
    source = torch.rand(2, 3, 16, 16) * 2 - 1
    first, again, other = model.translate(source, 0), model.translate(source, 0), \
        model.translate(source, 1)
    assert torch.equal(first, again)  # its own seed: reproducible
    assert not torch.equal(first, other)  # dropout is on: another seed, another output
    assert not model.generator.training  # and the caller's mode is restored


def test_pix2pix_resume_is_bitwise_identical(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    setup = ["trainer.max_steps=4", "trainer.deterministic=true", "trainer.ckpt_every=100",
             "trainer.sample_every=100", "trainer.log_every=2"]
    straight, resumed = straight_and_resumed(p2p_task, tmp_path, setup, monkeypatch, at=2)
    a, b = load_checkpoint(tmp_path / "straight"), load_checkpoint(tmp_path / "resumed")
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert resumed["eval"] == straight["eval"]


def test_the_facades_recipe_is_the_papers() -> None:
    from conftest import compose_config

    cfg = compose_config(["model=pix2pix", "data=facades"])
    assert cfg.trainer.max_epochs == 200 and cfg.model.schedule.decay_start_epoch == 100
    assert cfg.model.schedule.decay == "linear" and cfg.model.l1_weight == 100.0
    assert cfg.data.batch_size == 1 and list(cfg.model.optim.generator.betas) == [0.5, 0.999]
