"""The protocol every model family implements; the trainer owns everything else.

A family is one module with one subclass of :class:`GenerativeModel`. It says which parameter
groups it trains (``phases``), computes named losses (``loss``) and draws samples (``sample``).
It never steps an optimizer, moves data or writes files.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from gentrain.data.core.batch import Batch, DataSpec
from gentrain.errors import require


def require_class_labels(spec: DataSpec, family: str) -> None:
    """``model.conditional=true`` needs a dataset with class labels."""
    require(
        spec.label_kind == "class" and spec.num_classes > 0,
        f"model.conditional=true needs class labels, but data {spec.name!r} has none. Use a "
        f"dataset with class labels or set model.conditional=false ({family}).",
    )


def labels_of(batch: Batch, family: str) -> Tensor:
    """The batch's class labels, or one clear error if a conditional model gets none."""
    require("label" in batch, f"This {family} is conditional (model.conditional=true) but the "
            "batch has no 'label'. Use a dataset with class labels or model.conditional=false.")
    return batch["label"]


def sampling_labels(cond: Batch | None, n: int, num_classes: int,
                    device: torch.device) -> Tensor:
    """The class of each of ``n`` samples: ``cond``'s labels, or every class in turn."""
    if cond is None or "label" not in cond:
        return torch.arange(n, device=device) % num_classes
    require(cond["label"].shape[0] == n,
            f"sample(n={n}) got {cond['label'].shape[0]} labels; pass one label per image.")
    return cond["label"].to(device)


@dataclass(frozen=True)
class Phase:
    """One parameter group with its own optimizer.

    ``repeats`` is the update ratio: the phase steps that many times per training step, e.g.
    five critic steps per generator step in WGAN-GP. The training step count is the number of
    times the *last* phase (the generator or main phase) has stepped. By default all phases of
    a training step see the step's batch (so a G step can reuse the fakes its D step made);
    with ``fresh_batch`` every repeat of this phase draws its own. ``shares_last`` makes the
    last of those repeats take the step's shared batch instead, so the phases after it train
    on the batch this one saw last (Puzzle-GAN: D on two batches, then G on the second).
    """

    name: str
    repeats: int = 1
    fresh_batch: bool = False
    shares_last: bool = False


def batches_per_step(phases: Sequence[Phase]) -> int:
    """Batches one training step draws (per micro-batch): each fresh repeat draws its own, and
    the step's shared batch is drawn once if any phase uses it. Epochs count these."""
    fresh = sum(p.repeats - p.shares_last for p in phases if p.fresh_batch)
    shared = any(not p.fresh_batch or p.shares_last for p in phases)
    return fresh + shared


@dataclass
class StepContext:
    """What the phases of one training step share, for one micro-batch.

    ``scratch`` lives for one training step: a D step can leave its fakes there for the G step
    of the same micro-batch (never across steps, so checkpoints and resume never see it).
    """

    step: int = 0  # training steps completed before this one
    max_steps: int = 1
    micro: int = 0  # micro-batch index under gradient accumulation
    repeat: int = 0  # which repeat of the phase
    scratch: dict[str, Any] = field(default_factory=dict)
    #: Whether a later phase may backpropagate through a graph an earlier phase built (the
    #: fakes). Not under DDP with gradient accumulation: there the reducer expects each
    #: micro-batch's backward before the next micro-batch's forward, so the family regenerates.
    reuse_graphs: bool = True

    @property
    def progress(self) -> float:
        """Fraction of training done, in [0, 1)."""
        return self.step / max(1, self.max_steps)


@dataclass(frozen=True)
class Grid:
    """Images in [-1, 1] to show as one grid, ``nrow`` images per row; ``titles``, when given,
    is one text per row, written to its left (a caption-conditioned row's caption)."""

    images: Tensor
    nrow: int
    titles: tuple[str, ...] = ()


class GenerativeModel(nn.Module):
    """Base class of the model families.

    Subclasses take the :class:`DataSpec` as their first constructor argument and the family's
    hyperparameters as keyword arguments (from ``configs/model/<family>.yaml``).
    """

    family: str = "base"
    #: Evaluation key whose best value marks ``best.pt`` (None: no best checkpoint); its
    #: direction is looked up (gentrain.engine.monitor), ``trainer.monitor`` overrides it.
    monitor: str | None = None
    #: Sample-quality metrics (fid, kid, is) that task=eval computes by default.
    sample_quality_metrics: tuple[str, ...] = ()
    #: Model config keys that change only how the family samples or evaluates, never the
    #: network: ``task=sample`` / ``task=eval`` take them from the command line.
    inference_keys: tuple[str, ...] = ()
    #: Names of the sub-networks (attributes) the trainer averages with EMA; None: the whole
    #: model. A GAN names its generator, so the discriminator is neither copied nor averaged.
    ema_networks: tuple[str, ...] | None = None
    #: ``state_dict`` key prefixes of state that each rank keeps for itself under DDP (CycleGAN's
    #: histories of fakes): a checkpoint holds every rank's, and a resume on as many ranks
    #: gives each its own back (the model state holds rank 0's, for any other use).
    rank_local_state: tuple[str, ...] = ()
    #: Whether some parameters sit out some steps (a growing family's blocks of resolutions not
    #: reached yet): DDP then looks for them after each forward (``find_unused_parameters``).
    has_idle_parameters: bool = False
    #: Whether captions condition it (``cond={"caption": tokens}``; task=sample's prompts), and
    #: whether it needs one: a text GAN never learned the empty caption a DDPM drops to.
    captioned: bool = False
    needs_caption: bool = False

    def __init__(self, spec: DataSpec) -> None:
        super().__init__()
        self.check_data(spec)
        self.spec = spec

    @classmethod
    def check_data(cls, spec: DataSpec) -> None:
        """Raise :class:`GentrainError` if this family cannot train on data like ``spec``."""

    @property
    def phases(self) -> tuple[Phase, ...]:
        """The phases in the order they run within one training step."""
        return (Phase("main"),)

    def phase_parameters(self, phase: str) -> Iterable[nn.Parameter]:
        """The parameters that ``phase``'s optimizer updates."""
        if phase != "main":
            raise KeyError(phase)
        return self.parameters()

    def loss(
        self, batch: Batch, phase: str, ctx: StepContext | None = None
    ) -> dict[str, Tensor]:
        """Scalar tensors for ``phase``: ``loss`` is minimised, every other key is logged.

        ``ctx`` is shared by the phases of one training step (None outside the trainer).
        """
        raise NotImplementedError

    def networks(self) -> dict[str, nn.Module]:
        """Sub-networks the trainer wraps one by one (DDP, compile); empty: the whole loss.

        A family that names them calls each through :meth:`network` in ``loss``, so that a G step
        all-reduces only G's gradients and no parameter is ever unused.
        """
        return {}

    def network(self, name: str) -> nn.Module:
        """The network ``name`` as the trainer wrapped it (DDP, compile), or itself."""
        wrapped: dict[str, nn.Module] = self.__dict__.get("_wrapped_networks", {})
        return wrapped[name] if name in wrapped else getattr(self, name)

    def wrap_networks(self, wrapped: dict[str, nn.Module]) -> None:
        """Install the trainer's wrappers without registering them as submodules."""
        self.__dict__["_wrapped_networks"] = wrapped

    def data_dependent_init(self, batch: Batch) -> bool:
        """Initialise parameters from a real training batch if this family needs it and has
        not yet (Glow's actnorm); return whether it ran.

        The trainer calls it once, before training, the EMA copy and rank 0's broadcast; the
        initialised state is in the checkpoint, so a resume never repeats it.
        """
        return False

    def set_growth(self, stage: Any) -> None:
        """A growing family (model.growth) takes the schedule's stage
        (:class:`gentrain.engine.growth.GrowthStage`) before each training step."""
        raise NotImplementedError(f"{self.family} does not grow; remove model.growth.")

    def check_growth(self, batch_sizes: dict[int, int]) -> None:
        """Raise :class:`GentrainError` if the per-rank batch size of some resolution
        (``{side: size}``) cannot work for this family; called once before training."""

    @property
    def reference_images(self) -> str:
        """The batch key of the real images this family's samples are compared with (FID):
        ``image``, except for translators whose outputs live in the source domain."""
        return "image"

    @property
    def compile_unsupported(self) -> str | None:
        """Why ``trainer.compile=true`` cannot work for this configuration (None: it can)."""
        return None

    def training_warnings(self, metrics: dict[str, float]) -> list[str]:
        """Warnings about the run's health from the metrics of one log interval."""
        return []

    @torch.no_grad()
    def sample(
        self, n: int, cond: Batch | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """``n`` images in [-1, 1]; ``cond`` holds ``label`` or ``source`` when conditional."""
        raise NotImplementedError

    @torch.no_grad()
    def sample_with_codes(
        self, n: int, cond: Batch | None = None, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """:meth:`sample` and the discrete latent code each image was drawn with (None: the
        family has none), so the data's judge can tell how much the code decides the class."""
        return self.sample(n, cond, generator), None

    @torch.no_grad()
    def evaluate(self, batch: Batch) -> dict[str, Tensor]:
        """Per-example metrics of shape (B,) on held-out data (empty if the family has none).

        The trainer averages them over the split and over ranks.
        """
        return {}

    @torch.no_grad()
    def visuals(self, batch: Batch, generator: torch.Generator) -> dict[str, Grid]:
        """Named grids to save during training; ``batch`` is a fixed held-out batch.

        The default draws one sample per example of ``batch``, conditioned like it.
        """
        n = batch["image"].shape[0]
        return {"samples": Grid(self.sample(n, self.condition(batch), generator), nrow=8)}

    @torch.no_grad()
    def figures(self, batch: Batch) -> dict[str, bytes]:
        """Named PNG images (encoded bytes) that are not image grids, e.g. a scatter of 2-d
        codes; saved next to the grids at the same cadence, from the same fixed batch."""
        return {}

    def condition(self, batch: Batch) -> Batch | None:
        """The part of ``batch`` this model conditions on (None for unconditional models)."""
        return None
