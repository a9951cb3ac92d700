"""PixelCNN networks: masked convolutions (van den Oord et al. 2016a) and the gated PixelCNN with
vertical and horizontal stacks (van den Oord et al. 2016b).

Both map images (B, C, H, W) in [-1, 1] to raw parameters of p(x_i | x_<i); the likelihoods
that read them live in :mod:`gentrain.likelihoods`. Two output layouts:

- per sub-pixel (``out_per_channel=P``: 256 softmax logits, or 1 Bernoulli logit):
  (B, C, P, H, W), where channel c at pixel (i, j) sees every channel of the pixels before
  (i, j) in raster order and channels < c of (i, j) itself (R -> G -> B, as the paper);
- per pixel (``out_channels=K``, PixelCNN++'s logistic mixture, whose likelihood conditions
  G on R and B on R, G through its linear coefficients): (B, K, H, W), seeing only the
  pixels strictly before (i, j), none of (i, j)'s channels.

Colour order is enforced by splitting every hidden layer's feature maps into C groups: map k
belongs to colour ``k % C``. Interleaving rather than contiguous blocks keeps the two halves
of a gated layer's 2p maps (tanh and sigmoid parts) colour-aligned whenever p is a multiple
of C, so the gate multiplies maps of the same colour. The mixture layout uses one group.

Sampling: both nets also offer ``begin_sampling(canvas, label)`` and ``step(state, i, j, c)``
(:mod:`gentrain.nets.cached_sampling`), which compute every layer at the new position only,
from cached inputs, and equal ``forward`` there. Each module has a small cached twin
(``_CachedHead``, ``_CachedResidualBlock``, ``_CachedGatedLayer``) holding its weights (masks
applied once) and caches.

Initialisation: PyTorch's defaults everywhere (the papers give none worth matching); the
class bias V·h is a bias-free ``nn.Linear`` of the one-hot label, so it starts at the scale
of a linear layer's default init, ±1/sqrt(num_classes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gentrain.nets.cached_sampling import ConvCache, Pointwise

MaskType = Literal["A", "B"]


def _check_groups(in_ch: int, out_ch: int, data_channels: int) -> None:
    if data_channels > 1 and (in_ch % data_channels or out_ch % data_channels):
        raise ValueError(
            f"A masked conv with {in_ch} input and {out_ch} output maps cannot be split into "
            f"{data_channels} colour groups (R, G, B): with data_channels={data_channels} both "
            f"counts must be multiples of {data_channels}; choose hidden as one."
        )


def _raster_mask(out_ch: int, in_ch: int, shape: tuple[int, int], centre: tuple[int, int],
                 mask_type: MaskType, groups: int) -> Tensor:
    """1 where a weight may connect: kernel taps before ``centre`` (the current pixel) in raster
    order, and at the centre only from earlier colour groups (A) or earlier and equal (B)."""
    row, col = centre
    mask = torch.zeros(out_ch, in_ch, *shape)
    mask[:, :, :row] = 1
    mask[:, :, row, :col] = 1
    out_group = torch.arange(out_ch)[:, None] % groups
    in_group = torch.arange(in_ch)[None, :] % groups
    allowed = in_group < out_group if mask_type == "A" else in_group <= out_group
    mask[:, :, row, col] = allowed.float()
    return mask


class _MaskedConv(nn.Conv2d):
    """A stride-1 conv whose weight is multiplied by a fixed causal mask, with explicit
    (left, right, top, bottom) zero padding so one class serves square and one-row kernels."""

    def __init__(self, in_ch: int, out_ch: int, shape: tuple[int, int],
                 centre: tuple[int, int], pad: tuple[int, int, int, int],
                 mask_type: MaskType, data_channels: int) -> None:
        if mask_type not in ("A", "B"):
            raise ValueError(f"mask_type must be 'A' or 'B', got {mask_type!r}.")
        _check_groups(in_ch, out_ch, data_channels)
        super().__init__(in_ch, out_ch, shape)
        self.pad = pad
        # Not persistent: it follows from the constructor arguments, so checkpoints need not
        # carry it, and it still moves with .to(device).
        self.register_buffer(
            "mask", _raster_mask(out_ch, in_ch, shape, centre, mask_type, data_channels),
            persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(F.pad(x, self.pad), self.weight * self.mask, self.bias)

    def cache(self, batch: int, width: int, like: Tensor) -> ConvCache:
        """An input cache for cached sampling (see :mod:`gentrain.nets.cached_sampling`)."""
        return ConvCache(self.weight * self.mask, self.bias, self.pad, batch, width, like)

    def pointwise(self) -> Pointwise:
        """This 1x1 conv at one position, for cached sampling."""
        return Pointwise(self.weight * self.mask, self.bias)


class MaskedConv2d(_MaskedConv):
    """A same-size k x k conv that sees only pixels before the centre in raster order.

    Mask A (first layer) hides the centre pixel's own colour and later ones: output group G
    sees R, B sees R and G, R nothing of the centre. Mask B (later layers, whose inputs at the
    centre already exclude the current sub-pixel) also lets each group see its own colour.
    With ``data_channels=1`` these are the plain spatial masks: A excludes the centre, B keeps
    it. Feature map k belongs to colour ``k % data_channels``.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, mask_type: MaskType,
                 data_channels: int) -> None:
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"MaskedConv2d needs an odd kernel_size, got {kernel_size}.")
        if data_channels < 1:
            raise ValueError(f"data_channels must be >= 1, got {data_channels}.")
        k2 = kernel_size // 2
        super().__init__(in_ch, out_ch, (kernel_size, kernel_size), (k2, k2), (k2,) * 4,
                         mask_type, data_channels)


class _ClassBias(nn.Module):
    """The conditional PixelCNN's V·h: a learned bias per class for one layer's maps, the same
    at every pixel, so it cannot break causality."""

    def __init__(self, num_classes: int, width: int) -> None:
        super().__init__()
        self.proj = nn.Linear(num_classes, width, bias=False) if num_classes else None

    def forward(self, onehot: Tensor | None, spatial_dims: int = 2) -> Tensor | float:
        """(B, width) followed by ``spatial_dims`` singleton dimensions, or 0 without labels."""
        # onehot is None exactly when the net is unconditional (checked in forward).
        if onehot is None:
            return 0.0
        bias = self.proj(onehot)
        return bias.view(*bias.shape, *(1,) * spatial_dims)


class _Head(nn.Module):
    """The paper's two output layers: ReLU, 1x1 mask B (+ class bias), ReLU, 1x1 mask B."""

    def __init__(self, width: int, out: int, groups: int, num_classes: int) -> None:
        super().__init__()
        self.hidden = MaskedConv2d(width, width, 1, "B", groups)
        self.bias = _ClassBias(num_classes, width)
        self.out = MaskedConv2d(width, out, 1, "B", groups)

    def forward(self, x: Tensor, onehot: Tensor | None) -> Tensor:
        return self.out(F.relu(self.hidden(F.relu(x)) + self.bias(onehot)))


class _CachedHead:
    """:class:`_Head` at one position: (B, width) -> (B, out)."""

    def __init__(self, head: _Head, onehot: Tensor | None) -> None:
        self.hidden, self.out = head.hidden.pointwise(), head.out.pointwise()
        self.bias = head.bias(onehot, 0)

    def __call__(self, x: Tensor) -> Tensor:
        return self.out(F.relu(self.hidden(F.relu(x)) + self.bias))


class _AutoregressiveNet(nn.Module):
    """What both architectures share: argument checks, the label, the head and the layout."""

    def __init__(self, data_channels: int, out_per_channel: int | None, hidden: int,
                 layers: int, kernel_size: int, num_classes: int, out_channels: int | None
                 ) -> None:
        super().__init__()
        name = type(self).__name__
        if (out_per_channel is None) == (out_channels is None):
            raise ValueError(
                f"{name} needs exactly one of out_per_channel (outputs per sub-pixel: 256 "
                f"softmax logits or 1 Bernoulli logit) and out_channels (maps per pixel for a "
                f"logistic mixture), got {out_per_channel} and {out_channels}.")
        if min(data_channels, hidden, layers, out_per_channel or out_channels or 0) < 1:
            raise ValueError(
                f"{name} needs positive data_channels, hidden, layers and output sizes, got "
                f"{data_channels}, {hidden}, {layers}, {out_per_channel or out_channels}.")
        if kernel_size < 3 or kernel_size % 2 == 0:
            raise ValueError(f"{name}'s first-layer kernel_size must be odd and >= 3 (a 1x1 "
                             f"mask-A layer sees no earlier pixel), got {kernel_size}.")
        if num_classes < 0:
            raise ValueError(f"{name}'s num_classes must be >= 0, got {num_classes}.")
        # Per-sub-pixel outputs order the colours; the mixture layout hides the whole pixel.
        self.groups = data_channels if out_per_channel is not None else 1
        if hidden % self.groups:
            raise ValueError(
                f"{name}(hidden={hidden}) cannot split its feature maps into one group per "
                f"colour (R, G, B) for data_channels={data_channels}: hidden must be a "
                f"multiple of {data_channels}.")
        self.data_channels, self.out_per_channel = data_channels, out_per_channel
        self.num_classes = num_classes
        out = data_channels * out_per_channel if out_per_channel is not None else out_channels
        self.head = _Head(2 * hidden, out, self.groups, num_classes)

    def _onehot(self, label: Tensor | None, like: Tensor) -> Tensor | None:
        """A label for a conditional net and none for the others (a mismatch is a caller bug)."""
        if self.num_classes and label is None:
            raise ValueError(f"This {type(self).__name__} is conditional (num_classes > 0) "
                             "and needs labels.")
        if not self.num_classes and label is not None:
            raise ValueError(f"This {type(self).__name__} is unconditional (num_classes=0) "
                             "but got labels.")
        if label is None:
            return None
        return F.one_hot(label.long(), self.num_classes).to(like.dtype)

    def _layout_at(self, out: Tensor, c: int) -> Tensor:
        """One position's head output (B, out): sub-pixel c's (B, out_per_channel), or the
        (B, K) mixture maps as they are."""
        if self.out_per_channel is None:
            return out
        return out.view(out.shape[0], self.out_per_channel, self.data_channels)[:, :, c]

    def _layout(self, out: Tensor) -> Tensor:
        """(B, C, P, H, W) per sub-pixel, or the (B, K, H, W) maps as they are."""
        if self.out_per_channel is None:
            return out
        b, _, h, w = out.shape
        # Output map k has colour k % C (interleaved groups): k = p * C + c.
        return out.view(b, self.out_per_channel, self.data_channels, h, w).transpose(1, 2)


class _ResidualBlock(nn.Module):
    """The paper's Figure 5: ReLU, 1x1 (2h -> h), ReLU, 3x3, ReLU, 1x1 (h -> 2h), plus the
    input; every conv mask B and followed by the class bias."""

    def __init__(self, hidden: int, groups: int, num_classes: int) -> None:
        super().__init__()
        widths = [(2 * hidden, hidden, 1), (hidden, hidden, 3), (hidden, 2 * hidden, 1)]
        self.convs = nn.ModuleList(MaskedConv2d(i, o, k, "B", groups) for i, o, k in widths)
        self.biases = nn.ModuleList(_ClassBias(num_classes, o) for _, o, _ in widths)

    def forward(self, x: Tensor, onehot: Tensor | None) -> Tensor:
        h = x
        for conv, bias in zip(self.convs, self.biases, strict=True):
            h = conv(F.relu(h)) + bias(onehot)
        return x + h


class _CachedResidualBlock:
    """:class:`_ResidualBlock` at one position; only its 3x3 conv needs a cache."""

    def __init__(self, block: _ResidualBlock, onehot: Tensor | None, batch: int, width: int,
                 like: Tensor) -> None:
        reduce, middle, expand = block.convs
        self.reduce, self.expand = reduce.pointwise(), expand.pointwise()
        self.middle = middle.cache(batch, width, like)
        self.biases = [bias(onehot, 0) for bias in block.biases]

    def at(self, x: Tensor, j: int) -> Tensor:
        """The block's output (B, 2h) at column j of the current row from its input there."""
        reduce_bias, middle_bias, expand_bias = self.biases
        h = self.reduce(F.relu(x)) + reduce_bias
        self.middle.write(j, F.relu(h))
        h = self.middle.at(j) + middle_bias
        return x + (self.expand(F.relu(h)) + expand_bias)


@dataclass
class PixelCNNSampling:
    """:class:`PixelCNN`'s cached-sampling state: the caller's canvas, the row in progress and
    each layer's cache."""

    canvas: Tensor
    first: ConvCache
    first_bias: Tensor | float
    blocks: list[_CachedResidualBlock]
    head: _CachedHead
    row: int = -1


class _MaskAStack(_AutoregressiveNet):
    """A k x k mask-A conv to 2h maps (+ class bias), ``layers`` blocks of type ``block`` on
    2h maps (each called as ``block(h, onehot)``), the head: PixelCNN's and PixelRNN's shape."""

    block: type[nn.Module]

    def __init__(self, data_channels: int, out_per_channel: int | None, hidden: int,
                 layers: int, kernel_size: int = 7, num_classes: int = 0,
                 out_channels: int | None = None) -> None:
        super().__init__(data_channels, out_per_channel, hidden, layers, kernel_size,
                         num_classes, out_channels)
        self.first = MaskedConv2d(data_channels, 2 * hidden, kernel_size, "A", self.groups)
        self.first_bias = _ClassBias(num_classes, 2 * hidden)
        self.blocks = nn.ModuleList(
            self.block(hidden, self.groups, num_classes) for _ in range(layers))

    def forward(self, x: Tensor, label: Tensor | None = None) -> Tensor:
        onehot = self._onehot(label, x)
        h = self.first(x) + self.first_bias(onehot)
        for block in self.blocks:
            h = block(h, onehot)
        return self._layout(self.head(h, onehot))


class PixelCNN(_MaskAStack):
    """The original PixelCNN: a k x k mask-A conv to 2h maps, ``layers`` residual blocks
    (2h -> h -> h -> 2h), two 1x1 mask-B output layers. ``hidden`` is the paper's h.

    ``forward(x, label=None)`` -> (B, C, out_per_channel, H, W), or (B, out_channels, H, W)
    for the mixture layout (see the module docstring). Stacked masked convs leave a blind spot
    up and to the right of each pixel that no depth fills; :class:`GatedPixelCNN` has none.
    """

    block = _ResidualBlock

    def begin_sampling(self, canvas: Tensor, label: Tensor | None = None) -> PixelCNNSampling:
        """Cached sampling onto ``canvas``; see :mod:`gentrain.nets.cached_sampling`."""
        onehot = self._onehot(label, canvas)
        batch, width = canvas.shape[0], canvas.shape[3]
        return PixelCNNSampling(
            canvas=canvas, first=self.first.cache(batch, width, canvas),
            first_bias=self.first_bias(onehot, 0),
            blocks=[_CachedResidualBlock(block, onehot, batch, width, canvas)
                    for block in self.blocks],
            head=_CachedHead(self.head, onehot))

    def step(self, state: PixelCNNSampling, i: int, j: int, c: int) -> Tensor:
        """``self(canvas, label)`` at (i, j) for sub-pixel c, every layer computed there only.
        Within a pixel each sub-pixel step recomputes the pixel's whole column (the maps of
        colours >= c change as colours are drawn; the masks keep the rest exact)."""
        if i != state.row:
            if state.row >= 0:  # the row above is complete only now, after its last draw
                state.first.write_row(state.canvas[:, :, state.row])
            state.row = i
            for cache in (state.first, *(block.middle for block in state.blocks)):
                cache.next_row()
        # The canvas row as drawn so far: (i, j - 1) got its last colour after its last step.
        state.first.write_row(state.canvas[:, :, i])
        h = state.first.at(j) + state.first_bias
        for block in state.blocks:
            h = block.at(h, j)
        return self._layout_at(state.head(h), c)


def _down_shift(x: Tensor) -> Tensor:
    """Move maps one row down (zeros in row 0): row i then holds what row i - 1 saw."""
    return F.pad(x, (0, 0, 1, 0))[:, :, :-1]


def _gate(x: Tensor) -> Tensor:
    """tanh(f) * sigmoid(g) of the two halves of the maps."""
    f, g = x.chunk(2, dim=1)
    return torch.tanh(f) * torch.sigmoid(g)


class _GatedLayer(nn.Module):
    """One layer of the gated PixelCNN (van den Oord et al. 2016b, Figure 2).

    Vertical stack: a (k//2 + 1) x k conv over rows i - k//2 .. i, so its maps at row i see
    input rows <= i only. Its pre-activations, shifted one row down, reach the horizontal stack
    through a 1x1 conv: pixel (i, j) gets rows strictly above, the full width of the kernel,
    hence no blind spot. Horizontal stack: a 1 x (k//2 + 1) conv over columns j - k//2 .. j,
    masked at the current pixel like MaskedConv2d (A in the first layer, B after), then gated,
    a 1x1 mask-B conv with a residual connection (not in the first layer, whose input is the
    image) and a 1x1 mask-B skip output. The class bias enters both gates.
    """

    def __init__(self, in_ch: int, hidden: int, kernel_size: int, first: bool, groups: int,
                 num_classes: int) -> None:
        super().__init__()
        k2, gates = kernel_size // 2, 2 * hidden
        self.v_pad = (k2, k2, k2, 0)
        self.v_conv = nn.Conv2d(in_ch, gates, (k2 + 1, kernel_size))
        # Dense: it carries rows above only, where every colour is already known.
        self.v_to_h = nn.Conv2d(gates, gates, 1)
        self.h_conv = _MaskedConv(in_ch, gates, (1, k2 + 1), (0, k2), (k2, 0, 0, 0),
                                  "A" if first else "B", groups)
        self.h_out = MaskedConv2d(hidden, hidden, 1, "B", groups)
        self.skip = MaskedConv2d(hidden, 2 * hidden, 1, "B", groups)
        self.v_bias = _ClassBias(num_classes, gates)
        self.h_bias = _ClassBias(num_classes, gates)
        self.residual = not first

    def forward(self, v: Tensor, h: Tensor, onehot: Tensor | None
                ) -> tuple[Tensor, Tensor, Tensor]:
        """-> (vertical maps, horizontal maps, skip maps)."""
        v_pre = self.v_conv(F.pad(v, self.v_pad))
        h_pre = self.h_conv(h) + self.v_to_h(_down_shift(v_pre))
        gated = _gate(h_pre + self.h_bias(onehot))
        h_next = self.h_out(gated)
        if self.residual:
            h_next = h + h_next
        return _gate(v_pre + self.v_bias(onehot)), h_next, self.skip(gated)


class _CachedGatedLayer:
    """:class:`_GatedLayer` for cached sampling: the vertical stack row by row, once a row of
    the image is complete, the horizontal stack position by position."""

    def __init__(self, layer: _GatedLayer, onehot: Tensor | None, batch: int, width: int,
                 like: Tensor) -> None:
        conv = layer.v_conv
        self.v = ConvCache(conv.weight, conv.bias, layer.v_pad, batch, width, like)
        self.v_to_h = layer.v_to_h.weight[..., 0], layer.v_to_h.bias
        self.h = layer.h_conv.cache(batch, width, like)
        self.h_out, self.skip = layer.h_out.pointwise(), layer.skip.pointwise()
        self.v_bias, self.h_bias = layer.v_bias(onehot, 1), layer.h_bias(onehot, 0)
        self.residual = layer.residual
        # What the row in progress gets from the vertical stack above it (B, 2h, W): for row
        # 0 the 1x1 conv of the zero rows the down-shift brings in, its bias.
        self.from_above = layer.v_to_h.bias.view(1, -1, 1).expand(1, -1, width)

    def vertical(self, v: Tensor) -> Tensor:
        """Feed the next (complete) row (B, C_in, W) of this layer's vertical input; return
        its vertical output row, the next layer's input, and keep what the row below gets."""
        self.v.next_row()
        self.v.write_row(v)
        v_pre = self.v.row()
        self.from_above = F.conv1d(v_pre, *self.v_to_h)
        return _gate(v_pre + self.v_bias)

    def at(self, h: Tensor, j: int) -> tuple[Tensor, Tensor]:
        """(horizontal maps, skip maps), each (B, maps), at column j of the current row from
        the input ``h`` there."""
        self.h.write(j, h)
        gated = _gate(self.h.at(j) + self.from_above[:, :, j] + self.h_bias)
        h_next = self.h_out(gated)
        if self.residual:
            h_next = h + h_next
        return h_next, self.skip(gated)


@dataclass
class GatedPixelCNNSampling:
    """:class:`GatedPixelCNN`'s cached-sampling state: the caller's canvas, the row in
    progress and each layer's caches."""

    canvas: Tensor
    layers: list[_CachedGatedLayer]
    head: _CachedHead
    row: int = -1


class GatedPixelCNN(_AutoregressiveNet):
    """The gated PixelCNN: ``layers`` gated layers (the first with k x k reach and mask A, the
    rest 3 x 3 and mask B), skips summed into the two 1x1 output layers. Stacks are ``hidden``
    maps wide (gates 2h), skips and head 2h.

    ``forward(x, label=None)``: outputs as :class:`PixelCNN`. Colour order in the horizontal
    stack follows MaskedConv2d's groups at the current pixel; the vertical stack needs none,
    as it only ever feeds pixels below.
    """

    def __init__(self, data_channels: int, out_per_channel: int | None, hidden: int,
                 layers: int, kernel_size: int = 7, num_classes: int = 0,
                 out_channels: int | None = None) -> None:
        super().__init__(data_channels, out_per_channel, hidden, layers, kernel_size,
                         num_classes, out_channels)
        self.layers = nn.ModuleList(
            _GatedLayer(data_channels if i == 0 else hidden, hidden,
                        kernel_size if i == 0 else 3, i == 0, self.groups, num_classes)
            for i in range(layers))

    def forward(self, x: Tensor, label: Tensor | None = None) -> Tensor:
        onehot = self._onehot(label, x)
        v = h = x
        skips: Tensor | float = 0.0
        for layer in self.layers:
            v, h, skip = layer(v, h, onehot)
            skips = skips + skip
        return self._layout(self.head(skips, onehot))

    def begin_sampling(self, canvas: Tensor, label: Tensor | None = None
                       ) -> GatedPixelCNNSampling:
        """Cached sampling onto ``canvas``; see :mod:`gentrain.nets.cached_sampling`."""
        onehot = self._onehot(label, canvas)
        batch, width = canvas.shape[0], canvas.shape[3]
        return GatedPixelCNNSampling(
            canvas=canvas,
            layers=[_CachedGatedLayer(layer, onehot, batch, width, canvas)
                    for layer in self.layers],
            head=_CachedHead(self.head, onehot))

    def step(self, state: GatedPixelCNNSampling, i: int, j: int, c: int) -> Tensor:
        """``self(canvas, label)`` at (i, j) for sub-pixel c. Entering row i runs the vertical
        stacks over row i - 1, now complete, once; each step then computes the horizontal
        stacks and the head at (i, j) only (the whole pixel's column at every sub-pixel)."""
        if i != state.row:
            state.row = i
            if i > 0:
                v = state.canvas[:, :, i - 1]
                for layer in state.layers:
                    v = layer.vertical(v)
            for layer in state.layers:
                layer.h.next_row()
        # The canvas row as drawn so far: (i, j - 1) got its last colour after its last step.
        state.layers[0].h.write_row(state.canvas[:, :, i])
        h, skips = state.canvas[:, :, i, j], 0.0
        for layer in state.layers:
            h, skip = layer.at(h, j)
            skips = skips + skip
        return self._layout_at(state.head(skips), c)
