"""Denoising diffusion probabilistic models (Ho et al. 2020), with DDIM and DPM-Solver++
sampling and classifier-free guidance.

The family joins three separate parts: a network (``model.net``, a U-Net by default) that maps
(x_t, t, condition) to its output, the diffusion process of :mod:`gentrain.diffusion` (plain
tensors), and the samplers. Training minimises the paper's L_simple: the MSE between the
network's output and its target (ε by default) at a uniformly drawn timestep.

The condition is a class label (``model.conditional=true``) or a caption
(``model.conditional=caption``): a text encoder (``model.text``) owned by the model and trained
with it turns the caption's tokens into the U-Net's context, pooled into the time embedding and
cross-attended at the attention resolutions. Either is dropped with probability
``label_dropout`` while training (the null class, or the empty caption) for classifier-free
guidance.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gentrain.data.core.batch import Batch, DataSpec
from gentrain.diffusion import (
    FEW_STEP_SAMPLERS,
    SAMPLERS,
    SPACINGS,
    Denoise,
    Diffusion,
    sample_loop,
    variational_bound,
)
from gentrain.errors import GentrainError, require
from gentrain.likelihoods import bits_per_dim
from gentrain.models.base import (
    GenerativeModel,
    Grid,
    StepContext,
    labels_of,
    require_class_labels,
    sampling_labels,
)
from gentrain.nets.unet import TextContext
from gentrain.text.tokenizer import PAD, tokenizer_of

GRID_ROW = 8
EVAL_SEED = 0  # evaluate() draws from its own generator: reproducible, training RNG untouched
CONDITIONINGS = (False, True, "caption")  # model.conditional: none, class labels, captions

#: What the network is conditioned on: class labels (B,) or a caption's encoding.
Condition = Tensor | TextContext


@dataclass(frozen=True)
class SamplerConfig:
    """How images are drawn: ``ancestral`` over all T steps, or a few-step sampler, ``ddim``
    (with ``eta``) or ``dpm_solver++`` (2M), at ``steps`` timesteps placed by ``spacing``
    (``uniform`` or DDIM's ``quadratic``).

    ``guidance`` w combines the conditional and unconditional outputs as
    ε̃ = ε_u + w (ε_c − ε_u): 1 is plain conditional sampling, 0 unconditional, > 1 guided.
    """

    name: str = "ancestral"
    steps: int = 50
    eta: float = 0.0
    guidance: float = 1.0
    spacing: str = "uniform"

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], key: str) -> SamplerConfig:
        keys = ("name", "steps", "eta", "guidance", "spacing")
        unknown = sorted(set(values) - set(keys))
        require(not unknown, f"Unknown key(s) {', '.join(f'{key}.{k}' for k in unknown)}; "
                f"{key} takes {', '.join(keys)}.")
        config = cls(**values)
        require(config.name in SAMPLERS,
                f"{key}.name={config.name!r} is not one of {', '.join(SAMPLERS)}.")
        require(config.steps >= 1, f"{key}.steps must be at least 1, not {config.steps}.")
        require(config.eta >= 0, f"{key}.eta must be >= 0 (0: deterministic DDIM).")
        require(config.spacing in SPACINGS,
                f"{key}.spacing={config.spacing!r} is not one of {', '.join(SPACINGS)}.")
        return config


class DDPM(GenerativeModel):
    """A diffusion model trained on L_simple, sampled ancestrally, with DDIM or DPM-Solver++.

    ``conditional``: false, true (class labels) or ``caption``; ``text`` builds the caption
    encoder (a partial of gentrain.nets.text.TextEncoder taking the vocabulary size and caption
    length from the data), used only with captions.
    """

    family = "ddpm"
    monitor = "bits_per_dim"
    sample_quality_metrics = ("fid", "kid", "is")
    inference_keys = ("sampler", "grid_sampler", "vb_timesteps")

    def __init__(
        self,
        spec: DataSpec,
        *,
        net: Callable[..., nn.Module],
        timesteps: int = 1000,
        beta_schedule: str = "linear",
        target: str = "eps",
        variance: str = "fixedlarge",
        conditional: bool | str = False,
        text: Callable[..., nn.Module] | None = None,
        label_dropout: float = 0.1,
        min_snr_gamma: float | None = None,
        sampler: Mapping[str, Any] | None = None,
        grid_sampler: Mapping[str, Any] | None = None,
        vb_timesteps: int | None = None,
    ) -> None:
        super().__init__(spec)
        require(callable(net), "model.net must be a network config with _partial_: true "
                "(see configs/model/net/).")
        require(0.0 <= label_dropout < 1.0,
                f"model.label_dropout must be in [0, 1), not {label_dropout}.")
        require(min_snr_gamma is None or min_snr_gamma > 0,
                f"model.min_snr_gamma must be > 0 or null (the paper's unweighted loss), "
                f"not {min_snr_gamma}.")
        require(vb_timesteps is None or vb_timesteps >= 1,
                f"model.vb_timesteps must be >= 1 or null (all T), not {vb_timesteps}.")
        require(conditional in CONDITIONINGS,
                f"model.conditional={conditional!r} is not one of false, true (class labels) "
                "or caption.")
        if conditional is True:
            require_class_labels(spec, self.family)
        if conditional == "caption":
            require(spec.captioned,
                    f"model.conditional=caption needs captions, but data {spec.name!r} has none. "
                    "Use a captioned dataset (e.g. data=shapes data.captions=true) or "
                    "model.conditional=false.")
            require(callable(text), "model.text must be a text encoder config with _partial_: "
                    "true (see configs/model/ddpm.yaml).")
        require(spec.height == spec.width,
                f"The DDPM U-Net needs square images; data {spec.name!r} is "
                f"{spec.height}x{spec.width}.")
        self.diffusion = Diffusion.build(beta_schedule, timesteps, target, variance)
        self.conditional = conditional is True  # class labels, as every family names them
        self.captioned = conditional == "caption"
        self.label_dropout = label_dropout
        self.min_snr_gamma = min_snr_gamma
        self.num_classes = spec.num_classes if self.conditional else 0
        self.sampler = SamplerConfig.from_mapping(sampler or {}, "model.sampler")
        self.grid_sampler = SamplerConfig.from_mapping(
            grid_sampler or {"name": "ddim"}, "model.grid_sampler")
        for key, config in (("model.sampler", self.sampler),
                            ("model.grid_sampler", self.grid_sampler)):
            require(config.guidance == 1.0 or self.conditional or self.captioned,
                    f"{key}.guidance={config.guidance} needs a conditional model "
                    "(model.conditional=true or caption); unconditional models sample with "
                    "guidance 1.")
            require(config.name not in FEW_STEP_SAMPLERS or config.steps <= timesteps,
                    f"{key}.steps={config.steps} is more than model.timesteps={timesteps}.")
        self.vb_timesteps = vb_timesteps
        caption_context: dict[str, int] = {}
        if self.captioned:
            try:
                self.text = text(vocab_size=len(spec.vocabulary),  # type: ignore[misc]
                                 max_length=spec.caption_length)
            except TypeError as error:
                raise GentrainError(f"model.text could not be built: {error}. Check the keys "
                                    "against configs/model/ddpm.yaml.") from None
            caption_context["context_dim"] = self.text.width
        try:
            self.net = net(in_channels=spec.channels, out_channels=spec.channels,
                           resolution=spec.height, num_classes=self.num_classes,
                           **caption_context)
        except TypeError as error:
            raise GentrainError(f"model.net could not be built: {error}. Check the keys "
                                "against configs/model/net/.") from None

    # -- training -----------------------------------------------------------------------------

    def _labels(self, batch: Batch) -> Tensor | None:
        if not self.conditional:
            return None
        return labels_of(batch, self.family)

    def _caption(self, batch: Batch) -> Tensor:
        require("caption" in batch, f"This {self.family} is caption-conditional "
                "(model.conditional=caption) but the batch has no 'caption'. Use a captioned "
                "dataset (e.g. data=shapes data.captions=true).")
        return batch["caption"]

    def _condition(self, batch: Batch, drop: bool) -> Condition | None:
        """The network's condition for ``batch``: its labels or its captions' encoding, each
        replaced by the null class or the empty caption with probability ``label_dropout``
        when ``drop`` (training: classifier-free guidance learns the unconditional model)."""
        if self.captioned:
            caption = self._caption(batch)
            if drop and self.label_dropout > 0:
                dropped = torch.rand(caption.shape[0], device=caption.device) < self.label_dropout
                caption = caption.masked_fill(dropped[:, None], PAD)
            return self.text(caption)
        label = self._labels(batch)
        if drop and label is not None and self.label_dropout > 0:
            dropped = torch.rand(label.shape, device=label.device) < self.label_dropout
            label = torch.where(dropped, torch.full_like(label, self.num_classes), label)
        return label

    def _net(self, x: Tensor, t: Tensor, cond: Condition | None) -> Tensor:
        if self.captioned:
            return self.net(x, t, context=cond)
        return self.net(x, t, cond)

    def _null(self, cond: Condition) -> Condition:
        """The unconditional counterpart of ``cond``: the null class, or the empty caption's
        encoding (all padding, which the text encoder maps to its learned null context)."""
        if isinstance(cond, Tensor):
            return torch.full_like(cond, self.num_classes)
        empty = torch.full((cond[0].shape[0], self.spec.caption_length), PAD,
                           dtype=torch.long, device=cond[0].device)
        return self.text(empty)

    def condition(self, batch: Batch) -> Batch | None:
        """A caption-conditional model draws for the batch's captions; class-conditional ones
        cycle over the classes (:meth:`sample` with no condition)."""
        return {"caption": self._caption(batch)} if self.captioned else None

    def loss(
        self, batch: Batch, phase: str, ctx: StepContext | None = None
    ) -> dict[str, Tensor]:
        """L_simple: MSE between the network's output and its target at t ~ U{0, …, T−1}
        (weighted per timestep by Min-SNR-γ when ``min_snr_gamma`` is set)."""
        if phase != "main":
            raise KeyError(phase)
        x0 = batch["image"]
        t = torch.randint(0, self.diffusion.timesteps, (x0.shape[0],), device=x0.device)
        noise = torch.randn_like(x0)
        x_t = self.diffusion.q_sample(x0, t, noise)
        output = self._net(x_t, t, self._condition(batch, drop=True))
        target = self.diffusion.training_target(x0, noise, t)
        if self.min_snr_gamma is None:
            return {"loss": F.mse_loss(output.float(), target.float())}
        error = (output.float() - target.float()).square().flatten(1).mean(1)
        weight = self.diffusion.min_snr_weight(t, self.min_snr_gamma, error)
        return {"loss": (weight * error).mean()}

    # -- sampling -----------------------------------------------------------------------------

    def denoiser(self, cond: Condition | None, guidance: float) -> Denoise:
        """The network as a function of (x_t, t), with classifier-free guidance when w ≠ 1.

        ``cond`` is the labels or a caption's encoding, computed once for all timesteps."""
        if cond is None or guidance == 1.0:
            return lambda x, t: self._net(x, t, cond)
        null = self._null(cond)
        if guidance == 0.0:
            return lambda x, t: self._net(x, t, null)
        both_cond = _concatenated(cond, null)

        def guided(x: Tensor, t: Tensor) -> Tensor:
            both = self._net(torch.cat([x, x]), torch.cat([t, t]), both_cond)
            conditional, unconditional = both.float().chunk(2)
            return unconditional + guidance * (conditional - unconditional)

        return guided

    def _sampling_condition(self, n: int, cond: Batch | None,
                            device: torch.device) -> Condition | None:
        """The labels (``cond``'s or every class in turn) or the encoding of ``cond``'s
        captions (none given: the empty caption, i.e. unconditional samples)."""
        if self.conditional:
            return sampling_labels(cond, n, self.num_classes, device)
        if not self.captioned:
            return None
        if cond is None or "caption" not in cond:
            caption = torch.full((n, self.spec.caption_length), PAD, dtype=torch.long,
                                 device=device)
        else:
            caption = cond["caption"].to(device)
            require(caption.shape[0] == n,
                    f"sample(n={n}) got {caption.shape[0]} captions; pass one per image.")
        return self.text(caption)

    @torch.no_grad()
    def sample(
        self, n: int, cond: Batch | None = None, generator: torch.Generator | None = None,
        sampler: SamplerConfig | None = None,
    ) -> Tensor:
        """``n`` images with ``sampler`` (default ``model.sampler``); class-conditional models
        cycle over the classes when ``cond`` is None, caption-conditional ones take
        ``cond["caption"]`` (n, L) (None: the empty caption)."""
        sampler = sampler or self.sampler
        device = next(self.parameters()).device
        condition = self._sampling_condition(n, cond, device)
        shape = (n, self.spec.channels, self.spec.height, self.spec.width)
        noise = torch.randn(shape, generator=generator, device=device)
        return sample_loop(
            self.diffusion, self.denoiser(condition, sampler.guidance), noise,
            sampler=sampler.name, steps=sampler.steps, eta=sampler.eta, spacing=sampler.spacing,
            generator=generator, desc=f"{sampler.name} sampling",
        )

    @torch.no_grad()
    def visuals(self, batch: Batch, generator: torch.Generator) -> dict[str, Grid]:
        """Samples with the cheap ``model.grid_sampler`` (one row per class if conditional, one
        per caption of the first eight held-out images, shown, if caption-conditional), and the
        forward process on real images: x_t at eight timesteps from 0 to T−1."""
        device = next(self.parameters()).device
        titles: tuple[str, ...] = ()
        if self.conditional:
            labels = torch.arange(self.num_classes, device=device).repeat_interleave(GRID_ROW)
            samples = self.sample(labels.shape[0], {"label": labels}, generator,
                                  self.grid_sampler)
        elif self.captioned:
            captions = self._caption(batch)[:GRID_ROW]
            titles = tuple(tokenizer_of(self.spec).decode(captions))
            samples = self.sample(captions.shape[0] * GRID_ROW,
                                  {"caption": captions.repeat_interleave(GRID_ROW, 0)},
                                  generator, self.grid_sampler)
        else:
            samples = self.sample(GRID_ROW * GRID_ROW, None, generator, self.grid_sampler)
        images = batch["image"][:4]
        t = torch.linspace(0, self.diffusion.timesteps - 1, GRID_ROW, device=device).long()
        x0 = images.repeat_interleave(GRID_ROW, 0)
        t = t.repeat(images.shape[0])
        noise = torch.randn(x0.shape, generator=generator, device=device, dtype=x0.dtype)
        noised = self.diffusion.q_sample(x0, t, noise).clamp(-1, 1)
        return {"samples": Grid(samples, nrow=GRID_ROW, titles=titles),
                "forward": Grid(noised, nrow=GRID_ROW)}

    # -- evaluation ---------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self, batch: Batch) -> dict[str, Tensor]:
        """The variational bound on test NLL (an upper bound) per example, in nats and bits/dim.

        Costs T network passes per image (``model.vb_timesteps=K``: K + 1 passes for an
        unbiased estimate of the same bound). Conditional models are evaluated given the label
        or the caption.
        """
        x0 = batch["image"]
        generator = torch.Generator(device=x0.device).manual_seed(EVAL_SEED)
        cond = self._condition(batch, drop=False)
        bound = variational_bound(
            self.diffusion, lambda x, t: self._net(x, t, cond), x0,
            timesteps=self.vb_timesteps, generator=generator,
        )
        dims = self.spec.dims
        return {
            "nll_bound_nats": bound.total,
            "bits_per_dim": bits_per_dim(bound.total, dims),
            "prior_bits_per_dim": bits_per_dim(bound.prior, dims),
            "decoder_bits_per_dim": bits_per_dim(bound.decoder, dims),
        }


def _concatenated(first: Condition, second: Condition) -> Condition:
    """Two conditions as one batch, first then second (the guided pass runs both at once)."""
    if isinstance(first, Tensor) and isinstance(second, Tensor):
        return torch.cat([first, second])
    pooled, tokens, pad_mask = (torch.cat(pair) for pair in zip(first, second, strict=True))
    return pooled, tokens, pad_mask
