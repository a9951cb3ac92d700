"""The judge-free border-brightness statistic (gentrain.sample_quality.pixels) on hand-made
images, and the 1-D Wasserstein distance that compares its distributions."""

from __future__ import annotations

import pytest
import torch

from gentrain.sample_quality.pixels import border_brightness, wasserstein_1d


def shape_on_ground(ground: tuple[int, int, int], shape: tuple[int, int, int]) -> torch.Tensor:
    """A 16x16 uint8 RGB image: a flat ground with a 6x6 square of another colour inside."""
    image = torch.tensor(ground, dtype=torch.uint8)[:, None, None].repeat(1, 16, 16)
    image[:, 5:11, 5:11] = torch.tensor(shape, dtype=torch.uint8)[:, None, None]
    return image


def test_the_border_brightness_is_the_grounds_hsv_value_whatever_the_shape() -> None:
    images = torch.stack([shape_on_ground((20, 51, 30), (250, 250, 250)),  # dark, muted ground
                          shape_on_ground((0, 0, 204), (0, 0, 0)),  # saturated blue ground
                          shape_on_ground((255, 255, 255), (10, 10, 10))])
    assert border_brightness(images).tolist() == pytest.approx([51 / 255, 204 / 255, 1.0])


def test_the_border_is_the_one_pixel_frame() -> None:
    image = torch.zeros(1, 3, 8, 8, dtype=torch.uint8)
    image[:, :, 1:-1, 1:-1] = 255  # everything but the frame is bright
    assert border_brightness(image).item() == 0.0
    image[:, 0, 0, :] = 255  # the top row: 8 of the frame's 28 pixels
    assert border_brightness(image).item() == pytest.approx(8 / 28)


def test_wasserstein_1d_is_zero_for_one_distribution_and_the_shift_for_a_shifted_one() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.rand(4000, generator=g) * 0.25 + 0.05  # the shapes' grounds: 0.05-0.3
    b = torch.rand(3000, generator=g) * 0.25 + 0.05
    assert wasserstein_1d(a, b) < 0.01  # two samples of one distribution, different counts
    assert wasserstein_1d(a, a + 0.4) == pytest.approx(0.4, abs=1e-6)
    bright = torch.cat([a[:2000], torch.full((2000,), 0.9)])  # half the grounds turned bright
    assert wasserstein_1d(bright, a) == pytest.approx(0.5 * (0.9 - 0.175), abs=0.02)
