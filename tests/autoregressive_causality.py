"""Causality checks by gradients shared by every autoregressive net's tests (PixelCNN, gated
PixelCNN, Row LSTM, Diagonal BiLSTM): raster order, R -> G -> B within a pixel, and the mixture
layout that hides the whole current pixel. Double precision, so an exact zero means unseen."""

from __future__ import annotations

import torch
from torch import Tensor, nn

SIDE, BATCH, LEVELS, MIXTURE_MAPS = 8, 2, 4, 5


def images(channels: int, side: int = SIDE) -> Tensor:
    return (torch.rand(BATCH, channels, side, side, dtype=torch.float64) * 2 - 1
            ).requires_grad_()


def input_grad(out: Tensor, x: Tensor) -> Tensor:
    """d sum(out) / dx for example 0, (C, H, W); the other example's must be exactly zero.
    The graph is kept: one forward pass serves every position and channel."""
    (grad,) = torch.autograd.grad(out.sum(), x, retain_graph=True)
    assert (grad[1:] == 0).all(), "examples in a batch must not see each other"
    return grad[0]


def later(i: int, j: int, side: int = SIDE) -> Tensor:
    """(H, W) booleans: the pixels strictly after (i, j) in raster order."""
    return torch.arange(side * side).view(side, side) > i * side + j


def check_sub_pixel_outputs(net: nn.Module, channels: int,
                            positions: list[tuple[int, int]], side: int = SIDE) -> None:
    """Each sub-pixel's outputs see earlier pixels and the pixel's earlier colours only, and
    every earlier colour of the pixel (the first sub-pixel of the image sees nothing)."""
    x = images(channels, side)
    out = net(x)
    assert out.shape == (BATCH, channels, LEVELS, side, side)
    for i, j in positions:
        after = later(i, j, side)
        for c in range(channels):
            grad = input_grad(out[0, c, :, i, j], x)
            assert (grad[:, after] == 0).all(), f"({i}, {j}) channel {c} sees a later pixel"
            assert (grad[c:, i, j] == 0).all(), f"({i}, {j}) channel {c} sees itself or later"
            assert (grad[:c, i, j] != 0).all(), f"({i}, {j}) channel {c} ignores earlier colours"
            if (i, j) != (0, 0) or c:
                assert (grad[:, ~after] != 0).any(), f"({i}, {j}) channel {c} sees nothing"


def check_mixture_maps(net: nn.Module, channels: int, positions: list[tuple[int, int]],
                       side: int = SIDE) -> None:
    """The mixture layout's maps at (i, j) see strictly earlier pixels only, and some of them."""
    x = images(channels, side)
    out = net(x)
    assert out.shape == (BATCH, MIXTURE_MAPS, side, side)
    for i, j in positions:
        seen = ~later(i, j, side)
        seen[i, j] = False
        grad = input_grad(out[0, :, i, j], x)
        assert (grad[:, ~seen] == 0).all(), f"({i}, {j}) sees itself or a later pixel"
        if (i, j) != (0, 0):
            assert (grad[:, seen] != 0).any(), f"({i}, {j}) sees nothing"
