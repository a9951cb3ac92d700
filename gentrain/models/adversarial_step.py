"""The adversarial step every adversarial family shares (gan, infogan, pix2pix, cyclegan,
stargan, aae, and the families built on them).

A family says what its game is, and only that:

- ``players``: which networks each phase trains (``discriminator``, ``generator``, and any
  phase of its own, as the AAE's ``reconstruction``);
- :meth:`AdversarialModel.make_fakes`: its generators' outputs for a batch, with what made them
  (latents, labels, targets);
- :meth:`AdversarialModel.duels`: for each discriminator, what it sees of the real data and of
  the fakes (pix2pix: the (source, image) pair; the AAE: codes against prior draws), how it is
  called, and the history of fakes it trains on (CycleGAN's pools);
- :meth:`AdversarialModel.discriminator_terms` / :meth:`AdversarialModel.generator_terms`:
  its own terms on top of the game (InfoGAN's mutual information, StarGAN's classification
  and cycle, pix2pix's L1, CycleGAN's cycle and identity losses).

The step does the rest the same way for all of them: the phase order and update ratio; making
the fakes once per training step and handing them from the phase that makes them to the
other (with their graph when the generator phase backpropagates through them, and made anew
when it may not: several critic steps, or DDP with gradient accumulation); D's loss on real
against detached fakes, scaled as the family says, with the WGAN-GP or R1 penalty on the raw
D; G's loss through a frozen D; and the same logged values (each D's mean logits on real and
fake, the penalties, the Wasserstein estimate).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from gentrain.adversarial import (
    LOSSES,
    discriminator_loss,
    generator_loss,
    gradient_penalty,
    r1_penalty,
)
from gentrain.data.core.batch import Batch
from gentrain.errors import require
from gentrain.models.base import GenerativeModel, Phase, StepContext

#: The step's fakes as the family makes them: named tensors (None where a family has none).
Fakes = dict[str, Any]
#: D's output for images: its logits, or (logits, what else its heads say) — StarGAN's
#: attribute logits, InfoGAN's Q — which the family's terms read from the :class:`Verdict`.
Judgement = Tensor | tuple[Tensor, Any]
FAKES = "fakes"  # the key of the step's fakes in StepContext.scratch


def call_critic(critic: nn.Module, images: Tensor, fake: bool) -> Judgement:
    """The plain way to ask a discriminator: ``critic(images)``."""
    return critic(images)


@dataclass
class Duel:
    """One discriminator's game against one generator's fakes, as the family sets it up.

    ``judge(network, images, fake)`` calls D on what it sees (``fake`` says which side, so a
    family can ask for a head on the fakes alone, as InfoGAN's Q). ``real`` is None in the
    generator phase, which never reads it. ``history`` maps the detached fakes to what D
    trains on. ``name`` suffixes this duel's logged values when a family has several.
    """

    critic: str
    fake: Tensor
    real: Tensor | None = None
    judge: Callable[[nn.Module, Tensor, bool], Judgement] = call_critic
    history: Callable[[Tensor], Tensor] | None = None
    name: str = ""


@dataclass
class Verdict:
    """What one duel's discriminator said in a phase: its logits and other outputs on the real
    and the fake side (the real side is None in the generator phase), and the duel's
    adversarial loss in that phase (D's scaled loss, or G's)."""

    duel: Duel
    fake_logits: Tensor
    fake_extra: Any
    loss: Tensor
    real_logits: Tensor | None = None
    real_extra: Any = None


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


def _split(judgement: Judgement) -> tuple[Tensor, Any]:
    return judgement if isinstance(judgement, tuple) else (judgement, None)


def _suffixed(values: dict[str, Tensor], name: str) -> dict[str, Tensor]:
    return {f"{key}_{name}" if name else key: value for key, value in values.items()}


class AdversarialModel(GenerativeModel):
    """A family that trains generators against discriminators through the shared step.

    Subclasses set ``players`` and ``objective`` (one of :data:`gentrain.adversarial.LOSSES`)
    and implement :meth:`make_fakes` and :meth:`duels`.
    """

    #: Which networks (attribute names) each phase trains; the adversarial phases are named
    #: ``discriminator`` and ``generator``, any other is the family's (see :meth:`own_loss`).
    players: ClassVar[Mapping[str, tuple[str, ...]]] = {}
    objective: str = "nonsaturating"
    #: D updates per G update; with more than one, each critic update draws its own batch.
    critic_steps: int = 1
    #: D's loss is multiplied by this (pix2pix and CycleGAN halve it to slow D down).
    discriminator_scale: float = 1.0
    #: CycleGAN's order: the G phase makes the fakes, then the D phase judges them detached.
    generator_first: bool = False
    gp_weight: float = 10.0  # λ of the gradient penalty, applied with objective wgan-gp
    r1_weight: float = 0.0  # γ of R1's γ/2·E‖∇D(x_real)‖², on every D when > 0
    #: R1 on every r1_every-th D update only, weighted r1_every times (StyleGAN2's lazy
    #: regularisation: R1's double backward is a third of a small D's step).
    r1_every: int = 1
    #: What D sees of every image, real or fake, in both phases (DiffAugment, see
    #: gentrain.augment); None: the images themselves.
    augment: Callable[[Tensor], Tensor] | None = None

    def set_game(self, objective: str, *, critic_steps: int = 1, gp_weight: float = 10.0,
                 r1_weight: float = 0.0, r1_every: int = 1) -> None:
        """Check and set the game's settings (named as the model config names them)."""
        require(objective in LOSSES,
                f"model.loss={objective!r} is not one of {', '.join(LOSSES)}.")
        require(isinstance(critic_steps, int) and critic_steps >= 1,
                f"model.critic_steps must be a whole number >= 1, not {critic_steps!r}.")
        require(gp_weight >= 0, f"model.gp_weight must be >= 0, not {gp_weight}.")
        require(r1_weight >= 0, f"model.r1_weight must be >= 0 (0: off), not {r1_weight}.")
        require(isinstance(r1_every, int) and r1_every >= 1,
                f"model.r1_every must be a whole number >= 1 (1: every D update), not "
                f"{r1_every!r}.")
        self.objective, self.critic_steps = objective, critic_steps
        self.gp_weight, self.r1_weight, self.r1_every = gp_weight, r1_weight, r1_every

    # -- what the family says -----------------------------------------------------------------

    def make_fakes(self, batch: Batch) -> Fakes:
        """The generators' outputs for ``batch``, through the trainer's wrapped networks (the
        step decides whether their graph is kept)."""
        raise NotImplementedError

    def duels(self, batch: Batch, fakes: Fakes, with_real: bool) -> list[Duel]:
        """Each discriminator against the fakes it judges; ``real`` only when ``with_real``
        (the discriminator phase), so a family that draws its real side (the AAE's prior)
        draws it once per D step."""
        raise NotImplementedError

    def discriminator_terms(self, batch: Batch, fakes: Fakes,
                            verdicts: list[Verdict]) -> dict[str, Tensor]:
        """The family's own D-phase terms: ``loss`` is added to D's loss, the rest logged."""
        return {}

    def generator_terms(self, batch: Batch, fakes: Fakes,
                        verdicts: list[Verdict]) -> dict[str, Tensor]:
        """The family's own G-phase terms: ``loss`` is added to G's loss, the rest logged."""
        return {}

    def own_loss(self, batch: Batch, phase: str, ctx: StepContext) -> dict[str, Tensor]:
        """The loss of a phase that is not part of the game (the AAE's reconstruction)."""
        raise KeyError(phase)

    # -- what the trainer needs ---------------------------------------------------------------

    @property
    def phases(self) -> tuple[Phase, ...]:
        critic = Phase("discriminator", self.critic_steps, fresh_batch=self.critic_steps > 1)
        game = (Phase("generator"), critic) if self.generator_first else \
            (critic, Phase("generator"))
        return tuple(Phase(name) for name in self.players if name not in
                     ("discriminator", "generator")) + game

    def phase_parameters(self, phase: str) -> list[nn.Parameter]:
        if phase not in self.players:
            raise KeyError(phase)
        return [p for name in self.players[phase] for p in getattr(self, name).parameters()]

    def networks(self) -> dict[str, nn.Module]:
        names = dict.fromkeys(name for players in self.players.values() for name in players)
        return {name: getattr(self, name) for name in names}

    @property
    def compile_unsupported(self) -> str | None:
        if self.objective == "wgan-gp" or self.r1_weight > 0:
            return ("the gradient penalty (WGAN-GP's or R1) differentiates through the critic "
                    "twice (create_graph=True), which torch.compile does not support.")
        return None

    def loss(
        self, batch: Batch, phase: str, ctx: StepContext | None = None
    ) -> dict[str, Tensor]:
        ctx = ctx or StepContext()
        if phase == "discriminator":
            return self._discriminator_step(batch, ctx)
        if phase == "generator":
            return self._generator_step(batch, ctx)
        return self.own_loss(batch, phase, ctx)

    # -- the step -----------------------------------------------------------------------------

    def _fakes(self, batch: Batch, ctx: StepContext, phase: str) -> Fakes:
        """The step's fakes: the first phase of the game makes them and hands them on; the
        other takes them, or makes its own when it is called alone or may not take them."""
        first = "generator" if self.generator_first else "discriminator"
        if phase != first:
            handed = ctx.scratch.pop(FAKES, None)
            if handed is not None:
                return handed
            with contextlib.nullcontext() if phase == "generator" else torch.no_grad():
                return self.make_fakes(batch)
        if phase == "generator":  # the D phase after it needs no graph of G's
            fakes = self.make_fakes(batch)
            ctx.scratch[FAKES] = {key: value.detach() if isinstance(value, Tensor) else value
                                  for key, value in fakes.items()}
            return fakes
        # G backpropagates through D's fakes of this micro-batch only with one critic step
        # (several draw fresh batches) and when the trainer allows it (see StepContext).
        handing_on = self.critic_steps == 1 and ctx.reuse_graphs
        with contextlib.nullcontext() if handing_on else torch.no_grad():
            fakes = self.make_fakes(batch)
        if handing_on:
            ctx.scratch[FAKES] = fakes
        return fakes

    def _discriminator_step(self, batch: Batch, ctx: StepContext) -> dict[str, Tensor]:
        fakes = self._fakes(batch, ctx, "discriminator")
        with_r1 = (ctx.step * self.critic_steps + ctx.repeat) % self.r1_every == 0
        verdicts, logs = [], {}
        loss: Tensor | float = 0.0
        for duel in self.duels(batch, fakes, with_real=True):
            assert duel.real is not None, f"duel {duel.critic!r} has no real side"
            critic, real, fake = self.network(duel.critic), duel.real, duel.fake.detach()
            if duel.history is not None:
                fake = duel.history(fake)
            if self.augment is not None:
                real, fake = self.augment(real), self.augment(fake)
            real_logits, real_extra = _split(duel.judge(critic, real, False))
            fake_logits, fake_extra = _split(duel.judge(critic, fake, True))
            duel_loss = self.discriminator_scale * discriminator_loss(
                self.objective, real_logits, fake_logits)
            values = {"real_logit": real_logits.detach().float().mean(),
                      "fake_logit": fake_logits.detach().float().mean()}
            if self.objective == "wgan-gp":
                values["wasserstein_estimate"] = values["real_logit"] - values["fake_logit"]
            penalties, values_ = self._penalties(duel, real, fake, with_r1)
            logs.update(_suffixed({**values, **values_}, duel.name))
            loss = loss + duel_loss + penalties
            verdicts.append(Verdict(duel, fake_logits, fake_extra, duel_loss.detach(),
                                    real_logits, real_extra))
        return self._with_terms(loss, logs, self.discriminator_terms(batch, fakes, verdicts))

    def _penalties(self, duel: Duel, real: Tensor, fake: Tensor, with_r1: bool
                   ) -> tuple[Tensor | float, dict[str, Tensor]]:
        """The gradient penalty (WGAN-GP) and, on the D updates ``with_r1``, R1 on ``duel``'s
        D, weighted, with their logs, at the images D was shown (augmented, if it is).

        They call the raw D: DDP does not support autograd.grad through its wrapper, and the
        penalties' parameter gradients still reach the all-reduce of this phase's backward.
        """
        raw = getattr(self, duel.critic)

        def logits(images: Tensor) -> Tensor:
            return _split(duel.judge(raw, images, False))[0]

        total: Tensor | float = 0.0
        logs: dict[str, Tensor] = {}
        if self.objective == "wgan-gp":
            penalty = gradient_penalty(logits, real, fake)
            logs["gradient_penalty"] = penalty.detach()
            total = total + self.gp_weight * penalty
        if self.r1_weight > 0 and with_r1:
            r1 = r1_penalty(logits, real)
            logs["r1_penalty"] = r1.detach()
            total = total + self.r1_every * self.r1_weight / 2 * r1
        return total, logs

    def _generator_step(self, batch: Batch, ctx: StepContext) -> dict[str, Tensor]:
        fakes = self._fakes(batch, ctx, "generator")
        verdicts = []
        loss: Tensor | float = 0.0
        for duel in self.duels(batch, fakes, with_real=False):
            # The raw D: G's backward needs no all-reduce of D's (frozen) parameters.
            fake = duel.fake if self.augment is None else self.augment(duel.fake)
            with frozen(getattr(self, duel.critic)) as critic:
                fake_logits, fake_extra = _split(duel.judge(critic, fake, True))
            duel_loss = generator_loss(self.objective, fake_logits)
            loss = loss + duel_loss
            verdicts.append(Verdict(duel, fake_logits, fake_extra, duel_loss.detach()))
        return self._with_terms(loss, {}, self.generator_terms(batch, fakes, verdicts))

    @staticmethod
    def _with_terms(loss: Tensor | float, logs: dict[str, Tensor],
                    terms: dict[str, Tensor]) -> dict[str, Tensor]:
        if "loss" in terms:
            loss = loss + terms.pop("loss")
        assert isinstance(loss, Tensor)
        return {"loss": loss, **logs, **terms}
