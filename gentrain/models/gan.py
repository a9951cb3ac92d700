"""Generative adversarial networks (Goodfellow et al. 2014): DCGAN or ResNet networks trained
with the minimax, non-saturating, WGAN-GP or hinge objective, optionally class-conditional.

One training step is a discriminator phase (``critic_steps`` updates) then a generator phase.
With one critic step the G phase reuses the fakes the D phase made on the same batch (the
reference implementations' order: generate once, update D on the detached fakes, update G
through them); with several, as in WGAN-GP, every critic step draws fresh real images and
noise, and G generates its own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from gentrain.adversarial import (
    LOSSES,
    discriminator_loss,
    generator_loss,
    gradient_penalty,
    r1_penalty,
)
from gentrain.data.core.batch import Batch, DataSpec
from gentrain.errors import require
from gentrain.models.base import (
    GenerativeModel,
    Grid,
    Phase,
    StepContext,
    labels_of,
    require_class_labels,
    sampling_labels,
)
from gentrain.nets.gan import build_gan_networks

GRID_ROW = 8
# The discriminator "wins" when its loss stays below this for WARN_AFTER log intervals in a row.
D_LOSS_NEAR_ZERO = 0.05
WARN_AFTER = 3


@contextlib.contextmanager
def frozen(network: nn.Module) -> Iterator[nn.Module]:
    """``network`` with its parameters out of autograd: the G step needs D's gradient with
    respect to the fakes, never D's own (so nothing of D is computed or all-reduced)."""
    flags = [p.requires_grad for p in network.parameters()]
    network.requires_grad_(False)
    try:
        yield network
    finally:
        for p, flag in zip(network.parameters(), flags, strict=True):
            p.requires_grad_(flag)


class GAN(GenerativeModel):
    """A generator G(z, y) and a discriminator D(x, y) playing the adversarial game."""

    family = "gan"
    #: FID needs trainer.eval_sample_quality=true (and the Inception weights) during training;
    #: without it a GAN keeps no best.pt.
    monitor = "fid"
    sample_quality_metrics = ("fid", "kid", "is")
    ema_networks = ("generator",)

    def __init__(
        self,
        spec: DataSpec,
        *,
        arch: str = "dcgan",
        loss: str = "nonsaturating",
        latent_dim: int = 100,
        base_channels: int | None = None,
        d_norm: str = "auto",
        spectral_norm: bool = False,
        conditional: bool = False,
        critic_steps: int = 1,
        gp_weight: float = 10.0,
        r1_weight: float = 0.0,
    ) -> None:
        super().__init__(spec)
        require(loss in LOSSES, f"model.loss={loss!r} is not one of {', '.join(LOSSES)}.")
        require(isinstance(critic_steps, int) and critic_steps >= 1,
                f"model.critic_steps must be a whole number >= 1, not {critic_steps!r}.")
        require(latent_dim >= 1, f"model.latent_dim must be >= 1, not {latent_dim}.")
        require(gp_weight >= 0, f"model.gp_weight must be >= 0, not {gp_weight}.")
        require(r1_weight >= 0, f"model.r1_weight must be >= 0 (0: off), not {r1_weight}.")
        self.r1_weight = r1_weight
        if d_norm == "auto":  # the ResNet critic has none; DCGAN's is batch, layer for WGAN-GP
            d_norm = "none" if arch == "resnet" else "layer" if loss == "wgan-gp" else "batch"
        require(not (loss == "wgan-gp" and d_norm == "batch"),
                "model.loss=wgan-gp penalises the gradient of each sample's critic value, which "
                "batch norm couples across the batch; use model.d_norm=layer or none.")
        if conditional:
            require_class_labels(spec, self.family)
        self.loss_kind, self.latent_dim = loss, latent_dim
        self.conditional, self.critic_steps, self.gp_weight = conditional, critic_steps, gp_weight
        self.num_classes = spec.num_classes if conditional else 0
        self.generator, self.discriminator = build_gan_networks(
            arch, latent_dim, spec.channels, spec.height, spec.width, self.num_classes,
            base_channels, d_norm, spectral_norm,
        )
        self._d_wins = 0  # log intervals in a row with the D loss near zero

    # -- what the trainer needs ---------------------------------------------------------------

    @property
    def phases(self) -> tuple[Phase, ...]:
        fresh = self.critic_steps > 1  # each critic update on its own real batch
        return (Phase("discriminator", self.critic_steps, fresh_batch=fresh), Phase("generator"))

    def phase_parameters(self, phase: str) -> list[nn.Parameter]:
        return list(self._network_of(phase).parameters())

    def _network_of(self, phase: str) -> nn.Module:
        networks = {"discriminator": self.discriminator, "generator": self.generator}
        if phase not in networks:
            raise KeyError(phase)
        return networks[phase]

    def networks(self) -> dict[str, nn.Module]:
        return {"generator": self.generator, "discriminator": self.discriminator}

    @property
    def compile_unsupported(self) -> str | None:
        if self.loss_kind == "wgan-gp":
            return ("WGAN-GP's gradient penalty differentiates through the critic twice "
                    "(create_graph=True), which torch.compile does not support.")
        return None

    def condition(self, batch: Batch) -> Batch | None:
        return {"label": labels_of(batch, self.family)} if self.conditional else None

    # -- training -----------------------------------------------------------------------------

    def _latent(self, n: int, device: torch.device,
                generator: torch.Generator | None = None) -> Tensor:
        """G's input for ``n`` samples: z ~ N(0, I) (InfoGAN appends its codes)."""
        return torch.randn(n, self.latent_dim, device=device, generator=generator)

    def _generate(self, batch: Batch, keep_graph: bool) -> tuple[Tensor, Tensor | None, Tensor]:
        """Fakes for ``batch``'s size and labels, through the trainer's wrapped generator, with
        the labels and latents that made them."""
        label = self.condition(batch)["label"] if self.conditional else None  # type: ignore[index]
        latent = self._latent(batch["image"].shape[0], batch["image"].device)
        with contextlib.nullcontext() if keep_graph else torch.no_grad():
            return self.network("generator")(latent, label), label, latent

    def _judge_fakes(self, critic: nn.Module, fake: Tensor, label: Tensor | None,
                     latent: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """D's logits on ``fake``, and the terms a family adds on the fakes in both phases, in
        ``loss``'s convention (``loss`` is added to the phase's loss, the rest is logged). A
        plain GAN adds none; InfoGAN's Q head recovers the codes in ``latent`` here."""
        return critic(fake, label), {}

    def loss(
        self, batch: Batch, phase: str, ctx: StepContext | None = None
    ) -> dict[str, Tensor]:
        ctx = ctx or StepContext()
        if phase == "discriminator":
            return self._discriminator_loss(batch, ctx)
        if phase == "generator":
            return self._generator_loss(batch, ctx)
        raise KeyError(phase)

    def _discriminator_loss(self, batch: Batch, ctx: StepContext) -> dict[str, Tensor]:
        reuse = self.critic_steps == 1 and ctx.reuse_graphs  # G's step takes these fakes
        fake, label, latent = self._generate(batch, keep_graph=reuse)
        if reuse:
            ctx.scratch["fake"] = (fake, label, latent)
        real = batch["image"]
        critic = self.network("discriminator")
        real_logits = critic(real, label)
        fake_logits, extra = self._judge_fakes(critic, fake.detach(), label, latent)
        loss = discriminator_loss(self.loss_kind, real_logits, fake_logits)
        if "loss" in extra:
            loss = loss + extra.pop("loss")
        out = {"real_logit": real_logits.detach().float().mean(),
               "fake_logit": fake_logits.detach().float().mean()}
        if self.loss_kind == "wgan-gp":
            # The raw critic: DDP does not support autograd.grad through its wrapper, and the
            # penalty's parameter gradients still reach the all-reduce of this backward.
            penalty = gradient_penalty(lambda x: self.discriminator(x, label), real, fake)
            out["gradient_penalty"] = penalty.detach()
            out["wasserstein_estimate"] = (out["real_logit"] - out["fake_logit"])
            loss = loss + self.gp_weight * penalty
        if self.r1_weight > 0:  # the raw D, as for the gradient penalty above
            r1 = r1_penalty(lambda x: self.discriminator(x, label), real)
            out["r1_penalty"] = r1.detach()
            loss = loss + self.r1_weight / 2 * r1
        return {"loss": loss, **out, **extra}

    def _generator_loss(self, batch: Batch, ctx: StepContext) -> dict[str, Tensor]:
        reused = ctx.scratch.pop("fake", None)
        fake, label, latent = (reused if reused is not None
                               else self._generate(batch, keep_graph=True))
        with frozen(self.discriminator) as critic:
            fake_logits, extra = self._judge_fakes(critic, fake, label, latent)
        loss = generator_loss(self.loss_kind, fake_logits)
        if "loss" in extra:
            loss = loss + extra.pop("loss")
        return {"loss": loss, **extra}

    def training_warnings(self, metrics: dict[str, float]) -> list[str]:
        d_loss = metrics.get("discriminator/loss")
        if self.loss_kind == "wgan-gp" or d_loss is None:
            return []
        self._d_wins = self._d_wins + 1 if d_loss < D_LOSS_NEAR_ZERO else 0
        if self._d_wins < WARN_AFTER:
            return []
        return [f"the discriminator's loss has stayed below {D_LOSS_NEAR_ZERO} for "
                f"{self._d_wins} log intervals: D wins and G's gradient vanishes (mode "
                "collapse or divergence follows). Lower D's learning rate, use "
                "model.loss=hinge or wgan-gp, or model.spectral_norm=true; best.pt and the "
                "periodic checkpoints keep the earlier weights."]

    # -- sampling -----------------------------------------------------------------------------

    @torch.no_grad()
    def sample(
        self, n: int, cond: Batch | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        device = next(self.generator.parameters()).device
        return self.generate(self._latent(n, device, generator), cond)

    def generate(self, latent: Tensor, cond: Batch | None = None) -> Tensor:
        """G's images in [-1, 1] for ``latent`` (B, latent_dim), conditioned like ``cond``."""
        label = (sampling_labels(cond, latent.shape[0], self.num_classes, latent.device)
                 if self.conditional else None)
        return self.generator(latent, label).float().clamp(-1, 1)

    @torch.no_grad()
    def visuals(self, batch: Batch, generator: torch.Generator) -> dict[str, Grid]:
        """Samples from the same noise at every call (the trainer reseeds ``generator``), so
        the grids show one set of latents evolving; conditional: one row per class."""
        device = next(self.generator.parameters()).device
        if self.conditional:
            labels = torch.arange(self.num_classes, device=device).repeat_interleave(GRID_ROW)
            return {"samples": Grid(self.sample(labels.shape[0], {"label": labels}, generator),
                                    nrow=GRID_ROW)}
        return {"samples": Grid(self.sample(GRID_ROW * GRID_ROW, None, generator),
                                nrow=GRID_ROW)}
