"""The Gaussian diffusion process of DDPM as plain tensors and functions: no network inside.

Notation follows Ho et al. (2020): β_t, α_t = 1 − β_t, ᾱ_t = ∏_{s≤t} α_s. Index ``t`` runs over
0 … T−1 and stands for the paper's t = 1 … T. A network enters only as ``denoise(x_t, t)``,
a function returning its output in the chosen parameterisation (ε, x₀ or v), so the same
process serves any network and any guidance wrapped around it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from gentrain.errors import require
from gentrain.likelihoods import discretized_gaussian_log_prob, gaussian_kl

SCHEDULES = ("linear", "cosine")
TARGETS = ("eps", "x0", "v")
VARIANCES = ("fixedlarge", "fixedsmall")
#: ``ancestral`` walks all T steps; the few-step samplers visit ``steps`` timesteps chosen by
#: a spacing: ``ddim`` (Song et al.) and ``dpm_solver++`` (Lu et al. 2022, 2M, data prediction).
SAMPLERS = ("ancestral", "ddim", "dpm_solver++")
FEW_STEP_SAMPLERS = SAMPLERS[1:]
SPACINGS = ("uniform", "quadratic")

Denoise = Callable[[Tensor, Tensor], Tensor]


def linear_betas(timesteps: int, max_beta: float = 0.999) -> Tensor:
    """β from 1e-4 to 0.02 over T = 1000 steps (Ho et al.), rescaled by 1000/T for other T
    (Nichol & Dhariwal) and clipped at 0.999 so that very short processes stay invertible."""
    scale = 1000 / timesteps
    betas = torch.linspace(scale * 1e-4, scale * 0.02, timesteps, dtype=torch.float64)
    return betas.clamp(max=max_beta)


def cosine_alphas_cumprod(timesteps: int, offset: float = 0.008) -> Tensor:
    """ᾱ_t = f(t) / f(0), f(t) = cos²((t/T + s) / (1 + s) · π/2) (Nichol & Dhariwal), t = 1 … T."""
    steps = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
    f = torch.cos((steps + offset) / (1 + offset) * math.pi / 2) ** 2
    return (f / f[0])[1:]


def cosine_betas(timesteps: int, max_beta: float = 0.999) -> Tensor:
    """β_t = 1 − ᾱ_t / ᾱ_{t−1} of the cosine schedule, clipped at 0.999 as in the paper."""
    alphas_cumprod = cosine_alphas_cumprod(timesteps)
    previous = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
    return (1 - alphas_cumprod / previous).clamp(max=max_beta)


def make_betas(schedule: str, timesteps: int) -> Tensor:
    require(schedule in SCHEDULES,
            f"model.beta_schedule={schedule!r} is not one of {', '.join(SCHEDULES)}.")
    require(timesteps >= 2, f"model.timesteps must be at least 2, not {timesteps}.")
    return linear_betas(timesteps) if schedule == "linear" else cosine_betas(timesteps)


def _at(values: Tensor, t: Tensor, like: Tensor) -> Tensor:
    """values[t] shaped (B, 1, 1, 1) to broadcast over ``like``'s images, in its dtype."""
    return values[t].to(like.dtype).view(-1, *([1] * (like.dim() - 1)))


class Diffusion:
    """The forward process q and the fixed-variance reverse process of DDPM.

    Coefficients are computed once in float64; the per-timestep tables used on images live
    on the images' device in float32 (:meth:`on`), so a training step copies nothing from
    the host.
    """

    def __init__(self, betas: Tensor, target: str = "eps", variance: str = "fixedlarge") -> None:
        require(target in TARGETS, f"model.target={target!r} is not one of {', '.join(TARGETS)}.")
        require(variance in VARIANCES,
                f"model.variance={variance!r} is not one of {', '.join(VARIANCES)}.")
        self.target, self.variance = target, variance
        self.betas = betas.double()
        self.alphas_cumprod = torch.cumprod(1 - self.betas, 0)
        #: ᾱ_{t−1}, with ᾱ_0 = 1 before the first step.
        self.alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64),
                                              self.alphas_cumprod[:-1]])
        a, a_prev, betas = self.alphas_cumprod, self.alphas_cumprod_prev, self.betas
        #: β̃_t = β_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t), the variance of q(x_{t−1} | x_t, x₀).
        self.posterior_variance = betas * (1 - a_prev) / (1 - a)
        # β̃ is 0 at the first step: its log is clipped to β̃ at index 1, as the paper's code
        # does. The reverse variance σ_t² is β_t ("fixedlarge") or β̃_t ("fixedsmall").
        posterior = self.posterior_variance
        chosen = betas if variance == "fixedlarge" else posterior
        tables = {
            "sqrt_a": a.sqrt(),
            "sqrt_1ma": (1 - a).sqrt(),
            "log_1ma": torch.log(1 - a),
            "snr": a / (1 - a),
            "coef_x0": betas * a_prev.sqrt() / (1 - a),
            "coef_xt": (1 - a_prev) * (1 - betas).sqrt() / (1 - a),
            "posterior_log_variance": torch.log(torch.cat([posterior[1:2], posterior[1:]])),
            "reverse_log_variance": torch.log(torch.cat([posterior[1:2], chosen[1:]])),
        }
        self._tables: dict[torch.device, dict[str, Tensor]] = {
            torch.device("cpu"): {k: v.float() for k, v in tables.items()}
        }

    @classmethod
    def build(cls, schedule: str, timesteps: int, target: str = "eps",
              variance: str = "fixedlarge") -> Diffusion:
        return cls(make_betas(schedule, timesteps), target, variance)

    @property
    def timesteps(self) -> int:
        return self.betas.shape[0]

    def on(self, device: torch.device) -> dict[str, Tensor]:
        """The float32 coefficient tables on ``device`` (copied there once)."""
        if device not in self._tables:
            cpu = self._tables[torch.device("cpu")]
            self._tables[device] = {k: v.to(device) for k, v in cpu.items()}
        return self._tables[device]

    def coef(self, name: str, t: Tensor, like: Tensor) -> Tensor:
        return _at(self.on(like.device)[name], t, like)

    # -- the forward process -----------------------------------------------------------------

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """x_t = √ᾱ_t x₀ + √(1 − ᾱ_t) ε, a draw from q(x_t | x₀)."""
        return self.coef("sqrt_a", t, x0) * x0 + self.coef("sqrt_1ma", t, x0) * noise

    def q_posterior(self, x0: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and log-variance of q(x_{t−1} | x_t, x₀) (the log-variance clipped at t = 0)."""
        mean = self.coef("coef_x0", t, x_t) * x0 + self.coef("coef_xt", t, x_t) * x_t
        return mean, self.coef("posterior_log_variance", t, x_t).expand_as(x_t)

    def training_target(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """What the network learns to output: ε, x₀, or v = √ᾱ ε − √(1 − ᾱ) x₀."""
        if self.target == "eps":
            return noise
        if self.target == "x0":
            return x0
        return self.coef("sqrt_a", t, x0) * noise - self.coef("sqrt_1ma", t, x0) * x0

    def min_snr_weight(self, t: Tensor, gamma: float, like: Tensor) -> Tensor:
        """Min-SNR-γ loss weight (Hang et al. 2023) of the MSE on this target.

        The paper weights the x₀ error by min(SNR_t, γ); an ε or v error equals the x₀ error
        times SNR_t or SNR_t + 1 at the same t, so their weights divide by that. High-noise
        steps keep their weight and low-noise steps, which are cheap to learn, no longer
        dominate the gradient: the paper trains several times faster to the same FID.
        """
        snr = self.coef("snr", t, like)
        if self.target == "x0":
            return snr.clamp(max=gamma)
        return snr.clamp(max=gamma) / (snr if self.target == "eps" else snr + 1)

    # -- the reverse process -----------------------------------------------------------------

    def predict_x0_eps(self, x_t: Tensor, t: Tensor, output: Tensor) -> tuple[Tensor, Tensor]:
        """(x̂₀, ε̂) implied by the network's ``output`` at x_t."""
        sqrt_a, sqrt_1ma = self.coef("sqrt_a", t, x_t), self.coef("sqrt_1ma", t, x_t)
        if self.target == "eps":
            return (x_t - sqrt_1ma * output) / sqrt_a, output
        if self.target == "x0":
            return output, (x_t - sqrt_a * output) / sqrt_1ma
        return sqrt_a * x_t - sqrt_1ma * output, sqrt_1ma * x_t + sqrt_a * output

    def eps_from_x0(self, x_t: Tensor, t: Tensor, x0: Tensor) -> Tensor:
        return (x_t - self.coef("sqrt_a", t, x_t) * x0) / self.coef("sqrt_1ma", t, x_t)

    def p_mean_log_variance(
        self, x_t: Tensor, t: Tensor, output: Tensor, clip: bool = True
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Mean, log-variance and x̂₀ of p(x_{t−1} | x_t); x̂₀ clipped to [-1, 1] if ``clip``."""
        x0, _ = self.predict_x0_eps(x_t, t, output)
        if clip:
            x0 = x0.clamp(-1, 1)
        mean, _ = self.q_posterior(x0, x_t, t)
        log_variance = self.coef("reverse_log_variance", t, x_t).expand_as(x_t)
        return mean, log_variance, x0

    def ancestral_step(
        self, x_t: Tensor, t: int, output: Tensor, generator: torch.Generator | None = None,
        clip: bool = True,
    ) -> Tensor:
        """x_{t−1} ~ p(x_{t−1} | x_t) (no noise is added at the last step, t = 0)."""
        t_batch = torch.full((x_t.shape[0],), t, device=x_t.device, dtype=torch.long)
        mean, log_variance, _ = self.p_mean_log_variance(x_t, t_batch, output, clip)
        if t == 0:
            return mean
        noise = torch.randn(x_t.shape, generator=generator, device=x_t.device, dtype=x_t.dtype)
        return mean + torch.exp(0.5 * log_variance) * noise

    def ddim_step(
        self, x_t: Tensor, t: int, t_prev: int, output: Tensor, eta: float = 0.0,
        generator: torch.Generator | None = None, clip: bool = True,
    ) -> Tensor:
        """One DDIM step (Song et al., eq. 12) from t to t_prev < t (t_prev = −1: to x₀).

        ε̂ is re-derived from the clipped x̂₀ so the two stay consistent, as in guided-diffusion.
        """
        t_batch = torch.full((x_t.shape[0],), t, device=x_t.device, dtype=torch.long)
        x0, eps = self.predict_x0_eps(x_t, t_batch, output)
        if clip:
            x0 = x0.clamp(-1, 1)
            eps = self.eps_from_x0(x_t, t_batch, x0)
        a_t = float(self.alphas_cumprod[t])
        a_prev = float(self.alphas_cumprod[t_prev]) if t_prev >= 0 else 1.0
        sigma = eta * math.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
        x_prev = math.sqrt(a_prev) * x0 + math.sqrt(max(1 - a_prev - sigma**2, 0.0)) * eps
        if sigma > 0:
            noise = torch.randn(x_t.shape, generator=generator, device=x_t.device,
                                dtype=x_t.dtype)
            x_prev = x_prev + sigma * noise
        return x_prev

    def log_snr(self, t: int) -> float:
        """λ_t = log(α_t / σ_t) with α_t = √ᾱ_t, σ_t = √(1 − ᾱ_t); +∞ at t = −1 (the data)."""
        if t < 0:
            return math.inf
        a = float(self.alphas_cumprod[t])
        return 0.5 * (math.log(a) - math.log1p(-a))

    def dpm_solver_step(
        self, x_t: Tensor, t: int, t_prev: int, output: Tensor,
        history: tuple[int, Tensor] | None = None, clip: bool = True,
    ) -> tuple[Tensor, tuple[int, Tensor]]:
        """One DPM-Solver++(2M) step (Lu et al. 2022, data prediction) from t to t_prev < t.

        With h = λ_{t_prev} − λ_t, the exponential integrator of the data-prediction ODE gives
        x_{t_prev} = (σ_{t_prev} / σ_t) x_t − α_{t_prev} (e^{−h} − 1) D. First order (no
        ``history``), D = x̂₀ and the step is DDIM's with η = 0. Second order, ``history`` is
        (s, x̂₀ at s) of the step before, r = (λ_t − λ_s) / h and
        D = (1 + 1/(2r)) x̂₀ − 1/(2r) x̂₀(s). The step to x₀ (t_prev = −1, λ = +∞) is always
        first order: it returns x̂₀. x̂₀ is clipped to [-1, 1] as :meth:`ddim_step` clips it.

        Returns x_{t_prev} and the history the next step takes.
        """
        t_batch = torch.full((x_t.shape[0],), t, device=x_t.device, dtype=torch.long)
        x0, _ = self.predict_x0_eps(x_t, t_batch, output)
        if clip:
            x0 = x0.clamp(-1, 1)
        lam, lam_prev = self.log_snr(t), self.log_snr(t_prev)
        h = lam_prev - lam
        denoised = x0
        if history is not None and t_prev >= 0:
            t_before, x0_before = history
            r = (lam - self.log_snr(t_before)) / h
            denoised = x0 + (x0 - x0_before) / (2 * r)
        a_t = float(self.alphas_cumprod[t])
        a_prev = float(self.alphas_cumprod[t_prev]) if t_prev >= 0 else 1.0
        ratio = math.sqrt((1 - a_prev) / (1 - a_t))  # σ_{t_prev} / σ_t (0 at the data)
        x_prev = ratio * x_t + math.sqrt(a_prev) * -math.expm1(-h) * denoised
        return x_prev, (t, x0)


def ddim_timesteps(timesteps: int, steps: int, spacing: str = "uniform") -> list[int]:
    """The increasing timesteps a few-step sampler visits (DDIM's ``skip_type``).

    ``uniform``: ``steps`` evenly spaced timesteps 0, k, 2k, … with k = T // steps.
    ``quadratic``: DDIM's code for its CIFAR-10 table, ``int`` of
    ``np.linspace(0, √(0.8 T), steps) ** 2``; both use DDIM's indexing, where timestep i is
    ᾱ_i here (its code reads ᾱ at i + 1 of a list padded with ᾱ = 1 in front). Where the
    squares of small steps truncate to the same integer (many steps), the repeats are dropped:
    DDIM's step from t to t is the identity, and DPM-Solver cannot take a zero-length step,
    so fewer than ``steps`` timesteps (network passes) remain.
    """
    require(1 <= steps <= timesteps,
            f"model.sampler.steps={steps} must be between 1 and model.timesteps={timesteps}.")
    require(spacing in SPACINGS,
            f"model.sampler.spacing={spacing!r} is not one of {', '.join(SPACINGS)}.")
    if spacing == "uniform":
        stride = timesteps // steps
        return [i * stride for i in range(steps)]
    squares = np.linspace(0, np.sqrt(timesteps * 0.8), steps) ** 2
    return sorted({int(s) for s in squares})


def sample_loop(
    diffusion: Diffusion, denoise: Denoise, noise: Tensor, *, sampler: str = "ancestral",
    steps: int | None = None, eta: float = 0.0, spacing: str = "uniform",
    generator: torch.Generator | None = None, clip: bool = True, desc: str = "sampling",
) -> Tensor:
    """Images from pure noise x_T: ancestral over all T steps, or ``ddim`` / ``dpm_solver++``
    over ``steps`` timesteps placed by ``spacing`` (one network pass each). ``clip`` clips
    x̂₀ to [-1, 1] at every step (the paper's; off only for data outside that range).

    The progress bar shows only on a terminal (tqdm's ``disable=None``).
    """
    require(sampler in SAMPLERS,
            f"model.sampler.name={sampler!r} is not one of {', '.join(SAMPLERS)}.")
    if sampler == "ancestral":
        sequence = list(range(diffusion.timesteps))
    else:
        sequence = ddim_timesteps(diffusion.timesteps, steps or diffusion.timesteps, spacing)
    x = noise
    history: tuple[int, Tensor] | None = None
    previous = [-1, *sequence[:-1]]
    for t, t_prev in tqdm(list(zip(sequence, previous, strict=True))[::-1], desc=desc,
                          unit="step", leave=False, disable=None):
        t_batch = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        output = denoise(x, t_batch).to(x.dtype)
        if sampler == "ancestral":
            x = diffusion.ancestral_step(x, t, output, generator, clip=clip)
        elif sampler == "ddim":
            x = diffusion.ddim_step(x, t, t_prev, output, eta, generator, clip=clip)
        else:
            x, history = diffusion.dpm_solver_step(x, t, t_prev, output, history, clip=clip)
    return x.clamp(-1, 1) if clip else x


@dataclass(frozen=True)
class Bound:
    """The variational bound on −log p(x₀) per example, in nats (each of shape (B,))."""

    prior: Tensor  # KL(q(x_T | x₀) ‖ N(0, I))
    diffusion: Tensor  # Σ_{t≥2} KL(q(x_{t−1} | x_t, x₀) ‖ p(x_{t−1} | x_t)), estimated if sampled
    decoder: Tensor  # −log p(x₀ | x₁), the discretised Gaussian decoder

    @property
    def total(self) -> Tensor:
        return self.prior + self.diffusion + self.decoder


def prior_kl(diffusion: Diffusion, x0: Tensor) -> Tensor:
    """KL(q(x_T | x₀) ‖ N(0, I)) per example in nats."""
    t = torch.full((x0.shape[0],), diffusion.timesteps - 1, device=x0.device, dtype=torch.long)
    mean = diffusion.coef("sqrt_a", t, x0) * x0
    log_variance = diffusion.coef("log_1ma", t, x0).expand_as(x0)
    zeros = torch.zeros_like(x0)
    return gaussian_kl(mean, log_variance, zeros, zeros).flatten(1).sum(1)


def bound_term(
    diffusion: Diffusion, denoise: Denoise, x0: Tensor, t: Tensor,
    generator: torch.Generator | None = None,
) -> Tensor:
    """L_t per example in nats at per-example timesteps ``t``: the KL for t ≥ 1, the decoder's
    −log p(x₀ | x₁) (discretised over 256 bins) where t = 0."""
    noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    x_t = diffusion.q_sample(x0, t, noise)
    output = denoise(x_t, t).to(x0.dtype)
    true_mean, true_log_variance = diffusion.q_posterior(x0, x_t, t)
    mean, log_variance, _ = diffusion.p_mean_log_variance(x_t, t, output)
    kl = gaussian_kl(true_mean, true_log_variance, mean, log_variance).flatten(1).sum(1)
    decoder = -discretized_gaussian_log_prob(mean, 0.5 * log_variance, x0)
    return torch.where(t == 0, decoder, kl)


def variational_bound(
    diffusion: Diffusion, denoise: Denoise, x0: Tensor, *, timesteps: int | None = None,
    generator: torch.Generator | None = None, desc: str = "bound",
) -> Bound:
    """The bound L = L_T + Σ_t L_{t−1} + L_0 of Ho et al. (eq. 5) per example, in nats.

    With ``timesteps=None`` every one of the T terms is computed: T network passes per image.
    With ``timesteps=K`` the decoder term is still exact, and the T − 1 KL terms are estimated
    from K timesteps per image drawn by stratified sampling (one uniform draw in each of K equal
    strata of [1, T), weighted by the stratum's width): an unbiased estimate of the same bound
    at K + 1 passes per image.
    """
    size, total = x0.shape[0], diffusion.timesteps
    zero = torch.zeros(size, device=x0.device, dtype=torch.long)
    decoder = bound_term(diffusion, denoise, x0, zero, generator).double()
    if timesteps is None or timesteps >= total - 1:
        columns = [torch.full_like(zero, t) for t in range(1, total)]
        widths = [1.0] * (total - 1)
    else:
        require(timesteps >= 1, f"model.vb_timesteps must be >= 1 or null, not {timesteps}.")
        edges = torch.linspace(1, total, timesteps + 1, device=x0.device)
        draws = torch.rand((timesteps, size), generator=generator, device=x0.device)
        starts, spans = edges[:-1, None], (edges[1:] - edges[:-1])[:, None]
        columns = list((starts + draws * spans).floor().long().clamp(1, total - 1))
        widths = spans.flatten().tolist()
    kl = torch.zeros(size, device=x0.device, dtype=torch.float64)
    for t, width in tqdm(list(zip(columns, widths, strict=True)), desc=desc, unit="t",
                         leave=False, disable=None):
        kl += width * bound_term(diffusion, denoise, x0, t, generator).double()
    return Bound(prior=prior_kl(diffusion, x0).double(), diffusion=kl, decoder=decoder)
