"""The diffusion process against closed forms: schedules, q, the posterior, DDIM, the bound."""

from __future__ import annotations

import math

import pytest
import torch

from gentrain.diffusion import (
    Diffusion,
    cosine_alphas_cumprod,
    ddim_timesteps,
    make_betas,
    prior_kl,
    sample_loop,
    variational_bound,
)
from gentrain.errors import GentrainError

DTYPE = torch.float64


def _images(seed: int = 0, shape: tuple[int, ...] = (3, 2, 4, 4)) -> torch.Tensor:
    """Valid 8-bit images in [-1, 1] that avoid the two edge bins."""
    levels = torch.randint(1, 255, shape, generator=torch.Generator().manual_seed(seed))
    return (levels.to(DTYPE) / 255) * 2 - 1


def test_linear_schedule_is_the_papers() -> None:
    betas = make_betas("linear", 1000)
    assert betas[0].item() == pytest.approx(1e-4) and betas[-1].item() == pytest.approx(0.02)
    assert betas[500].item() == pytest.approx(1e-4 + 500 * (0.02 - 1e-4) / 999)
    alphas_cumprod = Diffusion(betas).alphas_cumprod
    for t in (0, 10, 500, 999):
        expected = math.prod(1 - (1e-4 + s * (0.02 - 1e-4) / 999) for s in range(t + 1))
        assert alphas_cumprod[t].item() == pytest.approx(expected, rel=1e-9)


def test_cosine_schedule_matches_nichol_and_dhariwal() -> None:
    """ᾱ(t) = f(t) / f(0) with f(t) = cos²((t/T + s) / (1 + s) · π / 2), s = 0.008."""
    T, s = 1000, 0.008

    def f(t: float) -> float:
        return math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2

    from_betas = Diffusion(make_betas("cosine", T)).alphas_cumprod
    direct = cosine_alphas_cumprod(T)
    for t in (1, 100, 500, 900):  # paper's t = 1 … T is index t - 1
        assert direct[t - 1].item() == pytest.approx(f(t) / f(0), rel=1e-12)
        assert from_betas[t - 1].item() == pytest.approx(f(t) / f(0), rel=1e-9)
    assert make_betas("cosine", T).max().item() <= 0.999


def test_q_sample_matches_its_closed_form() -> None:
    diffusion = Diffusion(make_betas("linear", 100))
    x0, noise = _images(0), torch.randn(3, 2, 4, 4, dtype=DTYPE)
    t = torch.tensor([0, 37, 99])
    x_t = diffusion.q_sample(x0, t, noise)
    for i, step in enumerate(t.tolist()):
        a = math.prod(1 - b for b in diffusion.betas[: step + 1].tolist())
        expected = math.sqrt(a) * x0[i] + math.sqrt(1 - a) * noise[i]
        torch.testing.assert_close(x_t[i], expected, rtol=1e-5, atol=1e-6)


def test_posterior_matches_bayes_rule_on_two_gaussians() -> None:
    """q(x_{t−1} | x_t, x₀) from N(√ᾱ_{t−1} x₀, 1 − ᾱ_{t−1}) and N(x_t; √α_t x_{t−1}, β_t)."""
    diffusion = Diffusion(make_betas("linear", 50))
    x0, x_t = _images(1), torch.randn(3, 2, 4, 4, dtype=DTYPE)
    t = torch.tensor([1, 20, 49])
    mean, log_variance = diffusion.q_posterior(x0, x_t, t)
    for i, step in enumerate(t.tolist()):
        beta = diffusion.betas[step].item()
        a_prev = diffusion.alphas_cumprod[step - 1].item()
        precision = 1 / (1 - a_prev) + (1 - beta) / beta
        expected_mean = (math.sqrt(a_prev) * x0[i] / (1 - a_prev)
                         + math.sqrt(1 - beta) * x_t[i] / beta) / precision
        torch.testing.assert_close(mean[i], expected_mean, rtol=1e-5, atol=1e-6)
        assert log_variance[i].exp().mean().item() == pytest.approx(1 / precision, rel=1e-5)


@pytest.mark.parametrize("target", ["eps", "x0", "v"])
def test_targets_invert_to_the_true_x0_and_noise(target: str) -> None:
    diffusion = Diffusion(make_betas("cosine", 100), target=target)
    x0, noise = _images(2), torch.randn(3, 2, 4, 4, dtype=DTYPE)
    t = torch.tensor([0, 50, 99])
    x_t = diffusion.q_sample(x0, t, noise)
    x0_hat, eps_hat = diffusion.predict_x0_eps(x_t, t, diffusion.training_target(x0, noise, t))
    torch.testing.assert_close(x0_hat, x0, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(eps_hat, noise, rtol=1e-4, atol=1e-4)


def test_one_ddim_step_with_the_true_noise_and_eta_zero_recovers_x0() -> None:
    diffusion = Diffusion(make_betas("linear", 1000))
    x0, noise = _images(3), torch.randn(3, 2, 4, 4, dtype=DTYPE)
    t = 600
    x_t = diffusion.q_sample(x0, torch.full((3,), t), noise)
    x_prev = diffusion.ddim_step(x_t, t, -1, noise, eta=0.0)
    torch.testing.assert_close(x_prev, x0, rtol=1e-5, atol=1e-5)
    # To an intermediate step it lands exactly on q(x_s | x₀) with the same noise.
    x_s = diffusion.ddim_step(x_t, t, 200, noise, eta=0.0)
    torch.testing.assert_close(x_s, diffusion.q_sample(x0, torch.full((3,), 200), noise),
                               rtol=1e-5, atol=1e-5)


def test_ddim_timesteps_are_evenly_spaced_from_zero() -> None:
    assert ddim_timesteps(1000, 50) == list(range(0, 1000, 20))
    assert ddim_timesteps(1000, 1000) == list(range(1000))
    with pytest.raises(GentrainError, match="model.sampler.steps"):
        ddim_timesteps(1000, 0)


@pytest.mark.parametrize("sampler", ["ancestral", "ddim"])
def test_sampling_with_a_perfect_x0_predictor_ends_at_x0(sampler: str) -> None:
    """With x₀-prediction that always returns the data point, the last step returns it."""
    diffusion = Diffusion(make_betas("linear", 30), target="x0")
    x0 = _images(4).float()
    out = sample_loop(diffusion, lambda x, t: x0, torch.randn_like(x0), sampler=sampler,
                      steps=5, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, x0, rtol=1e-5, atol=1e-5)


def _oracle(diffusion: Diffusion, x0: torch.Tensor):
    """The ideal ε-predictor for a single known data point x₀."""
    return lambda x_t, t: diffusion.eps_from_x0(x_t, t, x0)


def _decoder_nats(diffusion: Diffusion, dims: int) -> float:
    """−log of the mass a centred Gaussian with σ² = reverse variance at t = 0 puts on its
    bin of half-width 1/255 (x₀ away from the edge bins)."""
    sigma = math.exp(0.5 * math.log(diffusion.posterior_variance[1].item()))
    return -dims * math.log(math.erf((1 / 255) / (sigma * math.sqrt(2))))


@pytest.mark.parametrize("variance", ["fixedsmall", "fixedlarge"])
def test_variational_bound_of_a_known_gaussian_case_matches_its_closed_form(
    variance: str,
) -> None:
    """A perfect denoiser for one data point: with fixedsmall every KL term is zero; with
    fixedlarge each is KL(N(μ, β̃) ‖ N(μ, β)) = ½(log(β/β̃) + β̃/β − 1) per dimension."""
    diffusion = Diffusion(make_betas("linear", 100), variance=variance)
    x0 = _images(5, (2, 1, 3, 3))
    dims = x0[0].numel()
    bound = variational_bound(diffusion, _oracle(diffusion, x0), x0,
                              generator=torch.Generator().manual_seed(0))
    a_T = diffusion.alphas_cumprod[-1].item()
    prior = 0.5 * dims * (-math.log(1 - a_T) + (1 - a_T) - 1) \
        + 0.5 * a_T * x0.pow(2).flatten(1).sum(1)
    torch.testing.assert_close(bound.prior, prior, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(prior_kl(diffusion, x0).double(), prior, rtol=1e-4, atol=1e-4)
    expected_decoder = _decoder_nats(diffusion, dims)
    torch.testing.assert_close(bound.decoder, torch.full((2,), expected_decoder, dtype=DTYPE),
                               rtol=1e-4, atol=1e-3)
    if variance == "fixedsmall":
        kl = 0.0
    else:
        small, large = diffusion.posterior_variance[1:], diffusion.betas[1:]
        kl = dims * (0.5 * (torch.log(large / small) + small / large - 1)).sum().item()
    torch.testing.assert_close(bound.diffusion, torch.full((2,), kl, dtype=DTYPE),
                               rtol=1e-4, atol=1e-3)


def test_stratified_bound_estimate_is_unbiased() -> None:
    diffusion = Diffusion(make_betas("linear", 40), variance="fixedlarge")
    x0 = _images(6, (1, 1, 2, 2)).expand(4000, -1, -1, -1)
    exact = variational_bound(diffusion, _oracle(diffusion, x0[:1]), x0[:1]).total
    estimate = variational_bound(diffusion, _oracle(diffusion, x0), x0, timesteps=2,
                                 generator=torch.Generator().manual_seed(0)).total
    assert estimate.std() > 0  # it is a random estimate ...
    assert estimate.mean().item() == pytest.approx(exact.item(), rel=0.01)  # ... of the bound


def test_bad_process_settings_are_clear_errors() -> None:
    with pytest.raises(GentrainError, match="model.beta_schedule"):
        make_betas("quadratic", 10)
    with pytest.raises(GentrainError, match="model.target"):
        Diffusion(make_betas("linear", 10), target="score")
    with pytest.raises(GentrainError, match="model.variance"):
        Diffusion(make_betas("linear", 10), variance="learned")
