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

Receptive fields: a Row LSTM state sees a triangle above it (one pixel further sideways per
row up). A Diagonal BiLSTM layer sees every earlier pixel but one: the last pixel of the row
above, (i - 1, W - 1), for j < W - 1 - k//2 with a k x k first conv. No feature of a pixel
before (i, j) holds it (a mask-A feature excludes its own pixel, and the row ends there), so
no depth recovers it; the paper's construction has the same gap.

The recurrences loop in Python over rows (Row LSTM: H steps) or skewed columns (Diagonal
BiLSTM: H + W - 1 steps, both directions in one loop through grouped convs); the input-to-
state convs run once for the whole image.

Cached sampling (:mod:`gentrain.nets.cached_sampling`): ``begin_sampling`` / ``step`` carry
the recurrent states from draw to draw, so an image costs about one network pass. Row LSTM:
the row above's state (through the state-to-state conv, once per row) and cell. Diagonal
BiLSTM: the left-to-right states of the row above and of the current row so far, plus the
states the skew's zero padding produces left of each row (data-independent, computed once);
the right-to-left direction reaches row i only through the one-row shift, so it runs once per
finished row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gentrain.nets.cached_sampling import ConvCache
from gentrain.nets.pixelcnn import (
    MaskedConv2d,
    _CachedHead,
    _ClassBias,
    _down_shift,
    _MaskAStack,
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


def _lstm_update(gates: Tensor, cell: Tensor, hidden: int, dim: int = 1
                 ) -> tuple[Tensor, Tensor]:
    """One LSTM step from 4h gate pre-activations (i, f, o, g blocks of ``hidden`` maps along
    ``dim``) and the cell (``hidden`` maps along ``dim``) -> (new state, new cell)."""
    i, f, o, g = gates.unflatten(dim, (4, hidden)).unbind(dim)
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
        # unbind, not pre[:, :, r]: the backward of one unbind is one stack, that of H
        # slices H image-sized zero tensors.
        for pre_row in pre.unbind(2):
            state, cell = _lstm_update(pre_row + self.state_to_state(state), cell, self.hidden)
            rows.append(state)
        return x + self.out(torch.stack(rows, dim=2))

    def begin_sampling(self, onehot: Tensor | None, canvas: Tensor) -> _CachedRowLSTM:
        return _CachedRowLSTM(self, onehot, canvas)


class _CachedRowLSTM:
    """A Row LSTM layer at one position at a time: the row above's state (through the
    state-to-state conv, once per row) and cell, the current row's input along the 1 x k
    conv, the current row's state and cell as drawn so far."""

    def __init__(self, layer: _RowLSTMLayer, onehot: Tensor | None, canvas: Tensor) -> None:
        batch, width = canvas.shape[0], canvas.shape[3]
        self.hidden, self.state_to_state = layer.hidden, layer.state_to_state
        self.input_to_state = layer.input_to_state.cache(batch, width, canvas)
        self.bias = layer.bias(onehot, 0)
        self.out = layer.out.pointwise()
        self.state = canvas.new_zeros(batch, self.hidden, width)
        self.cell = canvas.new_zeros(batch, self.hidden, width)
        self.cell_above = self.from_above = self.cell

    def next_row(self, i: int) -> None:
        """Row i starts: the finished row becomes the row above (zeros above row 0)."""
        self.from_above = self.state_to_state(self.state)
        self.cell_above = self.cell
        self.state, self.cell = torch.zeros_like(self.state), torch.zeros_like(self.cell)
        self.input_to_state.next_row()

    def at(self, x: Tensor, j: int) -> Tensor:
        """The layer's output (B, 2h) at column j from its input there."""
        self.input_to_state.write(j, x)
        gates = self.input_to_state.at(j) + self.bias + self.from_above[:, :, j]
        state, cell = _lstm_update(gates, self.cell_above[:, :, j], self.hidden)
        self.state[:, :, j], self.cell[:, :, j] = state, cell
        return x + self.out(state)


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
        b, _, height, _ = pre.shape
        state = cell = pre.new_zeros(b, 2 * self.hidden, height)
        outputs = []
        for pre_column in pre.unbind(3):  # one stack in backward (see _RowLSTMLayer)
            state, cell = self._column(pre_column, state, cell)
            outputs.append(state)
        both = unskew(torch.stack(outputs, dim=3))
        forward_out, backward_out = both.chunk(2, dim=1)
        return x + self.out(forward_out + _down_shift(backward_out.flip(-1)))

    def _column(self, pre: Tensor | float, state: Tensor, cell: Tensor) -> tuple[Tensor, Tensor]:
        """One column step of both directions: (B, 8h, H) input-to-state pre-activations
        and the previous column's (B, 2h, H) state and cell -> this column's."""
        # Zero state above row 0: the 2x1 conv reads (r - 1, r) of the previous column.
        gates = pre + self.state_to_state(F.pad(state, (1, 0)))
        # The grouped conv's maps are (direction, gate, map): the update runs per direction
        # on views, without copying the gates into (gate, direction, map) order.
        state, cell = _lstm_update(gates.unflatten(1, (2, 4 * self.hidden)),
                                   cell.unflatten(1, (2, self.hidden)), self.hidden, dim=2)
        return state.flatten(1, 2), cell.flatten(1, 2)

    def padding_states(self, batch: int, height: int, like: Tensor) -> tuple[Tensor, Tensor]:
        """The (B, 2h, H) state and cell just left of each row's first pixel in the skewed
        map (zeros for row 0). The skew pads with zeros and these positions see only
        padding, so they are the same for every image: what the recurrence makes of zeros."""
        state = cell = like.new_zeros(batch, 2 * self.hidden, height)
        states, cells = [state[:, :, 0]], [cell[:, :, 0]]
        for t in range(height - 1):
            state, cell = self._column(0.0, state, cell)
            states.append(state[:, :, t + 1])
            cells.append(cell[:, :, t + 1])
        return torch.stack(states, dim=2), torch.stack(cells, dim=2)

    def begin_sampling(self, onehot: Tensor | None, canvas: Tensor
                       ) -> _CachedDiagonalBiLSTM:
        return _CachedDiagonalBiLSTM(self, onehot, canvas)


class _Direction:
    """One direction of a diagonal LSTM at one position: input-to-state (1x1 mask B, class
    bias) and its half of the grouped 2x1 state-to-state conv as one linear map of the
    (above, beside) states."""

    def __init__(self, layer: _DiagonalBiLSTMLayer, onehot: Tensor | None, d: int) -> None:
        gates = 4 * layer.hidden
        self.input_to_state = layer.input_to_state[d].pointwise()
        self.bias = layer.bias[d](onehot, 0)
        weight = layer.state_to_state.weight[d * gates : (d + 1) * gates]
        # Taps (above, beside) interleaved per input map, as the conv's (map, tap) order.
        self.weight = weight.reshape(gates, -1)
        bias = layer.state_to_state.bias
        self.s2s_bias = None if bias is None else bias[d * gates : (d + 1) * gates]
        self.hidden = layer.hidden

    def __call__(self, pre: Tensor, above: Tensor, beside: Tensor, cell: Tensor
                 ) -> tuple[Tensor, Tensor]:
        """(B, 4h) pre-activations, the (B, h) states above and beside, the cell beside ->
        the (B, h) state and cell here."""
        states = torch.stack([above, beside], dim=2).flatten(1)
        gates = pre + F.linear(states, self.weight, self.s2s_bias)
        return _lstm_update(gates, cell, self.hidden)


class _CachedDiagonalBiLSTM:
    """A Diagonal BiLSTM layer at one position at a time. Left to right: the state above
    (row i - 1, final) and the state and cell to the left (the row as drawn so far, or the
    skew's padding state at column 0). Right to left: it reaches row i shifted down one row,
    so it is computed once per row, over the finished row i - 1, from that row's layer
    inputs (kept as they are computed) and its own states of row i - 2."""

    def __init__(self, layer: _DiagonalBiLSTMLayer, onehot: Tensor | None,
                 canvas: Tensor) -> None:
        batch, _, height, width = canvas.shape
        h = self.hidden = layer.hidden
        self.forward_dir, self.backward_dir = (_Direction(layer, onehot, d) for d in (0, 1))
        self.out = layer.out.pointwise()
        pad_state, pad_cell = layer.padding_states(batch, height, canvas)
        self.pad_state, self.pad_cell = pad_state.split(h, dim=1), pad_cell.split(h, dim=1)
        self.inputs = canvas.new_zeros(batch, 2 * h, width)  # the layer's input, this row
        self.state = canvas.new_zeros(batch, h, width)       # left to right, this row
        self.cell = torch.zeros_like(self.state)
        self.above = torch.zeros_like(self.state)            # left to right, row i - 1
        self.shifted = torch.zeros_like(self.state)          # right to left, row i - 1
        self.row = -1

    def next_row(self, i: int) -> None:
        """Row i starts: run right to left over row i - 1, now finished."""
        if i > 0:
            self.above, self.state = self.state, torch.zeros_like(self.state)
            self.cell = torch.zeros_like(self.cell)
            self.shifted = self._right_to_left(i - 1)
        self.row = i

    def _right_to_left(self, r: int) -> Tensor:
        bias = self.backward_dir.bias
        pre = self.backward_dir.input_to_state(self.inputs.transpose(1, 2)).transpose(1, 2)
        pre = pre + (bias[:, :, None] if isinstance(bias, Tensor) else bias)
        state, cell = self.pad_state[1][:, :, r], self.pad_cell[1][:, :, r]
        out = torch.zeros_like(self.shifted)
        for j in reversed(range(out.shape[2])):
            state, cell = self.backward_dir(pre[:, :, j], self.shifted[:, :, j], state, cell)
            out[:, :, j] = state
        return out

    def at(self, x: Tensor, j: int) -> Tensor:
        """The layer's output (B, 2h) at column j of the current row from its input there."""
        self.inputs[:, :, j] = x
        if j == 0:
            beside, cell = self.pad_state[0][:, :, self.row], self.pad_cell[0][:, :, self.row]
        else:
            beside, cell = self.state[:, :, j - 1], self.cell[:, :, j - 1]
        pre = self.forward_dir.input_to_state(x) + self.forward_dir.bias
        state, cell = self.forward_dir(pre, self.above[:, :, j], beside, cell)
        self.state[:, :, j], self.cell[:, :, j] = state, cell
        return x + self.out(state + self.shifted[:, :, j])


class _CachedLayer(Protocol):
    def next_row(self, i: int) -> None: ...

    def at(self, x: Tensor, j: int) -> Tensor: ...


@dataclass
class PixelRNNSampling:
    """A PixelRNN's cached-sampling state: the caller's canvas, the row in progress, the first
    conv's cache and each LSTM layer's recurrent state."""

    canvas: Tensor
    first: ConvCache
    first_bias: Tensor | float
    layers: list[_CachedLayer]
    head: _CachedHead
    row: int = -1


class _PixelRNN(_MaskAStack):
    """A k x k mask-A conv to 2h maps, ``layers`` residual LSTM layers, the PixelCNN head."""

    def begin_sampling(self, canvas: Tensor, label: Tensor | None = None
                       ) -> PixelRNNSampling:
        """Cached sampling onto ``canvas``; see :mod:`gentrain.nets.cached_sampling`."""
        onehot = self._onehot(label, canvas)
        batch, width = canvas.shape[0], canvas.shape[3]
        return PixelRNNSampling(
            canvas=canvas, first=self.first.cache(batch, width, canvas),
            first_bias=self.first_bias(onehot, 0),
            layers=[layer.begin_sampling(onehot, canvas) for layer in self.blocks],
            head=_CachedHead(self.head, onehot))

    def step(self, state: PixelRNNSampling, i: int, j: int, c: int) -> Tensor:
        """``self(canvas, label)`` at (i, j) for sub-pixel c: the first conv from its cached
        rows, each LSTM layer from its carried recurrent state, the head, at (i, j) only.
        Every sub-pixel step recomputes the pixel's column (the masks keep it exact)."""
        if i != state.row:
            if state.row >= 0:  # the row above is complete only now, after its last draw
                state.first.write_row(state.canvas[:, :, state.row])
            state.row = i
            state.first.next_row()
            for layer in state.layers:
                layer.next_row(i)
        # The canvas row as drawn so far: (i, j - 1) got its last colour after its last step.
        state.first.write_row(state.canvas[:, :, i])
        h = state.first.at(j) + state.first_bias
        for layer in state.layers:
            h = layer.at(h, j)
        return self._layout_at(state.head(h), c)


class RowLSTM(_PixelRNN):
    """PixelRNN's Row LSTM: each layer's state at (i, j) sees a triangle of rows above
    (widening by one pixel per row and layer) and the pixels to its left in its own row.

    ``forward(x, label=None)`` -> (B, C, out_per_channel, H, W), or (B, out_channels, H, W)
    for the mixture layout, as :class:`gentrain.nets.pixelcnn.PixelCNN`.
    """

    block = _RowLSTMLayer


class DiagonalBiLSTM(_PixelRNN):
    """PixelRNN's Diagonal BiLSTM: one layer already sees every earlier pixel (the whole
    context above and to the left), the paper's best model. Outputs as :class:`RowLSTM`."""

    block = _DiagonalBiLSTMLayer
