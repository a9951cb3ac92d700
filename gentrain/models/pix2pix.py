"""pix2pix (Isola et al. 2017): image-to-image translation with a conditional GAN.

A U-Net generator maps the source to the target; a PatchGAN discriminator judges
(source, image) pairs patch by patch. G minimises the cGAN loss plus λ·L1 to the target
(λ = 100), D the cGAN loss halved. One D step then one G step per training step (the shared
adversarial step), and the G step reuses the output the D step generated on the same batch,
so G runs once per step as in the reference implementation. At inference G runs exactly as in
training (the paper's protocol): dropout on and batch norm on the statistics of the input
itself, one image at a time.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from gentrain.data.core.batch import Batch, DataSpec
from gentrain.errors import GentrainError, require
from gentrain.image_metrics import l1, psnr, ssim
from gentrain.models.adversarial_step import AdversarialModel, Duel, Fakes, Verdict
from gentrain.models.base import Grid
from gentrain.nets.pix2pix import PatchDiscriminator, UNetGenerator

GAN_LOSSES = {"vanilla": "nonsaturating", "lsgan": "lsgan"}  # pix2pix name -> objective
GRID_ROWS = 8
EVAL_SEED = 0  # dropout at evaluation draws from its own seed: reproducible, training RNG untouched


@contextlib.contextmanager
def training_mode(network: nn.Module, seed: int) -> Iterator[nn.Module]:
    """``network`` in training mode (dropout on, batch statistics) with its own RNG stream."""
    was_training = network.training
    device = next(network.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        network.train()
        try:
            yield network
        finally:
            network.train(was_training)


class Pix2Pix(AdversarialModel):
    """A U-Net generator G(source) and a PatchGAN D(source, image), trained on pairs."""

    family = "pix2pix"
    monitor = "l1"
    sample_quality_metrics = ("fid",)  # of outputs vs targets
    players = {"generator": ("generator",), "discriminator": ("discriminator",)}
    discriminator_scale = 0.5  # as in the paper, to slow D down relative to G

    def __init__(
        self,
        spec: DataSpec,
        *,
        base_channels: int = 64,
        norm: str = "batch",
        dropout: float = 0.5,
        num_down: int | None = None,
        gan_loss: str = "vanilla",
        l1_weight: float = 100.0,
        d_base_channels: int = 64,
        d_layers: int = 3,
    ) -> None:
        super().__init__(spec)
        require(gan_loss in GAN_LOSSES,
                f"model.gan_loss={gan_loss!r} is not one of {', '.join(GAN_LOSSES)}.")
        require(l1_weight >= 0, f"model.l1_weight must be >= 0 (the paper: 100), not {l1_weight}.")
        require(0.0 <= dropout < 1.0, f"model.dropout must be in [0, 1), not {dropout}.")
        require(spec.height >= 2 ** (d_layers + 2),
                f"model.d_layers={d_layers} halves {spec.height} px images {d_layers} times, too "
                f"small for the PatchGAN's last two 4x4 convolutions; use model.d_layers <= "
                f"{max(1, int(math.log2(spec.height)) - 2)} at this resolution.")
        self.set_game(GAN_LOSSES[gan_loss])
        self.l1_weight = l1_weight
        self.generator = UNetGenerator(spec.source_channels, spec.channels, spec.height,
                                       base_channels=base_channels, norm=norm, dropout=dropout,
                                       num_down=num_down)
        self.discriminator = PatchDiscriminator(spec.source_channels + spec.channels,
                                                base_channels=d_base_channels,
                                                num_layers=d_layers, norm=norm)

    @classmethod
    def check_data(cls, spec: DataSpec) -> None:
        if spec.source_channels == 0:
            raise GentrainError(
                f"pix2pix translates a source image into a target, but data {spec.name!r} has "
                "no pairs. Use data=facades, data=edges2cats, or make pairs from any dataset "
                "with data.pair=labels|edges|grayscale|lowres|mask (e.g. data=shapes "
                "data.pair=labels)."
            )
        require(not spec.unpaired, f"pix2pix needs aligned pairs, but data {spec.name!r} is "
                "unpaired (two independent domains); use model=cyclegan.")
        require(spec.height == spec.width,
                f"The pix2pix U-Net needs square images; data {spec.name!r} is "
                f"{spec.height}x{spec.width}.")

    def condition(self, batch: Batch) -> Batch | None:
        return {"source": batch["source"]}

    # -- training -----------------------------------------------------------------------------

    def make_fakes(self, batch: Batch) -> Fakes:
        return {"image": self.network("generator")(batch["source"])}

    def duels(self, batch: Batch, fakes: Fakes, with_real: bool) -> list[Duel]:
        """D sees (source, image) pairs: the real target's or G's output."""
        source = batch["source"]
        real = torch.cat([source, batch["image"]], dim=1) if with_real else None
        return [Duel("discriminator", torch.cat([source, fakes["image"]], dim=1), real)]

    def generator_terms(self, batch: Batch, fakes: Fakes,
                        verdicts: list[Verdict]) -> dict[str, Tensor]:
        distance = (fakes["image"].float() - batch["image"].float()).abs().mean()
        return {"loss": self.l1_weight * distance, "gan": verdicts[0].loss, "l1": distance.detach()}

    # -- inference ----------------------------------------------------------------------------

    @torch.no_grad()
    def translate(self, source: Tensor, seed: int = EVAL_SEED) -> Tensor:
        """G's outputs for ``source``, generated one image at a time as in training."""
        with training_mode(self.generator, seed) as generator:
            outputs = [generator(image[None]) for image in source]
        return torch.cat(outputs).float().clamp(-1, 1)

    @torch.no_grad()
    def sample(
        self, n: int, cond: Batch | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        require(cond is not None and "source" in cond,
                "pix2pix translates sources: give them (task=sample uses sample.source=DIR or "
                "the test split of the run's data).")
        seed = EVAL_SEED if generator is None else int(generator.initial_seed())
        return self.translate(cond["source"][:n], seed)  # type: ignore[index]

    @torch.no_grad()
    def evaluate(self, batch: Batch) -> dict[str, Tensor]:
        """Per-example L1 (in [-1, 1] units), PSNR (dB) and SSIM of the output vs the target."""
        output, target = self.translate(batch["source"]), batch["image"].float()
        return {"l1": l1(output, target), "psnr": psnr(output, target),
                "ssim": ssim(output, target)}

    @torch.no_grad()
    def visuals(self, batch: Batch, generator: torch.Generator) -> dict[str, Grid]:
        """Rows of source | output | target for the fixed held-out batch."""
        rows = {key: value[:GRID_ROWS] for key, value in batch.items()}
        output = self.sample(rows["image"].shape[0], rows, generator)
        source = _as_channels(rows["source"], output.shape[1])
        triplets = torch.stack([source, output, rows["image"].float()], dim=1)
        return {"translations": Grid(triplets.flatten(0, 1), nrow=3)}


def _as_channels(images: Tensor, channels: int) -> Tensor:
    """``images`` with ``channels`` channels for display (grey repeated, or the first ones)."""
    if images.shape[1] == channels:
        return images.float()
    if images.shape[1] == 1:
        return images.float().expand(-1, channels, -1, -1)
    return images[:, :channels].float()
