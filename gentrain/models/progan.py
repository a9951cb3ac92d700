"""Progressive GAN (Karras, Aila, Laine, Lehtinen 2018): G and D grow from 4x4 to the data's
resolution while they train, as the official code does it.

The growing schedule belongs to the engine (gentrain.engine.growth, ``model.growth``): from
the number of real images shown it gives the level of detail ``lod`` before every step, which
this family reads as the resolution to train at and the fade weight of the newest block
(:meth:`ProGAN.set_growth`). A step is the shared adversarial step (one critic step per G step,
fakes reused) with:

- G and D run up to the current resolution, blending the newest block in (gentrain.nets.progan);
- the real images shown to D box-downsampled to that resolution and faded like the networks:
  blended with their 2x down-then-up-sampled copy at weight 1 - fade (the official
  ``process_reals``), so that real and fake images change alike during a fade;
- WGAN-GP (λ = 10) plus the drift term ε·E[D(x_real)²], ε = 0.001, which keeps D's scores near
  zero; ``loss`` and ``r1_weight`` choose another game of the shared step instead (StyleGAN's
  non-saturating loss with R1 on this architecture, for example).

Samples are always at the data's resolution: below it, G's output is nearest-upsampled, as the
official G's output is; grids during training therefore show the low resolutions enlarged.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from gentrain.data.core.batch import Batch, DataSpec
from gentrain.engine.growth import GrowthStage, is_power_of_two
from gentrain.errors import require
from gentrain.models.adversarial_step import AdversarialModel, Duel, Fakes, Verdict
from gentrain.models.base import Grid
from gentrain.nets.progan import Discriminator, Generator, channels_at, downsample, upsample

GRID_ROW = 8


def fade_reals(images: Tensor, resolution: int, lod: float) -> Tensor:
    """Full-resolution real images as D sees them at ``lod``: box-averaged down to
    ``resolution``, then blended with their own 2x down-up-sampled copy at weight
    lod - floor(lod) (= 1 - fade: 0 once a resolution is stable)."""
    x = downsample(images, images.shape[-1] // resolution)
    blur = lod - math.floor(lod)
    if blur > 0:
        x = torch.lerp(x, upsample(downsample(x)), blur)
    return x


class ProGAN(AdversarialModel):
    """A growing generator and critic (WGAN-GP with drift); needs ``model.growth``."""

    family = "progan"
    monitor = "fid"
    sample_quality_metrics = ("fid", "kid", "is")
    ema_networks = ("generator",)
    players = {"generator": ("generator",), "discriminator": ("discriminator",)}
    has_idle_parameters = True  # the blocks of resolutions not reached yet, old toRGB/fromRGB

    def __init__(
        self,
        spec: DataSpec,
        *,
        latent_dim: int | None = None,
        fmap_base: int = 8192,
        fmap_max: int = 512,
        fmap_decay: float = 1.0,
        minibatch_std_group: int = 4,
        loss: str = "wgan-gp",
        gp_weight: float = 10.0,
        r1_weight: float = 0.0,
        r1_every: int = 1,
        drift_weight: float = 0.001,
    ) -> None:
        super().__init__(spec)
        self.set_game(loss, gp_weight=gp_weight, r1_weight=r1_weight, r1_every=r1_every)
        require(fmap_base >= 1 and fmap_max >= 1,
                f"model.fmap_base ({fmap_base}) and model.fmap_max ({fmap_max}) must be >= 1.")
        require(minibatch_std_group >= 1,
                f"model.minibatch_std_group must be >= 1 (1: off), not {minibatch_std_group}.")
        require(drift_weight >= 0, f"model.drift_weight must be >= 0, not {drift_weight}.")
        # The official latent size is the 4x4 block's width, nf(0).
        self.latent_dim = latent_dim or channels_at(0, fmap_base, fmap_max, fmap_decay)
        self.group, self.drift_weight = minibatch_std_group, drift_weight
        self.resolution = spec.height
        self.generator = Generator(self.latent_dim, spec.channels, spec.height, fmap_base,
                                   fmap_max, fmap_decay)
        self.discriminator = Discriminator(spec.channels, spec.height, fmap_base, fmap_max,
                                           fmap_decay, minibatch_std_group)
        # Where the growth stands: set by the trainer before every step, saved with the
        # weights, so a checkpoint samples at the resolution it was trained to.
        self.lod = math.log2(spec.height) - 2.0

    @classmethod
    def check_data(cls, spec: DataSpec) -> None:
        side = spec.height
        require(spec.height == spec.width and is_power_of_two(side) and side >= 4,
                f"model=progan grows square images whose side is a power of two (4, 8, ..., "
                f"1024), but {spec.name} is {spec.height}x{spec.width}. Set data.resolution to "
                "a power of two (the dataset crops to a centred square), e.g. 32, 128 or 1024.")

    def check_growth(self, batch_sizes: dict[int, int]) -> None:
        wrong = {r: b for r, b in batch_sizes.items() if b % min(self.group, b)}
        require(not wrong,
                f"D's minibatch standard deviation splits each batch into groups of "
                f"model.minibatch_std_group={self.group}, which does not divide the batch per "
                f"rank at {', '.join(f'{r} px ({b})' for r, b in wrong.items())}. Use batches "
                "that are multiples of the group (model.growth.batch_size, data.batch_size) or "
                "a group size that divides them; a group at least as large as the batch takes "
                "the whole batch (the official 1-GPU preset with batches 16/14/6/3 used 16).")

    # -- the growth -----------------------------------------------------------------------------

    def set_growth(self, stage: GrowthStage) -> None:
        self.lod = stage.lod

    def get_extra_state(self) -> dict[str, Any]:
        return {"lod": self.lod}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.lod = float(state["lod"])

    @property
    def level(self) -> int:
        """Index of the newest block in use (0: 4x4)."""
        return int(math.log2(self.resolution)) - math.floor(self.lod) - 2

    @property
    def fade(self) -> float:
        return 1.0 - (self.lod - math.floor(self.lod))

    @property
    def current_resolution(self) -> int:
        return 4 * 2**self.level

    # -- training -------------------------------------------------------------------------------

    def make_fakes(self, batch: Batch) -> Fakes:
        image = batch["image"]
        latent = torch.randn(image.shape[0], self.latent_dim, device=image.device)
        return {"image": self.network("generator")(latent, self.level, self.fade),
                "latent": latent}

    def duels(self, batch: Batch, fakes: Fakes, with_real: bool) -> list[Duel]:
        level, fade = self.level, self.fade

        def judge(critic: nn.Module, images: Tensor, fake: bool) -> Tensor:
            return critic(images, level, fade)

        real = fade_reals(batch["image"], self.current_resolution, self.lod) if with_real \
            else None
        return [Duel("discriminator", fakes["image"], real, judge)]

    def discriminator_terms(self, batch: Batch, fakes: Fakes,
                            verdicts: list[Verdict]) -> dict[str, Tensor]:
        real_logits = verdicts[0].real_logits
        assert real_logits is not None
        drift = real_logits.float().pow(2).mean()
        return {"loss": self.drift_weight * drift, "drift": drift.detach()}

    # -- sampling -------------------------------------------------------------------------------

    @torch.no_grad()
    def sample(
        self, n: int, cond: Batch | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        device = next(self.generator.parameters()).device
        latent = torch.randn(n, self.latent_dim, device=device, generator=generator)
        return self.generate(latent)

    def generate(self, latent: Tensor) -> Tensor:
        """G's images in [-1, 1] at the data's resolution (nearest-upsampled below it)."""
        image = self.generator(latent, self.level, self.fade).float()
        return upsample(image, self.resolution // image.shape[-1]).clamp(-1, 1)

    @torch.no_grad()
    def visuals(self, batch: Batch, generator: torch.Generator) -> dict[str, Grid]:
        """The same latents at every call, at the current resolution shown enlarged."""
        return {"samples": Grid(self.sample(GRID_ROW * GRID_ROW, None, generator),
                                nrow=GRID_ROW)}
