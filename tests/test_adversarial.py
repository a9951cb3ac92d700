"""GAN objectives against hand computations, and the gradient penalty against closed forms."""

from __future__ import annotations

import math

import pytest
import torch

from gentrain.adversarial import (
    LOSSES,
    discriminator_loss,
    generator_loss,
    gradient_penalty,
    r1_penalty,
)
from gentrain.errors import GentrainError

REAL = [0.0, 2.0, -1.0]
FAKE = [0.5, -2.0, 1.0]


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


# -[log D(x) + log(1 - D(G(z)))], written from the definition.
BCE_D = -_mean([math.log(_sigmoid(r)) for r in REAL]) - _mean(
    [math.log(1 - _sigmoid(f)) for f in FAKE])

D_EXPECTED = {
    "minimax": BCE_D,
    "nonsaturating": BCE_D,
    "wgan-gp": _mean(FAKE) - _mean(REAL),
    "hinge": _mean([max(0.0, 1 - r) for r in REAL]) + _mean([max(0.0, 1 + f) for f in FAKE]),
    "lsgan": _mean([(r - 1) ** 2 for r in REAL]) + _mean([f**2 for f in FAKE]),
}
G_EXPECTED = {
    "minimax": _mean([math.log(1 - _sigmoid(f)) for f in FAKE]),
    "nonsaturating": -_mean([math.log(_sigmoid(f)) for f in FAKE]),
    "wgan-gp": -_mean(FAKE),
    "hinge": -_mean(FAKE),
    "lsgan": _mean([(f - 1) ** 2 for f in FAKE]),
}


@pytest.mark.parametrize("kind", LOSSES)
def test_discriminator_loss_matches_hand_computation(kind: str) -> None:
    loss = discriminator_loss(kind, torch.tensor(REAL), torch.tensor(FAKE))
    assert loss.shape == () and loss.item() == pytest.approx(D_EXPECTED[kind], rel=1e-6)


@pytest.mark.parametrize("kind", LOSSES)
def test_generator_loss_matches_hand_computation(kind: str) -> None:
    loss = generator_loss(kind, torch.tensor(FAKE))
    assert loss.shape == () and loss.item() == pytest.approx(G_EXPECTED[kind], rel=1e-6)


def test_hand_values_of_the_simple_losses() -> None:
    # Guards the table above: these three are easy to check by eye.
    assert D_EXPECTED["wgan-gp"] == pytest.approx(-0.5)
    assert D_EXPECTED["hinge"] == pytest.approx(1 + 3.5 / 3)
    assert D_EXPECTED["lsgan"] == pytest.approx(2 + 5.25 / 3)


def test_minimax_generator_saturates_where_nonsaturating_does_not() -> None:
    """When D confidently rejects a fake (logit −20), minimax gives G almost no gradient."""
    grads = {}
    for kind in ("minimax", "nonsaturating"):
        logit = torch.tensor([-20.0], requires_grad=True)
        generator_loss(kind, logit).backward()
        grads[kind] = logit.grad.item()
    # d/dl −softplus(l) = −σ(l) ≈ −2e-9; d/dl softplus(−l) = −σ(−l) ≈ −1. Both push l up.
    assert grads["minimax"] == pytest.approx(-_sigmoid(-20.0), rel=1e-4)
    assert -1e-8 < grads["minimax"] < 0
    assert grads["nonsaturating"] == pytest.approx(-1.0, abs=1e-6)


def test_losses_are_stable_for_huge_logits() -> None:
    logits = torch.tensor([-1e4, 1e4])
    for kind in ("minimax", "nonsaturating"):
        assert torch.isfinite(discriminator_loss(kind, logits, logits))
        assert torch.isfinite(generator_loss(kind, logits))


def test_bfloat16_logits_give_a_float32_loss() -> None:
    logits = torch.tensor(FAKE, dtype=torch.bfloat16)
    assert discriminator_loss("hinge", logits, logits).dtype == torch.float32
    assert generator_loss("nonsaturating", logits).dtype == torch.float32


def test_unknown_kind_names_the_key_and_the_choices() -> None:
    logits = torch.zeros(2)
    with pytest.raises(GentrainError, match=r"model\.loss='wgan'.*minimax.*lsgan"):
        discriminator_loss("wgan", logits, logits)
    with pytest.raises(GentrainError, match=r"model\.loss='wgan'"):
        generator_loss("wgan", logits)


def _linear_critic(weight: torch.Tensor):
    return lambda x: (x * weight).flatten(1).sum(1)


def test_penalty_of_a_linear_critic_is_norm_minus_one_squared() -> None:
    """f(x) = <w, x> has gradient w everywhere, so the penalty is (‖w‖ − 1)² for any ε."""
    weight = torch.randn(2, 3, 3, generator=torch.Generator().manual_seed(1)).requires_grad_()
    real, fake = torch.randn(4, 2, 3, 3), torch.randn(4, 2, 3, 3)
    penalty = gradient_penalty(_linear_critic(weight), real, fake)
    norm = weight.detach().norm().item()
    assert norm != pytest.approx(1.0)
    assert penalty.item() == pytest.approx((norm - 1) ** 2, rel=1e-5)
    # create_graph=True: the penalty trains the critic, d/dw (‖w‖ − 1)² = 2(‖w‖ − 1) w / ‖w‖.
    penalty.backward()
    expected = 2 * (norm - 1) * weight.detach() / norm
    torch.testing.assert_close(weight.grad, expected, rtol=1e-5, atol=1e-6)


def test_penalty_of_a_quadratic_critic_uses_the_interpolate() -> None:
    """f(x) = ½‖x‖² has gradient x̂ = ε·real + (1 − ε)·fake, with ε from the same seed."""
    real, fake = torch.randn(5, 1, 4, 4), torch.randn(5, 1, 4, 4)
    fake.requires_grad_()  # the generator's output: the penalty must not reach it
    penalty = gradient_penalty(lambda x: 0.5 * (x**2).flatten(1).sum(1), real, fake,
                               generator=torch.Generator().manual_seed(7))
    eps = torch.rand(5, 1, 1, 1, generator=torch.Generator().manual_seed(7))
    x_hat = eps * real + (1 - eps) * fake.detach()
    norms = [x_hat[i].flatten().norm().item() for i in range(5)]
    assert penalty.item() == pytest.approx(_mean([(n - 1) ** 2 for n in norms]), rel=1e-5)
    penalty.backward()
    assert fake.grad is None


def test_penalty_is_float32_under_bfloat16_autocast() -> None:
    """The critic's matmuls would run in bf16 under autocast; the penalty must not."""
    torch.manual_seed(0)
    critic = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 32), torch.nn.Tanh(),
                                 torch.nn.Linear(32, 1))
    real, fake = torch.randn(8, 3, 4, 4), torch.randn(8, 3, 4, 4)
    reference = gradient_penalty(critic, real, fake, torch.Generator().manual_seed(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = gradient_penalty(critic, real, fake, torch.Generator().manual_seed(3))
        # The naive penalty, with the critic in bf16, to show the test can tell the two apart.
        eps = torch.rand(8, 1, 1, 1, generator=torch.Generator().manual_seed(3))
        x_hat = (eps * real + (1 - eps) * fake).requires_grad_()
        (grads,) = torch.autograd.grad(critic(x_hat).sum(), x_hat, create_graph=True)
        naive = ((grads.flatten(1).norm(dim=1) - 1) ** 2).mean()
    assert mixed.dtype == torch.float32
    assert mixed.item() == pytest.approx(reference.item(), rel=1e-6)
    assert naive.item() != pytest.approx(reference.item(), rel=1e-5)


def test_r1_of_a_quadratic_critic_is_the_mean_squared_norm_of_the_real_images() -> None:
    """f(x) = ½‖x‖² has gradient x, so R1 = mean ‖x_real‖²; it trains the critic (the graph
    is kept) and never reaches the real images."""
    real = torch.randn(6, 2, 3, 3).requires_grad_()
    scale = torch.tensor(2.0, requires_grad=True)
    penalty = r1_penalty(lambda x: scale * 0.5 * (x**2).flatten(1).sum(1), real)
    expected = (4 * (real.detach() ** 2).flatten(1).sum(1)).mean()  # ∇ = scale·x
    assert penalty.item() == pytest.approx(expected.item(), rel=1e-5)
    penalty.backward()
    assert scale.grad is not None and scale.grad.item() == pytest.approx(
        (2 * 2 * (real.detach() ** 2).flatten(1).sum(1)).mean().item(), rel=1e-5)
    assert real.grad is None
