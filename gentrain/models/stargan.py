"""StarGAN (Choi et al. 2018): one generator G(x, c) translating an image to any target domain c.

The domains are the dataset's binary attributes (CelebA's hair colours, sex, age; the shapes'
colour family and background): c, a {0, 1} vector, is replicated over the image and
concatenated to its channels. A discriminator with a shared body and two heads scores
real/fake patches (D_src, WGAN-GP) and classifies the attributes (D_cls).

D minimises the WGAN-GP critic loss on real vs detached fakes + λ_cls · BCE of D_cls on the
real images against their own labels + λ_gp · gradient penalty. G minimises -D_src(fake) +
λ_cls · BCE of D_cls on the fakes against the target labels + λ_rec · L1 between x and the
cycle G(G(x, c_trg), c_org). The targets are the batch's labels in random order (the reference
code's ``label_trg = label_org[rand_idx]``), so they are always valid label combinations,
mutually exclusive groups such as hair colour included. Five critic updates per generator
update, each on a fresh batch (the reference gives G the fifth critic batch; here it draws
its own), through the shared adversarial step.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gentrain.data.core.batch import Batch, DataSpec
from gentrain.errors import GentrainError, require
from gentrain.models.adversarial_step import AdversarialModel, Duel, Fakes, Verdict
from gentrain.models.base import Grid
from gentrain.nets.stargan import StarDiscriminator
from gentrain.nets.translation import ResnetGenerator

GRID_ROWS = 8


def classification_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """BCE of each attribute logit, summed over attributes and averaged over the batch (the
    reference code's ``binary_cross_entropy_with_logits(..., reduction='sum') / batch``)."""
    bce = F.binary_cross_entropy_with_logits(logits.float(), labels.float(), reduction="sum")
    return bce / logits.shape[0]


class StarGAN(AdversarialModel):
    """A generator G(x, c) and a two-headed critic D(x) = (D_src, D_cls) over attribute domains."""

    family = "stargan"
    #: FID of translations (task=eval, or trainer.eval_sample_quality=true while training).
    monitor = "fid"
    sample_quality_metrics = ("fid",)
    ema_networks = ("generator",)
    players = {"generator": ("generator",), "discriminator": ("discriminator",)}

    def __init__(
        self,
        spec: DataSpec,
        *,
        base_channels: int = 64,
        num_blocks: int = 6,
        d_base_channels: int = 64,
        d_layers: int | None = None,
        critic_steps: int = 5,
        cls_weight: float = 1.0,
        rec_weight: float = 10.0,
        gp_weight: float = 10.0,
        exclusive_groups: Sequence[Sequence[str]] = (),
    ) -> None:
        super().__init__(spec)
        self.set_game("wgan-gp", critic_steps=critic_steps, gp_weight=gp_weight)
        for key, weight in (("cls_weight", cls_weight), ("rec_weight", rec_weight)):
            require(weight >= 0, f"model.{key} must be >= 0, not {weight}.")
        self.cls_weight, self.rec_weight = cls_weight, rec_weight
        self.num_domains = spec.num_classes
        self.groups = _group_indices(exclusive_groups, spec.class_names)
        # Zero padding, as in the paper: under reflection padding the replicated c would be
        # constant after the first conv, and its instance norm would erase it.
        self.generator = ResnetGenerator(spec.channels + self.num_domains, spec.channels,
                                         base_channels=base_channels, num_blocks=num_blocks,
                                         affine=True, padding="zeros")
        self.discriminator = StarDiscriminator(spec.channels, spec.height, self.num_domains,
                                               base_channels=d_base_channels,
                                               num_layers=d_layers)

    @classmethod
    def check_data(cls, spec: DataSpec) -> None:
        if spec.label_kind != "attributes" or spec.num_classes < 1:
            kind = f"{spec.label_kind} labels" if spec.label_kind else "no labels"
            raise GentrainError(
                f"StarGAN translates images between domains given by binary attribute labels, "
                f"but data {spec.name!r} has {kind}. Use data with attributes: data=celeba "
                "(pick the domains with data.attributes=[Black_Hair,Blond_Hair,...]) or the "
                "offline shapes with data=shapes data.labels=attributes."
            )
        require(spec.height == spec.width,
                f"StarGAN's discriminator needs square images; data {spec.name!r} is "
                f"{spec.height}x{spec.width}.")

    def condition(self, batch: Batch) -> Batch | None:
        """The batch's images with, as targets, the labels of the batch shifted by one: a
        fixed, valid target per image (task=eval's FID translates the reference split)."""
        return {"image": batch["image"], "label": batch["label"].roll(1, dims=0)}

    # -- training -----------------------------------------------------------------------------

    def translate(self, images: Tensor, domains: Tensor, generator: nn.Module | None = None
                  ) -> Tensor:
        """G(x, c): ``domains`` (B, A) replicated to (B, A, H, W) and appended to the channels."""
        generator = self.generator if generator is None else generator
        c = domains.to(images.dtype)[:, :, None, None].expand(-1, -1, *images.shape[-2:])
        return generator(torch.cat([images, c], dim=1))

    def _labels(self, batch: Batch) -> Tensor:
        require("label" in batch, "StarGAN needs each image's attribute labels, but the batch "
                "has no 'label'. Use data with attributes (data=celeba, or data=shapes "
                "data.labels=attributes).")
        return batch["label"].float()

    def make_fakes(self, batch: Batch) -> Fakes:
        """The batch translated to targets drawn from the batch's own labels, shuffled."""
        label = self._labels(batch)
        target = label[torch.randperm(label.shape[0], device=label.device)]
        return {"image": self.translate(batch["image"], target, self.network("generator")),
                "target": target}

    def duels(self, batch: Batch, fakes: Fakes, with_real: bool) -> list[Duel]:
        """D_src is the game's D; D_cls's logits come with it, for the classification terms."""
        return [Duel("discriminator", fakes["image"], batch["image"] if with_real else None)]

    def discriminator_terms(self, batch: Batch, fakes: Fakes,
                            verdicts: list[Verdict]) -> dict[str, Tensor]:
        label, real_cls = self._labels(batch), verdicts[0].real_extra
        classification = classification_loss(real_cls, label)
        accuracy = ((real_cls.detach() > 0).float() == label).float().mean()
        return {"loss": self.cls_weight * classification,
                "classification": classification.detach(), "real_accuracy": accuracy}

    def generator_terms(self, batch: Batch, fakes: Fakes,
                        verdicts: list[Verdict]) -> dict[str, Tensor]:
        real, fake = batch["image"], fakes["image"]
        classification = classification_loss(verdicts[0].fake_extra, fakes["target"])
        cycle = self.translate(fake, self._labels(batch), self.network("generator"))
        reconstruction = (real.float() - cycle.float()).abs().mean()
        return {"loss": self.cls_weight * classification + self.rec_weight * reconstruction,
                "adversarial": verdicts[0].loss, "classification": classification.detach(),
                "reconstruction": reconstruction.detach()}

    # -- inference ----------------------------------------------------------------------------

    @torch.no_grad()
    def sample(
        self, n: int, cond: Batch | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """``cond['image']`` (or ``cond['source']``) translated to the domains ``cond['label']``
        (float (n, A) of {0, 1}); G is deterministic, so ``generator`` is unused."""
        key = "image" if cond is not None and "image" in cond else "source"
        require(cond is not None and key in cond and "label" in cond,
                "StarGAN translates images and draws none from noise: sample(n, cond) needs "
                "cond['image'] (or 'source') and cond['label'], the target attributes of each "
                "image. task=sample writes domain_grid() of the eval.split images instead.")
        images, targets = cond[key][:n], cond["label"][:n]  # type: ignore[index]
        require(targets.shape == (images.shape[0], self.num_domains),
                f"StarGAN needs one target of {self.num_domains} attributes per image, got "
                f"labels of shape {tuple(targets.shape)} for {images.shape[0]} images.")
        return self.translate(images, targets).float().clamp(-1, 1)

    @torch.no_grad()
    def evaluate(self, batch: Batch) -> dict[str, Tensor]:
        """Per example: the L1 of the cycle x -> c_trg -> c_org (in [-1, 1] units), and the
        fraction of target attributes D_cls recognises in the translation."""
        cond = self.condition(batch)
        real, label, target = batch["image"].float(), self._labels(batch), cond["label"].float()
        fake = self.translate(real, target)
        cycle = self.translate(fake, label)
        _, logits = self.discriminator(fake)
        return {"rec_l1": (cycle.float() - real).abs().flatten(1).mean(1),
                "cls_accuracy": ((logits > 0).float() == target).float().mean(1)}

    def domain_targets(self, labels: Tensor) -> list[Tensor]:
        """One target per attribute, as in the paper's CelebA figure: flip the attribute, or
        for a member of a mutually exclusive group (hair colour) set it and clear the rest."""
        targets = []
        for j in range(self.num_domains):
            target = labels.float().clone()
            group = next((g for g in self.groups if j in g), None)
            if group is None:
                target[:, j] = 1 - target[:, j]
            else:
                target[:, list(group)] = 0
                target[:, j] = 1
            targets.append(target)
        return targets

    @torch.no_grad()
    def domain_grid(self, batch: Batch) -> Grid:
        """One row per image of ``batch``: the input, then it translated to each domain in
        turn (:meth:`domain_targets` of its labels); task=sample writes it too."""
        images, labels = batch["image"].float(), self._labels(batch)
        columns = [images] + [self.sample(images.shape[0], {"image": images, "label": t})
                              for t in self.domain_targets(labels)]
        return Grid(torch.stack(columns, dim=1).flatten(0, 1), nrow=len(columns))

    @torch.no_grad()
    def visuals(self, batch: Batch, generator: torch.Generator) -> dict[str, Grid]:
        """The domain grid of the first held-out images."""
        return {"translations": self.domain_grid({k: v[:GRID_ROWS] for k, v in batch.items()})}


def _group_indices(groups: Sequence[Sequence[str]], names: Sequence[str]
                   ) -> tuple[tuple[int, ...], ...]:
    """``model.exclusive_groups`` as attribute indices; names the data lacks are skipped (so
    the CelebA recipe's hair colours still work with fewer data.attributes), and a group left
    with one member is no group."""
    seen: set[int] = set()
    out = []
    for group in groups or ():
        require(not isinstance(group, str),
                f"model.exclusive_groups is a list of lists of attribute names, e.g. "
                f"[[Black_Hair,Blond_Hair,Brown_Hair]], not a list with {group!r}.")
        members = tuple(names.index(name) for name in group if name in names)
        require(not seen & set(members),
                "An attribute is in two of model.exclusive_groups; each attribute belongs to "
                "one mutually exclusive group at most.")
        seen |= set(members)
        if len(members) > 1:
            out.append(members)
    return tuple(out)
