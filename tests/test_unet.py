"""The DDPM U-Net: shapes at every data size, the paper's parameter count, the size-ladder
configs, the zero init, label conditioning, attention placement, memory formats, bf16 and
errors. Small widths keep the file fast on the CPU."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from gentrain.errors import GentrainError
from gentrain.nets.unet import AttnBlock, ResBlock, UNet, timestep_embedding

NET_CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "model" / "net"
DDPM_CIFAR10_PARAMETERS = 35_746_307  # the paper's CIFAR-10 model, counted in its TF code


def build(**overrides: Any) -> UNet:
    """A small U-Net (two levels, width 16, no attention) with ``overrides`` applied."""
    kwargs: dict[str, Any] = dict(
        in_channels=3, out_channels=3, resolution=32, base_channels=16, channel_mult=(1, 2),
        num_res_blocks=1, attention_resolutions=(), dropout=0.0,
    )
    kwargs.update(overrides)
    torch.manual_seed(0)
    return UNet(**kwargs)


def perturbed(net: UNet, scale: float = 0.05) -> UNet:
    """Add noise to every weight (so zero-initialised layers stop hiding the inputs), eval mode."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * scale)
    return net.eval()


def inputs(batch: int, channels: int, side: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(batch, channels, side, side, generator=generator)
    t = torch.randint(0, 1000, (batch,), generator=generator)
    return x, t


def num_parameters(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize("side", [28, 32, 64])
@pytest.mark.parametrize("num_classes", [0, 10])
def test_output_shape_equals_input_shape(side: int, num_classes: int) -> None:
    """With the default channel ladder of each size (28 is padded to 32, then cropped back)."""
    net = build(resolution=side, channel_mult=None, num_classes=num_classes,
                attention_resolutions=(16,))
    x, t = inputs(2, 3, side)
    label = torch.tensor([0, 9]) if num_classes else None
    assert net(x, t, label).shape == x.shape


def test_output_has_out_channels() -> None:
    net = build(in_channels=1, out_channels=2, resolution=28)
    x, t = inputs(2, 1, 28)
    assert net(x, t).shape == (2, 2, 28, 28)


def test_paper_size_has_the_ddpm_cifar10_parameter_count() -> None:
    """Within 1% of the paper's 35,746,307 (the layout matches, so the count is exact)."""
    net = UNet(in_channels=3, out_channels=3, resolution=32)
    assert num_parameters(net) == pytest.approx(DDPM_CIFAR10_PARAMETERS, rel=0.01)


@pytest.mark.parametrize("name", ["tiny", "small", "paper"])
def test_size_config_instantiates_and_runs_at_32px(name: str) -> None:
    partial = instantiate(OmegaConf.load(NET_CONFIGS / f"{name}.yaml"))
    net = partial(in_channels=3, out_channels=3, resolution=32, num_classes=0).eval()
    x, t = inputs(1, 3, 32)
    with torch.no_grad():
        assert net(x, t).shape == x.shape


@pytest.mark.parametrize("side", [8, 16, 28, 32])
def test_tiny_config_runs_at_every_test_size(side: int) -> None:
    partial = instantiate(OmegaConf.load(NET_CONFIGS / "tiny.yaml"))
    net = partial(in_channels=1, out_channels=1, resolution=side, num_classes=4)
    x, t = inputs(2, 1, side)
    assert net(x, t, torch.tensor([0, 3])).shape == x.shape


def test_small_config_is_about_two_million_parameters() -> None:
    partial = instantiate(OmegaConf.load(NET_CONFIGS / "small.yaml"))
    net = partial(in_channels=3, out_channels=3, resolution=32, num_classes=0)
    assert 1.8e6 <= num_parameters(net) <= 2.5e6


def test_fresh_net_outputs_exactly_zero() -> None:
    """The output conv starts at zero weight and bias (the paper's init_scale=0)."""
    net = build(num_classes=10, attention_resolutions=(16,))
    x, t = inputs(2, 3, 32)
    assert torch.equal(net(x, t, torch.tensor([1, 2])), torch.zeros_like(x))


def test_residual_branches_start_as_identity() -> None:
    """Zero-initialised last convs make every attention block the identity and every res
    block its skip path (identity or 1x1 conv) at initialisation."""
    net = build(attention_resolutions=(16,))
    attention = [m for m in net.modules() if isinstance(m, AttnBlock)]
    residual = [m for m in net.modules() if isinstance(m, ResBlock)]
    assert attention and residual
    temb = torch.randn(2, 64)
    for block in attention:
        x = torch.randn(2, block.norm.num_channels, 8, 8)
        assert torch.equal(block(x), x)
    for block in residual:
        x = torch.randn(2, block.norm1.num_channels, 8, 8)
        assert torch.equal(block(x, temb), block.skip(x))


def test_labels_are_wired_and_none_means_the_null_token() -> None:
    net = perturbed(build(num_classes=10))
    x, t = inputs(2, 3, 32)
    with torch.no_grad():
        first = net(x, t, torch.tensor([0, 0]))
        second = net(x, t, torch.tensor([5, 5]))
        unlabelled = net(x, t)
        null = net(x, t, torch.full((2,), 10))
    assert not torch.allclose(first, second)
    assert torch.equal(unlabelled, null)


def test_unconditional_net_rejects_labels() -> None:
    net = build()
    x, t = inputs(2, 3, 32)
    with pytest.raises(ValueError, match="unconditional"):
        net(x, t, torch.tensor([0, 1]))


def test_timestep_changes_output_and_long_equals_float() -> None:
    net = perturbed(build())
    x, _ = inputs(2, 3, 32)
    with torch.no_grad():
        early = net(x, torch.tensor([3, 3]))
        assert torch.equal(early, net(x, torch.tensor([3.0, 3.0])))
        assert not torch.allclose(early, net(x, torch.tensor([900, 900])))


def test_timestep_embedding_formula() -> None:
    t = torch.tensor([0, 7, 999])
    emb = timestep_embedding(t, 8)
    freqs = torch.exp(-math.log(10000.0) * torch.arange(4) / 3)
    expected = torch.cat([torch.sin(t[:, None] * freqs), torch.cos(t[:, None] * freqs)], dim=1)
    assert emb.shape == (3, 8)
    torch.testing.assert_close(emb, expected)


@pytest.mark.parametrize(("side", "resolutions", "expected"), [
    (32, (16,), {16: 5, 4: 1}),       # 2 down + 3 up blocks at 16x16, plus the middle at 4x4
    (28, (16,), {16: 5, 4: 1}),       # sides of the padded 32
    (32, (16, 8), {16: 5, 8: 5, 4: 1}),
    (32, (), {4: 1}),                 # the middle always attends
])
def test_attention_runs_at_the_requested_resolutions(
        side: int, resolutions: tuple[int, ...], expected: dict[int, int]) -> None:
    net = build(resolution=side, channel_mult=None, num_res_blocks=2,
                attention_resolutions=resolutions)
    seen: dict[int, int] = {}

    def record(module: torch.nn.Module, args: tuple[torch.Tensor]) -> None:
        seen[args[0].shape[-1]] = seen.get(args[0].shape[-1], 0) + 1

    for module in net.modules():
        if isinstance(module, AttnBlock):
            module.register_forward_pre_hook(record)
    net(*inputs(1, 3, side))
    assert seen == expected


@pytest.mark.parametrize("heads", [1, 2])
def test_attention_matches_softmax_reference(heads: int) -> None:
    torch.manual_seed(0)
    block = AttnBlock(32, heads)
    torch.nn.init.normal_(block.proj_out.weight, std=0.2)
    x = torch.randn(2, 32, 4, 4)
    with torch.no_grad():
        q, k, v = block.qkv(block.norm(x)).flatten(2).chunk(3, dim=1)  # (B, C, HW) each
        q, k, v = (z.unflatten(1, (heads, 32 // heads)) for z in (q, k, v))
        weights = torch.softmax(torch.einsum("bhci,bhcj->bhij", q, k) / math.sqrt(32 / heads), -1)
        attended = torch.einsum("bhij,bhcj->bhci", weights, v).reshape(2, 32, 4, 4)
        expected = x + block.proj_out(attended)
        torch.testing.assert_close(block(x), expected)


@pytest.mark.parametrize("side", [28, 32])
def test_channels_last_matches_contiguous(side: int) -> None:
    net = perturbed(build(resolution=side, channel_mult=None, num_classes=3,
                         attention_resolutions=(16,)))
    x, t = inputs(2, 3, side)
    label = torch.tensor([0, 2])
    with torch.no_grad():
        reference = net(x, t, label)
        cl_input = net(x.contiguous(memory_format=torch.channels_last), t, label)
        net.to(memory_format=torch.channels_last)
        cl_both = net(x.contiguous(memory_format=torch.channels_last), t, label)
    torch.testing.assert_close(cl_input, reference, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(cl_both, reference, rtol=1e-4, atol=1e-5)


def test_bf16_autocast_forward_and_backward_are_finite() -> None:
    net = perturbed(build(num_classes=3, attention_resolutions=(16,))).train()
    x, t = inputs(2, 3, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x, t, torch.tensor([0, 1]))
    out.float().square().mean().backward()
    assert torch.isfinite(out).all()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)


@pytest.mark.parametrize(("overrides", "key"), [
    ({"attention_resolutions": (12,)}, "model.net.attention_resolutions"),
    ({"resolution": 28, "channel_mult": None, "attention_resolutions": (14,)},
     "model.net.attention_resolutions"),
    ({"resolution": 0}, "resolution"),
    ({"in_channels": 0}, "in_channels"),
    ({"num_classes": -1}, "num_classes"),
    ({"base_channels": 48}, "model.net.base_channels"),
    ({"base_channels": 6}, "model.net.base_channels"),
    ({"base_channels": 0}, "model.net.base_channels"),
    ({"channel_mult": ()}, "model.net.channel_mult"),
    ({"channel_mult": (1, 0)}, "model.net.channel_mult"),
    ({"num_res_blocks": 0}, "model.net.num_res_blocks"),
    ({"dropout": 1.0}, "model.net.dropout"),
    ({"dropout": -0.1}, "model.net.dropout"),
    ({"attention_heads": 0}, "model.net.attention_heads"),
    ({"attention_heads": 3, "attention_resolutions": (16,)}, "model.net.attention_heads"),
    ({"attention_heads": 64}, "model.net.attention_heads"),  # the middle's width is 32
])
def test_bad_values_raise_a_gentrain_error_naming_the_key(
        overrides: dict[str, Any], key: str) -> None:
    with pytest.raises(GentrainError, match=key.replace(".", r"\.")):
        build(**overrides)
