"""A growing schedule (Progressive GAN, Karras et al. 2018): which resolution a family trains at,
how far the newest block is faded in, the batch size and learning rate there.

As in the official code (``train.py``, ``TrainingSchedule``), the one piece of state is the
number of real images shown so far. Training starts at ``initial_resolution``; every phase
stabilises the current resolution for ``stabilise_kimg`` thousand images, then fades in the
next one over ``fade_kimg`` thousand, until the data's resolution, which then trains for good.
The level of detail ``lod`` counts halvings below the final resolution: it falls from
log2(final / initial) to 0, linearly during each fade. So a resume needs only the image count,
mid-fade included.

The trainer applies the stage for the next step after each step (and at start and resume):
the batch size of the data stream, each phase's learning rate, the family's ``lod`` (see
``GenerativeModel.set_growth``), and, when the level changes, a fresh optimizer state.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gentrain.errors import GentrainError, require

GROWTH_KEYS = frozenset({"initial_resolution", "stabilise_kimg", "fade_kimg", "batch_size",
                         "lr", "reset_optimizer"})


def is_power_of_two(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


@dataclass(frozen=True)
class GrowthStage:
    """Where the schedule stands after ``images`` real images.

    ``resolution`` is the side the networks work at: during a fade, the new (larger) one.
    ``fade`` is the weight of the newest block in the blend (0: the upsampled output of the
    smaller networks, 1: the new block alone); 1 while a resolution stabilises.
    """

    images: int
    lod: float
    resolution: int
    fade: float
    batch_size: int  # per rank
    lr: float | None  # every phase's learning rate here (None: the optimizer's own)

    @property
    def level(self) -> tuple[int, int]:
        """(floor, ceil) of ``lod``: the official code resets the optimizers when either
        changes, i.e. when a fade starts (new layers appear) and when it ends."""
        return math.floor(self.lod), math.ceil(self.lod)


@dataclass(frozen=True)
class GrowthSchedule:
    """The schedule for a dataset of side ``final_resolution`` (see the module docstring).

    ``batch_size`` and ``lr`` map a resolution to its per-rank batch size and learning rate;
    resolutions left out take ``default_batch_size`` (``data.batch_size``) and the optimizer's
    learning rate.
    """

    final_resolution: int
    default_batch_size: int
    initial_resolution: int = 4
    stabilise_kimg: float = 600.0
    fade_kimg: float = 600.0
    batch_size: Mapping[int, int] = field(default_factory=dict)
    lr: Mapping[int, float] = field(default_factory=dict)
    reset_optimizer: bool = True

    def __post_init__(self) -> None:
        final, initial = self.final_resolution, self.initial_resolution
        require(is_power_of_two(final) and final >= 4,
                f"A growing model needs square images whose side is a power of two (4, 8, ..., "
                f"1024); this dataset's side is {final}. Set data.resolution to one.")
        require(is_power_of_two(initial) and 4 <= initial <= final,
                f"model.growth.initial_resolution={initial} must be a power of two between 4 "
                f"and the data's resolution {final}.")
        require(self.stabilise_kimg >= 0 and self.fade_kimg >= 0,
                "model.growth.stabilise_kimg and fade_kimg are thousands of real images, >= 0; "
                f"got {self.stabilise_kimg} and {self.fade_kimg}.")
        for name, table in (("batch_size", self.batch_size), ("lr", self.lr)):
            # Sides this run never reaches are allowed (a recipe's table over a smaller
            # data.resolution), sides that no run reaches are a typo.
            wrong = [r for r in table if not (is_power_of_two(r) and r >= 4)]
            require(not wrong, f"model.growth.{name} names side(s) {wrong}; its keys are image "
                    "sides, powers of two from 4 (e.g. {256: 14, 512: 6, 1024: 3}).")
        sizes = [self.batch_at(r) for r in self.resolutions]
        require(all(isinstance(b, int) and b >= 1 for b in sizes),
                f"model.growth.batch_size values are images per rank, whole numbers >= 1; "
                f"got {dict(self.batch_size)}.")

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], final_resolution: int,
                    default_batch_size: int) -> GrowthSchedule:
        unknown = sorted(set(cfg) - GROWTH_KEYS)
        if unknown:
            raise GentrainError(
                f"Unknown key(s) {', '.join('model.growth.' + k for k in unknown)}; "
                f"model.growth takes {', '.join(sorted(GROWTH_KEYS))}.")
        values = dict(cfg)
        for name in ("batch_size", "lr"):
            values[name] = {int(k): v for k, v in (values.get(name) or {}).items()}
        return cls(final_resolution=final_resolution, default_batch_size=default_batch_size,
                   **values)

    @property
    def resolutions(self) -> list[int]:
        """Every side trained at, from the initial to the final one."""
        steps = int(math.log2(self.final_resolution // self.initial_resolution))
        return [self.initial_resolution * 2**i for i in range(steps + 1)]

    def batch_at(self, resolution: int) -> int:
        return self.batch_size.get(resolution, self.default_batch_size)

    def lod(self, images: int) -> float:
        """The official formula (TrainingSchedule): the level of detail after ``images``."""
        kimg = images / 1000.0
        phase_dur = self.stabilise_kimg + self.fade_kimg
        phase_idx = math.floor(kimg / phase_dur) if phase_dur > 0 else 0
        phase_kimg = kimg - phase_idx * phase_dur
        lod = math.log2(self.final_resolution) - math.floor(math.log2(self.initial_resolution))
        lod -= phase_idx
        if self.fade_kimg > 0:
            lod -= max(phase_kimg - self.stabilise_kimg, 0.0) / self.fade_kimg
        return max(lod, 0.0)

    def at(self, images: int) -> GrowthStage:
        lod = self.lod(images)
        resolution = 2 ** (int(math.log2(self.final_resolution)) - math.floor(lod))
        return GrowthStage(images=images, lod=lod, resolution=resolution,
                           fade=1.0 - (lod - math.floor(lod)),
                           batch_size=self.batch_at(resolution), lr=self.lr.get(resolution))

    def images_until_final(self) -> int:
        """Real images shown before the final resolution is fully faded in."""
        growths = len(self.resolutions) - 1
        return round(growths * (self.stabilise_kimg + self.fade_kimg) * 1000)

    def describe(self) -> str:
        return (f"Growing {self.initial_resolution} -> {self.final_resolution} px: "
                f"{self.stabilise_kimg:g}k images to stabilise each resolution, then "
                f"{self.fade_kimg:g}k to fade in the next (final size after "
                f"{self.images_until_final():,} images); batch per rank "
                + ", ".join(f"{r}: {self.batch_at(r)}" for r in self.resolutions) + ".")
