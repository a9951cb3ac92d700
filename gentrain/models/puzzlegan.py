"""Puzzle-GAN (Lee, Yun, Choi, Yoo, Yang and Oh, ECCV 2018, "Unsupervised Holistic Image
Generation from Key Local Patches"): a whole image, and where its patches belong, from K
unordered key patches of it.

G is three networks (gentrain.nets.puzzlegan): a part encoder shared by the K patches (each
crop resized to the full resolution, their encodings summed, so their order does not matter),
a mask decoder (sigmoid; its target is the union of the boxes) and an image decoder from
[embedding; z], z ~ U(-1, 1)^128, with skips from both. D is DCGAN's. Facts from the authors'
code (hellbell/KeyPatchGan):

- D's loss is BCE with real images as real and, as fake, the generated images and two box-swap
  composites of real images: the image's boxes pasted onto another real image, and the other
  image's content pasted into the image's boxes. Both composites are real pixels everywhere,
  so D must learn that the parts and the whole belong together.
- G's loss is the adversarial (non-saturating BCE) loss plus the spatial loss
  L1(mask, ground-truth mask) and the appearance loss L1(G(x) * mask, x * ground-truth mask),
  each summed over pixels and examples (``L1Loss(size_average=False)``) and weighted by a
  factor decayed log-uniformly from 1e-2 to 1e-4 over training (the authors step it once per
  epoch with ``np.logspace(-2, -4, epochs)``; here it moves every step along the same line).
- D steps on every batch and G on every second one (``model.d_steps=2``): a training step is
  D on one batch, D on the next, then G on that same batch, reusing the fakes of the D step
  (the shared adversarial step hands them on; Phase.shares_last keeps G on D's last batch).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from gentrain.data.core.batch import Batch, DataSpec
from gentrain.errors import GentrainError, require
from gentrain.models.adversarial_step import AdversarialModel, Duel, Fakes, Verdict
from gentrain.models.base import Grid, Phase, StepContext
from gentrain.nets.gan import DCGANDiscriminator
from gentrain.nets.puzzlegan import SIDES, ImageDecoder, MaskDecoder, PartEncoder

GRID_ROWS = 8
EVAL_SEED = 0  # z of the per-example metrics: the same for every evaluation


def l1_weight(step: int, max_steps: int, start: float, end: float) -> float:
    """The spatial and appearance losses' weight at ``step``: log-uniform from ``start`` at
    the first step to ``end`` at the last."""
    progress = min(1.0, step / max(1, max_steps - 1))
    return math.exp(math.log(start) + progress * (math.log(end) - math.log(start)))


def box_swaps(image: Tensor, other: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """The two composite negatives of D: ``image``'s boxes (``mask``) pasted onto ``other``,
    and ``other``'s content pasted into ``image``'s boxes."""
    return image * mask + other * (1 - mask), other * mask + image * (1 - mask)


def mask_iou(predicted: Tensor, target: Tensor) -> Tensor:
    """(B,) intersection over union of the predicted mask (> 0.5) and the boxes' union."""
    p, t = predicted.flatten(1) > 0.5, target.flatten(1) > 0.5
    union = (p | t).sum(1).clamp(min=1)
    return (p & t).sum(1).double() / union


class PuzzleGAN(AdversarialModel):
    """Part encoder, mask decoder and image decoder (G) against a DCGAN discriminator (D)."""

    family = "puzzlegan"
    monitor = "mask_iou"
    sample_quality_metrics = ("fid",)  # of the completed images vs the real ones
    ema_networks = ("encoder", "mask_decoder", "image_decoder")
    players = {"generator": ("encoder", "mask_decoder", "image_decoder"),
               "discriminator": ("discriminator",)}

    def __init__(
        self,
        spec: DataSpec,
        *,
        base_channels: int = 64,
        embed_dim: int = 128,
        latent_dim: int = 128,
        d_base_channels: int = 64,
        d_steps: int = 2,
        l1_weight_start: float = 1e-2,
        l1_weight_end: float = 1e-4,
    ) -> None:
        super().__init__(spec)
        self.set_game("nonsaturating")  # the authors' BCE
        require(isinstance(d_steps, int) and d_steps >= 1,
                f"model.d_steps must be a whole number >= 1 (D updates per G update; the "
                f"authors: 2), not {d_steps!r}.")
        require(l1_weight_start > 0 and l1_weight_end > 0,
                f"model.l1_weight_start and l1_weight_end must be > 0 (a log-uniform decay), "
                f"not {l1_weight_start} and {l1_weight_end}.")
        require(latent_dim >= 1 and embed_dim >= 1,
                f"model.latent_dim and model.embed_dim must be >= 1, not {latent_dim} and "
                f"{embed_dim}.")
        self.d_steps, self.latent_dim = d_steps, latent_dim
        self.weights = (l1_weight_start, l1_weight_end)
        res, c = spec.height, spec.channels
        self.encoder = PartEncoder(c, res, base_channels, embed_dim)
        self.mask_decoder = MaskDecoder(res, base_channels, embed_dim)
        self.image_decoder = ImageDecoder(c, res, base_channels, embed_dim, latent_dim)
        self.discriminator = DCGANDiscriminator(c, res, d_base_channels)
        self._weight = l1_weight_start  # this step's weight, set by loss()

    @classmethod
    def check_data(cls, spec: DataSpec) -> None:
        if spec.patches < 1:
            raise GentrainError(
                f"Puzzle-GAN completes images from key patches, but data {spec.name!r} gives "
                "none. Add data.patches=drawn (boxes from a seeded rule), data.patches=labels "
                "(on shapes: boxes on the object) or data.patches={source:file,file:PATH} "
                "(a box file such as the authors' celebA_allbbs.mat).")
        require(spec.height == spec.width and spec.height in SIDES,
                f"Puzzle-GAN's networks need square images of {', '.join(map(str, SIDES))} px; "
                f"data {spec.name!r} is {spec.height}x{spec.width} (set data.resolution).")

    @property
    def phases(self) -> tuple[Phase, ...]:
        # D on d_steps batches, the last of them the step's shared batch, then G on that one.
        return (Phase("discriminator", self.d_steps, fresh_batch=self.d_steps > 1,
                      shares_last=True), Phase("generator"))

    def condition(self, batch: Batch) -> Batch | None:
        return {"patches": batch["patches"]}

    # -- the generator ------------------------------------------------------------------------

    def complete(self, patches: Tensor, z: Tensor, wrapped: bool = True) -> dict[str, Tensor]:
        """The predicted mask and image for ``patches`` (B, K, C, H, W) and ``z`` (B, latent)."""
        net = self.network if wrapped else lambda name: getattr(self, name)
        encoded = net("encoder")(patches)
        mask, features = net("mask_decoder")(encoded)
        image = net("image_decoder")(encoded[-1], z, features)
        return {"image": image, "mask": mask, "latent": z}

    def _latent(self, n: int, device: torch.device,
                generator: torch.Generator | None = None) -> Tensor:
        return torch.rand(n, self.latent_dim, device=device, generator=generator) * 2 - 1

    # -- training -----------------------------------------------------------------------------

    def loss(self, batch: Batch, phase: str, ctx: StepContext | None = None
             ) -> dict[str, Tensor]:
        ctx = ctx or StepContext()
        self._weight = l1_weight(ctx.step, ctx.max_steps, *self.weights)
        return super().loss(batch, phase, ctx)

    def make_fakes(self, batch: Batch) -> Fakes:
        patches = batch["patches"]
        return self.complete(patches, self._latent(patches.shape[0], patches.device))

    def duels(self, batch: Batch, fakes: Fakes, with_real: bool) -> list[Duel]:
        return [Duel("discriminator", fakes["image"], batch["image"] if with_real else None)]

    def discriminator_terms(self, batch: Batch, fakes: Fakes,
                            verdicts: list[Verdict]) -> dict[str, Tensor]:
        """The box-swap composites of real images, judged fake."""
        critic = self.network("discriminator")
        swapped = box_swaps(batch["image"], batch["shuffled"], batch["mask"])
        logits = [critic(composite).float() for composite in swapped]
        loss = sum(F.softplus(logit).mean() for logit in logits)
        return {"loss": loss, "swap_logit": torch.cat(logits).detach().mean()}  # type: ignore[dict-item]

    def generator_terms(self, batch: Batch, fakes: Fakes,
                        verdicts: list[Verdict]) -> dict[str, Tensor]:
        mask, image = fakes["mask"].float(), fakes["image"].float()
        target = batch["mask"].float()
        spatial = (mask - target).abs()
        appearance = (image * mask - batch["image"].float() * target).abs()
        loss = self._weight * (spatial.sum() + appearance.sum())  # the authors' sums
        return {"loss": loss, "gan": verdicts[0].loss, "mask_l1": spatial.mean().detach(),
                "appearance_l1": appearance.mean().detach(),
                "l1_weight": torch.tensor(self._weight, device=mask.device)}

    # -- inference ----------------------------------------------------------------------------

    @torch.no_grad()
    def sample(
        self, n: int, cond: Batch | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        return self.sample_with_mask(n, cond, generator)["image"]

    @torch.no_grad()
    def sample_with_mask(self, n: int, cond: Batch | None = None,
                         generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Images in [-1, 1] and predicted masks in [0, 1] for ``cond``'s first ``n`` patches."""
        require(cond is not None and "patches" in cond,
                "Puzzle-GAN completes images from key patches: give them (task=sample uses "
                "sample.source=DIR, a folder of patch crops, or the eval.split of the run's "
                "data).")
        patches = cond["patches"][:n]  # type: ignore[index]
        z = self._latent(patches.shape[0], patches.device, generator)
        out = self.complete(patches, z, wrapped=False)
        return {"image": out["image"].float().clamp(-1, 1), "mask": out["mask"].float()}

    @torch.no_grad()
    def evaluate(self, batch: Batch) -> dict[str, Tensor]:
        """Per example: mask IoU with the boxes' union, and the L1 (in [-1, 1] units) of the
        completed image to the real one inside the boxes; z from a fixed seed."""
        generator = torch.Generator(device=batch["image"].device).manual_seed(EVAL_SEED)
        out = self.sample_with_mask(batch["image"].shape[0], batch, generator)
        target, image = batch["mask"].float(), batch["image"].float()
        inside = target.expand_as(image)
        l1 = ((out["image"] - image).abs() * inside).flatten(1).sum(1) / \
            inside.flatten(1).sum(1).clamp(min=1)
        return {"mask_iou": mask_iou(out["mask"], target), "appearance_l1": l1}

    @torch.no_grad()
    def visuals(self, batch: Batch, generator: torch.Generator) -> dict[str, Grid]:
        """Rows of the K patches | predicted mask | generated image | real image."""
        rows = {key: value[:GRID_ROWS] for key, value in batch.items()}
        out = self.sample_with_mask(rows["image"].shape[0], rows, generator)
        return {"completions": completion_grid(rows["patches"], out["mask"], out["image"],
                                               rows["image"])}


def completion_grid(patches: Tensor, mask: Tensor, image: Tensor,
                    real: Tensor | None = None) -> Grid:
    """One row per example: its K patches, the predicted mask (grey), the generated image and,
    when given, the real one."""
    channels = image.shape[1]
    shown_mask = (mask.float() * 2 - 1).expand(-1, channels, -1, -1)
    columns = [*patches.float().unbind(1), shown_mask, image.float()]
    if real is not None:
        columns.append(real.float())
    return Grid(torch.stack(columns, dim=1).flatten(0, 1), nrow=len(columns))
