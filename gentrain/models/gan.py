"""Generative adversarial networks (Goodfellow et al. 2014): DCGAN or ResNet networks trained
with the minimax, non-saturating, WGAN-GP or hinge objective, optionally class-conditional.

One training step is a discriminator phase (``critic_steps`` updates) then a generator phase,
through the shared adversarial step (gentrain.models.adversarial_step): with one critic step
the G phase reuses the fakes the D phase made on the same batch (the reference
implementations' order: generate once, update D on the detached fakes, update G through
them); with several, as in WGAN-GP, every critic step draws fresh real images and noise, and G
generates its own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gentrain.augment import diff_augment
from gentrain.data.core.batch import Batch, DataSpec
from gentrain.errors import require
from gentrain.models.adversarial_step import AdversarialModel, Duel, Fakes, Verdict
from gentrain.models.base import Grid, labels_of, require_class_labels, sampling_labels
from gentrain.nets.gan import InfoDiscriminator, build_gan_networks

GRID_ROW = 8
# The discriminator "wins" when its loss stays below this for WARN_AFTER log intervals in a row.
D_LOSS_NEAR_ZERO = 0.05
WARN_AFTER = 3


class GAN(AdversarialModel):
    """A generator G(z, y) and a discriminator D(x, y) playing the adversarial game."""

    family = "gan"
    #: FID needs trainer.eval_sample_quality=true (and the Inception weights) during training;
    #: without it a GAN keeps no best.pt.
    monitor = "fid"
    sample_quality_metrics = ("fid", "kid", "is")
    ema_networks = ("generator",)
    players = {"generator": ("generator",), "discriminator": ("discriminator",)}

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
        g_label_input: str = "concat",
        critic_steps: int = 1,
        gp_weight: float = 10.0,
        r1_weight: float = 0.0,
        r1_every: int = 1,
        diffaugment: Sequence[str] = (),
        aux_classifier_weight: float = 0.0,
        aux_classifier_sees_fakes: bool = True,
    ) -> None:
        super().__init__(spec)
        self.set_game(loss, critic_steps=critic_steps, gp_weight=gp_weight, r1_weight=r1_weight,
                      r1_every=r1_every)
        require(latent_dim >= 1, f"model.latent_dim must be >= 1, not {latent_dim}.")
        self.augment = diff_augment(list(diffaugment))
        if d_norm == "auto":  # the ResNet critic has none; DCGAN's is batch, layer for WGAN-GP
            d_norm = "none" if arch == "resnet" else "layer" if loss == "wgan-gp" else "batch"
        require(not (loss == "wgan-gp" and d_norm == "batch"),
                "model.loss=wgan-gp penalises the gradient of each sample's critic value, which "
                "batch norm couples across the batch; use model.d_norm=layer or none.")
        if conditional:
            require_class_labels(spec, self.family)
        self.latent_dim, self.conditional = latent_dim, conditional
        self.num_classes = spec.num_classes if conditional else 0
        self.generator, self.discriminator = build_gan_networks(
            arch, latent_dim, spec.channels, spec.height, spec.width, self.num_classes,
            base_channels, d_norm, spectral_norm, g_label_input,
        )
        require(aux_classifier_weight >= 0 and (conditional or not aux_classifier_weight),
                f"model.aux_classifier_weight={aux_classifier_weight} is AC-GAN's λ for D's "
                "auxiliary class head: it must be >= 0, and > 0 only with "
                "model.conditional=true (the head predicts the class labels).")
        self.aux_weight, self.aux_sees_fakes = aux_classifier_weight, aux_classifier_sees_fakes
        if aux_classifier_weight:  # AC-GAN: a class head on D's body (InfoGAN's Q head, reused)
            self.discriminator = InfoDiscriminator(self.discriminator, self.num_classes)
        self._d_wins = 0  # log intervals in a row with the D loss near zero

    # -- what the trainer needs ---------------------------------------------------------------

    def condition(self, batch: Batch) -> Batch | None:
        return {"label": labels_of(batch, self.family)} if self.conditional else None

    # -- training -----------------------------------------------------------------------------

    def _latent(self, n: int, device: torch.device,
                generator: torch.Generator | None = None) -> Tensor:
        """G's input for ``n`` samples: z ~ N(0, I) (InfoGAN appends its codes)."""
        return torch.randn(n, self.latent_dim, device=device, generator=generator)

    def _generate(self, batch: Batch, keep_graph: bool = True
                  ) -> tuple[Tensor, Tensor | None, Tensor]:
        """Fakes for ``batch``'s size and labels, through the trainer's wrapped generator, with
        the labels and latents that made them (without autograd unless ``keep_graph``)."""
        label = self.condition(batch)["label"] if self.conditional else None  # type: ignore[index]
        latent = self._latent(batch["image"].shape[0], batch["image"].device)
        with contextlib.nullcontext() if keep_graph else torch.no_grad():
            return self.network("generator")(latent, label), label, latent

    def _judge_fakes(self, critic: nn.Module, fake: Tensor, label: Tensor | None,
                     latent: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """D's logits on ``fake``, and the terms a family adds on the fakes in both phases, in
        ``loss``'s convention (``loss`` is added to the phase's loss, the rest is logged). A
        plain GAN adds none; AC-GAN its class loss λ·CE(class head, label) (in both phases, as
        Odena et al.'s L_C); InfoGAN's Q head recovers the codes in ``latent`` here."""
        if not self.aux_weight:
            return critic(fake, label), {}
        logits, class_logits = critic(fake, label, with_q=True)
        class_loss = F.cross_entropy(class_logits.float(), label)
        return logits, {"loss": self.aux_weight * class_loss,
                        "aux_class_loss_fake": class_loss.detach()}

    def make_fakes(self, batch: Batch) -> Fakes:
        image, label, latent = self._generate(batch)
        return {"image": image, "label": label, "latent": latent}

    def duels(self, batch: Batch, fakes: Fakes, with_real: bool) -> list[Duel]:
        label, latent = fakes["label"], fakes["latent"]

        def judge(critic: nn.Module, images: Tensor, fake: bool
                  ) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
            if fake:
                return self._judge_fakes(critic, images, label, latent)
            if self.aux_weight:  # AC-GAN: the class head's logits on the real images too
                logits, class_logits = critic(images, label, with_q=True)
                return logits, {"class_logits": class_logits}
            return critic(images, label)

        return [Duel("discriminator", fakes["image"], batch["image"] if with_real else None,
                     judge)]

    def discriminator_terms(self, batch: Batch, fakes: Fakes,
                            verdicts: list[Verdict]) -> dict[str, Tensor]:
        terms = dict(verdicts[0].fake_extra)
        if self.aux_weight:  # AC-GAN: D's class head learns the real images' labels
            real_logits = verdicts[0].real_extra["class_logits"]
            real_loss = F.cross_entropy(real_logits.float(), fakes["label"])
            fake_loss = terms["loss"] if self.aux_sees_fakes else 0.0
            terms["loss"] = fake_loss + self.aux_weight * real_loss
            terms["aux_class_loss_real"] = real_loss.detach()
        return terms

    def generator_terms(self, batch: Batch, fakes: Fakes,
                        verdicts: list[Verdict]) -> dict[str, Tensor]:
        return dict(verdicts[0].fake_extra)

    def training_warnings(self, metrics: dict[str, float]) -> list[str]:
        d_loss = metrics.get("discriminator/loss")
        if self.objective == "wgan-gp" or d_loss is None:
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
