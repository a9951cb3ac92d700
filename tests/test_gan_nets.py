"""GAN and pix2pix networks: shapes and ranges at every supported size, conditioning, the
DCGAN and WGAN-GP norm rules, spectral norm, init, factory errors, the pix2pix U-Net's levels,
skips and test-time dropout, and the PatchGAN's 70x70 receptive field. Tiny widths keep the
file fast on the CPU."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from gentrain.errors import GentrainError
from gentrain.nets.gan import (
    ConditionalBatchNorm,
    DCGANDiscriminator,
    DCGANGenerator,
    ResNetDiscriminator,
    ResNetGenerator,
    build_gan_networks,
)
from gentrain.nets.pix2pix import PatchDiscriminator, SkipBlock, UNetGenerator, receptive_field

LATENT, BASE, BATCH = 8, 4, 3
GENERATORS = {"dcgan": DCGANGenerator, "resnet": ResNetGenerator}
DISCRIMINATORS = {"dcgan": DCGANDiscriminator, "resnet": ResNetDiscriminator}


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def images(resolution: int, channels: int = 3) -> Tensor:
    return torch.rand(BATCH, channels, resolution, resolution) * 2 - 1


def count(module: nn.Module, kind: type[nn.Module]) -> int:
    return sum(isinstance(m, kind) for m in module.modules())


# -- GAN: shapes ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("arch", "resolution", "channels"), [
    ("dcgan", 28, 1), ("dcgan", 32, 3), ("dcgan", 64, 3), ("resnet", 28, 1), ("resnet", 32, 3),
])
def test_generators_and_discriminators_fit_the_data(arch: str, resolution: int,
                                                    channels: int) -> None:
    g = GENERATORS[arch](LATENT, channels, resolution, BASE)
    d = DISCRIMINATORS[arch](channels, resolution, BASE)
    fake = g(torch.randn(BATCH, LATENT))
    assert fake.shape == (BATCH, channels, resolution, resolution)
    assert fake.min() >= -1 and fake.max() <= 1 and fake.std() > 0
    logits = d(fake)
    assert logits.shape == (BATCH,) and torch.isfinite(logits).all()
    assert d(images(resolution, channels)).shape == (BATCH,)


def test_dcgan_widths_double_per_level_from_a_4x4_start() -> None:
    g, d = DCGANGenerator(100, 3, 64), DCGANDiscriminator(3, 64)
    transposed = [m for m in g.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert [m.out_channels for m in transposed] == [512, 256, 128, 64, 3]
    assert (transposed[0].kernel_size, transposed[0].stride) == ((4, 4), (1, 1))  # z -> 4x4
    convs = [m for m in d.modules() if isinstance(m, nn.Conv2d)]
    assert [m.out_channels for m in convs] == [64, 128, 256, 512, 1]
    assert convs[-1].kernel_size == (4, 4) and count(d, nn.Linear) == 0  # no FC layers


def test_dcgan_batch_norm_skips_g_output_and_d_input() -> None:
    g, d = DCGANGenerator(LATENT, 3, 32, BASE), DCGANDiscriminator(3, 32, BASE)
    assert count(g, nn.BatchNorm2d) == count(g, nn.ConvTranspose2d) - 1  # all but the output
    assert isinstance(g.net[-1], nn.Tanh)
    assert isinstance(d.features[0], nn.Conv2d) and isinstance(d.features[1], nn.LeakyReLU)
    assert count(d, nn.BatchNorm2d) == count(d, nn.Conv2d) - 2  # all but the input and logit


def test_dcgan_init_is_normal_0_02_with_norm_scales_around_one() -> None:
    g, d = DCGANGenerator(100, 3, 64), DCGANDiscriminator(3, 64)
    weights = torch.cat([m.weight.flatten() for net in (g, d) for m in net.modules()
                         if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)])
    assert weights.mean().abs() < 1e-3 and abs(weights.std().item() - 0.02) < 1e-3
    scales = torch.cat([m.weight for net in (g, d) for m in net.modules()
                        if isinstance(m, nn.BatchNorm2d)])
    assert abs(scales.mean().item() - 1) < 0.01 and abs(scales.std().item() - 0.02) < 0.01


# -- GAN: conditioning ---------------------------------------------------------------------------


def test_conditional_dcgan_generator_follows_the_label() -> None:
    g = DCGANGenerator(LATENT, 1, 28, BASE, num_classes=10).eval()
    z = torch.randn(BATCH, LATENT)
    zeros, ones = torch.zeros(BATCH, dtype=torch.long), torch.ones(BATCH, dtype=torch.long)
    assert torch.equal(g(z, zeros), g(z, zeros))
    assert not torch.allclose(g(z, zeros), g(z, ones))


def test_conditional_resnet_generator_starts_label_blind_then_follows_the_label() -> None:
    """Class-conditional batch norm starts at gain 1 and bias 0, the same for every class."""
    g = ResNetGenerator(LATENT, 3, 32, BASE, num_classes=10).eval()
    z = torch.randn(BATCH, LATENT)
    zeros, ones = torch.zeros(BATCH, dtype=torch.long), torch.ones(BATCH, dtype=torch.long)
    assert torch.equal(g(z, zeros), g(z, ones))
    with torch.no_grad():  # what training does: class 1's gains drift from class 0's
        g.blocks[0].bn1.gain.weight[1] += 0.5
    assert torch.equal(g(z, zeros), g(z, zeros))
    assert not torch.allclose(g(z, zeros), g(z, ones))


def test_dcgan_generator_with_conditional_batch_norm_takes_the_label_only_there() -> None:
    """g_label_input=batchnorm: every batch norm of G is class-conditional (gain 1, bias 0 at
    first, so a fresh G is label-blind), no label embedding joins z, and the width of the first
    layer is z's alone; moving one class's shift changes that class's images only."""
    g = DCGANGenerator(LATENT, 3, 32, BASE, num_classes=6, label_input="batchnorm").eval()
    norms = [m for m in g.modules() if isinstance(m, ConditionalBatchNorm)]
    assert len(norms) == count(g, nn.ConvTranspose2d) - 1 and g.embed is None
    assert g.net[0].in_channels == LATENT
    z = torch.randn(BATCH, LATENT)
    zeros, ones = torch.zeros(BATCH, dtype=torch.long), torch.ones(BATCH, dtype=torch.long)
    assert torch.equal(g(z, zeros), g(z, ones))
    before = g(z, zeros)
    with torch.no_grad():
        norms[0].bias.weight[1] += 0.5
    assert torch.equal(g(z, zeros), before)
    assert not torch.allclose(g(z, ones), before)


@pytest.mark.parametrize("arch", ["dcgan", "resnet"])
def test_unknown_g_label_input_is_a_config_error(arch: str) -> None:
    with pytest.raises(GentrainError, match="g_label_input"):
        build_gan_networks(arch, LATENT, 3, 32, 32, 6, BASE, "none", False, "film")


@pytest.mark.parametrize("arch", ["dcgan", "resnet"])
def test_projection_discriminator_depends_on_the_label(arch: str) -> None:
    d = DISCRIMINATORS[arch](3, 32, BASE, num_classes=10).eval()
    x = images(32)
    zeros, ones = torch.zeros(BATCH, dtype=torch.long), torch.ones(BATCH, dtype=torch.long)
    assert d(x, zeros).shape == (BATCH,)
    assert not torch.allclose(d(x, zeros), d(x, ones))


def test_projection_adds_the_label_embedding_dotted_with_summed_features() -> None:
    """logit(x, y) - logit(x, y') = <embed(y) - embed(y'), sum_xy h> for the ResNet D."""
    d = ResNetDiscriminator(3, 32, BASE, num_classes=10, spectral_norm=False)
    x, y, other = images(32), torch.full((BATCH,), 2), torch.full((BATCH,), 7)
    h = torch.relu(d.blocks(x)).sum(dim=(2, 3))
    expected = ((d.embed(y) - d.embed(other)) * h).sum(dim=1)
    torch.testing.assert_close(d(x, y) - d(x, other), expected)


def test_label_mismatches_are_caller_errors() -> None:
    with pytest.raises(ValueError, match="needs labels"):
        DCGANGenerator(LATENT, 3, 32, BASE, num_classes=10)(torch.randn(2, LATENT))
    with pytest.raises(ValueError, match="unconditional"):
        ResNetDiscriminator(3, 32, BASE)(images(32), torch.zeros(BATCH, dtype=torch.long))


# -- GAN: critics and spectral norm --------------------------------------------------------------


def test_wgan_gp_critic_config_has_no_batch_norm() -> None:
    _, d = build_gan_networks("dcgan", LATENT, 3, 32, 32, 0, BASE, "layer", False)
    assert count(d, nn.BatchNorm2d) == 0
    groups = [m for m in d.modules() if isinstance(m, nn.GroupNorm)]
    assert groups and all(m.num_groups == 1 for m in groups)
    # Per-sample: one example's logit ignores the rest of the batch, even in training mode.
    x = images(32)
    torch.testing.assert_close(d(x)[:1], d(x[:1]))
    _, d = build_gan_networks("resnet", LATENT, 3, 32, 32, 0, BASE, "none", False)
    assert count(d, nn.BatchNorm2d) == count(d, nn.GroupNorm) == 0


@pytest.mark.parametrize(("arch", "d_norm"), [("dcgan", "batch"), ("resnet", "none")])
@pytest.mark.parametrize("spectral", [True, False])
def test_spectral_norm_on_every_weight_layer_of_d_when_requested(
    arch: str, d_norm: str, spectral: bool
) -> None:
    _, d = build_gan_networks(arch, LATENT, 3, 32, 32, 10, BASE, d_norm, spectral)
    layers = [m for m in d.modules() if isinstance(m, nn.Conv2d | nn.Linear | nn.Embedding)]
    assert layers and all(parametrize.is_parametrized(m, "weight") == spectral for m in layers)
    assert d(images(32), torch.arange(BATCH)).shape == (BATCH,)


def test_resnet_discriminator_pools_to_8x8_then_two_more_blocks() -> None:
    d = ResNetDiscriminator(3, 64, BASE, spectral_norm=False)
    sides = []
    for block in d.blocks:
        block.register_forward_hook(lambda _m, _i, out: sides.append(out.shape[-1]))
    d(images(64))
    assert sides == [32, 16, 8, 8, 8]


# -- GAN: factory errors -------------------------------------------------------------------------


def test_factory_rejects_unknown_arch_and_unsupported_sizes() -> None:
    with pytest.raises(GentrainError, match="model.arch='stylegan'"):
        build_gan_networks("stylegan", LATENT, 3, 32, 32, 0, None, "batch", False)
    with pytest.raises(GentrainError) as error:
        build_gan_networks("dcgan", LATENT, 3, 48, 48, 0, None, "batch", False)
    assert "48x48" in str(error.value) and "data.resolution" in str(error.value)
    with pytest.raises(GentrainError, match="32x64"):
        build_gan_networks("resnet", LATENT, 3, 32, 64, 0, None, "none", True)
    with pytest.raises(GentrainError, match="model.d_norm"):
        build_gan_networks("resnet", LATENT, 3, 32, 32, 0, None, "batch", True)
    with pytest.raises(GentrainError, match="data.resolution"):
        ResNetGenerator(LATENT, 3, 48, BASE)


# -- pix2pix U-Net -------------------------------------------------------------------------------


@pytest.mark.parametrize(("resolution", "levels"), [(256, 8), (32, 5), (28, 5)])
def test_unet_keeps_the_size_with_one_level_per_halving(resolution: int, levels: int) -> None:
    g = UNetGenerator(3, 2, resolution, base_channels=BASE).eval()
    assert g.num_down == levels
    assert count(g, nn.Conv2d) == count(g, nn.ConvTranspose2d) == levels
    out = g(images(resolution)[:1])
    assert out.shape == (1, 2, resolution, resolution)
    assert out.min() >= -1 and out.max() <= 1


def test_unet_widths_and_dropout_follow_the_paper_at_256() -> None:
    g = UNetGenerator(3, 3, 256)  # base 64: building it is cheap, running it is not
    encoder = [m.out_channels for m in g.modules() if isinstance(m, nn.Conv2d)]
    assert encoder == [64, 128, 256, 512, 512, 512, 512, 512]
    # Each level registers down, inner levels, up: the up-convs come innermost first.
    decoder = [m.out_channels for m in g.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert decoder == [512, 512, 512, 512, 256, 128, 64, 3]
    blocks = [m for m in g.modules() if isinstance(m, SkipBlock)][::-1]  # innermost first
    dropped = [any(isinstance(m, nn.Dropout) for m in b.up) for b in blocks]
    assert dropped == [True] * 3 + [False] * 5  # CD512-CD512-CD512-C512-C256-C128-C64-out


def test_every_inner_unet_level_concatenates_its_input() -> None:
    """The skip connections: each level's output starts with its input, unchanged."""
    g = UNetGenerator(3, 3, 32, base_channels=BASE)
    checked = []

    def check(block: nn.Module, inputs: tuple[Tensor], output: Tensor) -> None:
        (x,) = inputs
        assert output.shape[1] == 2 * x.shape[1] and torch.equal(output[:, : x.shape[1]], x)
        checked.append(block)

    for block in g.modules():
        if isinstance(block, SkipBlock) and not block.outermost:
            block.register_forward_hook(check)
    g(images(32))
    assert len(checked) == g.num_down - 1


def test_enable_dropout_makes_eval_outputs_random() -> None:
    g = UNetGenerator(3, 3, 32, base_channels=BASE).eval()
    source = images(32)
    assert torch.equal(g(source), g(source))  # eval: deterministic
    g.enable_dropout()
    assert not torch.equal(g(source), g(source))  # the paper's test-time noise
    assert not any(m.training for m in g.modules() if isinstance(m, nn.BatchNorm2d))


def test_instance_norm_has_conv_biases_and_batch_norm_has_none() -> None:
    def inner_convs(g: UNetGenerator) -> list[nn.Module]:  # all but G's first and last
        return [m for m in g.modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)][1:-1]

    batch, instance = (UNetGenerator(3, 3, 32, BASE, norm=n) for n in ("batch", "instance"))
    assert all(m.bias is None for m in inner_convs(batch))
    assert all(m.bias is not None for m in inner_convs(instance))
    instance_norms = [m for m in instance.modules() if isinstance(m, nn.InstanceNorm2d)]
    assert instance_norms and not any(m.affine for m in instance_norms)
    with pytest.raises(GentrainError, match="model.norm"):
        UNetGenerator(3, 3, 32, BASE, norm="layer")


# -- PatchGAN ------------------------------------------------------------------------------------


def test_patchgan_gives_a_30x30_map_at_256() -> None:
    d = PatchDiscriminator(6, base_channels=BASE)
    assert d(torch.randn(1, 6, 256, 256)).shape == (1, 1, 30, 30)
    convs = [m for m in d.modules() if isinstance(m, nn.Conv2d)]
    assert [m.stride[0] for m in convs] == [2, 2, 2, 1, 1]
    assert [m.out_channels for m in convs] == [BASE, 2 * BASE, 4 * BASE, 8 * BASE, 1]
    assert isinstance(d.net[1], nn.LeakyReLU)  # no norm on the first layer


def test_patchgan_receptive_field_is_70_analytically_and_empirically() -> None:
    assert [receptive_field(n) for n in range(1, 6)] == [16, 34, 70, 142, 286]
    # Eval mode: batch norm on running statistics is per-pixel, so only the convs spread.
    d = PatchDiscriminator(2, base_channels=BASE).double().eval()
    x = torch.randn(1, 2, 128, 128, dtype=torch.float64, requires_grad=True)
    logits = d(x)
    middle = logits.shape[-1] // 2
    (grad,) = torch.autograd.grad(logits[0, 0, middle, middle], x)
    rows, cols = grad.abs().sum(dim=(0, 1)).nonzero(as_tuple=True)
    assert rows.max() - rows.min() + 1 == receptive_field(3) == 70
    assert cols.max() - cols.min() + 1 == 70
