"""PixelCNN networks: causality by gradients (raster order, R -> G -> B within a pixel, and the
mixture layout that hides the whole current pixel), the plain PixelCNN's blind spot and the
gated net's lack of one, the masks themselves, class conditioning, shapes and errors. Tiny
nets on 8x8 images in double precision keep the file fast on the CPU."""

from __future__ import annotations

import pytest
import torch
from autoregressive_causality import (
    BATCH,
    LEVELS,
    MIXTURE_MAPS,
    check_mixture_maps,
    check_sub_pixel_outputs,
    images,
    input_grad,
)
from torch import nn

from gentrain.nets.pixelcnn import GatedPixelCNN, MaskedConv2d, PixelCNN

NETS = {"pixelcnn": PixelCNN, "gated": GatedPixelCNN}
POSITIONS = [(0, 3), (3, 0), (4, 5), (7, 7)]


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def build(arch: str, channels: int, **kwargs: object) -> nn.Module:
    args: dict[str, object] = dict(data_channels=channels, out_per_channel=LEVELS, hidden=12,
                                   layers=2, kernel_size=5)
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
    net = build(arch, channels, out_per_channel=None, out_channels=MIXTURE_MAPS, hidden=10)
    check_mixture_maps(net, channels, POSITIONS)


def test_gated_net_sees_up_right_where_plain_pixelcnn_is_blind() -> None:
    # 3x3 kernels and 2 layers: both nets nominally reach two pixels in every direction.
    i, j = 4, 3
    x = images(1)
    plain = input_grad(build("pixelcnn", 1, kernel_size=3)(x)[0, :, :, i, j], x)
    # Stacked masks widen rightwards only through rows already above the first layer's reach:
    # two rows up is seen, the nearer pixel one row up is not (the blind spot).
    assert (plain[:, i - 2, j + 2] != 0).all()
    assert (plain[:, i - 1, j + 2] == 0).all()
    gated = input_grad(build("gated", 1, kernel_size=3)(x)[0, :, :, i, j], x)
    assert (gated[:, i - 1, j + 2] != 0).all()
    assert (gated[:, i - 2, j + 2] != 0).all()


def test_masks_order_colours_at_the_centre_and_hide_later_pixels() -> None:
    a = MaskedConv2d(3, 3, 3, "A", data_channels=3).mask
    b = MaskedConv2d(3, 3, 3, "B", data_channels=3).mask
    assert torch.equal(a[:, :, 1, 1], torch.tensor([[0.0, 0, 0], [1, 0, 0], [1, 1, 0]]))
    assert torch.equal(b[:, :, 1, 1], torch.tensor([[1.0, 0, 0], [1, 1, 0], [1, 1, 1]]))
    for mask in (a, b):
        assert (mask[:, :, 0] == 1).all() and (mask[:, :, 1, 0] == 1).all()
        assert (mask[:, :, 1, 2] == 0).all() and (mask[:, :, 2] == 0).all()
    # Hidden maps are interleaved: map k is colour k % 3.
    hidden = MaskedConv2d(6, 6, 1, "B", data_channels=3).mask[:, :, 0, 0]
    assert torch.equal(hidden[0], torch.tensor([1.0, 0, 0, 1, 0, 0]))
    assert MaskedConv2d(4, 4, 3, "A", data_channels=1).mask[:, :, 1, 1].sum() == 0
    assert (MaskedConv2d(4, 4, 3, "B", data_channels=1).mask[:, :, 1, 1] == 1).all()
    assert "mask" not in MaskedConv2d(3, 3, 3, "A", data_channels=3).state_dict()


@pytest.mark.parametrize("arch", list(NETS))
def test_class_label_changes_the_output_and_is_required(arch: str) -> None:
    net = build(arch, 3, num_classes=10)
    x = images(3).detach()
    zeros, ones = torch.zeros(BATCH, dtype=torch.long), torch.ones(BATCH, dtype=torch.long)
    assert not torch.allclose(net(x, zeros), net(x, ones))
    assert torch.equal(net(x, zeros), net(x, zeros))
    with pytest.raises(ValueError, match="needs labels"):
        net(x)
    with pytest.raises(ValueError, match="unconditional"):
        build(arch, 3)(x, zeros)


@pytest.mark.parametrize("side", [16, 28, 32])
@pytest.mark.parametrize("arch", list(NETS))
def test_shapes_at_data_sizes(arch: str, side: int) -> None:
    with torch.no_grad():
        rgb = torch.rand(BATCH, 3, side, side) * 2 - 1
        softmax = NETS[arch](3, 256, hidden=6, layers=1, kernel_size=7)(rgb)
        assert softmax.shape == (BATCH, 3, 256, side, side)
        mixture = NETS[arch](3, None, hidden=6, layers=1, out_channels=100)(rgb)
        assert mixture.shape == (BATCH, 100, side, side)
        gray = rgb[:, :1]
        assert NETS[arch](1, 1, hidden=4, layers=1)(gray).shape == (BATCH, 1, 1, side, side)


@pytest.mark.parametrize("arch", list(NETS))
def test_bad_sizes_raise_clear_errors(arch: str) -> None:
    with pytest.raises(ValueError, match="hidden must be a multiple of 3"):
        NETS[arch](3, 256, hidden=10, layers=1)
    NETS[arch](3, None, hidden=10, layers=1, out_channels=100)  # one group: any width
    with pytest.raises(ValueError, match="exactly one of out_per_channel"):
        NETS[arch](3, 256, hidden=12, layers=1, out_channels=100)
    with pytest.raises(ValueError, match="odd and >= 3"):
        NETS[arch](1, 1, hidden=4, layers=1, kernel_size=4)


def test_masked_conv_rejects_a_channel_split_that_is_not_per_colour() -> None:
    with pytest.raises(ValueError, match="must be multiples of 3"):
        MaskedConv2d(3, 10, 3, "B", data_channels=3)
    with pytest.raises(ValueError, match="'A' or 'B'"):
        MaskedConv2d(3, 3, 3, "C", data_channels=3)  # type: ignore[arg-type]
