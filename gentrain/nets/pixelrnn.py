"""PixelRNN networks (van den Oord, Kalchbrenner, Kavukcuoglu 2016): the Row LSTM and the
Diagonal BiLSTM, with the PixelCNN nets' contract (``forward(x, label) -> logits`` in the
layouts of :mod:`gentrain.nets.pixelcnn`), so the pixelcnn family's likelihoods, conditioning,
evaluation and sampler serve them unchanged.

Both nets: a k x k mask-A conv to 2h maps, ``layers`` residual LSTM layers (the LSTM reads the
2h maps, its h-map output is projected back to 2h by a 1x1 mask-B conv and added to the
input), and the PixelCNN head (ReLU, 1x1 mask B, ReLU, 1x1 mask B).

Why this is causal, colours included. Every map belongs to colour ``k % C`` (the PixelCNN
nets' interleaved groups); the invariant is that a map of colour g at pixel p depends on the
image only through pixels strictly before p and colours < g of p. The input-to-state conv is
mask B (a colour sees its own and earlier colours of the current pixel, plus earlier pixels),
so the gates keep the invariant; the four gates of state map k are maps ``q*h + k`` of the
4h, all of colour k % C when h is a multiple of C, so the elementwise LSTM update mixes one
colour only. The state-to-state conv reads states of strictly earlier pixels only (the row
above for the Row LSTM; the left neighbour and the pixel above for the Diagonal LSTM), whose
every colour is already known, so it needs no mask at all: this is the paper's "masks on the
input-to-state convolution only". The second (right-to-left) diagonal direction sees pixels
to the right in its own row, so its output is shifted down one row before it is added: row r
then gets what that direction computed from rows <= r - 1. tests/test_pixelrnn.py proves all
of this with gradients.

The recurrences loop in Python over rows (Row LSTM: H steps) or skewed columns (Diagonal
BiLSTM: H + W - 1 steps, both directions in one loop through grouped convs); the input-to-
state convs run once for the whole image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gentrain.nets.pixelcnn import (
    MaskedConv2d,
    _AutoregressiveNet,
    _ClassBias,
    _down_shift,
    _MaskedConv,
)


def skew(x: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, C, H, W + H - 1): row r moved right by r (zeros elsewhere), so the
    pixels above and to the left of (r, j) sit in the previous column of the skewed map."""
    b, c, h, w = x.shape
    # Padding each row with H zeros and re-reading the flat rows H - 1 shorter shifts row r
    # right by r; the tail cut off is zeros.
    flat = F.pad(x, (0, h)).flatten(2)[:, :, : h * (w + h - 1)]
    return flat.view(b, c, h, w + h - 1)


def unskew(x: Tensor) -> Tensor:
    """The inverse of :func:`skew`: (B, C, H, W + H - 1) -> (B, C, H, W)."""
    b, c, h, skewed = x.shape
    w = skewed - h + 1
    return F.pad(x.flatten(2), (0, h)).view(b, c, h, w + h)[..., :w]


def _lstm_update(gates: Tensor, cell: Tensor, hidden: int) -> tuple[Tensor, Tensor]:
    """One LSTM step from 4h gate pre-activations (i, f, o, g blocks of ``hidden`` maps along
    dim 1, possibly with a direction dim before them) -> (new state, new cell)."""
    i, f, o, g = gates.unflatten(1, (4, hidden)).unbind(1)
    cell = torch.sigmoid(f) * cell + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(cell), cell


class _RowLSTMLayer(nn.Module):
    """Rows top to bottom. Input-to-state: a 1 x k mask-B conv along the row (the current
    pixel and those to its left), for the whole image at once. State-to-state: an unmasked
    1 x 3 conv over the previous row's state. Each state map sees a triangle above it."""

    def __init__(self, hidden: int, groups: int, num_classes: int, kernel: int = 3) -> None:
        super().__init__()
        k2 = kernel // 2
        self.hidden = hidden
        self.input_to_state = _MaskedConv(2 * hidden, 4 * hidden, (1, kernel), (0, k2),
                                          (k2, k2, 0, 0), "B", groups)
        self.state_to_state = nn.Conv1d(hidden, 4 * hidden, 3, padding=1)
        self.bias = _ClassBias(num_classes, 4 * hidden)
        self.out = MaskedConv2d(hidden, 2 * hidden, 1, "B", groups)

    def forward(self, x: Tensor, onehot: Tensor | None) -> Tensor:
        pre = self.input_to_state(x) + self.bias(onehot)
        b, _, height, width = pre.shape
        state = cell = pre.new_zeros(b, self.hidden, width)
        rows = []
        for r in range(height):
            state, cell = _lstm_update(pre[:, :, r] + self.state_to_state(state), cell,
                                       self.hidden)
            rows.append(state)
        return x + self.out(torch.stack(rows, dim=2))


class _DiagonalBiLSTMLayer(nn.Module):
    """Two diagonal LSTMs over the skewed map, column by column. Input-to-state: a 1x1 mask-B
    conv per direction. State-to-state: an unmasked 2x1 conv over the previous column's state
    (rows r - 1 and r of the skewed map: the pixel above and the one to the left). The second
    direction runs on the mirrored image (columns reversed); its output is shifted down one
    row before the two are added."""

    def __init__(self, hidden: int, groups: int, num_classes: int) -> None:
        super().__init__()
        self.hidden = hidden
        # Both directions in one conv each (grouped for the state): the loop runs once.
        self.input_to_state = nn.ModuleList(
            MaskedConv2d(2 * hidden, 4 * hidden, 1, "B", groups) for _ in range(2))
        self.state_to_state = nn.Conv1d(2 * hidden, 8 * hidden, 2, groups=2)
        self.bias = nn.ModuleList(_ClassBias(num_classes, 4 * hidden) for _ in range(2))
        self.out = MaskedConv2d(hidden, 2 * hidden, 1, "B", groups)

    def forward(self, x: Tensor, onehot: Tensor | None) -> Tensor:
        forward_pre, backward_pre = (conv(x) + bias(onehot) for conv, bias
                                     in zip(self.input_to_state, self.bias, strict=True))
        # The 1x1 conv commutes with mirroring: mirror its output instead of its input.
        pre = skew(torch.cat([forward_pre, backward_pre.flip(-1)], dim=1))
        b, _, height, columns = pre.shape
        state = cell = pre.new_zeros(b, 2 * self.hidden, height)
        outputs = []
        for t in range(columns):
            # Zero state above row 0: the 2x1 conv reads (r - 1, r) of the previous column.
            gates = pre[:, :, :, t] + self.state_to_state(F.pad(state, (1, 0)))
            # (direction, gate, map) -> (gate, direction, map): each gate then lines up with
            # the (B, 2h, H) state of both directions.
            gates = gates.unflatten(1, (2, 4, self.hidden)).transpose(1, 2).flatten(1, 3)
            state, cell = _lstm_update(gates, cell, 2 * self.hidden)
            outputs.append(state)
        both = unskew(torch.stack(outputs, dim=3))
        forward_out, backward_out = both.chunk(2, dim=1)
        return x + self.out(forward_out + _down_shift(backward_out.flip(-1)))


class _PixelRNN(_AutoregressiveNet):
    """A k x k mask-A conv to 2h maps, ``layers`` residual LSTM layers, the PixelCNN head."""

    layer: type[nn.Module]

    def __init__(self, data_channels: int, out_per_channel: int | None, hidden: int,
                 layers: int, kernel_size: int = 7, num_classes: int = 0,
                 out_channels: int | None = None) -> None:
        super().__init__(data_channels, out_per_channel, hidden, layers, kernel_size,
                         num_classes, out_channels)
        self.first = MaskedConv2d(data_channels, 2 * hidden, kernel_size, "A", self.groups)
        self.first_bias = _ClassBias(num_classes, 2 * hidden)
        self.layers = nn.ModuleList(
            self.layer(hidden, self.groups, num_classes) for _ in range(layers))

    def forward(self, x: Tensor, label: Tensor | None = None) -> Tensor:
        onehot = self._onehot(label, x)
        h = self.first(x) + self.first_bias(onehot)
        for layer in self.layers:
            h = layer(h, onehot)
        return self._layout(self.head(h, onehot))


class RowLSTM(_PixelRNN):
    """PixelRNN's Row LSTM: each layer's state at (i, j) sees a triangle of rows above
    (widening by one pixel per row and layer) and the pixels to its left in its own row.

    ``forward(x, label=None)`` -> (B, C, out_per_channel, H, W), or (B, out_channels, H, W)
    for the mixture layout, as :class:`gentrain.nets.pixelcnn.PixelCNN`.
    """

    layer = _RowLSTMLayer


class DiagonalBiLSTM(_PixelRNN):
    """PixelRNN's Diagonal BiLSTM: one layer already sees every earlier pixel (the whole
    context above and to the left), the paper's best model. Outputs as :class:`RowLSTM`."""

    layer = _DiagonalBiLSTMLayer
