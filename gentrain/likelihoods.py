"""Decoder likelihoods and Gaussian densities as plain functions on tensors.

Log-likelihoods are per example, in nats, summed over every non-batch dimension (shape (B,)),
so an ELBO or NLL built from them is the per-image quantity papers report. Images are in
[-1, 1] as in every gentrain batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

LOG_2PI = math.log(2 * math.pi)


def _per_example(values: Tensor) -> Tensor:
    return values.flatten(1).sum(1)


def bernoulli_log_prob(logits: Tensor, x: Tensor) -> Tensor:
    """log p(x) under independent Bernoulli pixels; ``x`` is binary data in {-1, 1}."""
    target = (x + 1) / 2
    return -_per_example(F.binary_cross_entropy_with_logits(logits, target, reduction="none"))


def discretized_logistic_log_prob(
    mean: Tensor, log_scale: Tensor, x: Tensor, num_bins: int = 256
) -> Tensor:
    """log P(x) of a logistic integrated over the pixel's bin (Salimans et al., PixelCNN++).

    ``x`` holds 8-bit values scaled to [-1, 1], so bins are 2 / (num_bins - 1) wide; the lowest
    and highest bins extend to -inf and +inf so the bins' probabilities sum to one. Every branch
    is written with log-sigmoids (softplus), never as log of a difference of CDFs, so it stays
    finite for tiny and huge scales alike.
    """
    half_bin = 1.0 / (num_bins - 1)
    inv_scale = torch.exp(-log_scale)
    upper = inv_scale * (x - mean + half_bin)
    lower = inv_scale * (x - mean - half_bin)
    # Lowest bin: P = sigmoid(upper). Highest bin: P = 1 - sigmoid(lower) = sigmoid(-lower).
    log_lowest = F.logsigmoid(upper)
    log_highest = F.logsigmoid(-lower)
    # Inner bins: sigmoid(a) - sigmoid(b) = sigmoid(a) * sigmoid(-b) * (1 - exp(b - a)), a > b.
    log_inner = F.logsigmoid(upper) + F.logsigmoid(-lower) + torch.log(-torch.expm1(lower - upper))
    log_prob = torch.where(
        x < -1 + half_bin, log_lowest, torch.where(x > 1 - half_bin, log_highest, log_inner)
    )
    return _per_example(log_prob)


def discretized_gaussian_log_prob(
    mean: Tensor, log_scale: Tensor, x: Tensor, num_bins: int = 256
) -> Tensor:
    """log P(x) of a Gaussian integrated over the pixel's bin: DDPM's decoder p(x₀ | x₁).

    Same bins as :func:`discretized_logistic_log_prob` (edge bins open to ±inf). The
    difference of normal CDFs is taken on the side of the mean where both are small, in log
    space, so it stays accurate far in the tails.
    """
    half_bin = 1.0 / (num_bins - 1)
    inv_scale = torch.exp(-log_scale)
    upper = inv_scale * (x - mean + half_bin)
    lower = inv_scale * (x - mean - half_bin)
    log_lowest = torch.special.log_ndtr(upper)
    log_highest = torch.special.log_ndtr(-lower)
    # Φ(u) − Φ(l) = Φ(−l) − Φ(−u): use whichever pair lies in the lower tail.
    flip = lower > 0
    a = torch.where(flip, -lower, upper)
    b = torch.where(flip, -upper, lower)
    log_a, log_b = torch.special.log_ndtr(a), torch.special.log_ndtr(b)
    log_inner = log_a + torch.log(-torch.expm1((log_b - log_a).clamp(max=-1e-12)))
    log_prob = torch.where(
        x < -1 + half_bin, log_lowest, torch.where(x > 1 - half_bin, log_highest, log_inner)
    )
    return _per_example(log_prob)


def gaussian_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """KL(N(mean1, exp(logvar1)) ‖ N(mean2, exp(logvar2))) elementwise, in nats."""
    return 0.5 * (
        logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
        + (mean1 - mean2) ** 2 * torch.exp(-logvar2) - 1
    )


def gaussian_log_prob(z: Tensor, mean: Tensor, logvar: Tensor) -> Tensor:
    """log N(z; mean, diag(exp(logvar))) summed over the last dimension."""
    return -0.5 * (LOG_2PI + logvar + (z - mean) ** 2 * torch.exp(-logvar)).sum(-1)


def standard_normal_log_prob(z: Tensor) -> Tensor:
    """log N(z; 0, I) summed over the last dimension."""
    return -0.5 * (LOG_2PI + z**2).sum(-1)


def gaussian_kl_standard(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, diag(exp(logvar))) || N(0, I)) per example, summed over latent dimensions."""
    return 0.5 * (mu**2 + torch.exp(logvar) - 1 - logvar).sum(-1)


def bits_per_dim(nll_nats: Tensor, dims: int) -> Tensor:
    """Convert a per-image NLL in nats to bits per dimension: nll / (dims * ln 2)."""
    return nll_nats / (dims * math.log(2))
