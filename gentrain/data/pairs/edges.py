"""A classical edge detector in plain torch (Canny: blur, Sobel, non-maximum suppression,
hysteresis, optional Zhang-Suen thinning), batched, for edge→photo pairs.

pix2pix built its edge datasets with HED edges, non-maximum suppression, thresholds and
thinning; with no learned detector available offline, Canny plus thinning gives the same kind
of one-pixel line drawing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

MIN_GRADIENT = 0.02  # gradients weaker than this (intensity in [0, 1]) are never edges
LUMA = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class EdgeSettings:
    sigma: float = 1.0  # Gaussian blur (pixels) before taking gradients
    low: float = 0.1  # hysteresis thresholds, as fractions of the image's strongest gradient
    high: float = 0.2
    thin: bool = True  # Zhang-Suen thinning to one-pixel lines


def to_gray(images: Tensor) -> Tensor:
    """(B, C, H, W) floats → (B, 1, H, W) luma (ITU-R 601 weights for colour)."""
    if images.shape[1] == 1:
        return images
    weights = torch.tensor(LUMA, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images * weights).sum(1, keepdim=True)


def gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of (B, 1, H, W) with reflected borders."""
    if sigma <= 0:
        return x
    radius = max(1, math.ceil(3 * sigma))
    radius = min(radius, x.shape[-1] - 1, x.shape[-2] - 1)
    offsets = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1))
    return F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), kernel.view(1, 1, -1, 1))


def sobel(x: Tensor) -> tuple[Tensor, Tensor]:
    """Horizontal and vertical gradients of (B, 1, H, W) (y grows downwards)."""
    kx = torch.tensor([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=x.dtype, device=x.device)
    kernels = torch.stack([kx, kx.T]).unsqueeze(1)
    grad = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernels)
    return grad[:, :1], grad[:, 1:]


def shift(x: Tensor, dx: int, dy: int) -> Tensor:
    """``out[..., y, x] = x[..., y + dy, x + dx]``, zero outside the image."""
    h, w = x.shape[-2:]
    padded = F.pad(x, (1, 1, 1, 1))
    return padded[..., 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]


def non_max_suppression(magnitude: Tensor, gx: Tensor, gy: Tensor) -> Tensor:
    """Keep pixels whose gradient magnitude peaks across the edge (4 quantised directions)."""
    angle = torch.rad2deg(torch.atan2(gy, gx)) % 180
    sector = (((angle + 22.5) // 45) % 4).long()
    keep = torch.zeros_like(magnitude, dtype=torch.bool)
    for index, (dx, dy) in enumerate(((1, 0), (1, 1), (0, 1), (-1, 1))):
        # Strict on one side, inclusive on the other: plateaus keep one pixel, not two.
        peak = (magnitude > shift(magnitude, dx, dy)) & (magnitude >= shift(magnitude, -dx, -dy))
        keep |= (sector == index) & peak
    return keep


def hysteresis(strong: Tensor, weak: Tensor) -> Tensor:
    """Grow ``strong`` pixels through 8-connected ``weak`` ones until nothing changes."""
    edges = strong.float()
    allowed = (weak | strong).float()
    while True:
        grown = F.max_pool2d(edges, 3, stride=1, padding=1) * allowed
        if torch.equal(grown, edges):
            return edges.bool()
        edges = grown


# Neighbours P2..P9 clockwise from north, as (dx, dy); bit k of a code is neighbour P(k+2).
RING = ((0, -1), (1, -1), (1, 0), (1, 1), (0, 1), (-1, 1), (-1, 0), (-1, -1))


def _removable(code: int, step: int) -> bool:
    """Zhang-Suen's deletion rule for a pixel whose 8 neighbours are the bits of ``code``."""
    p = [(code >> k) & 1 for k in range(8)]
    count = sum(p)
    transitions = sum(p[k] == 0 and p[(k + 1) % 8] == 1 for k in range(8))
    p2, p4, p6, p8 = p[0], p[2], p[4], p[6]
    clear = (p2 * p4 * p6 == 0 and p4 * p6 * p8 == 0) if step == 0 else (
        p2 * p4 * p8 == 0 and p2 * p6 * p8 == 0)
    return 2 <= count <= 6 and transitions == 1 and clear


# One lookup table per sub-iteration: neighbourhood code → may the centre pixel go?
REMOVABLE = torch.tensor([[_removable(code, step) for code in range(256)] for step in (0, 1)])


def thin(edges: Tensor) -> Tensor:
    """Zhang-Suen thinning of a boolean (B, 1, H, W) map to one-pixel-wide lines.

    Each pixel's neighbourhood is packed into an 8-bit code by one convolution and looked up
    in :data:`REMOVABLE`, so an iteration costs a few whole-batch operations.
    """
    weights = torch.zeros(1, 1, 3, 3, device=edges.device)
    for bit, (dx, dy) in enumerate(RING):
        weights[0, 0, 1 + dy, 1 + dx] = 2.0**bit
    tables = REMOVABLE.to(edges.device)
    image = edges.clone()
    while True:
        changed = False
        for step in (0, 1):
            code = F.conv2d(F.pad(image.float(), (1, 1, 1, 1)), weights).long()
            remove = image & tables[step][code]
            if remove.any():
                image &= ~remove
                changed = True
        if not changed:
            return image


def detect_edges(images: Tensor, settings: EdgeSettings = EdgeSettings()) -> Tensor:
    """Boolean edge maps (B, 1, H, W) of uint8 or [0, 1] float images (B, C, H, W)."""
    x = images.float() / 255 if images.dtype == torch.uint8 else images.float()
    gray = gaussian_blur(to_gray(x), settings.sigma)
    gx, gy = sobel(gray)
    magnitude = torch.hypot(gx, gy)
    peak = magnitude.amax(dim=(1, 2, 3), keepdim=True)
    candidates = non_max_suppression(magnitude, gx, gy) & (magnitude > MIN_GRADIENT)
    edges = hysteresis(
        candidates & (magnitude >= settings.high * peak),
        candidates & (magnitude >= settings.low * peak),
    )
    return thin(edges) if settings.thin else edges


def edge_drawing(images: Tensor, settings: EdgeSettings = EdgeSettings()) -> Tensor:
    """uint8 (B, 1, H, W) line drawings: black edges on white, as in pix2pix's edges2* sets."""
    return torch.where(detect_edges(images, settings), 0, 255).to(torch.uint8)
