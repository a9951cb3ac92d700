"""Normalizing flows (Glow, RealNVP): an exact density through invertible maps.

Discrete 8-bit images are reduced to ``n_bits`` and dequantised with uniform noise, optionally
passed through RealNVP's logit transform, then through the flow to latents with Gaussian
priors. Every step's log-det is counted, so bits/dim = −log p(y)/(D·ln 2) + n_bits with the
preprocessing included (gentrain.likelihoods.dequantized_nll).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from gentrain.data.core.batch import Batch, DataSpec
from gentrain.errors import require
from gentrain.likelihoods import bits_per_dim, dequantize, dequantized_nll, quantize
from gentrain.models.base import (
    GenerativeModel,
    Grid,
    StepContext,
    labels_of,
    require_class_labels,
    sampling_labels,
)
from gentrain.nets.flow import Glow, RealNVP

ARCHS = ("glow", "realnvp")
COUPLINGS = ("affine", "additive")
PREPROCESS = ("none", "logit")
GRID_ROW = 8


class Flow(GenerativeModel):
    """Trained on the exact NLL of dequantised data; samples with a temperature."""

    family = "flow"
    monitor = "bits_per_dim"
    inference_keys = ("temperature",)

    def __init__(
        self,
        spec: DataSpec,
        *,
        arch: str = "glow",
        coupling: str = "affine",
        levels: int = 3,
        steps: int = 32,
        hidden: int = 512,
        lu: bool = True,
        learn_prior: bool = True,
        n_bits: int = 8,
        preprocess: str = "none",
        logit_alpha: float = 0.05,
        temperature: float = 1.0,
        conditional: bool = False,
    ) -> None:
        super().__init__(spec)
        require(arch in ARCHS, f"model.arch must be one of {', '.join(ARCHS)}, got {arch!r}.")
        require(coupling in COUPLINGS,
                f"model.coupling must be one of {', '.join(COUPLINGS)}, got {coupling!r}.")
        require(preprocess in PREPROCESS,
                f"model.preprocess must be one of {', '.join(PREPROCESS)}, got {preprocess!r}.")
        require(1 <= n_bits <= 8, f"model.n_bits must be in 1..8, got {n_bits}.")
        require(0 < logit_alpha < 0.5, f"model.logit_alpha must be in (0, 0.5), got "
                f"{logit_alpha}.")
        require(temperature >= 0, f"model.temperature must be >= 0, got {temperature}.")
        require(spec.values == "8bit", f"model=flow models 8-bit images; data {spec.name!r} is "
                "binarised. Set data.binarize=none.")
        require(levels >= 1 and spec.height % 2**levels == 0 and spec.width % 2**levels == 0,
                f"model.levels={levels} does not fit {spec.height}x{spec.width} images: each "
                "level halves the sides, so they must be divisible by 2^levels (e.g. levels=2 "
                "for 28x28).")
        if conditional:
            require_class_labels(spec, self.family)
        self.n_bits, self.preprocess, self.logit_alpha = n_bits, preprocess, logit_alpha
        self.temperature, self.conditional = temperature, conditional
        classes = spec.num_classes if conditional else 0
        if arch == "glow":
            self.net = Glow(spec.channels, levels=levels, steps=steps, hidden=hidden,
                            affine=coupling == "affine", lu=lu, learn_prior=learn_prior,
                            num_classes=classes, image_size=(spec.height, spec.width))
        else:
            self.net = RealNVP(spec.channels, scales=levels, hidden=hidden,
                               affine=coupling == "affine", num_classes=classes,
                               image_size=(spec.height, spec.width))

    def condition(self, batch: Batch) -> Batch | None:
        return {"label": labels_of(batch, self.family)} if self.conditional else None

    def _label(self, batch: Batch) -> Tensor | None:
        return labels_of(batch, self.family) if self.conditional else None

    def to_flow_input(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Dequantised y (and, with ``preprocess=logit``, its logit) and the log-det of that
        logit step per image (zero without it)."""
        y = dequantize(x.float(), self.n_bits)
        if self.preprocess == "none":
            return y, torch.zeros(y.shape[0], device=y.device)
        a = self.logit_alpha
        p = a + (1 - 2 * a) * (y + 0.5)  # in (a, 1 - a)
        z = torch.log(p) - torch.log1p(-p)
        log_det = (math.log(1 - 2 * a) - torch.log(p) - torch.log1p(-p)).flatten(1).sum(1)
        return z, log_det

    def from_flow_output(self, z: Tensor) -> Tensor:
        """The inverse of :meth:`to_flow_input` for samples: back to 8-bit images.

        A latent far in its prior's tail can overflow through the inverse couplings (seen on a
        partly trained Glow at temperature 1); such pixels become mid-grey, not NaN."""
        z = torch.nan_to_num(z, nan=0.0)
        if self.preprocess == "logit":
            z = (torch.sigmoid(z) - self.logit_alpha) / (1 - 2 * self.logit_alpha) - 0.5
        return quantize(z.clamp(-0.5, 0.5 - 1e-6), self.n_bits)

    def nll(self, batch: Batch) -> Tensor:
        """-log P(x) per image in nats: an upper bound through the dequantisation."""
        y, log_det = self.to_flow_input(batch["image"])
        return dequantized_nll(self.net.log_prob(y, self._label(batch)).float() + log_det,
                               self.spec.dims, self.n_bits)

    def loss(self, batch: Batch, phase: str, ctx: StepContext | None = None
             ) -> dict[str, Tensor]:
        nats = self.nll(batch).mean()
        dims = self.spec.dims
        return {"loss": nats / dims, "bits_per_dim": bits_per_dim(nats.detach(), dims)}

    @torch.no_grad()
    def evaluate(self, batch: Batch) -> dict[str, Tensor]:
        nll = self.nll(batch)
        return {"nll_nats": nll, "bits_per_dim": bits_per_dim(nll, self.spec.dims)}

    def data_dependent_init(self, batch: Batch) -> bool:
        """Actnorm's first-batch statistics (Glow); a no-op once initialised."""
        actnorms = list(self.net.actnorms())
        if not actnorms or all(bool(a.initialized) for a in actnorms):
            return False
        y, _ = self.to_flow_input(batch["image"])
        self.net.initialize_actnorms(y, self._label(batch))
        return True

    @torch.no_grad()
    def sample(self, n: int, cond: Batch | None = None,
               generator: torch.Generator | None = None) -> Tensor:
        """Latents from the priors with their std scaled by ``model.temperature``."""
        return self.sample_at(self.temperature, n, cond, generator)

    def sample_at(self, temperature: float, n: int, cond: Batch | None,
                  generator: torch.Generator | None) -> Tensor:
        label = None
        if self.conditional:
            label = sampling_labels(cond, n, self.spec.num_classes,
                                    next(self.parameters()).device)
        z = self.net.sample(n, temperature=temperature, label=label, generator=generator)
        return self.from_flow_output(z.float())

    @torch.no_grad()
    def visuals(self, batch: Batch, generator: torch.Generator) -> dict[str, Grid]:
        """Samples at the model's temperature and, as Glow shows them, at 0.7."""
        n = batch["image"].shape[0]
        cond = self.condition(batch)
        return {"samples": Grid(self.sample(n, cond, generator), nrow=GRID_ROW),
                "samples_t0.7": Grid(self.sample_at(0.7, n, cond, generator), nrow=GRID_ROW)}

