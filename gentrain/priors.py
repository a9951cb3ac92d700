"""Latent priors p(z) for adversarial autoencoders: plain tensors and functions, no networks.

The AAE's discriminator only ever sees samples of the prior, so a prior is just a sampler.
Each one can also sample the part that belongs to a class (the label-conditioned AAE of
Makhzani et al. 2016, Fig. 6): mixture component ``y`` of the mixture, segment ``y`` of the
swiss roll. The shaped priors live in the first two dimensions; further dimensions, if any,
are N(0, 1), so a larger code still has a simple, known marginal there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from gentrain.errors import require

PRIORS = ("gaussian", "mixture", "swissroll")
# Windings of the roll. Radius and angle both grow with sqrt(u), u ~ U[0, 1), so codes spread
# evenly along the spiral's length and equal ranges of u are segments of about equal length.
SWISSROLL_TURNS = 2.0


@dataclass(frozen=True)
class LatentPrior:
    """A prior over ``dim``-dimensional codes.

    ``gaussian`` is N(0, I). ``mixture`` has ``components`` Gaussians of standard deviation
    ``std`` whose means are evenly spaced on a circle of radius ``radius`` in the first two
    dimensions (the paper's 10-component 2-d figure). ``swissroll`` is a noise-free spiral of
    outer radius ``radius``, cut into ``components`` equal segments for label conditioning.
    """

    kind: str
    dim: int
    components: int = 10
    radius: float = 4.0
    std: float = 0.5

    def __post_init__(self) -> None:
        require(self.kind in PRIORS,
                f"model.prior={self.kind!r} is not one of {', '.join(PRIORS)}.")
        require(self.dim >= 1, f"model.latent_dim must be >= 1, got {self.dim}.")
        require(self.kind == "gaussian" or self.dim >= 2,
                f"model.prior={self.kind} is shaped in two dimensions; use model.latent_dim >= 2 "
                "or model.prior=gaussian.")
        require(self.components >= 1, f"model.prior_components must be >= 1, got "
                f"{self.components}.")
        require(self.radius > 0 and self.std > 0,
                f"model.prior_radius and model.prior_std must be > 0, got {self.radius} and "
                f"{self.std}.")

    @property
    def has_components(self) -> bool:
        """Whether a label can pick a part of this prior (gaussian has no parts)."""
        return self.kind != "gaussian"

    def means(self) -> Tensor:
        """(components, 2) mixture means on the circle, the first at angle 0."""
        angle = 2 * math.pi * torch.arange(self.components) / self.components
        return self.radius * torch.stack([angle.cos(), angle.sin()], dim=1)

    def sample(
        self, n: int, labels: Tensor | None = None, generator: torch.Generator | None = None,
        device: torch.device | None = None,
    ) -> Tensor:
        """``n`` codes (n, dim), float32 on ``device``; with ``labels`` (n,) each comes from its
        label's component or segment.

        Draws come from ``generator`` on its own device (the global RNG when None) and are then
        moved, so a CPU generator gives the same codes whatever ``device`` is.
        """
        draw_on = generator.device if generator is not None else device
        if labels is not None:
            require(self.has_components,
                    "model.prior=gaussian has no components for labels to choose; use "
                    "model.prior=mixture or swissroll with model.conditional=true.")
            require(labels.shape == (n,), f"prior.sample(n={n}) needs labels of shape ({n},), "
                    f"got {tuple(labels.shape)}.")
            require(bool((labels >= 0).all() and (labels < self.components).all()),
                    f"labels must lie in [0, {self.components}) to pick a prior component; "
                    "set model.prior_components to at least the number of classes.")
            labels = labels.to(draw_on)
        z = torch.randn(n, self.dim, generator=generator, device=draw_on)
        if self.kind == "mixture":
            if labels is None:
                labels = torch.randint(self.components, (n,), generator=generator, device=draw_on)
            z[:, :2] = self.means().to(draw_on)[labels] + self.std * z[:, :2]
        elif self.kind == "swissroll":
            u = torch.rand(n, generator=generator, device=draw_on)
            if labels is not None:  # segment y covers u in [y/k, (y+1)/k)
                u = (labels + u) / self.components
            t = u.sqrt()
            angle = 2 * math.pi * SWISSROLL_TURNS * t
            z[:, :2] = self.radius * t[:, None] * torch.stack([angle.cos(), angle.sin()], dim=1)
        return z.to(device) if device is not None else z
