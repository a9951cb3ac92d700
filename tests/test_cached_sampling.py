"""Cached PixelCNN sampling (gentrain.nets.cached_sampling): every cached step equals the full
network at its position while reading only what has been drawn, and ``model.sampler=cached``
draws exactly the images ``naive`` draws from the same generator, for both nets, every
output, grey and RGB, with and without labels. Tiny nets in double precision on 6x6 images."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from gentrain.data.core.batch import DataSpec
from gentrain.likelihoods import from_levels, to_levels
from gentrain.models.pixelcnn import PixelCNNModel
from gentrain.nets.cached_sampling import CachedSampling, ConvCache
from gentrain.nets.pixelcnn import GatedPixelCNN, PixelCNN

NETS = {"pixelcnn": PixelCNN, "gated": GatedPixelCNN}
BATCH, HEIGHT, WIDTH, CLASSES = 3, 5, 6, 3


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.mark.parametrize("conditional", [False, True], ids=["unconditional", "conditional"])
@pytest.mark.parametrize("layout", ["sub-pixel", "mixture"])
@pytest.mark.parametrize("channels", [1, 3], ids=["grey", "rgb"])
@pytest.mark.parametrize("arch", list(NETS))
def test_each_cached_step_equals_the_full_network_from_what_was_drawn_only(
        arch: str, channels: int, layout: str, conditional: bool) -> None:
    """The canvas starts as noise and receives the image's values only as a sampler would
    write its draws (after the step that decides them): a step that read a later (sub-)pixel,
    or a stale cache entry, would see noise and differ from the full pass on the image."""
    sizes = {"out_per_channel": 4} if layout == "sub-pixel" else {
        "out_per_channel": None, "out_channels": 7}
    net = NETS[arch](channels, hidden=6, layers=2, kernel_size=5,
                     num_classes=CLASSES if conditional else 0, **sizes).double()
    image = torch.rand(BATCH, channels, HEIGHT, WIDTH, dtype=torch.float64) * 2 - 1
    label = torch.tensor([0, 2, 1]) if conditional else None
    with torch.no_grad():
        full = net(image, label)
        canvas = torch.randn_like(image) * 3
        state = net.begin_sampling(canvas, label)
        for i in range(HEIGHT):
            for j in range(WIDTH):
                if layout == "mixture":  # one draw fills the whole pixel
                    out = net.step(state, i, j, 0)
                    assert out.shape == (BATCH, 7)
                    torch.testing.assert_close(out, full[:, :, i, j], rtol=0, atol=1e-12)
                    canvas[:, :, i, j] = image[:, :, i, j]
                    continue
                for c in range(channels):
                    out = net.step(state, i, j, c)
                    assert out.shape == (BATCH, 4)
                    torch.testing.assert_close(out, full[:, c, :, i, j], rtol=0, atol=1e-12)
                    canvas[:, c, i, j] = image[:, c, i, j]
    assert isinstance(net, CachedSampling)


def test_conv_cache_rejects_a_conv_that_reads_later_rows() -> None:
    with pytest.raises(ValueError, match="causal conv"):
        ConvCache(torch.ones(2, 2, 3, 3), None, (1, 1, 1, 1), 1, 4, torch.zeros(1))
    with pytest.raises(ValueError, match="same-size conv"):
        ConvCache(torch.ones(2, 2, 3, 3), None, (0, 0, 2, 0), 1, 4, torch.zeros(1))


def count_forward_calls(net: nn.Module) -> list[int]:
    calls = [0]

    def hook(*_: object) -> None:
        calls[0] += 1

    net.register_forward_hook(hook)
    return calls


@pytest.mark.parametrize("conditional", [False, True], ids=["unconditional", "conditional"])
@pytest.mark.parametrize("channels", [1, 3], ids=["grey", "rgb"])
@pytest.mark.parametrize("output", ["softmax", "logistic_mixture", "bernoulli"])
@pytest.mark.parametrize("arch", list(NETS))
def test_cached_and_naive_samplers_draw_the_same_images(
        arch: str, output: str, channels: int, conditional: bool) -> None:
    spec = DataSpec(name="tiny", channels=channels, height=HEIGHT, width=WIDTH,
                    values="binary" if output == "bernoulli" else "8bit",
                    label_kind="class" if conditional else None,
                    num_classes=CLASSES if conditional else 0)
    kwargs = dict(arch=arch, output=output, mixtures=2, hidden=6, layers=2, kernel_size=3,
                  conditional=conditional)
    cached = PixelCNNModel(spec, sampler="cached", **kwargs).double()
    naive = PixelCNNModel(spec, sampler="naive", **kwargs).double()
    naive.load_state_dict(cached.state_dict())
    cond = {"label": torch.tensor([2, 0, 1, 1])} if conditional else None
    drawn: dict[str, Tensor] = {}
    for name, model in (("cached", cached), ("naive", naive)):
        passes = count_forward_calls(model.net)
        drawn[name] = model.sample(4, cond, torch.Generator().manual_seed(7))
        draws = HEIGHT * WIDTH * (1 if output == "logistic_mixture" else channels)
        assert passes[0] == (0 if name == "cached" else draws)  # each ran its own sampler
    x = drawn["cached"]
    assert x.shape == (4, channels, HEIGHT, WIDTH)
    assert torch.equal(from_levels(to_levels(x)), x)  # on the 8-bit grid (or binary)
    assert x.unique().numel() > 1, "a constant image would make the comparison vacuous"
    assert torch.equal(x, drawn["naive"])
