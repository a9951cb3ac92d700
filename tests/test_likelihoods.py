"""The likelihoods every family shares: normalised over the 8-bit levels, consistent with each
other, and the flows' dequantisation bound."""

from __future__ import annotations

import math

import torch

from gentrain.likelihoods import (
    categorical_log_prob,
    dequantize,
    dequantized_nll,
    discretized_logistic_log_prob,
    from_levels,
    logistic_mixture_log_prob,
    mixture_channels,
    quantize,
    sample_logistic_mixture,
    to_levels,
)

LEVELS = from_levels(torch.arange(256))  # every 8-bit value, in [-1, 1]


def test_levels_round_trip() -> None:
    assert torch.equal(to_levels(LEVELS), torch.arange(256))
    assert LEVELS[0] == -1 and LEVELS[-1] == 1


def test_categorical_probabilities_sum_to_one_over_the_levels() -> None:
    logits = torch.randn(1, 1, 256, 1, 1)
    x = LEVELS.view(256, 1, 1, 1)
    log_p = categorical_log_prob(logits.expand(256, -1, -1, -1, -1), x)
    assert torch.allclose(log_p.exp().sum(), torch.tensor(1.0), atol=1e-5)
    assert torch.allclose(log_p, torch.log_softmax(logits.flatten(), 0), atol=1e-6)


def test_one_component_grey_mixture_is_the_discretised_logistic() -> None:
    mean, log_scale = torch.randn(4, 1, 3, 3) * 0.5, torch.randn(4, 1, 3, 3) - 2
    x = LEVELS[torch.randint(0, 256, (4, 1, 3, 3))]
    params = torch.cat([torch.zeros(4, 1, 3, 3), mean, log_scale], dim=1)
    assert params.shape[1] == mixture_channels(1, 1)
    assert torch.allclose(logistic_mixture_log_prob(params, x, mixtures=1),
                          discretized_logistic_log_prob(mean, log_scale, x), atol=1e-5)


def test_rgb_mixture_sums_to_one_over_every_colour() -> None:
    """On a 32-level grid (32³ colours) the R → G → B mixture's probabilities sum to one, so
    the channel autoregression within a pixel is normalised."""
    torch.manual_seed(0)
    params = torch.randn(1, mixture_channels(3, 2), 1, 1)
    grid = from_levels(torch.arange(32), 32)
    r, g, b = torch.meshgrid(grid, grid, grid, indexing="ij")
    colours = torch.stack([r, g, b], -1).reshape(-1, 3, 1, 1)
    mass = logistic_mixture_log_prob(params.expand(colours.shape[0], -1, -1, -1), colours,
                                     mixtures=2, num_bins=32).exp().sum()
    assert torch.allclose(mass, torch.tensor(1.0), atol=1e-4)


def test_mixture_samples_land_on_the_grid_and_follow_the_means() -> None:
    params = torch.zeros(2000, mixture_channels(1, 1), 1, 1)
    params[:, 1] = 0.5  # mean
    params[:, 2] = -4  # small scale
    generator = torch.Generator().manual_seed(0)
    x = sample_logistic_mixture(params, 1, 1, generator)
    assert torch.equal(from_levels(to_levels(x)), x)
    assert abs(x.mean().item() - 0.5) < 0.01


def test_uniform_density_on_dequantised_data_gives_n_bits_per_dim() -> None:
    """A density that is uniform on [-1/2, 1/2)^D (log p = 0) assigns every n-bit level
    probability 1/2^n per dimension: exactly n bits/dim, and dequantised y stays in range."""
    x = LEVELS[torch.randint(0, 256, (8, 3, 4, 4))]
    for n_bits in (5, 8):
        y = dequantize(x, n_bits, torch.Generator().manual_seed(1))
        assert y.min() >= -0.5 and y.max() < 0.5
        assert torch.equal(quantize(y, n_bits), from_levels(to_levels(x) // 2 ** (8 - n_bits)
                                                             * 2 ** (8 - n_bits)))
        nll = dequantized_nll(torch.zeros(8), dims=3 * 4 * 4, n_bits=n_bits)
        assert torch.allclose(nll / (48 * math.log(2)), torch.full((8,), float(n_bits)))
