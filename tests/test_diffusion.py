"""The diffusion process against closed forms: schedules, q, the posterior, DDIM, DPM-Solver++,
timestep spacings, the bound."""

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


@pytest.mark.parametrize("target", ["eps", "x0", "v"])
def test_min_snr_weight_is_min_snr_gamma_on_the_x0_error_for_every_target(target: str) -> None:
    """Hang et al. 2023 define the weight on the x₀ error; each target's weight must give it."""
    diffusion = Diffusion(make_betas("linear", 1000), target=target)
    x0, noise = _images(3), torch.randn(3, 2, 4, 4, dtype=DTYPE)
    t = torch.tensor([0, 300, 999])  # SNR far above, near and far below γ = 5
    x_t = diffusion.q_sample(x0, t, noise)
    target_true = diffusion.training_target(x0, noise, t)
    output = target_true + 0.1 * torch.randn(target_true.shape, dtype=DTYPE)
    target_error = (output - target_true).square().flatten(1).mean(1)
    x0_error = (diffusion.predict_x0_eps(x_t, t, output)[0] - x0).square().flatten(1).mean(1)
    snr = diffusion.alphas_cumprod[t] / (1 - diffusion.alphas_cumprod[t])
    weighted = diffusion.min_snr_weight(t, 5.0, target_error) * target_error
    torch.testing.assert_close(weighted, snr.clamp(max=5.0) * x0_error, rtol=1e-3, atol=0)


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


def test_quadratic_spacing_gives_the_ddim_papers_timesteps() -> None:
    """DDIM's code: int(linspace(0, √(0.8 T), S)²), i.e. ⌊0.8 T (k / (S − 1))²⌋ for k < S."""
    # T = 1000, S = 10: 800 k² / 81 = 0, 9.9, 39.5, 88.9, 158.0, 246.9, 355.6, 483.95, 632.1, 800
    assert ddim_timesteps(1000, 10, "quadratic") == [0, 9, 39, 88, 158, 246, 355, 483, 632, 800]
    assert ddim_timesteps(100, 5, "quadratic") == [0, 5, 20, 45, 80]  # 80 k² / 16
    # S = 100: 800 k² / 99² = 0, .08, .33, .73, 1.3, 2.04, 2.9, 3.9996, 5.2, 6.6, 8.2: the
    # repeated 0s and 2s (identity steps in DDIM's code) are dropped.
    many = ddim_timesteps(1000, 100, "quadratic")
    assert many[:7] == [0, 1, 2, 3, 5, 6, 8] and many[-1] == 800
    assert len(many) == len(set(many)) < 100 and many == sorted(many)
    # uniform stays DDIM's 0, k, 2k, … (what checkpoints sampled with before spacing existed)
    assert ddim_timesteps(1000, 10, "uniform") == ddim_timesteps(1000, 10) == list(
        range(0, 1000, 100))
    with pytest.raises(GentrainError, match="model.sampler.spacing"):
        ddim_timesteps(1000, 10, "cubic")


def _toy_network(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A fixed non-linear 'ε-network' whose x̂₀ leaves [-1, 1] (so clipping matters)."""
    return torch.tanh(1.5 * x + t.view(-1, 1, 1, 1).to(x.dtype) / 500) * 1.2


@pytest.mark.parametrize("spacing", ["uniform", "quadratic"])
def test_dpm_solver_first_order_is_ddim_with_eta_zero_step_for_step(spacing: str) -> None:
    diffusion = Diffusion(make_betas("linear", 1000))
    sequence = ddim_timesteps(1000, 12, spacing)
    generator = torch.Generator().manual_seed(0)
    x_ddim = x_dpm = torch.randn(3, 2, 4, 4, dtype=DTYPE, generator=generator)
    for t, t_prev in reversed(list(zip(sequence, [-1, *sequence[:-1]], strict=True))):
        t_batch = torch.full((3,), t)
        # From the same point: the two steps agree.
        output = _toy_network(x_ddim, t_batch)
        step_ddim = diffusion.ddim_step(x_ddim, t, t_prev, output, eta=0.0)
        step_dpm, (seen, x0) = diffusion.dpm_solver_step(x_ddim, t, t_prev, output, None)
        torch.testing.assert_close(step_dpm, step_ddim, rtol=1e-6, atol=1e-6)
        assert seen == t and x0.abs().max() <= 1  # the history holds the clipped x̂₀
        # Along their own first-order trajectories: the same path to the end.
        x_dpm, _ = diffusion.dpm_solver_step(x_dpm, t, t_prev, _toy_network(x_dpm, t_batch))
        x_ddim = step_ddim
        torch.testing.assert_close(x_dpm, x_ddim, rtol=1e-6, atol=1e-6)
    # One step is first order in the sampler too: x̂₀ of x_T at the last timestep.
    noise = torch.randn(3, 2, 4, 4, dtype=DTYPE, generator=torch.Generator().manual_seed(1))
    one = {name: sample_loop(diffusion, _toy_network, noise, sampler=name, steps=1)
           for name in ("ddim", "dpm_solver++")}
    torch.testing.assert_close(one["dpm_solver++"], one["ddim"], rtol=1e-6, atol=1e-6)


def _gaussian_sampling_errors(sampler: str, steps: int, spacing: str, mu: float = 0.3,
                              s: float = 0.4) -> tuple[float, float]:
    """|mean − μ| and |variance − s²| of what ``sampler`` draws when the data is N(μ, s²) and
    the network is the optimal ε-predictor ε*(x_t) = σ_t (x_t − α_t μ) / (α_t² s² + σ_t²).

    Each step is affine in x, so the sampler maps its start x to a x + b: two runs (x = 0, 1)
    give the exact mean and variance of its output. It starts from the exact marginal at the
    first timestep it visits, N(α μ, α² s² + σ²), so what is left is the solver's own error.
    """
    diffusion = Diffusion(make_betas("linear", 1000))
    alphas_cumprod = diffusion.alphas_cumprod

    def optimal_eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = alphas_cumprod[t].view(-1, 1)
        return (1 - a).sqrt() * (x - a.sqrt() * mu) / (a * s**2 + 1 - a)

    start = torch.tensor([[0.0], [1.0]], dtype=DTYPE)
    out = sample_loop(diffusion, optimal_eps, start, sampler=sampler, steps=steps,
                      spacing=spacing, clip=False)
    b, a = out[0].item(), (out[1] - out[0]).item()
    first = float(alphas_cumprod[ddim_timesteps(1000, steps, spacing)[-1]])
    mean = a * math.sqrt(first) * mu + b
    variance = a**2 * (first * s**2 + 1 - first)
    return abs(mean - mu), abs(variance - s**2)


def test_dpm_solver_2m_beats_ddim_on_gaussian_data_and_both_converge() -> None:
    errors = {(name, steps, spacing): _gaussian_sampling_errors(name, steps, spacing)
              for name in ("ddim", "dpm_solver++") for steps in (10, 20, 50, 200)
              for spacing in ("uniform", "quadratic")}
    # Both keep the mean exactly (x̂₀ = μ on the mean's path, so every step maps α_t μ to
    # α_s μ): the solvers differ in the variance.
    assert max(mean for mean, _ in errors.values()) < 1e-6
    # 20 steps on the DDIM paper's quadratic spacing: 2M is several times closer
    # (variance error 0.0075 against DDIM's 0.024).
    assert errors["dpm_solver++", 20, "quadratic"][1] < errors["ddim", 20, "quadratic"][1] / 2
    for name in ("ddim", "dpm_solver++"):
        for spacing in ("uniform", "quadratic"):
            variance = [errors[name, steps, spacing][1] for steps in (10, 50, 200)]
            assert variance[0] > variance[1] > variance[2], (name, spacing, variance)
    # From 50 to 200 steps DDIM's error shrinks about 4x (first order), 2M's at least 10x.
    for spacing in ("uniform", "quadratic"):
        ddim = errors["ddim", 50, spacing][1] / errors["ddim", 200, spacing][1]
        dpm = errors["dpm_solver++", 50, spacing][1] / errors["dpm_solver++", 200, spacing][1]
        assert 3 < ddim < 5 and dpm > 10, (spacing, ddim, dpm)


@pytest.mark.parametrize("sampler", ["ancestral", "ddim", "dpm_solver++"])
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
    with pytest.raises(GentrainError, match="model.sampler.name"):
        sample_loop(Diffusion(make_betas("linear", 10)), _toy_network, torch.zeros(1, 1, 2, 2),
                    sampler="dpm_solver")
