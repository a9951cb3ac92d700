"""The DDPM U-Net (Ho et al. 2020, the CIFAR-10 model of diffusion_tf/models/unet.py).

A noise-prediction network ``(x_t, t[, label | context]) -> output`` of x_t's shape: residual
blocks that add a projection of the timestep embedding, self-attention at chosen feature
resolutions, and a down path whose every output is a skip for the up path. A caption-conditional
net (``context_dim > 0``) also cross-attends to the caption's token embeddings after each of
those self-attentions, as latent diffusion's transformer blocks do. The diffusion schedule lives
in :mod:`gentrain.diffusion`; this module knows nothing about noise levels beyond the integer t.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gentrain.errors import require
from gentrain.nets.conv import padding

MAX_GROUPS = 32  # GroupNorm groups of the paper; narrower test nets use gcd(32, width)

#: A caption's encoding, as gentrain.nets.text.TextEncoder returns it: pooled (B, D), per-token
#: (B, L, D) and the key padding mask (B, L), True at padding.
TextContext = tuple[Tensor, Tensor, Tensor]


def default_channel_mult(resolution: int) -> tuple[int, ...]:
    """Width multipliers per level for a side of ``resolution`` pixels, as the papers chose them.

    DDPM's CIFAR-10 model at 32 px (also MNIST's 28, padded to 32), DDIM's CelebA-64 model at
    64 px, DDPM's LSUN/CelebA-HQ ladder above that, and three levels for 16 px or less so
    the bottleneck keeps a few pixels.
    """
    if resolution <= 16:
        return (1, 2, 2)
    if resolution <= 32:
        return (1, 2, 2, 2)
    if resolution <= 64:
        return (1, 2, 2, 2, 4)
    return (1, 1, 2, 2, 4, 4)


def timestep_embedding(t: Tensor, dim: int) -> Tensor:
    """Sinusoidal embedding of timesteps ``t`` (B,), as in DDPM and the Transformer.

    Half sines, half cosines of t times frequencies exp(-log(10000) i / (half - 1)), computed
    in float32 whatever the autocast state, so large t keep their precision.
    """
    half = dim // 2
    exponent = torch.arange(half, device=t.device, dtype=torch.float32)
    freqs = torch.exp(exponent * (-math.log(10000.0) / (half - 1)))
    args = t.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(MAX_GROUPS, channels), channels)


def _zero(module: nn.Conv2d) -> nn.Conv2d:
    """Zero weight and bias (the paper's init_scale=0): a residual branch starts as identity."""
    nn.init.zeros_(module.weight)
    nn.init.zeros_(module.bias)
    return module


class ResBlock(nn.Module):
    """GroupNorm, SiLU, conv3x3, + projected time embedding, GroupNorm, SiLU, dropout, conv3x3."""

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int,
                 dropout: float) -> None:
        super().__init__()
        self.norm1 = _norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.temb_proj = nn.Linear(temb_channels, out_channels)
        self.norm2 = _norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _zero(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        # The paper's "nin_shortcut": a 1x1 conv only where the width changes.
        self.skip = (nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels
                     else nn.Identity())

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        """``temb`` is SiLU(time embedding), computed once per forward for all blocks."""
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.temb_proj(temb)[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class AttnBlock(nn.Module):
    """Self-attention over all H*W positions, residual, with a zero-initialised output."""

    def __init__(self, channels: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm = _norm(channels)
        # q, k, v as one 1x1 conv: the paper's three "nin" layers, same parameters, one GEMM.
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj_out = _zero(nn.Conv2d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x))
        # (B, 3C, H, W) -> 3 x (B, heads, HW, C/heads); a view when x is channels_last.
        qkv = qkv.permute(0, 2, 3, 1).reshape(b, h * w, 3, self.heads, c // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)  # scale 1/sqrt(C/heads), as the paper
        out = out.transpose(1, 2).reshape(b, h, w, c).permute(0, 3, 1, 2)
        return x + self.proj_out(out)


class CrossAttnBlock(nn.Module):
    """Attention from every position to the caption's tokens (latent diffusion's cross-attention),
    padding masked out, residual, with a zero-initialised output."""

    def __init__(self, channels: int, context_dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm = _norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.kv = nn.Linear(context_dim, 2 * channels)
        self.proj_out = _zero(nn.Conv2d(channels, channels, 1))

    def forward(self, x: Tensor, tokens: Tensor, pad_mask: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q = self.q(self.norm(x)).permute(0, 2, 3, 1).reshape(b, h * w, self.heads, -1)
        k, v = self.kv(tokens).unflatten(2, (2, self.heads, -1)).permute(2, 0, 3, 1, 4).unbind(0)
        # Boolean SDPA masks say where to attend: every query of an image sees its real tokens.
        keep = ~pad_mask[:, None, None, :]
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k, v, attn_mask=keep)
        out = out.transpose(1, 2).reshape(b, h, w, c).permute(0, 3, 1, 2)
        return x + self.proj_out(out)


class Upsample(nn.Module):
    """Nearest-neighbour x2, then conv3x3."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """One resolution of the down or up path: res blocks (each with optional attention, and
    cross-attention in a caption-conditional net), then a resampling layer (identity at the
    path's end). Nets without captions register no ``crosses``: their parameter names stay."""

    def __init__(self, blocks: list[ResBlock], attns: list[nn.Module],
                 resample: nn.Module, crosses: list[nn.Module] | None = None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.attns = nn.ModuleList(attns)
        if crosses is not None:
            self.crosses = nn.ModuleList(crosses)
        self.resample = resample

    def attend(self, index: int, h: Tensor, context: TextContext | None) -> Tensor:
        """Block ``index``'s self-attention, then its cross-attention to the caption if any."""
        h = self.attns[index](h)
        if context is not None and isinstance(cross := self.crosses[index], CrossAttnBlock):
            h = cross(h, context[1], context[2])
        return h


class UNet(nn.Module):
    """DDPM's U-Net: ``forward(x, t, label=None, context=None)`` -> (B, out_channels, H, W).

    ``x`` is (B, in_channels, resolution, resolution), ``t`` (B,) timesteps in [0, T), long or
    float. Sides not divisible by ``2 ** (levels - 1)`` are zero-padded (MNIST's 28 -> 32) and
    the output is cropped back; ``attention_resolutions`` name feature sides of the padded
    input (16 at 28 px means the 16x16 maps of the padded 32).

    Class conditioning (``num_classes > 0``) adds ``nn.Embedding(num_classes + 1, 4 * base)``
    to the time embedding. Index ``num_classes`` is the "no label" token of classifier-free
    guidance: ``label=None`` gives every example that token, exactly as passing it does.

    Caption conditioning (``context_dim > 0``, the text encoder's width) takes a
    :data:`TextContext`: the pooled embedding through a linear layer into the time embedding, and
    a :class:`CrossAttnBlock` to the per-token embeddings after every self-attention (those at
    ``attention_resolutions`` and the middle's). The "no caption" of classifier-free guidance is
    the text encoder's business (the empty caption's context), so a context is always required.

    Initialisation: the last conv of every residual branch, the attention output projection
    and the output conv start at zero (the paper's init_scale=0), so a fresh net outputs
    zeros; every other layer keeps torch's default init (the paper used Xavier-uniform weights
    and zero biases, a difference the zero-initialised residual branches make small).

    The defaults at 32 px RGB give 35,746,307 parameters, exactly the paper's CIFAR-10 model:
    the layers and widths are the same (q, k, v fused in one 1x1 conv has the same count).
    """

    def __init__(
        self,
        *,
        in_channels: int,
        out_channels: int,
        resolution: int,
        num_classes: int = 0,
        base_channels: int = 128,
        channel_mult: Sequence[int] | None = None,
        num_res_blocks: int = 2,
        attention_resolutions: Sequence[int] = (16,),
        dropout: float = 0.1,
        attention_heads: int = 1,
        context_dim: int = 0,
    ) -> None:
        super().__init__()
        mult = default_channel_mult(resolution) if channel_mult is None else tuple(
            int(m) for m in channel_mult)
        attn_res = {int(r) for r in attention_resolutions}
        _validate(in_channels, out_channels, resolution, num_classes, base_channels, mult,
                  num_res_blocks, dropout, attention_heads)
        require(context_dim >= 0 and not (context_dim and num_classes),
                f"The U-Net takes class labels (num_classes={num_classes}) or a caption "
                f"context (context_dim={context_dim}), not both, and context_dim >= 0.")
        levels = len(mult)
        pad_before, pad_after = padding(resolution, levels - 1)
        self.pad = (pad_before, pad_after, pad_before, pad_after)
        self.crop = (pad_before, resolution)
        sides = [(resolution + pad_before + pad_after) // 2**i for i in range(levels)]
        missing = sorted(attn_res - set(sides))
        require(not missing, f"model.net.attention_resolutions has {missing}, but at resolution "
                f"{resolution} the U-Net's feature maps are {sides} pixels wide; choose from "
                f"those (or [] for no attention).")
        for i, (side, m) in enumerate(zip(sides, mult, strict=True)):
            attends = side in attn_res or i == levels - 1  # the middle always attends
            require(not attends or base_channels * m % attention_heads == 0,
                    f"model.net.attention_heads={attention_heads} must divide the width "
                    f"{base_channels * m} of the {side}x{side} attention maps.")

        self.num_classes = num_classes
        temb_channels = 4 * base_channels
        self.base_channels = base_channels
        self.time_mlp = nn.Sequential(
            nn.Linear(base_channels, temb_channels),
            nn.SiLU(),
            nn.Linear(temb_channels, temb_channels),
        )
        self.label_embed = (nn.Embedding(num_classes + 1, temb_channels) if num_classes > 0
                            else None)
        self.context_dim = context_dim
        if context_dim:
            self.caption_proj = nn.Linear(context_dim, temb_channels)

        def attn(channels: int, side: int) -> nn.Module:
            return AttnBlock(channels, attention_heads) if side in attn_res else nn.Identity()

        def crosses(attns: list[nn.Module]) -> list[nn.Module] | None:
            """Cross-attention wherever there is self-attention (None: no captions)."""
            if not context_dim:
                return None
            return [CrossAttnBlock(a.qkv.in_channels, context_dim, attention_heads)
                    if isinstance(a, AttnBlock) else nn.Identity() for a in attns]

        def res(cin: int, cout: int) -> ResBlock:
            return ResBlock(cin, cout, temb_channels, dropout)

        self.conv_in = nn.Conv2d(in_channels, base_channels, 3, padding=1)
        skips = [base_channels]  # widths of the stored skips, in order
        channels = base_channels
        self.down = nn.ModuleList()
        for i, (side, m) in enumerate(zip(sides, mult, strict=True)):
            blocks, attns = [], []
            for _ in range(num_res_blocks):
                blocks.append(res(channels, base_channels * m))
                channels = base_channels * m
                attns.append(attn(channels, side))
                skips.append(channels)
            last = i == levels - 1
            # Stride-2 conv with symmetric padding 1 (TF's SAME pads 0 before, 1 after).
            down = nn.Identity() if last else nn.Conv2d(channels, channels, 3, 2, padding=1)
            if not last:
                skips.append(channels)
            self.down.append(Level(blocks, attns, down, crosses(attns)))

        self.mid_block1 = res(channels, channels)
        self.mid_attn = AttnBlock(channels, attention_heads)
        if context_dim:
            self.mid_cross = CrossAttnBlock(channels, context_dim, attention_heads)
        self.mid_block2 = res(channels, channels)

        self.up = nn.ModuleList()
        for i in reversed(range(levels)):
            blocks, attns = [], []
            for _ in range(num_res_blocks + 1):
                blocks.append(res(channels + skips.pop(), base_channels * mult[i]))
                channels = base_channels * mult[i]
                attns.append(attn(channels, sides[i]))
            up = Upsample(channels) if i > 0 else nn.Identity()
            self.up.append(Level(blocks, attns, up, crosses(attns)))

        self.norm_out = _norm(channels)
        self.conv_out = _zero(nn.Conv2d(channels, out_channels, 3, padding=1))

    def forward(self, x: Tensor, t: Tensor, label: Tensor | None = None,
                context: TextContext | None = None) -> Tensor:
        temb = self.time_mlp(timestep_embedding(t, self.base_channels))
        if self.label_embed is not None:
            if label is None:  # the null token for every example, without building indices
                temb = temb + self.label_embed.weight[self.num_classes]
            else:
                temb = temb + self.label_embed(label)
        elif label is not None:
            raise ValueError("This U-Net is unconditional (num_classes=0) but got labels.")
        if self.context_dim:
            if context is None:
                raise ValueError("This U-Net is caption-conditional (context_dim > 0) and needs "
                                 "a context (the empty caption's for unconditional outputs).")
            temb = temb + self.caption_proj(context[0])
        elif context is not None:
            raise ValueError("This U-Net has no caption conditioning (context_dim=0) but got "
                             "a context.")
        temb = F.silu(temb)  # every block projects SiLU(temb); compute it once

        if any(self.pad):
            x = F.pad(x, self.pad)
        h = self.conv_in(x)
        hs = [h]
        for level in self.down:
            for index, block in enumerate(level.blocks):
                h = level.attend(index, block(h, temb), context)
                hs.append(h)
            if not isinstance(level.resample, nn.Identity):
                h = level.resample(h)
                hs.append(h)

        h = self.mid_attn(self.mid_block1(h, temb))
        if context is not None:
            h = self.mid_cross(h, context[1], context[2])
        h = self.mid_block2(h, temb)

        for level in self.up:
            for index, block in enumerate(level.blocks):
                h = level.attend(index, block(torch.cat([h, hs.pop()], dim=1), temb), context)
            h = level.resample(h)

        h = self.conv_out(F.silu(self.norm_out(h)))
        start, size = self.crop
        if any(self.pad):
            h = h[:, :, start : start + size, start : start + size]
        return h


def _validate(in_channels: int, out_channels: int, resolution: int, num_classes: int,
              base_channels: int, mult: tuple[int, ...], num_res_blocks: int, dropout: float,
              attention_heads: int) -> None:
    """Reject sizes the U-Net cannot be built with, naming the model.net key to change."""
    require(in_channels > 0 and out_channels > 0 and resolution > 0,
            f"The U-Net needs positive in_channels, out_channels and resolution (they come "
            f"from the data), got {in_channels}, {out_channels}, {resolution}.")
    require(num_classes >= 0, f"The U-Net's num_classes must be >= 0, got {num_classes}.")
    require(
        base_channels % MAX_GROUPS == 0 if base_channels >= MAX_GROUPS
        else base_channels >= 4 and base_channels % 4 == 0,
        f"model.net.base_channels={base_channels} must be a multiple of {MAX_GROUPS} (the "
        f"GroupNorm group count), or a multiple of 4 below {MAX_GROUPS} for small test nets.",
    )
    require(len(mult) > 0 and all(m > 0 for m in mult),
            f"model.net.channel_mult must be a non-empty list of positive integers (or null "
            f"for the paper's ladder), got {list(mult)}.")
    require(num_res_blocks >= 1,
            f"model.net.num_res_blocks must be >= 1, got {num_res_blocks}.")
    require(0.0 <= dropout < 1.0, f"model.net.dropout must be in [0, 1), got {dropout}.")
    require(attention_heads >= 1,
            f"model.net.attention_heads must be >= 1, got {attention_heads}.")
