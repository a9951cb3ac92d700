"""Flow networks (Glow, RealNVP): every layer inverts and its log-det equals a brute-force
Jacobian log-determinant, actnorm's data-dependent init (order, checkpoint), log p(x) against
change of variables computed another way, sampling, and the sizes of the datasets. Tiny nets
on 4x4 to 16x16 images, in double precision where values are compared."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn
from torch.autograd.functional import jacobian

from gentrain.nets.flow import (
    ActNorm,
    AffineCoupling,
    FlowStep,
    Glow,
    InvConv1x1,
    MultiScaleFlow,
    RealNVP,
    Squeeze,
)

TINY = dict(steps=2, hidden=8)


def perturbed(module: nn.Module, scale: float = 0.1) -> nn.Module:
    """Double precision, every actnorm marked initialised and noise on every parameter, so the
    zero-initialised last layers and priors stop making the maps trivial."""
    torch.manual_seed(0)
    module = module.double()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, ActNorm):
                m.initialized.fill_(True)
        for parameter in module.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator,
                                       dtype=parameter.dtype) * scale)
    return module


def randn(*shape: int, seed: int = 2) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed),
                       dtype=torch.float64)


def brute_logdet(f: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """log|det| of f's Jacobian per example (B,), f mapping (B, ...) to (B, D)."""
    b, d = x.shape[0], x[0].numel()
    jac = jacobian(f, x).reshape(b, d, b, d)
    return torch.stack([torch.linalg.slogdet(jac[i, :, i])[1] for i in range(b)])


def cond_maps(batch: int) -> Tensor:
    return torch.nn.functional.one_hot(torch.arange(batch) % 3, 3).double()[:, :, None, None]


# (name, layer, whether it takes cond); input (2, 4, 4, 4).
LAYERS: dict[str, tuple[Callable[[], nn.Module], bool]] = {
    "squeeze": (Squeeze, False),
    "actnorm": (lambda: ActNorm(4), False),
    "invconv-lu": (lambda: InvConv1x1(4, lu=True), False),
    "invconv-full": (lambda: InvConv1x1(4, lu=False), False),
    "channel-affine": (lambda: AffineCoupling(4, 8), False),
    "channel-additive-odd": (lambda: AffineCoupling(4, 8, affine=False, parity=1), False),
    "checkerboard-affine": (lambda: AffineCoupling(4, 8, mask="checkerboard"), False),
    "checkerboard-additive-odd": (
        lambda: AffineCoupling(4, 8, affine=False, mask="checkerboard", parity=1), False),
    "checkerboard-resnet-conditional": (
        lambda: AffineCoupling(4, 8, mask="checkerboard", cond_channels=3, blocks=1), True),
    "channel-conditional": (lambda: AffineCoupling(4, 8, parity=1, cond_channels=3), True),
    "flowstep-affine-lu": (lambda: FlowStep(4, 8), False),
    "flowstep-additive-full": (lambda: FlowStep(4, 8, affine=False, lu=False), False),
}


def layer_and_input(name: str) -> tuple[nn.Module, Tensor, Tensor | None]:
    make, conditional = LAYERS[name]
    x = randn(2, 4, 4, 4)
    return perturbed(make()), x, cond_maps(2) if conditional else None


@pytest.mark.parametrize("name", LAYERS)
def test_layer_inverts_and_is_not_the_identity(name: str) -> None:
    layer, x, cond = layer_and_input(name)
    y, logdet = layer(x, cond)
    assert logdet.shape == (2,)
    assert torch.allclose(layer.inverse(y, cond), x, atol=1e-5, rtol=0)
    if y.shape == x.shape:
        assert (y - x).abs().max() > 1e-2


@pytest.mark.parametrize("name", LAYERS)
def test_layer_logdet_equals_the_jacobian_log_determinant(name: str) -> None:
    layer, x, cond = layer_and_input(name)
    _, logdet = layer(x, cond)
    expected = brute_logdet(lambda t: layer(t, cond)[0].flatten(1), x)
    assert torch.allclose(logdet, expected, atol=1e-8, rtol=0)
    if name.startswith(("actnorm", "invconv", "checkerboard-affine", "channel-affine")):
        assert logdet.abs().min() > 1e-3  # a trivially zero log-det would also "match"


def test_affine_coupling_scale_is_sigmoid_of_raw_plus_two_at_init() -> None:
    """Glow's code: a zero NN output gives scale sigmoid(2) on the transformed half."""
    torch.manual_seed(0)
    coupling = AffineCoupling(4, 8).double()
    for m in coupling.modules():
        if isinstance(m, ActNorm):
            m.initialize(randn(2, 8, 4, 4))
    x = randn(2, 4, 4, 4)
    y, logdet = coupling(x)
    scale = torch.sigmoid(torch.tensor(2.0, dtype=torch.float64))
    assert torch.equal(y[:, :2], x[:, :2])
    assert torch.allclose(y[:, 2:], x[:, 2:] * scale)
    assert torch.allclose(logdet, torch.full((2,), 2 * 16 * math.log(scale), dtype=torch.float64))


def test_actnorm_init_normalises_the_batch_and_survives_a_state_dict() -> None:
    x = randn(8, 3, 5, 5) * torch.tensor([0.5, 2.0, 7.0]).view(1, 3, 1, 1).double() + 3.0
    norm = ActNorm(3).double()
    with pytest.raises(RuntimeError, match="data-dependent init has not run"):
        norm(x)
    norm.initialize(x)
    y, _ = norm(x)
    assert torch.allclose(y.mean(dim=(0, 2, 3)), torch.zeros(3, dtype=y.dtype), atol=1e-5)
    assert torch.allclose(y.std(dim=(0, 2, 3), unbiased=False), torch.ones(3, dtype=y.dtype),
                          atol=1e-5)

    state = norm.state_dict()
    assert bool(state["initialized"])
    fresh = ActNorm(3).double()
    fresh.load_state_dict(state)
    assert bool(fresh.initialized)
    assert torch.equal(fresh(x)[0], y)
    # Loading an uninitialised state makes a used module refuse again.
    norm.load_state_dict(ActNorm(3).double().state_dict())
    with pytest.raises(RuntimeError, match="data-dependent init"):
        norm.inverse(x)


def test_glow_refuses_to_run_before_its_actnorms_are_initialised() -> None:
    glow = Glow(1, levels=2, image_size=(8, 8), **TINY)
    with pytest.raises(RuntimeError, match="data-dependent init has not run"):
        glow.log_prob(torch.randn(2, 1, 8, 8))


@pytest.mark.parametrize("arch", ["glow", "realnvp"])
def test_initialize_actnorms_initialises_every_actnorm_in_order(arch: str) -> None:
    """Each actnorm normalises the activations it sees after the ones before it were set."""
    torch.manual_seed(0)
    net: MultiScaleFlow
    if arch == "glow":
        net = Glow(3, levels=2, image_size=(8, 8), **TINY).double()
    else:
        net = RealNVP(3, scales=2, hidden=8, blocks=1, image_size=(8, 8)).double()
    norms = list(net.actnorms())
    assert norms and not any(bool(a.initialized) for a in norms)
    x = randn(16, 3, 8, 8) * 0.3 + 0.1
    net.initialize_actnorms(x)
    assert all(bool(a.initialized) for a in norms)

    outputs: list[Tensor] = []
    handles = [a.register_forward_hook(lambda m, args, out: outputs.append(out[0]))
               for a in norms]
    net(x)
    for handle in handles:
        handle.remove()
    assert len(outputs) == len(norms)
    for y in outputs:
        assert torch.allclose(y.mean(dim=(0, 2, 3)), torch.zeros(y.shape[1], dtype=y.dtype),
                              atol=1e-6)
        assert torch.allclose(y.std(dim=(0, 2, 3), unbiased=False),
                              torch.ones(y.shape[1], dtype=y.dtype), atol=1e-5)


def tiny_flows() -> dict[str, MultiScaleFlow]:
    """Perturbed double-precision flows on (2, 4, 4) images (D = 32)."""
    torch.manual_seed(0)
    return {
        "glow": perturbed(Glow(2, levels=2, image_size=(4, 4), **TINY)),
        "glow-additive-fixed-top-full-conv": perturbed(Glow(
            2, levels=2, image_size=(4, 4), affine=False, lu=False, learn_prior=False, **TINY)),
        "glow-conditional": perturbed(Glow(2, levels=2, image_size=(4, 4), num_classes=3,
                                           **TINY)),
        "realnvp": perturbed(RealNVP(2, scales=2, hidden=8, blocks=1, image_size=(4, 4))),
        "realnvp-additive-conditional": perturbed(RealNVP(
            2, scales=2, hidden=8, blocks=1, affine=False, num_classes=3, image_size=(4, 4))),
    }


FLOWS = list(tiny_flows())


def flow_and_input(name: str) -> tuple[MultiScaleFlow, Tensor, Tensor | None]:
    net = tiny_flows()[name]
    label = torch.tensor([0, 2]) if net.num_classes else None
    return net, randn(2, 2, 4, 4), label


@pytest.mark.parametrize("name", FLOWS)
def test_flow_inverts(name: str) -> None:
    net, x, label = flow_and_input(name)
    latents, logdet = net(x, label)
    assert [tuple(z.shape[1:]) for z in latents] == net.latent_shapes
    assert torch.allclose(net.inverse(latents, label), x, atol=1e-5, rtol=0)
    assert logdet.abs().min() > 1e-2


def latents_and_priors(net: MultiScaleFlow, x: Tensor, label: Tensor | None
                       ) -> tuple[list[Tensor], Tensor, list[tuple[Tensor, Tensor]]]:
    """forward's latents and logdet, and each latent's prior (mean, log_std) evaluated here:
    a split prior on its kept half, read as the next level's input."""
    kept: list[Tensor] = []
    hooks = [level[0].register_forward_pre_hook(lambda m, args: kept.append(args[0]))
             for level in net.levels[1:]]
    latents, logdet = net(x, label)
    for hook in hooks:
        hook.remove()
    if isinstance(net, Glow):
        priors = [net.split_priors[i](h) for i, h in enumerate(kept)]
        priors.append(net.top_prior(label, x))
    else:
        priors = [(torch.zeros(()), torch.zeros(()))] * len(latents)  # N(0, 1), the paper's
    return latents, logdet, priors


@pytest.mark.parametrize("name", FLOWS)
def test_log_prob_is_prior_density_plus_jacobian_log_determinant(name: str) -> None:
    """The log-det from the Jacobian of x -> all latents, densities from torch.distributions."""
    net, x, label = flow_and_input(name)
    latents, logdet, priors = latents_and_priors(net, x, label)
    log_prior = sum(
        torch.distributions.Normal(mean, log_std.exp()).log_prob(z).flatten(1).sum(1)
        for z, (mean, log_std) in zip(latents, priors, strict=True))
    jac_logdet = brute_logdet(lambda t: torch.cat([z.flatten(1) for z in net(t, label)[0]], 1), x)
    assert torch.allclose(logdet, jac_logdet, atol=1e-8, rtol=0)
    assert torch.allclose(net.log_prob(x, label), log_prior + jac_logdet, atol=1e-8, rtol=0)


@pytest.mark.parametrize("name", FLOWS)
def test_sample_latents_follow_the_priors_at_the_temperature(name: str) -> None:
    """Samples mapped back to latents and standardised by their priors are N(0, T^2): the
    priors moved well away from N(0, 1) first, so ignoring them would show."""
    net, _, _ = flow_and_input(name)
    generator = torch.Generator().manual_seed(3)
    if isinstance(net, Glow):
        with torch.no_grad():
            for parameter in [*net.top_prior.parameters(),
                              *(prior.conv.conv.bias for prior in net.split_priors)]:
                parameter.add_(torch.randn(parameter.shape, generator=generator,
                                           dtype=parameter.dtype) * 0.5)
    n, temperature = 512, 0.5
    label = torch.arange(n) % 3 if net.num_classes else None
    x = net.sample(n, temperature, label, generator)
    latents, _, priors = latents_and_priors(net, x, label)
    r = torch.cat([((z - mean) * torch.exp(-log_std)).flatten(1)
                   for z, (mean, log_std) in zip(latents, priors, strict=True)], 1)
    assert r.mean(0).abs().max() < 4 * temperature / math.sqrt(n)
    assert r.std().item() == pytest.approx(temperature, rel=0.03)


def test_flows_invert_in_single_precision() -> None:
    """16x16 RGB after the data-dependent init and some training-sized parameter noise."""
    torch.manual_seed(0)
    x = torch.rand(8, 3, 16, 16) - 0.5
    nets = [Glow(3, levels=2, steps=2, hidden=16, image_size=(16, 16)),
            RealNVP(3, scales=2, hidden=16, blocks=2, image_size=(16, 16))]
    generator = torch.Generator().manual_seed(1)
    for net in nets:
        net.initialize_actnorms(x)
        with torch.no_grad():
            for parameter in net.parameters():
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.02)
            assert torch.allclose(net.inverse(net(x)[0]), x, atol=1e-5, rtol=0)


def test_glow_density_integrates_to_one() -> None:
    """A one-level Glow on 2x2 grey images (D = 4): a Riemann sum of exp(log p) over a grid."""
    net = perturbed(Glow(1, levels=1, image_size=(2, 2), **TINY), scale=0.05)
    axis = torch.linspace(-7, 7, 29, dtype=torch.float64)
    grid = torch.cartesian_prod(axis, axis, axis, axis).reshape(-1, 1, 2, 2)
    with torch.no_grad():
        mass = net.log_prob(grid).exp().sum() * (axis[1] - axis[0]) ** 4
    assert mass.item() == pytest.approx(1.0, abs=1e-3)


def test_class_conditional_prior_depends_on_the_label() -> None:
    net, x, _ = flow_and_input("glow-conditional")
    assert not torch.allclose(net.log_prob(x, torch.tensor([0, 0])),
                              net.log_prob(x, torch.tensor([1, 1])))
    with pytest.raises(ValueError, match="pass label"):
        net.log_prob(x)
    with pytest.raises(ValueError, match="unconditional"):
        tiny_flows()["glow"].log_prob(x, torch.tensor([0, 0]))


@pytest.mark.parametrize("name", FLOWS)
def test_samples_are_finite_reproducible_and_deterministic_at_temperature_zero(
        name: str) -> None:
    net, _, _ = flow_and_input(name)
    label = torch.tensor([0, 1, 2]) if net.num_classes else None
    first = net.sample(3, label=label, generator=torch.Generator().manual_seed(5))
    again = net.sample(3, label=label, generator=torch.Generator().manual_seed(5))
    assert first.shape == (3, 2, 4, 4)
    assert torch.isfinite(first).all()
    assert torch.equal(first, again)
    assert not torch.allclose(first[0], first[1])
    cold = net.sample(3, temperature=0.0, label=None if label is None else label.new_zeros(3))
    assert torch.allclose(cold, cold[:1].expand_as(cold), atol=1e-12)


@pytest.mark.parametrize(("arch", "channels", "side", "depth", "shapes"), [
    ("glow", 1, 28, 2, [(2, 14, 14), (8, 7, 7)]),
    ("glow", 3, 32, 3, [(6, 16, 16), (12, 8, 8), (48, 4, 4)]),
    ("glow", 3, 16, 2, [(6, 8, 8), (24, 4, 4)]),
    ("realnvp", 1, 28, 3, [(2, 14, 14), (4, 7, 7), (4, 7, 7)]),
    ("realnvp", 3, 32, 3, [(6, 16, 16), (12, 8, 8), (12, 8, 8)]),
    ("realnvp", 3, 16, 2, [(6, 8, 8), (6, 8, 8)]),
])
def test_dataset_sizes(arch: str, channels: int, side: int, depth: int,
                       shapes: list[tuple[int, int, int]]) -> None:
    """MNIST (28 -> 14 -> 7), CIFAR-10 and 16 px; depth is Glow's levels, RealNVP's scales."""
    torch.manual_seed(0)
    net: MultiScaleFlow
    if arch == "glow":
        net = Glow(channels, levels=depth, steps=1, hidden=8, image_size=(side, side))
    else:
        net = RealNVP(channels, scales=depth, hidden=8, blocks=1, image_size=(side, side))
    x = torch.randn(2, channels, side, side)
    net.initialize_actnorms(x)
    latents, logdet = net(x)
    assert [tuple(z.shape[1:]) for z in latents] == shapes == net.latent_shapes
    assert sum(z[0].numel() for z in latents) == x[0].numel()
    assert logdet.shape == (2,)
    assert net.sample(2).shape == x.shape


def test_bad_sizes_are_rejected() -> None:
    with pytest.raises(ValueError, match="divisible by 8"):
        Glow(1, levels=3, image_size=(28, 28), **TINY)
    with pytest.raises(ValueError, match="divisible by 8"):
        RealNVP(1, scales=4, hidden=8, image_size=(28, 28))
    net = Glow(1, levels=2, image_size=(8, 8), **TINY)
    with pytest.raises(ValueError, match=r"built for images of shape \(1, 8, 8\)"):
        net(torch.randn(2, 1, 16, 16))
