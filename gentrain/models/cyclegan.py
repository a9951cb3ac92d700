"""CycleGAN (Zhu et al. 2017): unpaired image-to-image translation with cycle consistency.

Two ResNet generators, G: A→B and F: B→A, and two 70x70 PatchGANs: D_A judges domain A
(real A against F(B)), D_B judges domain B (real B against G(A)) — the paper's D_X and D_Y
(the reference code names them the other way round). G and F minimise the LSGAN loss plus
λ·(‖F(G(a)) − a‖₁ + ‖G(F(b)) − b‖₁) with λ = 10, plus the identity loss
0.5·λ·(‖G(b) − b‖₁ + ‖F(a) − a‖₁); each D minimises its LSGAN loss halved, on fakes drawn
from a history of 50 earlier ones (Shrivastava et al.).

One training step is a generator phase, then a discriminator phase, as in the reference's
``optimize_parameters``: the G step makes the fakes, the D step judges those same fakes (taken
before G's update, detached, through the pools), through the shared adversarial step with two
duels, D_A against F(B) and D_B against G(A). The trainer counts steps by its last phase,
here the discriminator's; both phases step once per training step, so the count is the same.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from gentrain.data.core.batch import Batch, DataSpec
from gentrain.errors import GentrainError, require
from gentrain.models.adversarial_step import AdversarialModel, Duel, Fakes, Verdict
from gentrain.models.base import Grid
from gentrain.models.pix2pix import _as_channels
from gentrain.nets.pix2pix import PatchDiscriminator
from gentrain.nets.translation import ResnetGenerator

DIRECTIONS = ("AtoB", "BtoA")
GRID_ROWS = 8


class ImagePool(nn.Module):
    """A history of generated images (Shrivastava et al. 2017), as the reference code keeps it.

    While fewer than ``size`` images are stored, each new fake is stored and returned. Once
    full, each new fake is, with probability 1/2, swapped with a random stored one (which is
    returned instead), and otherwise returned as it is. The images and the fill count are
    buffers of fixed shape, so the history is part of the model's state_dict (a resumed run
    continues with the same history). Its coin flips come from the global RNG, which the
    trainer saves and restores; every query draws the same amount whatever the fill level,
    and nothing is read back to the host.
    """

    def __init__(self, size: int, shape: tuple[int, int, int]) -> None:
        super().__init__()
        require(size >= 0, f"model.pool_size must be >= 0 (the paper: 50), not {size}.")
        self.size = size
        self.register_buffer("images", torch.zeros(size, *shape))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def forward(self, fakes: Tensor) -> Tensor:
        """What the discriminator sees for ``fakes`` (detached), image by image."""
        fakes = fakes.detach()
        if self.size == 0:
            return fakes
        n, device = fakes.shape[0], self.images.device
        coins = torch.rand(n, device=device)
        slots = torch.randint(self.size, (n,), device=device)
        out = []
        for new, coin, random_slot in zip(fakes.to(self.images.dtype), coins, slots,
                                          strict=True):
            filling = self.count < self.size
            swap = ~filling & (coin < 0.5)
            slot = torch.where(filling, self.count.clamp(max=self.size - 1), random_slot)
            old = self.images.index_select(0, slot.reshape(1))[0]
            out.append(torch.where(swap, old, new))
            self.images.index_copy_(0, slot.reshape(1), torch.where(filling | swap, new, old)[None])
            self.count.add_(filling.long())
        return torch.stack(out).to(fakes.dtype)


class CycleGAN(AdversarialModel):
    """G: A→B, F: B→A, D_A and D_B, trained on unpaired (or paired, alignment ignored) data."""

    family = "cyclegan"
    #: Mean cycle-reconstruction L1 on the test split: a sanity metric (a generator pair that
    #: copies its input scores 0), not a measure of translation quality; FID of G(A) is that.
    monitor = "cycle_l1"
    sample_quality_metrics = ("fid",)  # of the translations against their target domain
    inference_keys = ("direction",)
    ema_networks = ("generator_ab", "generator_ba")
    players = {"generator": ("generator_ab", "generator_ba"),
               "discriminator": ("discriminator_a", "discriminator_b")}
    objective = "lsgan"  # the paper's least-squares loss (Mao et al.)
    discriminator_scale = 0.5  # as in the paper, to slow D down relative to G
    generator_first = True  # the reference's order: G makes the fakes, D judges them after
    rank_local_state = ("pool_a.", "pool_b.")  # each rank's own history of its fakes

    def __init__(
        self,
        spec: DataSpec,
        *,
        base_channels: int = 64,
        num_blocks: int | None = None,
        d_base_channels: int = 64,
        d_layers: int = 3,
        cycle_weight: float = 10.0,
        identity_weight: float = 0.5,
        pool_size: int = 50,
        direction: str = "AtoB",
    ) -> None:
        super().__init__(spec)
        require(cycle_weight >= 0, f"model.cycle_weight must be >= 0 (the paper: 10), not "
                f"{cycle_weight}.")
        require(identity_weight >= 0, f"model.identity_weight must be >= 0 (the paper: 0.5), "
                f"not {identity_weight}.")
        require(direction in DIRECTIONS,
                f"model.direction={direction!r} is not one of {', '.join(DIRECTIONS)}.")
        a, b = spec.source_channels, spec.channels
        require(identity_weight == 0 or a == b,
                f"The identity loss feeds domain B's images to G: A→B, so both domains need "
                f"the same channels; data {spec.name!r} has {a} (A) and {b} (B). Set "
                "model.identity_weight=0.")
        require(spec.height >= 2 ** (d_layers + 2),
                f"model.d_layers={d_layers} is too deep for {spec.height} px images; use "
                "model.d_layers=1 or 2 at this resolution.")
        if num_blocks is None:  # the paper: 9 residual blocks at 256 px, 6 at 128 px and below
            num_blocks = 9 if spec.height >= 256 else 6
        self.cycle_weight, self.identity_weight = cycle_weight, identity_weight
        self.direction = direction
        self.generator_ab = ResnetGenerator(a, b, base_channels=base_channels,
                                            num_blocks=num_blocks)
        self.generator_ba = ResnetGenerator(b, a, base_channels=base_channels,
                                            num_blocks=num_blocks)
        self.discriminator_a = PatchDiscriminator(a, d_base_channels, d_layers, norm="instance")
        self.discriminator_b = PatchDiscriminator(b, d_base_channels, d_layers, norm="instance")
        self.pool_a = ImagePool(pool_size, (a, spec.height, spec.width))  # fakes F(b) for D_A
        self.pool_b = ImagePool(pool_size, (b, spec.height, spec.width))  # fakes G(a) for D_B

    @classmethod
    def check_data(cls, spec: DataSpec) -> None:
        if spec.source_channels == 0:
            raise GentrainError(
                f"CycleGAN translates between two image domains, but data {spec.name!r} has "
                "only one. Use an unpaired collection (data=horse2zebra, data=apple2orange, "
                "...), two folders (data=unpaired data.a=DIR data.b=DIR), or two shapes "
                "classes (data=shapes data.unpaired=circle:square). Paired data (data.pair=..., "
                "data=facades) works too; CycleGAN ignores the alignment."
            )

    @property
    def reference_images(self) -> str:
        """Domain B's images for A→B translations, domain A's (``source``) for B→A."""
        return "image" if self.direction == "AtoB" else "source"

    def condition(self, batch: Batch) -> Batch | None:
        return {"source": batch["source"]} if self.direction == "AtoB" else \
            {"image": batch["image"]}

    # -- training -----------------------------------------------------------------------------

    def make_fakes(self, batch: Batch) -> Fakes:
        """G(a) and F(b), through the trainer's wrapped generators."""
        return {"b": self.network("generator_ab")(batch["source"]),
                "a": self.network("generator_ba")(batch["image"])}

    def duels(self, batch: Batch, fakes: Fakes, with_real: bool) -> list[Duel]:
        """D_A: real A against F(B) from pool A; D_B: real B against G(A) from pool B."""
        return [Duel("discriminator_a", fakes["a"], batch["source"] if with_real else None,
                     history=self.pool_a, name="a"),
                Duel("discriminator_b", fakes["b"], batch["image"] if with_real else None,
                     history=self.pool_b, name="b")]

    def discriminator_terms(self, batch: Batch, fakes: Fakes,
                            verdicts: list[Verdict]) -> dict[str, Tensor]:
        return {"d_a": verdicts[0].loss, "d_b": verdicts[1].loss}

    def generator_terms(self, batch: Batch, fakes: Fakes,
                        verdicts: list[Verdict]) -> dict[str, Tensor]:
        real_a, real_b, fake_a, fake_b = batch["source"], batch["image"], fakes["a"], fakes["b"]
        g, f = self.network("generator_ab"), self.network("generator_ba")
        cycle_a, cycle_b = _l1(f(fake_b), real_a), _l1(g(fake_a), real_b)
        total = self.cycle_weight * (cycle_a + cycle_b)
        out = {"gan_ba": verdicts[0].loss, "gan_ab": verdicts[1].loss,
               "cycle_a": cycle_a.detach(), "cycle_b": cycle_b.detach()}
        if self.identity_weight > 0:
            identity = _l1(g(real_b), real_b) + _l1(f(real_a), real_a)
            total = total + self.identity_weight * self.cycle_weight * identity
            out["identity"] = identity.detach()
        return {"loss": total, **out}

    # -- inference ----------------------------------------------------------------------------

    @torch.no_grad()
    def sample(
        self, n: int, cond: Batch | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """Translations of ``cond``'s images in ``model.direction``: A→B of ``source``; B→A
        of ``image`` (the test split's B side), or of ``source`` when that is all there is
        (``task=sample sample.source=DIR``: a folder of B images)."""
        cond = cond or {}
        key = "image" if self.direction == "BtoA" and "image" in cond else "source"
        require(key in cond, "CycleGAN translates images: give them (task=sample uses "
                "sample.source=DIR or the test split of the run's data).")
        images = cond[key]
        network, channels = (self.generator_ab, self.spec.source_channels) \
            if self.direction == "AtoB" else (self.generator_ba, self.spec.channels)
        require(images.shape[1] == channels,
                f"model.direction={self.direction} translates {channels}-channel images, got "
                f"{images.shape[1]} channels.")
        return network(images[:n].float()).float().clamp(-1, 1)

    @torch.no_grad()
    def evaluate(self, batch: Batch) -> dict[str, Tensor]:
        """Per-example cycle L1 (in [-1, 1] units): ‖F(G(a)) − a‖₁, ‖G(F(b)) − b‖₁, their mean."""
        real_a, real_b = batch["source"].float(), batch["image"].float()
        rec_a = self.generator_ba(self.generator_ab(real_a)).float()
        rec_b = self.generator_ab(self.generator_ba(real_b)).float()
        cycle_a = (rec_a - real_a).abs().flatten(1).mean(1)
        cycle_b = (rec_b - real_b).abs().flatten(1).mean(1)
        return {"cycle_a": cycle_a, "cycle_b": cycle_b, "cycle_l1": (cycle_a + cycle_b) / 2}

    @torch.no_grad()
    def visuals(self, batch: Batch, generator: torch.Generator) -> dict[str, Grid]:
        """Rows of A | G(A) | F(G(A)) | B | F(B) | G(F(B)) for the fixed held-out batch."""
        real_a = batch["source"][:GRID_ROWS].float()
        real_b = batch["image"][:GRID_ROWS].float()
        fake_b = self.generator_ab(real_a).float()
        fake_a = self.generator_ba(real_b).float()
        rows = [real_a, fake_b, self.generator_ba(fake_b), real_b, fake_a,
                self.generator_ab(fake_a)]
        shown = max(real_a.shape[1], real_b.shape[1])
        columns = [_as_channels(r.float().clamp(-1, 1), shown) for r in rows]
        return {"translations": Grid(torch.stack(columns, dim=1).flatten(0, 1), nrow=6)}


def _l1(x: Tensor, y: Tensor) -> Tensor:
    return (x.float() - y.float()).abs().mean()
