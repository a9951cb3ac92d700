"""Image-translation metrics against closed forms and a plain-Python SSIM reference."""

from __future__ import annotations

import math

import pytest
import torch

from gentrain.image_metrics import MAX_PSNR, l1, psnr, ssim

C1, C2 = 0.01**2, 0.03**2


def _images(shape: tuple[int, ...], seed: int = 0, dtype: torch.dtype = torch.float32):
    """Smooth-ish random images in [-1, 1] (noise blurred a little so SSIM has structure)."""
    noise = torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    blurred = torch.nn.functional.avg_pool2d(noise, 3, stride=1, padding=1,
                                             count_include_pad=False)
    return blurred * 2 - 1


def test_l1_is_the_mean_absolute_error_in_the_minus_one_one_scale() -> None:
    target = _images((3, 2, 5, 5))
    offsets = torch.tensor([0.0, 0.2, -0.5])
    result = l1(target + offsets.view(3, 1, 1, 1), target)
    assert result.shape == (3,)
    torch.testing.assert_close(result, offsets.abs(), atol=1e-6, rtol=0)


def test_psnr_of_a_constant_offset_has_the_closed_form() -> None:
    """+0.2 in [-1, 1] is +0.1 in [0, 1]: MSE 0.01, 20 dB; +0.02 gives MSE 1e-4, 40 dB."""
    target = _images((2, 3, 8, 8))
    output = target + torch.tensor([0.2, 0.02]).view(2, 1, 1, 1)
    torch.testing.assert_close(psnr(output, target), torch.tensor([20.0, 40.0]),
                               rtol=1e-4, atol=0)


def test_psnr_of_identical_images_is_the_cap() -> None:
    target = _images((2, 3, 8, 8))
    assert psnr(target, target).tolist() == [MAX_PSNR, MAX_PSNR]


def test_ssim_of_identical_images_is_one() -> None:
    for shape in ((2, 3, 16, 16), (1, 1, 4, 4), (1, 2, 1, 1)):
        target = _images(shape)
        torch.testing.assert_close(ssim(target, target), torch.ones(shape[0]),
                                   atol=1e-5, rtol=0)


def test_ssim_of_two_constant_images_is_the_luminance_term() -> None:
    """σx = σy = σxy = 0, so SSIM = (2μxμy + C1)/(μx² + μy² + C1) · C2/C2."""
    output = torch.full((1, 3, 16, 16), -0.2)  # μx = 0.4 in [0, 1]
    target = torch.full((1, 3, 16, 16), 0.6)  # μy = 0.8
    expected = (2 * 0.4 * 0.8 + C1) / (0.4**2 + 0.8**2 + C1)
    assert ssim(output, target).item() == pytest.approx(expected, rel=1e-5)


def test_ssim_decreases_as_noise_increases() -> None:
    target = _images((2, 3, 24, 24))
    noise = torch.randn(target.shape, generator=torch.Generator().manual_seed(1))
    scores = torch.stack([ssim(target + level * noise, target)
                          for level in (0.0, 0.05, 0.1, 0.2, 0.4)])
    assert (scores[1:] < scores[:-1]).all()


def _reference_ssim(output: torch.Tensor, target: torch.Tensor, size: int) -> list[float]:
    """SSIM by hand: Gaussian-weighted statistics of every valid window, in Python floats."""
    g = [math.exp(-((i - (size - 1) / 2) ** 2) / (2 * 1.5**2)) for i in range(size)]
    g = [v / sum(g) for v in g]
    x_all, y_all = ((output + 1) / 2).tolist(), ((target + 1) / 2).tolist()
    scores = []
    for x_img, y_img in zip(x_all, y_all, strict=True):
        values = []
        for x, y in zip(x_img, y_img, strict=True):
            for top in range(len(x) - size + 1):
                for left in range(len(x[0]) - size + 1):
                    cells = [(g[a] * g[b], x[top + a][left + b], y[top + a][left + b])
                             for a in range(size) for b in range(size)]
                    mx = sum(w * p for w, p, _ in cells)
                    my = sum(w * q for w, _, q in cells)
                    vx = sum(w * (p - mx) ** 2 for w, p, _ in cells)
                    vy = sum(w * (q - my) ** 2 for w, _, q in cells)
                    cov = sum(w * (p - mx) * (q - my) for w, p, q in cells)
                    values.append((2 * mx * my + C1) * (2 * cov + C2)
                                  / ((mx**2 + my**2 + C1) * (vx + vy + C2)))
        scores.append(sum(values) / len(values))
    return scores


@pytest.mark.parametrize(("height", "width", "size"), [(12, 12, 11), (6, 7, 5)])
def test_ssim_matches_a_plain_python_reference(height: int, width: int, size: int) -> None:
    """12×12 uses the full 11×11 window (2×2 valid positions); 6×7 shrinks it to 5×5."""
    target = _images((2, 2, height, width), seed=2, dtype=torch.float64)
    output = (target + 0.3 * torch.randn(target.shape, dtype=torch.float64,
                                         generator=torch.Generator().manual_seed(3))).clamp(-1, 1)
    expected = torch.tensor(_reference_ssim(output, target, size), dtype=torch.float64)
    torch.testing.assert_close(ssim(output, target), expected, rtol=1e-10, atol=1e-12)


def test_bfloat16_outputs_are_scored_in_float32() -> None:
    target = _images((2, 3, 12, 12))
    output = target.bfloat16()
    for metric in (l1, psnr, ssim):
        assert metric(output, target).dtype == torch.float32
