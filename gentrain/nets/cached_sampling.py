"""Cached autoregressive sampling (Ramachandran et al. 2017, "Fast Generation for
Convolutional Autoregressive Models").

A causal layer's output at a position depends only on earlier positions, so once computed it
is final. Sampling therefore never reruns the network over the whole image: each step
computes, for every layer, the outputs at the new position only, from the inputs that layer
cached at earlier positions. Drawing an image costs about one network pass plus a per-step
overhead, instead of one pass per (sub-)pixel.

The interface a net offers its sampler (:class:`CachedSampling`)::

    state = net.begin_sampling(canvas, label)   # canvas (B, C, H, W), owned by the caller
    for i in range(H):                           # raster order ...
        for j in range(W):
            for c in range(steps_per_pixel):     # ... and colours R -> G -> B within a pixel
                out = net.step(state, i, j, c)   # the outputs that decide sub-pixel c
                canvas[:, c, i, j] = draw(out)   # the caller writes every draw back

``step`` must be called for every position in that order, each exactly once, and may read
the canvas only at what has been drawn before it: earlier pixels and channels < c of
(i, j). Its result equals the full forward pass ``net(canvas, label)`` at that position.
A convolutional net keeps its layers' inputs in :class:`ConvCache`; a recurrent net (a
PixelRNN) would carry its recurrent state in ``state`` the same way.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch.nn.functional as F
from torch import Tensor


@runtime_checkable
class CachedSampling(Protocol):
    """A net that can draw images one (sub-)pixel at a time from cached activations."""

    def begin_sampling(self, canvas: Tensor, label: Tensor | None) -> Any:
        """A fresh sampling state for the (all-zero) ``canvas`` (B, C, H, W) that the caller
        fills in raster order; ``label`` (B,) for a conditional net, else None."""
        ...

    def step(self, state: Any, i: int, j: int, c: int) -> Tensor:
        """The outputs at pixel (i, j) that decide sub-pixel ``c`` (``c = 0`` only when one
        draw fills the whole pixel): ``net(canvas, label)`` there, computed from the cache."""
        ...


class ConvCache:
    """The input of one stride-1 causal conv, filled row by row and position by position.

    The conv's output at row i reads input rows i - top .. i (the kernel rows below its own
    row read later rows and must be masked to zero, as causal convs are), so only those
    ``top + 1`` rows are kept, zero-padded left and right as the conv pads them. Call
    :meth:`next_row` when a new output row starts; the cache starts at row 0, with the rows
    above it zero like the conv's top padding.
    """

    def __init__(self, weight: Tensor, bias: Tensor | None, pad: tuple[int, int, int, int],
                 batch: int, width: int, like: Tensor) -> None:
        left, right, top, bottom = pad
        out_ch, in_ch, kh, kw = weight.shape
        if kh != top + bottom + 1 or kw != left + right + 1:
            raise ValueError(f"ConvCache needs a same-size conv: kernel {kh}x{kw} with padding "
                             f"{pad} changes the map's size.")
        if weight[:, :, top + 1:].any():
            raise ValueError("ConvCache needs a causal conv: kernel rows below the output's "
                             "row must be masked to zero.")
        self.weight = weight[:, :, : top + 1]
        self.flat = self.weight.reshape(out_ch, -1)
        self.bias, self.left, self.width = bias, left, width
        self.rows = like.new_zeros(batch, in_ch, top + 1, left + width + right)

    def next_row(self) -> None:
        """Scroll one row up: the current row becomes the one above a fresh zero row."""
        self.rows[:, :, :-1] = self.rows[:, :, 1:].clone()
        self.rows[:, :, -1] = 0

    def write(self, j: int, value: Tensor) -> None:
        """Store the input (B, C_in) at column j of the current row."""
        self.rows[:, :, -1, self.left + j] = value

    def write_row(self, value: Tensor) -> None:
        """Store the whole current input row (B, C_in, W)."""
        self.rows[:, :, -1, self.left : self.left + self.width] = value

    def at(self, j: int) -> Tensor:
        """The conv's output (B, C_out) at column j of the current row."""
        window = self.rows[:, :, :, j : j + self.weight.shape[-1]]
        return F.linear(window.reshape(window.shape[0], -1), self.flat, self.bias)

    def row(self) -> Tensor:
        """The conv's output (B, C_out, W) over the whole current row."""
        return F.conv2d(self.rows, self.weight, self.bias)[:, :, 0]


class Pointwise:
    """A 1x1 conv applied at one position: maps (B, C_in) -> (B, C_out). Its (masked) weight
    (C_out, C_in, 1, 1) is taken once, when sampling begins."""

    def __init__(self, weight: Tensor, bias: Tensor | None) -> None:
        self.weight, self.bias = weight[:, :, 0, 0], bias

    def __call__(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)
