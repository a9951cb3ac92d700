"""Normalizing-flow networks for images: Glow (Kingma & Dhariwal 2018) and RealNVP (Dinh et al.
2017), after openai/glow's model.py and the RealNVP paper.

Every layer maps ``x -> (y, logdet)`` in ``forward(x, cond=None)``, logdet (B,) being
log |det dy/dx| summed per example, and undoes itself in ``inverse(y, cond=None)``; ``cond``
(class maps) reaches only the couplings, the other layers accept it so a flow calls every
layer alike. The flows see already dequantised and scaled images: dequantisation and the
log-det of that preprocessing belong to the family (:mod:`gentrain.models.flow`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LOG_2PI = math.log(2 * math.pi)
SCALE_OFFSET = 2.0  # Glow's code: scale = sigmoid(raw + 2), so a zero NN scales by 0.88
ZERO_CONV_LOGSCALE_FACTOR = 3.0  # Glow's Conv2dZeros: output * exp(3 * logs)
ACTNORM_EPS = 1e-6


def _zero_logdet(x: Tensor) -> Tensor:
    """A (B,) zero in at least float32, so log-dets add up in full precision under autocast."""
    return torch.zeros(x.shape[0], device=x.device,
                       dtype=torch.promote_types(x.dtype, torch.float32))


def gaussian_log_prob(z: Tensor, mean: Tensor, log_std: Tensor) -> Tensor:
    """Log density of a diagonal Gaussian, summed per example: (B, ...) -> (B,)."""
    logp = -0.5 * (LOG_2PI + 2 * log_std + ((z - mean) * torch.exp(-log_std)) ** 2)
    return logp.flatten(1).sum(1)


class Squeeze(nn.Module):
    """Space to depth: each 2x2 patch becomes 4 channels, (B, C, H, W) -> (B, 4C, H/2, W/2)."""

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        b, c, h, w = x.shape
        if h % 2 or w % 2:
            raise ValueError(f"Squeeze needs even sides, got {h}x{w}.")
        y = x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
        return y.reshape(b, 4 * c, h // 2, w // 2), _zero_logdet(x)

    def inverse(self, y: Tensor, cond: Tensor | None = None) -> Tensor:
        b, c, h, w = y.shape
        x = y.reshape(b, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
        return x.reshape(b, c // 4, 2 * h, 2 * w)


def _forget_ready(module: ActNorm, incompatible_keys: object) -> None:
    """After load_state_dict: the loaded ``initialized`` flag decides again."""
    module._ready = False


class ActNorm(nn.Module):
    """Per-channel affine y = (x + bias) * exp(log_scale) with data-dependent initialisation.

    :meth:`initialize` makes one batch's output zero-mean and unit-variance per channel; the
    ``initialized`` buffer records that it ran, so it is in every checkpoint and a resume never
    repeats it. Forward refuses to run before: an uninitialised actnorm would silently train
    from a bad start, and initialising lazily would tie the init to whichever batch came first.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))
        self.log_scale = nn.Parameter(torch.zeros(channels))
        self.register_buffer("initialized", torch.tensor(False))
        # Reading the buffer syncs with the device; once it read True, skip that on every call
        # (until a state_dict is loaded, which may carry False).
        self._ready = False
        self.register_load_state_dict_post_hook(_forget_ready)

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Set bias and log-scale from ``x`` (B, C, H, W) and mark the layer initialised."""
        x = x.to(self.bias.dtype)
        mean = x.mean(dim=(0, 2, 3))
        std = x.std(dim=(0, 2, 3), unbiased=False)
        self.bias.copy_(-mean)
        self.log_scale.copy_(-torch.log(std + ACTNORM_EPS))
        self.initialized.fill_(True)
        self._ready = True

    def _check_initialized(self) -> None:
        if not self._ready:
            if not bool(self.initialized):
                raise RuntimeError(
                    "ActNorm's data-dependent init has not run: call initialize(x) (or the "
                    "flow's initialize_actnorms(x)) on a batch of data before using the flow.")
            self._ready = True

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._check_initialized()
        y = (x + self.bias.view(1, -1, 1, 1)) * torch.exp(self.log_scale.view(1, -1, 1, 1))
        logdet = x.shape[2] * x.shape[3] * self.log_scale.sum()
        return y, logdet.expand(x.shape[0])

    def inverse(self, y: Tensor, cond: Tensor | None = None) -> Tensor:
        self._check_initialized()
        return y * torch.exp(-self.log_scale.view(1, -1, 1, 1)) - self.bias.view(1, -1, 1, 1)


class InvConv1x1(nn.Module):
    """Invertible 1x1 convolution initialised to a random orthogonal matrix (Glow's QR of a
    Gaussian from torch's global RNG), so its log-det starts at 0.

    With ``lu`` (Glow's default) W = P L (U + diag(sign_s * exp(log_s))): P and sign_s are
    fixed buffers, L is unit lower-triangular, so log|det W| = sum(log_s) costs O(C) instead of
    the O(C^3) of slogdet, which the non-LU variant computes.
    """

    def __init__(self, channels: int, lu: bool = True) -> None:
        super().__init__()
        rotation = torch.linalg.qr(torch.randn(channels, channels))[0]
        self.lu = lu
        if not lu:
            self.weight = nn.Parameter(rotation)
            return
        p, lower, upper = torch.linalg.lu(rotation)
        s = torch.diagonal(upper)
        self.register_buffer("p", p)
        self.register_buffer("sign_s", torch.sign(s))
        self.lower = nn.Parameter(torch.tril(lower, -1))
        self.upper = nn.Parameter(torch.triu(upper, 1))
        self.log_s = nn.Parameter(torch.log(torch.abs(s)))

    def weight_and_logdet(self) -> tuple[Tensor, Tensor]:
        """The (C, C) matrix and its log|det| per pixel."""
        if not self.lu:
            return self.weight, torch.linalg.slogdet(self.weight)[1]
        eye = torch.eye(self.log_s.shape[0], device=self.log_s.device, dtype=self.log_s.dtype)
        lower = torch.tril(self.lower, -1) + eye
        upper = torch.triu(self.upper, 1) + torch.diag(self.sign_s * torch.exp(self.log_s))
        return self.p @ lower @ upper, self.log_s.sum()

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        weight, logdet = self.weight_and_logdet()
        y = F.conv2d(x, weight[:, :, None, None])
        return y, (x.shape[2] * x.shape[3] * logdet).expand(x.shape[0])

    def inverse(self, y: Tensor, cond: Tensor | None = None) -> Tensor:
        weight, _ = self.weight_and_logdet()
        return F.conv2d(y, torch.linalg.inv(weight)[:, :, None, None])


class ZeroConv2d(nn.Module):
    """Glow's Conv2dZeros: a 3x3 conv whose weight, bias and per-channel log-scale start at
    zero, so it first outputs zeros (a coupling starts near the identity, a prior at N(0, 1))."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)
        self.logs = nn.Parameter(torch.zeros(out_channels))

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x) * torch.exp(ZERO_CONV_LOGSCALE_FACTOR * self.logs.view(1, -1, 1, 1))


class ResBlock(nn.Module):
    """Pre-activation residual block of RealNVP's coupling ResNets, actnorm for batch norm."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm1 = ActNorm(channels)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.norm2 = ActNorm(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.relu(self.norm1(x)[0]))
        return x + self.conv2(F.relu(self.norm2(h)[0]))


class CouplingNet(nn.Module):
    """The coupling's NN: conv3x3 -> [residual blocks] -> actnorm -> ReLU -> conv1x1 -> actnorm
    -> ReLU -> zero conv3x3. With no blocks this is Glow's NN (actnorm in place of conv biases,
    as in its code); RealNVP's couplings add residual blocks."""

    def __init__(self, in_channels: int, out_channels: int, hidden: int, blocks: int) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, hidden, 3, padding=1, bias=False)
        self.blocks = nn.ModuleList(ResBlock(hidden) for _ in range(blocks))
        self.norm_in = ActNorm(hidden)
        self.conv_mid = nn.Conv2d(hidden, hidden, 1, bias=False)
        self.norm_mid = ActNorm(hidden)
        self.conv_out = ZeroConv2d(hidden, out_channels)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for block in self.blocks:
            h = block(h)
        h = self.conv_mid(F.relu(self.norm_in(h)[0]))
        return self.conv_out(F.relu(self.norm_mid(h)[0]))


def checkerboard(height: int, width: int, parity: int, like: Tensor) -> Tensor:
    """(1, 1, H, W) mask, 1 where (i + j + parity) is even: the pixels that condition."""
    i = torch.arange(height, device=like.device)[:, None]
    j = torch.arange(width, device=like.device)[None, :]
    return ((i + j + parity) % 2 == 0).to(like.dtype)[None, None]


class AffineCoupling(nn.Module):
    """Affine (or additive) coupling: one part of x conditions a shift and scale of the rest.

    ``mask="channel"`` (Glow, RealNVP after a squeeze) splits channels in halves, the first
    conditioning the second for ``parity=0`` and the other way round for 1; ``"checkerboard"``
    (RealNVP) conditions on the pixels of a spatial checkerboard of that parity, the NN seeing
    the masked input. The transformed part becomes (x + shift) * sigmoid(raw + 2), Glow's code:
    the scale is bounded in (0, 1), which keeps training stable; additive couplings shift only.
    ``cond`` (B, cond_channels, H or 1, W or 1) is concatenated to the NN's input.
    """

    def __init__(self, channels: int, hidden: int, affine: bool = True,
                 mask: Literal["channel", "checkerboard"] = "channel", parity: int = 0,
                 cond_channels: int = 0, blocks: int = 0) -> None:
        super().__init__()
        if mask not in ("channel", "checkerboard"):
            raise ValueError(f"mask must be 'channel' or 'checkerboard', got {mask!r}.")
        if mask == "channel" and channels < 2:
            raise ValueError(f"A channel-mask coupling needs at least 2 channels, got {channels}.")
        self.affine, self.mask, self.parity = affine, mask, parity % 2
        self.cond_channels = cond_channels
        if mask == "channel":
            first = channels // 2
            conditioning = first if self.parity == 0 else channels - first
            transformed = channels - conditioning
        else:
            conditioning = transformed = channels
        self.net = CouplingNet(conditioning + cond_channels, (2 if affine else 1) * transformed,
                               hidden, blocks)

    def _split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(conditioning, transformed) halves of a channel mask."""
        first, second = x[:, : x.shape[1] // 2], x[:, x.shape[1] // 2 :]
        return (first, second) if self.parity == 0 else (second, first)

    def _merge(self, conditioning: Tensor, transformed: Tensor) -> Tensor:
        parts = (conditioning, transformed) if self.parity == 0 else (transformed, conditioning)
        return torch.cat(parts, dim=1)

    def _shift_and_log_scale(self, net_in: Tensor, cond: Tensor | None
                             ) -> tuple[Tensor, Tensor | None]:
        if self.cond_channels:
            if cond is None:
                raise ValueError("This coupling is conditional (cond_channels > 0): pass cond.")
            cond = cond.expand(-1, -1, net_in.shape[2], net_in.shape[3]).to(net_in.dtype)
            net_in = torch.cat([net_in, cond], dim=1)
        h = self.net(net_in)
        if not self.affine:
            return h, None
        # Interleaved (shift, raw) channels, as Glow's code slices them.
        return h[:, 0::2], F.logsigmoid(h[:, 1::2] + SCALE_OFFSET)

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if self.mask == "channel":
            x_cond, x_change = self._split(x)
            shift, log_scale = self._shift_and_log_scale(x_cond, cond)
            y_change = x_change + shift
            if log_scale is None:
                return self._merge(x_cond, y_change), _zero_logdet(x)
            y_change = y_change * torch.exp(log_scale)
            return self._merge(x_cond, y_change), log_scale.flatten(1).sum(1)
        m = checkerboard(x.shape[2], x.shape[3], self.parity, x)
        shift, log_scale = self._shift_and_log_scale(x * m, cond)
        y = x + (1 - m) * shift
        if log_scale is None:
            return y, _zero_logdet(x)
        log_scale = (1 - m) * log_scale  # zero on the conditioning pixels: they stay as they are
        return y * torch.exp(log_scale), log_scale.flatten(1).sum(1)

    def inverse(self, y: Tensor, cond: Tensor | None = None) -> Tensor:
        if self.mask == "channel":
            y_cond, y_change = self._split(y)
            shift, log_scale = self._shift_and_log_scale(y_cond, cond)
            if log_scale is not None:
                y_change = y_change * torch.exp(-log_scale)
            return self._merge(y_cond, y_change - shift)
        m = checkerboard(y.shape[2], y.shape[3], self.parity, y)
        shift, log_scale = self._shift_and_log_scale(y * m, cond)
        if log_scale is not None:
            y = y * torch.exp(-(1 - m) * log_scale)
        return y - (1 - m) * shift


class FlowStep(nn.Module):
    """Glow's step of flow: actnorm -> invertible 1x1 conv -> channel-mask coupling."""

    def __init__(self, channels: int, hidden: int, affine: bool = True, lu: bool = True) -> None:
        super().__init__()
        self.layers = nn.ModuleList([ActNorm(channels), InvConv1x1(channels, lu),
                                     AffineCoupling(channels, hidden, affine)])

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        logdet = _zero_logdet(x)
        for layer in self.layers:
            x, ld = layer(x, cond)
            logdet = logdet + ld
        return x, logdet

    def inverse(self, y: Tensor, cond: Tensor | None = None) -> Tensor:
        for layer in reversed(self.layers):
            y = layer.inverse(y, cond)
        return y


class SplitPrior(nn.Module):
    """Glow's split prior: (mean, log_std) of the factored-out half from a zero conv of the
    kept half, so it starts at N(0, 1)."""

    def __init__(self, kept_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = ZeroConv2d(kept_channels, 2 * out_channels)

    def forward(self, kept: Tensor) -> tuple[Tensor, Tensor]:
        h = self.conv(kept)
        return h[:, 0::2], h[:, 1::2]


class TopPrior(nn.Module):
    """The top latent's diagonal Gaussian: learned per-channel (mean, log_std) when ``learn``
    (Glow's learntop), plus a zero-initialised per-class offset when ``num_classes > 0`` (Glow's
    y-conditioning, a linear map of the one-hot label); N(0, 1) with neither."""

    def __init__(self, channels: int, learn: bool, num_classes: int) -> None:
        super().__init__()
        self.channels = channels
        self.params = nn.Parameter(torch.zeros(2 * channels)) if learn else None
        self.embed = None
        if num_classes > 0:
            self.embed = nn.Embedding(num_classes, 2 * channels)
            nn.init.zeros_(self.embed.weight)

    def forward(self, label: Tensor | None, like: Tensor) -> tuple[Tensor, Tensor]:
        """(mean, log_std), each (B or 1, C, 1, 1), in ``like``'s dtype and device."""
        h = torch.zeros(1, 2 * self.channels, device=like.device, dtype=like.dtype)
        if self.params is not None:
            h = h + self.params
        if self.embed is not None:
            h = h + self.embed(label)
        return h[:, 0::2, None, None], h[:, 1::2, None, None]


class MultiScaleFlow(nn.Module):
    """A flow of levels; each level is a list of layers, and every level but the last ends by
    factoring out half its channels as a latent. Latents are listed as the levels produce
    them, the top latent last; subclasses build the levels and say what the priors are."""

    levels: nn.ModuleList
    num_classes: int

    def __init__(self, in_channels: int, image_size: Sequence[int], squeezes: int) -> None:
        super().__init__()
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}.")
        height, width = (int(s) for s in image_size)
        step = 2**squeezes
        if height % step or width % step or height <= 0 or width <= 0:
            raise ValueError(
                f"{type(self).__name__} squeezes {squeezes} times, halving the sides each time, "
                f"so they must be divisible by {step}; got {height}x{width}. Use fewer levels "
                f"(e.g. 2 for 28x28).")
        self.in_channels, self.image_size = in_channels, (height, width)
        self.latent_shapes: list[tuple[int, int, int]] = []

    def _check_label(self, label: Tensor | None) -> None:
        if self.num_classes > 0 and label is None:
            raise ValueError(f"This {type(self).__name__} is class-conditional "
                             f"(num_classes={self.num_classes}): pass label.")
        if self.num_classes == 0 and label is not None:
            raise ValueError(f"This {type(self).__name__} is unconditional (num_classes=0) but "
                             "got labels.")

    def _cond(self, label: Tensor | None, like: Tensor) -> Tensor | None:
        """What the couplings see of the label: nothing, unless a subclass says otherwise."""
        self._check_label(label)
        return None

    def _split_prior(self, index: int, kept: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def _top_prior(self, label: Tensor | None, like: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def _encode(self, x: Tensor, label: Tensor | None) -> tuple[list[Tensor], Tensor, Tensor]:
        """(latents, total logdet, prior log density of the latents), each of the last two (B,)."""
        expected = (self.in_channels, *self.image_size)
        if tuple(x.shape[1:]) != expected:
            raise ValueError(f"{type(self).__name__} was built for images of shape {expected}, "
                             f"got {tuple(x.shape[1:])}.")
        cond = self._cond(label, x)
        h, logdet, logp = x, _zero_logdet(x), _zero_logdet(x)
        latents = []
        last = len(self.levels) - 1
        for i, level in enumerate(self.levels):
            for layer in level:
                h, ld = layer(h, cond)
                logdet = logdet + ld
            if i < last:
                h, z = h.chunk(2, dim=1)
                logp = logp + gaussian_log_prob(z, *self._split_prior(i, h))
                latents.append(z)
        latents.append(h)
        return latents, logdet, logp + gaussian_log_prob(h, *self._top_prior(label, h))

    def _decode(self, top: Tensor, label: Tensor | None,
                split_latent: Callable[[int, Tensor], Tensor]) -> Tensor:
        """Invert the levels from the top latent; ``split_latent(i, kept)`` gives level i's
        factored-out half once its kept half is known (a split prior depends on it)."""
        cond = self._cond(label, top)
        h = top
        last = len(self.levels) - 1
        for i in reversed(range(len(self.levels))):
            if i < last:
                h = torch.cat([h, split_latent(i, h)], dim=1)
            for layer in reversed(self.levels[i]):
                h = layer.inverse(h, cond)
        return h

    def forward(self, x: Tensor, label: Tensor | None = None) -> tuple[list[Tensor], Tensor]:
        """(latents, logdet (B,)) of images ``x`` (B, C, H, W)."""
        latents, logdet, _ = self._encode(x, label)
        return latents, logdet

    def inverse(self, latents: Sequence[Tensor], label: Tensor | None = None) -> Tensor:
        """Images from latents listed as :meth:`forward` returns them."""
        return self._decode(latents[-1], label, lambda i, _: latents[i])

    def log_prob(self, x: Tensor, label: Tensor | None = None) -> Tensor:
        """log p(x) (B,): the priors' log densities of all latents plus the total logdet."""
        _, logdet, logp = self._encode(x, label)
        return logp + logdet

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, label: Tensor | None = None,
               generator: torch.Generator | None = None) -> Tensor:
        """``n`` images, every latent drawn from its prior with the std times ``temperature``
        (Glow's reduced-temperature samples below 1; 0 gives the prior means)."""
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}.")
        self._check_label(label)
        like = next(self.parameters())

        def draw(mean: Tensor, log_std: Tensor, shape: tuple[int, ...]) -> Tensor:
            eps = torch.randn((n, *shape), generator=generator, device=like.device,
                              dtype=like.dtype)
            return mean + torch.exp(log_std) * temperature * eps

        top_shape = self.latent_shapes[-1]
        top = draw(*self._top_prior(label, like), top_shape)
        return self._decode(top, label, lambda i, kept: draw(
            *self._split_prior(i, kept), self.latent_shapes[i]))

    def actnorms(self) -> Iterator[ActNorm]:
        """Every actnorm, in the flow and inside the coupling NNs."""
        return (m for m in self.modules() if isinstance(m, ActNorm))

    @torch.no_grad()
    def initialize_actnorms(self, x: Tensor, label: Tensor | None = None) -> None:
        """Glow's data-dependent init: one pass over ``x`` in which every actnorm initialises
        itself on the activations reaching it, which already went through the initialised
        layers before it."""
        handles = [a.register_forward_pre_hook(lambda module, args: module.initialize(args[0]))
                   for a in self.actnorms()]
        try:
            self._encode(x, label)
        finally:
            for handle in handles:
                handle.remove()


class Glow(MultiScaleFlow):
    """Glow: per level squeeze, ``steps`` flow steps, then (all levels but the last) half the
    channels factored out with a learned split prior. ``learn_prior`` learns the top prior
    (Glow's learntop); split priors are always learned, as in Glow. ``num_classes > 0`` makes
    the top prior class-conditional; labels do not enter the bijection.
    """

    def __init__(self, in_channels: int, levels: int, steps: int, hidden: int,
                 affine: bool = True, lu: bool = True, learn_prior: bool = True,
                 num_classes: int = 0, *, image_size: Sequence[int]) -> None:
        if levels < 1 or steps < 1 or hidden < 1 or num_classes < 0:
            raise ValueError(f"Glow needs levels, steps, hidden >= 1 and num_classes >= 0; got "
                             f"{levels}, {steps}, {hidden}, {num_classes}.")
        super().__init__(in_channels, image_size, squeezes=levels)
        self.num_classes = num_classes
        c, (h, w) = in_channels, self.image_size
        self.levels = nn.ModuleList()
        self.split_priors = nn.ModuleList()
        for i in range(levels):
            c, h, w = 4 * c, h // 2, w // 2
            self.levels.append(nn.ModuleList(
                [Squeeze(), *(FlowStep(c, hidden, affine, lu) for _ in range(steps))]))
            if i < levels - 1:
                c //= 2
                self.split_priors.append(SplitPrior(c, c))
                self.latent_shapes.append((c, h, w))
        self.latent_shapes.append((c, h, w))
        self.top_prior = TopPrior(c, learn_prior, num_classes)

    def _split_prior(self, index: int, kept: Tensor) -> tuple[Tensor, Tensor]:
        return self.split_priors[index](kept)

    def _top_prior(self, label: Tensor | None, like: Tensor) -> tuple[Tensor, Tensor]:
        return self.top_prior(label, like)


class RealNVP(MultiScaleFlow):
    """RealNVP's multi-scale flow: every scale but the last has 3 checkerboard couplings
    (alternating parity), a squeeze, 3 channel couplings (alternating halves) and factors half
    the channels out; the last scale has 4 checkerboard couplings. Coupling NNs are ResNets of
    ``blocks`` residual blocks; an actnorm follows each coupling, in place of the paper's batch
    norm on coupling outputs. Factored-out and top latents are N(0, 1), as in the paper; with
    ``num_classes > 0`` every coupling NN also sees the one-hot label as constant maps.
    """

    def __init__(self, in_channels: int, scales: int, hidden: int, blocks: int = 4,
                 affine: bool = True, num_classes: int = 0, *,
                 image_size: Sequence[int]) -> None:
        if scales < 1 or hidden < 1 or blocks < 0 or num_classes < 0:
            raise ValueError(f"RealNVP needs scales, hidden >= 1, blocks >= 0 and num_classes "
                             f">= 0; got {scales}, {hidden}, {blocks}, {num_classes}.")
        super().__init__(in_channels, image_size, squeezes=scales - 1)
        self.num_classes = num_classes
        c, (h, w) = in_channels, self.image_size

        def couplings(c: int, mask: Literal["channel", "checkerboard"], count: int
                      ) -> list[nn.Module]:
            layers: list[nn.Module] = []
            for parity in range(count):
                layers += [AffineCoupling(c, hidden, affine, mask, parity, num_classes, blocks),
                           ActNorm(c)]
            return layers

        self.levels = nn.ModuleList()
        for _ in range(scales - 1):
            layers = couplings(c, "checkerboard", 3)
            c, h, w = 4 * c, h // 2, w // 2
            self.levels.append(nn.ModuleList([*layers, Squeeze(), *couplings(c, "channel", 3)]))
            c //= 2
            self.latent_shapes.append((c, h, w))
        self.levels.append(nn.ModuleList(couplings(c, "checkerboard", 4)))
        self.latent_shapes.append((c, h, w))

    def _cond(self, label: Tensor | None, like: Tensor) -> Tensor | None:
        super()._cond(label, like)
        if label is None:
            return None
        return F.one_hot(label, self.num_classes).to(like.dtype)[:, :, None, None]

    def _split_prior(self, index: int, kept: Tensor) -> tuple[Tensor, Tensor]:
        zero = kept.new_zeros(())
        return zero, zero

    def _top_prior(self, label: Tensor | None, like: Tensor) -> tuple[Tensor, Tensor]:
        zero = like.new_zeros(())
        return zero, zero
