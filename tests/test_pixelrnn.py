"""PixelRNN (Row LSTM, Diagonal BiLSTM): causality by gradients (raster order and R -> G -> B,
grey and RGB, per-sub-pixel and mixture layouts), the two nets' receptive fields, skew/unskew,
and the family end to end on shapes (train, sample, eval, exact resume). Tiny nets on 8x8
images in double precision keep the file fast on the CPU."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
import torch
from autoregressive_causality import (
    BATCH,
    LEVELS,
    MIXTURE_MAPS,
    SIDE,
    check_mixture_maps,
    check_sub_pixel_outputs,
    images,
    input_grad,
    later,
)
from conftest import FAST_RUN, compose_config, run_task
from test_resume import straight_and_resumed
from torch import nn

from gentrain.data.core.batch import DataSpec
from gentrain.engine.checkpoint import load_checkpoint
from gentrain.errors import GentrainError
from gentrain.likelihoods import from_levels, to_levels
from gentrain.models.pixelcnn import PixelRNNModel
from gentrain.nets.cached_sampling import CachedSampling
from gentrain.nets.pixelrnn import DiagonalBiLSTM, RowLSTM, skew, unskew

NETS = {"row_lstm": RowLSTM, "diagonal_bilstm": DiagonalBiLSTM}
POSITIONS = [(0, 0), (0, 3), (3, 0), (4, 5), (7, 7)]
PIXELRNN_FAST = [*FAST_RUN, "model=pixelrnn", "model.hidden=6", "model.layers=1",
                 "model.kernel_size=3", "model.grid_samples=2", "trainer.eval_limit=8",
                 "trainer.num_samples=2", "data.resolution=8"]


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def build(arch: str, channels: int, **kwargs: object) -> nn.Module:
    # 12 maps per layer's colour group: with fewer, the head's ReLUs can switch off every map
    # of a colour at one pixel, and a gradient that should be nonzero is exactly zero.
    args: dict[str, object] = dict(data_channels=channels, out_per_channel=LEVELS, hidden=12,
                                   layers=2, kernel_size=3)
    args.update(kwargs)
    return NETS[arch](**args).double()


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("arch", list(NETS))
def test_sub_pixel_outputs_see_earlier_pixels_and_earlier_colours_only(arch: str,
                                                                        channels: int) -> None:
    check_sub_pixel_outputs(build(arch, channels), channels, POSITIONS)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("arch", list(NETS))
def test_mixture_maps_see_strictly_earlier_pixels_only(arch: str, channels: int) -> None:
    net = build(arch, channels, out_per_channel=None, out_channels=MIXTURE_MAPS, hidden=5)
    check_mixture_maps(net, channels, POSITIONS)


def test_one_diagonal_bilstm_layer_sees_the_past_and_a_row_lstm_a_triangle() -> None:
    # One layer and a 3x3 first conv: the Diagonal BiLSTM already sees every earlier pixel
    # (the paper's point) but one. The last pixel of the row above is seen by no feature
    # of a pixel before (i, j) (a mask-A feature excludes its own pixel and the row ends
    # there) nor by the shifted right-to-left direction: the paper's construction leaves
    # this one pixel out for j < W - 1 - k // 2, at any depth. The Row LSTM sees a
    # triangle: one pixel further sideways per row up, so the pixel two to the right in the
    # row above, and the row's own start, are unseen.
    i, j = 6, 3
    x = images(1)
    diagonal = input_grad(build("diagonal_bilstm", 1, layers=1)(x)[0, :, :, i, j], x)
    seen = ~later(i, j)
    seen[i, j] = seen[i - 1, SIDE - 1] = False
    assert (diagonal[:, seen] != 0).all() and (diagonal[:, i - 1, SIDE - 1] == 0).all()
    row = input_grad(build("row_lstm", 1, layers=1)(x)[0, :, :, i, j], x)
    assert (row[:, i - 1, : j + 2] != 0).all() and (row[:, i, j - 2 : j] != 0).all()
    assert (row[:, : i - 3] != 0).all()
    assert (row[:, i - 1, j + 2] == 0).all() and (row[:, i, 0] == 0).all()


@pytest.mark.parametrize(("height", "width"), [(1, 1), (3, 5), (5, 3), (8, 8)])
def test_skew_shifts_row_r_right_by_r_and_unskew_inverts_it(height: int, width: int) -> None:
    x = torch.randn(2, 3, height, width)
    skewed = skew(x)
    assert skewed.shape == (2, 3, height, width + height - 1)
    for r in range(height):
        assert torch.equal(skewed[:, :, r, r : r + width], x[:, :, r])
        assert (skewed[:, :, r, :r] == 0).all() and (skewed[:, :, r, r + width :] == 0).all()
    assert torch.equal(unskew(skewed), x)


@pytest.mark.parametrize("arch", list(NETS))
def test_the_likelihood_of_every_binary_image_sums_to_one(arch: str) -> None:
    """The chain rule over 2x3 binary images: the 64 probabilities sum to 1 (a leak from a
    later pixel would break this)."""
    spec = DataSpec(name="tiny", channels=1, height=2, width=3, values="binary")
    model = PixelRNNModel(spec, arch=arch, hidden=4, layers=2, kernel_size=3).double()
    x = torch.tensor(list(itertools.product([-1.0, 1.0], repeat=6)), dtype=torch.float64)
    with torch.no_grad():
        log_p = model.log_prob(x.view(-1, 1, 2, 3), None)
    assert torch.allclose(log_p.exp().sum(), torch.tensor(1.0, dtype=torch.float64), atol=1e-9)


@pytest.mark.parametrize("arch", list(NETS))
def test_class_label_changes_the_output(arch: str) -> None:
    net = build(arch, 3, num_classes=4)
    x = images(3).detach()
    zeros, ones = torch.zeros(BATCH, dtype=torch.long), torch.ones(BATCH, dtype=torch.long)
    assert not torch.allclose(net(x, zeros), net(x, ones))
    with pytest.raises(ValueError, match="needs labels"):
        net(x)


def test_samples_lie_on_the_8bit_grid_and_the_seed_decides_them() -> None:
    spec = DataSpec(name="tiny", channels=3, height=3, width=3, label_kind="class",
                    num_classes=3)
    model = PixelRNNModel(spec, arch="diagonal_bilstm", hidden=6, layers=1, kernel_size=3,
                          conditional=True)
    labels = {"label": torch.tensor([0, 1, 2])}
    x = model.sample(3, labels, torch.Generator().manual_seed(0))
    assert x.shape == (3, 3, 3, 3) and torch.equal(from_levels(to_levels(x)), x)
    assert torch.equal(x, model.sample(3, labels, torch.Generator().manual_seed(0)))


def test_pixelrnn_is_its_own_family_with_rnn_archs_only() -> None:
    cfg = compose_config(["model=pixelrnn"])
    assert cfg.model.name == "pixelrnn" and cfg.model.arch in NETS
    assert cfg.data.name == "shapes"  # bare `gentrain model=pixelrnn`: the shapes demo recipe
    spec = DataSpec(name="tiny", channels=1, height=4, width=4, values="binary")
    assert PixelRNNModel(spec, hidden=4, layers=1).family == "pixelrnn"
    with pytest.raises(GentrainError, match="row_lstm, diagonal_bilstm"):
        PixelRNNModel(spec, arch="gated", hidden=4, layers=1)


@pytest.mark.parametrize("conditional", [False, True], ids=["unconditional", "conditional"])
@pytest.mark.parametrize("layout", ["sub-pixel", "mixture"])
@pytest.mark.parametrize("channels", [1, 3], ids=["grey", "rgb"])
@pytest.mark.parametrize("arch", list(NETS))
def test_each_cached_step_equals_the_full_network_from_what_was_drawn_only(
        arch: str, channels: int, layout: str, conditional: bool) -> None:
    """As for the PixelCNN nets (tests/test_cached_sampling.py): the canvas starts as noise
    and gets the image's values only as a sampler writes its draws, so a step that read a
    later (sub-)pixel, or a stale carried state, would differ from the full pass."""
    height, width = 5, 6
    sizes = {"out_per_channel": LEVELS} if layout == "sub-pixel" else {
        "out_per_channel": None, "out_channels": MIXTURE_MAPS}
    net = NETS[arch](channels, hidden=6, layers=2, kernel_size=3,
                     num_classes=3 if conditional else 0, **sizes).double()
    image = torch.rand(BATCH, channels, height, width, dtype=torch.float64) * 2 - 1
    label = torch.tensor([0, 2]) if conditional else None
    with torch.no_grad():
        full = net(image, label)
        canvas = torch.randn_like(image) * 3
        state = net.begin_sampling(canvas, label)
        for i, j in itertools.product(range(height), range(width)):
            for c in range(channels if layout == "sub-pixel" else 1):
                out = net.step(state, i, j, c)
                expected = full[:, c, :, i, j] if layout == "sub-pixel" else full[:, :, i, j]
                torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
                if layout == "sub-pixel":
                    canvas[:, c, i, j] = image[:, c, i, j]
                else:
                    canvas[:, :, i, j] = image[:, :, i, j]
    assert isinstance(net, CachedSampling)


@pytest.mark.parametrize("output", ["softmax", "logistic_mixture", "bernoulli"])
@pytest.mark.parametrize("arch", list(NETS))
def test_cached_and_naive_samplers_draw_the_same_images(arch: str, output: str) -> None:
    channels = 1 if output == "bernoulli" else 3
    spec = DataSpec(name="tiny", channels=channels, height=4, width=5,
                    values="binary" if output == "bernoulli" else "8bit")
    kwargs = dict(arch=arch, output=output, mixtures=2, hidden=6, layers=2, kernel_size=3)
    cached = PixelRNNModel(spec, sampler="cached", **kwargs).double()
    naive = PixelRNNModel(spec, sampler="naive", **kwargs).double()
    naive.load_state_dict(cached.state_dict())
    drawn, passes = {}, {"cached": 0, "naive": 0}

    def count(name: str) -> Any:
        return lambda *_: passes.__setitem__(name, passes[name] + 1)

    for name, model in (("cached", cached), ("naive", naive)):
        model.net.register_forward_hook(count(name))
        drawn[name] = model.sample(3, None, torch.Generator().manual_seed(7))
    draws = 4 * 5 * (1 if output == "logistic_mixture" else channels)
    assert passes == {"cached": 0, "naive": draws}  # each ran its own sampler
    x = drawn["cached"]
    assert torch.equal(from_levels(to_levels(x)), x) and x.unique().numel() > 1
    assert torch.equal(x, drawn["naive"])


def pixelrnn_task(run_dir: Path, overrides: list[str]) -> dict[str, Any]:
    return run_task(run_dir, overrides, base=PIXELRNN_FAST)


@pytest.mark.parametrize("setup", [
    ["model.arch=row_lstm", "model.output=softmax"],
    ["model.arch=diagonal_bilstm", "model.output=logistic_mixture", "model.mixtures=2",
     "model.conditional=true"],
], ids=["row_lstm-softmax", "diagonal_bilstm-mixture-conditional"])
def test_training_sampling_and_evaluation_on_shapes(setup: list[str], tmp_path: Path) -> None:
    result = pixelrnn_task(tmp_path, ["trainer.max_steps=2", *setup])
    assert 0 < result["eval"]["eval/bits_per_dim"] < 20
    state = load_checkpoint(tmp_path)
    assert state["family"] == "pixelrnn" and state["step"] == 2
    assert list((tmp_path / "samples").glob("samples_*.png"))
    sampled = pixelrnn_task(tmp_path / "sample", ["task=sample", f"ckpt={tmp_path}",
                                                  "sample.num=2", "sample.nrow=2"])
    assert Path(sampled["grid"]).is_file()
    evaluated = pixelrnn_task(tmp_path / "eval", ["task=eval", f"ckpt={tmp_path}",
                                                  "eval.limit=8"])
    assert set(evaluated["metrics"]) == {"eval/bits_per_dim", "eval/nll_nats"}


def test_pixelrnn_resume_is_bitwise_identical(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    setup = ["trainer.max_steps=4", "trainer.deterministic=true", "trainer.ckpt_every=100",
             "trainer.sample_every=100", "trainer.log_every=2"]
    straight_and_resumed(pixelrnn_task, tmp_path, setup, monkeypatch, at=2)
    a, b = load_checkpoint(tmp_path / "straight"), load_checkpoint(tmp_path / "resumed")
    assert a["model"].keys() == b["model"].keys()
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
