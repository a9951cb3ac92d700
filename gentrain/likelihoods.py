"""Likelihoods of images, dequantisation and unit conversions, as plain functions on tensors.

Every family's likelihood lives here (the VAE's and PixelCNN's decoders, DDPM's discretised
Gaussian, the flows' dequantisation), so none re-derives one. Log-likelihoods are per example,
in nats, summed over every non-batch dimension (shape (B,)), so an ELBO or NLL built from them
is the per-image quantity papers report. Images are in [-1, 1] as in every gentrain batch;
8-bit data sits on 256 levels 2/255 apart.
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
    and highest bins extend to -inf and +inf so the bins' probabilities sum to one.
    """
    return _per_example(_logistic_bin_log_prob(mean, log_scale, x, num_bins))


def _logistic_bin_log_prob(mean: Tensor, log_scale: Tensor, x: Tensor, num_bins: int) -> Tensor:
    """Elementwise log P(bin of x) under a logistic. Every branch is written with log-sigmoids
    (softplus), never as log of a difference of CDFs, so it stays finite for tiny and huge
    scales alike."""
    half_bin = 1.0 / (num_bins - 1)
    inv_scale = torch.exp(-log_scale)
    upper = inv_scale * (x - mean + half_bin)
    lower = inv_scale * (x - mean - half_bin)
    # Lowest bin: P = sigmoid(upper). Highest bin: P = 1 - sigmoid(lower) = sigmoid(-lower).
    log_lowest = F.logsigmoid(upper)
    log_highest = F.logsigmoid(-lower)
    # Inner bins: sigmoid(a) - sigmoid(b) = sigmoid(a) * sigmoid(-b) * (1 - exp(b - a)), a > b.
    log_inner = F.logsigmoid(upper) + F.logsigmoid(-lower) + torch.log(-torch.expm1(lower - upper))
    return torch.where(
        x < -1 + half_bin, log_lowest, torch.where(x > 1 - half_bin, log_highest, log_inner)
    )


# ---------------------------------------------------------------- PixelCNN outputs


def to_levels(x: Tensor, num_bins: int = 256) -> Tensor:
    """8-bit images in [-1, 1] as integer levels 0..num_bins-1 (long)."""
    return ((x + 1) * (num_bins - 1) / 2).round().clamp(0, num_bins - 1).long()


def from_levels(levels: Tensor, num_bins: int = 256) -> Tensor:
    """Integer levels back to [-1, 1]."""
    return levels.float() * 2 / (num_bins - 1) - 1


def categorical_log_prob(logits: Tensor, x: Tensor) -> Tensor:
    """log P(x) under a softmax over the levels of every sub-pixel (PixelCNN's output).

    ``logits`` is (B, C, num_bins, H, W), ``x`` (B, C, H, W) 8-bit images in [-1, 1].
    """
    levels = to_levels(x, logits.shape[2])
    log_probs = F.log_softmax(logits.float(), dim=2)
    return _per_example(log_probs.gather(2, levels.unsqueeze(2)).squeeze(2))


def sample_categorical(logits: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """One draw in [-1, 1] per row of ``logits`` (..., num_bins)."""
    probs = F.softmax(logits.float(), dim=-1)
    flat = probs.reshape(-1, probs.shape[-1])
    levels = torch.multinomial(flat, 1, generator=generator).reshape(probs.shape[:-1])
    return from_levels(levels, logits.shape[-1])


def mixture_channels(channels: int, mixtures: int) -> int:
    """Parameter maps of a discretised logistic mixture: per component a logit and, per
    channel, a mean and a log-scale, plus C(C-1)/2 autoregressive coefficients."""
    return mixtures * (1 + 2 * channels + channels * (channels - 1) // 2)


def _split_mixture(params: Tensor, channels: int, mixtures: int
                   ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(logits (B,K,H,W), means, log_scales (B,K,C,H,W), coeffs (B,K,C(C-1)/2,H,W))."""
    b, _, h, w = params.shape
    k, c = mixtures, channels
    logits = params[:, :k]
    rest = params[:, k:].reshape(b, k, 2 * c + c * (c - 1) // 2, h, w)
    means, log_scales = rest[:, :, :c], rest[:, :, c : 2 * c].clamp(min=-7.0)
    return logits, means, log_scales, torch.tanh(rest[:, :, 2 * c :])


def _conditioned_means(means: Tensor, coeffs: Tensor, x: Tensor) -> Tensor:
    """PixelCNN++'s channel autoregression within a pixel: the mean of channel c shifts
    linearly with the values of channels < c (R → G → B)."""
    channels = means.shape[2]
    shifted, pair = [means[:, :, 0]], 0
    for c in range(1, channels):
        mean = means[:, :, c]
        for prev in range(c):
            mean = mean + coeffs[:, :, pair] * x[:, prev].unsqueeze(1)
            pair += 1
        shifted.append(mean)
    return torch.stack(shifted, dim=2)


def logistic_mixture_log_prob(params: Tensor, x: Tensor, mixtures: int,
                              num_bins: int = 256) -> Tensor:
    """log P(x) under PixelCNN++'s discretised logistic mixture (Salimans et al. 2017).

    ``params`` (B, mixture_channels(C, K), H, W) for images ``x`` (B, C, H, W): per pixel, a
    mixture over K components of a product over channels of discretised logistics whose means
    depend on the pixel's earlier channels.
    """
    channels = x.shape[1]
    logits, means, log_scales, coeffs = _split_mixture(params.float(), channels, mixtures)
    means = _conditioned_means(means, coeffs, x)
    per_channel = _logistic_bin_log_prob(means, log_scales, x.unsqueeze(1), num_bins)
    per_pixel = torch.logsumexp(F.log_softmax(logits, dim=1) + per_channel.sum(2), dim=1)
    return _per_example(per_pixel)


def sample_logistic_mixture(params: Tensor, channels: int, mixtures: int,
                            generator: torch.Generator | None = None,
                            num_bins: int = 256) -> Tensor:
    """Images (B, C, H, W) on the 8-bit grid drawn from the mixture, channel by channel."""
    logits, means, log_scales, coeffs = _split_mixture(params.float(), channels, mixtures)
    b, k, h, w = logits.shape
    probs = F.softmax(logits, dim=1).permute(0, 2, 3, 1).reshape(-1, k)
    component = torch.multinomial(probs, 1, generator=generator).reshape(b, 1, 1, h, w)
    pick = component.expand(b, 1, channels, h, w)
    means = means.gather(1, pick).squeeze(1)
    log_scales = log_scales.gather(1, pick).squeeze(1)
    if coeffs.shape[2]:
        coeffs = coeffs.gather(1, component.expand(b, 1, coeffs.shape[2], h, w)).squeeze(1)
    u = torch.rand(means.shape, generator=generator, device=means.device).clamp(1e-5, 1 - 1e-5)
    noise = torch.log(u) - torch.log1p(-u)
    x = torch.zeros_like(means)
    pair = 0
    for c in range(channels):
        mean = means[:, c]
        for prev in range(c):
            mean = mean + coeffs[:, pair] * x[:, prev]
            pair += 1
        x[:, c] = (mean + torch.exp(log_scales[:, c]) * noise[:, c]).clamp(-1, 1)
    return from_levels(to_levels(x, num_bins), num_bins)


# ---------------------------------------------------------------- flows


def dequantize(x: Tensor, n_bits: int, generator: torch.Generator | None = None) -> Tensor:
    """Uniform dequantisation (Glow): 8-bit images in [-1, 1] reduced to ``n_bits`` and mapped
    to continuous y = (level + u) / n_bins - 1/2 in [-1/2, 1/2), u ~ U[0, 1).

    A density p(y) then bounds the discrete probability: log P(x) >= E_u[log p(y)] -
    D·log(n_bins), the second term being the log-det of the scaling (see :func:`dequantized_nll`).
    """
    levels = to_levels(x) // 2 ** (8 - n_bits)
    u = torch.rand(x.shape, generator=generator, device=x.device)
    return (levels.float() + u) / 2**n_bits - 0.5


def quantize(y: Tensor, n_bits: int) -> Tensor:
    """The inverse of :func:`dequantize` for samples: y back to 8-bit images in [-1, 1]."""
    levels = ((y + 0.5) * 2**n_bits).floor().clamp(0, 2**n_bits - 1)
    return from_levels(levels * 2 ** (8 - n_bits))


def dequantized_nll(log_density: Tensor, dims: int, n_bits: int) -> Tensor:
    """-log P(x) in nats (an upper bound) from log p(y) of the dequantised y: the density of
    y less the log-det of y = (level + u) / n_bins, D·log(n_bins)."""
    return -log_density + dims * n_bits * math.log(2)


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
