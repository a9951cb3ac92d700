"""Per-example image-translation metrics for pix2pix validation.

Images are in [-1, 1] with shape (B, C, H, W), as in every gentrain batch; each metric returns
a (B,) tensor so the caller can average over a dataset or look at the worst examples. Inputs
are promoted to at least float32, so bfloat16 outputs of an autocast forward score exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

#: PSNR reported for identical images, whose MSE of 0 would give +inf.
MAX_PSNR = 100.0
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03


def _wide(x: Tensor) -> Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _to_unit(x: Tensor) -> Tensor:
    """[-1, 1] -> [0, 1], in float32 or wider."""
    return (_wide(x) + 1) / 2


def l1(output: Tensor, target: Tensor) -> Tensor:
    """Mean absolute error per example, in the [-1, 1] scale (pix2pix's L1 term, unweighted)."""
    return (_wide(output) - _wide(target)).abs().flatten(1).mean(1)


def psnr(output: Tensor, target: Tensor) -> Tensor:
    """10·log10(1 / MSE) in dB on images mapped to [0, 1], capped at :data:`MAX_PSNR`.

    Computed on the float images as given, without rounding to 8 bits first.
    """
    mse = ((_to_unit(output) - _to_unit(target)) ** 2).flatten(1).mean(1)
    return (-10 * torch.log10(mse)).clamp(max=MAX_PSNR)


def _gaussian_window(size: int, sigma: float, like: Tensor) -> Tensor:
    coords = torch.arange(size, dtype=like.dtype, device=like.device) - (size - 1) / 2
    window = torch.exp(-(coords**2) / (2 * sigma**2))
    return window / window.sum()


def ssim(output: Tensor, target: Tensor) -> Tensor:
    """Structural similarity (Wang et al. 2004) per example, on images mapped to [0, 1].

    Gaussian-weighted statistics (11×11 window, σ = 1.5, K1 = 0.01, K2 = 0.03, L = 1) over
    'valid' windows only (no padding), per channel, then the SSIM map is averaged over
    channels and pixels: the convention of ``pytorch_msssim`` and of skimage with
    ``gaussian_weights=True, use_sample_covariance=False``. Images smaller than 11 px use a
    window of the smaller side (minus one if even), keeping σ = 1.5, so tiny test images still
    get a score.
    """
    x, y = _to_unit(output), _to_unit(target)
    channels, height, width = x.shape[1:]
    size = min(SSIM_WINDOW, height, width)
    if size % 2 == 0:
        size -= 1
    window = _gaussian_window(size, SSIM_SIGMA, x)
    # One separable depthwise convolution filters x, y, x², y² and xy together.
    stacked = torch.cat([x, y, x * x, y * y, x * y], dim=1)
    groups = stacked.shape[1]
    filtered = F.conv2d(stacked, window.view(1, 1, 1, size).expand(groups, 1, 1, size),
                        groups=groups)
    filtered = F.conv2d(filtered, window.view(1, 1, size, 1).expand(groups, 1, size, 1),
                        groups=groups)
    mu_x, mu_y, xx, yy, xy = filtered.split(channels, dim=1)
    var_x, var_y, cov = xx - mu_x**2, yy - mu_y**2, xy - mu_x * mu_y
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    luminance = (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1)
    contrast_structure = (2 * cov + c2) / (var_x + var_y + c2)
    return (luminance * contrast_structure).flatten(1).mean(1)
