"""GAN generators and discriminators sized from the data: DCGAN and the SNGAN/WGAN-GP ResNets.

DCGAN follows Radford et al.'s rules: strided (transposed) 4x4 convolutions instead of
pooling, batch norm in G (not on its output layer) and in D (not on its input layer), ReLU in G
with a tanh output, LeakyReLU(0.2) in D, no fully connected hidden layers (G starts with a 4x4
transposed convolution of the latent, D ends with a 4x4 convolution to the logit), weights
N(0, 0.02) and norm scales N(1, 0.02). The ResNets are the CIFAR-10 networks of Gulrajani et
al. (WGAN-GP) and Miyato et al. (SNGAN), one residual block per doubling of the side.

Conditional models (``num_classes > 0``) put the label into G (in DCGAN a learned embedding
concatenated to z or class-conditional batch norm, in the ResNet class-conditional batch norm)
and make D a projection discriminator (Miyato & Koyama 2018): logit = ψ(h) + ⟨embed(y), Σ_xy h⟩,
h being D's last feature map and ψ its unconditional output layer.

Each discriminator splits into ``body`` (every layer up to its last features) and ``head`` (the
logit from them), so that InfoGAN's Q head (``InfoDiscriminator``) shares the body.

28 px images (MNIST) are handled at 32 px: G generates 32x32 and keeps the centre 28x28, D
pads its input back to 32x32 with the constant -1, the black background of digits in [-1, 1]
(zero padding in [0, 1] pixel terms); reflection would mirror strokes into the border.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm as _sn

from gentrain.errors import require
from gentrain.nets.init import normal_init

ARCHS = ("dcgan", "resnet")
D_NORMS = ("batch", "layer", "none")
G_LABEL_INPUTS = ("concat", "batchnorm")  # how a conditional DCGAN G takes the label
# Powers of two from 4x4 up; 28 runs at 32. 16 keeps the test suite's smoke runs cheap.
SIZES = (16, 28, 32, 64, 128)
# DCGAN's 64; 128 is WGAN-GP's CIFAR-10 G and D (the gan_cifar10 recipe) and SNGAN's D, whose
# G is 256 wide: pass base_channels=256 to ResNetGenerator for it.
DEFAULT_WIDTH = {"dcgan": 64, "resnet": 128}
RESIDUAL_GAIN = math.sqrt(2.0)  # SNGAN's Glorot gain for the convs inside residual branches


def _num_halvings(resolution: int) -> int:
    """Stride-2 steps between a 4x4 map and the (working) side of ``resolution``."""
    require(resolution in SIZES,
            f"The GAN networks are built for sides of {', '.join(map(str, SIZES))} px (28 runs "
            f"at 32), not {resolution}; set data.resolution to one of them.")
    return int(math.log2(_working_side(resolution))) - 2


def _working_side(resolution: int) -> int:
    return 32 if resolution == 28 else resolution


def _crop(images: Tensor, resolution: int) -> Tensor:
    margin = (images.shape[-1] - resolution) // 2
    return images[..., margin : margin + resolution, margin : margin + resolution]


def _pad(images: Tensor, side: int) -> Tensor:
    margin = (side - images.shape[-1]) // 2
    return F.pad(images, (margin,) * 4, value=-1.0) if margin else images


def _check_label(num_classes: int, label: Tensor | None) -> None:
    """A label for a conditional network and none for the others (a mismatch is a caller bug)."""
    if num_classes and label is None:
        raise ValueError("This network is conditional (num_classes > 0) and needs labels.")
    if not num_classes and label is not None:
        raise ValueError("This network is unconditional (num_classes=0) but got labels.")


def _project(embed: nn.Embedding | None, label: Tensor | None, features: Tensor) -> Tensor:
    """The projection term ⟨embed(y), features⟩ per example, 0 for an unconditional D."""
    if embed is None or label is None:
        return features.new_zeros(())
    return (embed(label) * features).sum(dim=1)


def _spectral_norm(module: nn.Module) -> None:
    """Spectral norm on every conv, linear and embedding weight of ``module`` (after init: the
    parametrisation hides the raw weight from later ``nn.init`` calls)."""
    for m in list(module.modules()):
        if isinstance(m, nn.Conv2d | nn.Linear | nn.Embedding):
            _sn(m)


# -- shared layers ------------------------------------------------------------------------------


class ConditionalBatchNorm(nn.Module):
    """Batch norm whose scale and shift are looked up per class (1 and 0 at initialisation, so
    a fresh conditional G ignores the label until training makes the classes differ)."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(channels, affine=num_classes == 0)
        self.gain = nn.Embedding(num_classes, channels) if num_classes else None
        self.bias = nn.Embedding(num_classes, channels) if num_classes else None
        if self.gain is not None and self.bias is not None:
            nn.init.ones_(self.gain.weight)
            nn.init.zeros_(self.bias.weight)

    def forward(self, x: Tensor, label: Tensor | None) -> Tensor:
        h = self.norm(x)
        if self.gain is None or self.bias is None or label is None:
            return h
        return h * self.gain(label)[:, :, None, None] + self.bias(label)[:, :, None, None]


# -- DCGAN --------------------------------------------------------------------------------------


def _d_norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "layer":  # per sample, so WGAN-GP's per-sample gradient penalty stays per sample
        return nn.GroupNorm(1, channels)
    return nn.Identity()


class DCGANGenerator(nn.Module):
    """z (B, latent_dim) [+ label (B,)] -> images (B, channels, resolution, resolution) in [-1, 1].

    A 4x4 transposed conv of the latent (as a 1x1 map) to ``base_channels * 2**(n-1)`` channels,
    then n stride-2 transposed convs halving the width, the last one to the image (n = 3 at
    32 px). Conditional, by ``label_input``: "concat" concatenates the label's learned embedding,
    latent_dim wide and N(0, 1) like z (torch's default), to z, so neither dominates the first
    layer at init; "batchnorm" makes every batch norm class-conditional instead (per-class scale
    and shift, as the ResNet G and the projection discriminator's authors do).
    """

    def __init__(self, latent_dim: int, channels: int, resolution: int,
                 base_channels: int = 64, num_classes: int = 0,
                 label_input: str = "concat") -> None:
        super().__init__()
        require(label_input in G_LABEL_INPUTS,
                f"model.g_label_input={label_input!r} is not one of {', '.join(G_LABEL_INPUTS)}.")
        self.resolution, self.num_classes = resolution, num_classes
        ups = _num_halvings(resolution)
        concat = bool(num_classes) and label_input == "concat"
        self.embed = nn.Embedding(num_classes, latent_dim) if concat else None
        width = base_channels * 2 ** (ups - 1)
        in_dim = latent_dim * (2 if concat else 1)

        def norm(c: int) -> nn.Module:
            return ConditionalBatchNorm(c, num_classes) if num_classes and not concat \
                else nn.BatchNorm2d(c)

        # No conv bias before batch norm: its shift replaces it.
        layers: list[nn.Module] = [nn.ConvTranspose2d(in_dim, width, 4, 1, 0, bias=False),
                                   norm(width), nn.ReLU()]
        for _ in range(ups - 1):
            layers += [nn.ConvTranspose2d(width, width // 2, 4, 2, 1, bias=False),
                       norm(width // 2), nn.ReLU()]
            width //= 2
        layers += [nn.ConvTranspose2d(width, channels, 4, 2, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        normal_init(self.net)

    def forward(self, z: Tensor, label: Tensor | None = None) -> Tensor:
        _check_label(self.num_classes, label)
        if self.embed is not None and label is not None:
            z = torch.cat([z, self.embed(label)], dim=1)
        h = z[:, :, None, None]
        for layer in self.net:
            h = layer(h, label) if isinstance(layer, ConditionalBatchNorm) else layer(h)
        return _crop(h, self.resolution)


class DCGANDiscriminator(nn.Module):
    """images (B, channels, resolution, resolution) [+ label (B,)] -> logits (B,).

    Stride-2 4x4 convs from ``base_channels`` wide, doubling the width down to a 4x4 map h,
    then a 4x4 conv to the logit. ``norm``: "batch" (DCGAN), "layer" (GroupNorm(1, C), the usual
    replacement in a WGAN-GP critic, where batch norm would couple the samples) or "none".
    Conditional: + ⟨embed(y), Σ_xy h⟩, embed N(0, 0.02) like the convs.
    """

    def __init__(self, channels: int, resolution: int, base_channels: int = 64,
                 num_classes: int = 0, norm: str = "batch", spectral_norm: bool = False) -> None:
        super().__init__()
        require(norm in D_NORMS, f"model.d_norm={norm!r} is not one of {', '.join(D_NORMS)}.")
        self.side, self.num_classes = _working_side(resolution), num_classes
        width = base_channels
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 4, 2, 1), nn.LeakyReLU(0.2)]
        for _ in range(_num_halvings(resolution) - 1):
            layers += [nn.Conv2d(width, 2 * width, 4, 2, 1, bias=norm == "none"),
                       _d_norm(norm, 2 * width), nn.LeakyReLU(0.2)]
            width *= 2
        self.features = nn.Sequential(*layers)
        self.feature_dim = width * 4 * 4  # values per image of body()'s 4x4 map
        self.out = nn.Conv2d(width, 1, 4)
        self.embed = nn.Embedding(num_classes, width) if num_classes else None
        normal_init(self)
        if self.embed is not None:
            nn.init.normal_(self.embed.weight, 0.0, 0.02)
        if spectral_norm:
            _spectral_norm(self)

    def forward(self, x: Tensor, label: Tensor | None = None) -> Tensor:
        return self.head(self.body(x), label)

    def body(self, x: Tensor) -> Tensor:
        """The last conv layer's 4x4 map h (feature_dim values per image), the part of D that
        InfoGAN's Q head shares."""
        return self.features(_pad(x, self.side))

    def head(self, h: Tensor, label: Tensor | None = None) -> Tensor:
        """The logits (B,) from :meth:`body`'s features."""
        _check_label(self.num_classes, label)
        return self.out(h).flatten() + _project(self.embed, label, h.sum(dim=(2, 3)))


# -- ResNets ------------------------------------------------------------------------------------


def _glorot(module: nn.Conv2d | nn.Linear | nn.Embedding, gain: float = 1.0) -> nn.Module:
    """SNGAN's init: Glorot-uniform weights (gain √2 in residual branches), zero biases."""
    nn.init.xavier_uniform_(module.weight, gain)
    if getattr(module, "bias", None) is not None:
        nn.init.zeros_(module.bias)
    return module


def _conv(cin: int, cout: int, kernel: int, gain: float = 1.0) -> nn.Module:
    return _glorot(nn.Conv2d(cin, cout, kernel, 1, kernel // 2), gain)


def _up(x: Tensor) -> Tensor:
    return F.interpolate(x, scale_factor=2.0, mode="nearest")


class UpBlock(nn.Module):
    """BN-ReLU-upsample-conv3-BN-ReLU-conv3, plus an upsampled 1x1-conv shortcut."""

    def __init__(self, width: int, num_classes: int) -> None:
        super().__init__()
        self.bn1 = ConditionalBatchNorm(width, num_classes)
        self.conv1 = _conv(width, width, 3, RESIDUAL_GAIN)
        self.bn2 = ConditionalBatchNorm(width, num_classes)
        self.conv2 = _conv(width, width, 3, RESIDUAL_GAIN)
        self.shortcut = _conv(width, width, 1)

    def forward(self, x: Tensor, label: Tensor | None) -> Tensor:
        h = self.conv1(_up(F.relu(self.bn1(x, label))))
        h = self.conv2(F.relu(self.bn2(h, label)))
        # The 1x1 conv commutes with nearest upsampling: apply it on 4x fewer pixels.
        return h + _up(self.shortcut(x))


class FirstDownBlock(nn.Module):
    """SNGAN's "optimised" input block: conv3-ReLU-conv3-avgpool, shortcut avgpool-conv1 (no
    ReLU on the image itself)."""

    def __init__(self, channels: int, width: int) -> None:
        super().__init__()
        self.conv1 = _conv(channels, width, 3, RESIDUAL_GAIN)
        self.conv2 = _conv(width, width, 3, RESIDUAL_GAIN)
        self.shortcut = _conv(channels, width, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = F.avg_pool2d(self.conv2(F.relu(self.conv1(x))), 2)
        return h + self.shortcut(F.avg_pool2d(x, 2))


class DownBlock(nn.Module):
    """ReLU-conv3-ReLU-conv3 at constant width, then avgpool when ``down``; the shortcut is a 1x1
    conv (pooled) when the block pools and the identity otherwise."""

    def __init__(self, width: int, down: bool) -> None:
        super().__init__()
        self.conv1 = _conv(width, width, 3, RESIDUAL_GAIN)
        self.conv2 = _conv(width, width, 3, RESIDUAL_GAIN)
        self.shortcut = _conv(width, width, 1) if down else None

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv2(F.relu(self.conv1(F.relu(x))))
        if self.shortcut is None:
            return x + h
        return F.avg_pool2d(h + self.shortcut(x), 2)  # pooling is linear: one pool for both


class ResNetGenerator(nn.Module):
    """z (B, latent_dim) [+ label (B,)] -> images (B, channels, resolution, resolution) in [-1, 1].

    Linear to a 4x4 map ``base_channels`` wide, one UpBlock per doubling (3 at 32 px), then
    BN-ReLU-conv3-tanh. Conditional: every block's batch norms are class-conditional.
    """

    def __init__(self, latent_dim: int, channels: int, resolution: int,
                 base_channels: int = DEFAULT_WIDTH["resnet"], num_classes: int = 0) -> None:
        super().__init__()
        self.resolution, self.num_classes, self.width = resolution, num_classes, base_channels
        self.linear = _glorot(nn.Linear(latent_dim, 4 * 4 * base_channels))
        self.blocks = nn.ModuleList(UpBlock(base_channels, num_classes)
                                    for _ in range(_num_halvings(resolution)))
        self.out = nn.Sequential(nn.BatchNorm2d(base_channels), nn.ReLU(),
                                 _conv(base_channels, channels, 3), nn.Tanh())

    def forward(self, z: Tensor, label: Tensor | None = None) -> Tensor:
        _check_label(self.num_classes, label)
        h = self.linear(z).view(-1, self.width, 4, 4)
        for block in self.blocks:
            h = block(h, label)
        return _crop(self.out(h), self.resolution)


class ResNetDiscriminator(nn.Module):
    """images (B, channels, resolution, resolution) [+ label (B,)] -> logits (B,).

    The optimised block, DownBlocks to 8x8, two more blocks at 8x8, ReLU, a sum over positions,
    a linear logit (+ the projection when conditional). No normalisation layers: spectral norm
    (SNGAN, on every conv, linear and embedding) or WGAN-GP's gradient penalty constrain D.
    """

    def __init__(self, channels: int, resolution: int,
                 base_channels: int = DEFAULT_WIDTH["resnet"], num_classes: int = 0,
                 spectral_norm: bool = True) -> None:
        super().__init__()
        self.side, self.num_classes = _working_side(resolution), num_classes
        downs = _num_halvings(resolution) - 1  # to 8x8, the first block included
        self.blocks = nn.Sequential(
            FirstDownBlock(channels, base_channels),
            *(DownBlock(base_channels, down=True) for _ in range(downs - 1)),
            DownBlock(base_channels, down=False),
            DownBlock(base_channels, down=False),
        )
        self.feature_dim = base_channels  # of body(): the features summed over positions
        self.linear = _glorot(nn.Linear(base_channels, 1))
        self.embed = _glorot(nn.Embedding(num_classes, base_channels)) if num_classes else None
        if spectral_norm:
            _spectral_norm(self)

    def forward(self, x: Tensor, label: Tensor | None = None) -> Tensor:
        return self.head(self.body(x), label)

    def body(self, x: Tensor) -> Tensor:
        """The residual blocks' features summed over positions, (B, feature_dim): the part of
        D that InfoGAN's Q head shares."""
        return F.relu(self.blocks(_pad(x, self.side))).sum(dim=(2, 3))

    def head(self, h: Tensor, label: Tensor | None = None) -> Tensor:
        """The logits (B,) from :meth:`body`'s features."""
        _check_label(self.num_classes, label)
        return self.linear(h).squeeze(1) + _project(self.embed, label, h)


# -- InfoGAN ------------------------------------------------------------------------------------


class InfoDiscriminator(nn.Module):
    """A GAN discriminator with InfoGAN's recognition head Q(c | x) on its body (Chen et al.);
    AC-GAN's class head is the same head with one output per class.

    Q shares every layer of D's body and adds FC(hidden)-BN-LeakyReLU(0.2)-FC(q_outputs), the
    paper's Q head, initialised N(0, 0.02) like the reference code's fully connected layers.
    ``forward(x, label)`` is D's logit alone (so the GAN losses and the gradient penalty use it
    unchanged); ``forward(x, label, with_q=True)`` also returns Q's raw outputs, from one pass
    of the body.
    """

    def __init__(self, critic: DCGANDiscriminator | ResNetDiscriminator, q_outputs: int,
                 hidden: int = 128) -> None:
        super().__init__()
        require(q_outputs >= 1 and hidden >= 1,
                f"InfoGAN's Q head needs >= 1 output and hidden unit, not {q_outputs} and "
                f"{hidden}.")
        self.critic = critic
        self.q = nn.Sequential(nn.Flatten(), nn.Linear(critic.feature_dim, hidden, bias=False),
                               nn.BatchNorm1d(hidden), nn.LeakyReLU(0.2),
                               nn.Linear(hidden, q_outputs))
        for m in self.q.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: Tensor, label: Tensor | None = None,
                with_q: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        h = self.critic.body(x)
        logits = self.critic.head(h, label)
        return (logits, self.q(h)) if with_q else logits


# -- factory ------------------------------------------------------------------------------------


def build_gan_networks(
    arch: str, latent_dim: int, channels: int, height: int, width: int, num_classes: int,
    base_channels: int | None, d_norm: str, spectral_norm: bool, g_label_input: str = "concat",
) -> tuple[nn.Module, nn.Module]:
    """(generator, discriminator) of ``arch`` for the data's size; ``base_channels=None`` takes
    the architecture's default width (DEFAULT_WIDTH) for both networks."""
    require(arch in ARCHS,
            f"model.arch={arch!r} is not a GAN architecture; choose dcgan (Radford et al.'s "
            f"all-convolutional networks) or resnet (the SNGAN / WGAN-GP CIFAR-10 ResNets).")
    require(height == width and height in SIZES,
            f"The GAN networks (model.arch={arch}) need square images with a side of 16, 32, 64 "
            f"or 128 px, or 28 (MNIST: G generates 32 px and crops the centre, D pads back to "
            f"32), but the data is {height}x{width}; set data.resolution to one of these.")
    require(d_norm in D_NORMS, f"model.d_norm={d_norm!r} is not one of {', '.join(D_NORMS)}.")
    require(g_label_input in G_LABEL_INPUTS,  # checked here too: the ResNet G does not read it
            f"model.g_label_input={g_label_input!r} is not one of {', '.join(G_LABEL_INPUTS)}.")
    require(base_channels is None or base_channels >= 1,
            f"model.base_channels must be >= 1 (or null for the default), not {base_channels}.")
    base = DEFAULT_WIDTH[arch] if base_channels is None else base_channels
    if arch == "dcgan":
        return (DCGANGenerator(latent_dim, channels, height, base, num_classes, g_label_input),
                DCGANDiscriminator(channels, height, base, num_classes, d_norm, spectral_norm))
    require(d_norm == "none",
            f"model.arch=resnet's discriminator has no normalisation layers (spectral norm or "
            f"WGAN-GP's gradient penalty constrain it, as in the papers); set model.d_norm=none "
            f"or auto, not {d_norm!r}.")
    return (ResNetGenerator(latent_dim, channels, height, base, num_classes),
            ResNetDiscriminator(channels, height, base, num_classes, spectral_norm))
