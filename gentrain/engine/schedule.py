"""Learning-rate schedules: linear warmup, then constant, cosine or linear decay."""

from __future__ import annotations

import math
from collections.abc import Callable

from gentrain.errors import GentrainError

DECAYS = ("constant", "cosine", "linear")
SCHEDULE_KEYS = frozenset({"warmup_steps", "decay", "min_lr_ratio", "decay_start"})


def lr_multiplier(
    *, max_steps: int, warmup_steps: int = 0, decay: str = "constant", min_lr_ratio: float = 0.0,
    decay_start: int | None = None,
) -> Callable[[int], float]:
    """The factor on the base LR after ``step`` optimizer steps.

    Decay runs from ``decay_start`` (default: the end of warmup) to ``max_steps``;
    pix2pix's "100 epochs constant + 100 of linear decay" is ``decay_start = max_steps / 2``.
    """
    if decay not in DECAYS:
        raise GentrainError(
            f"model.schedule.decay={decay!r} is not one of {', '.join(DECAYS)}."
        )
    _require_steps("warmup_steps", warmup_steps, "0: no warmup")
    if decay_start is not None:
        _require_steps("decay_start", decay_start, "null: at the end of warmup")
    if isinstance(min_lr_ratio, bool) or not (
        isinstance(min_lr_ratio, int | float) and 0 <= min_lr_ratio <= 1
    ):
        raise GentrainError(
            f"model.schedule.min_lr_ratio={min_lr_ratio!r} must be a number from 0 to 1 (the "
            "final LR as a fraction of the base LR)."
        )
    start = warmup_steps if decay_start is None else max(decay_start, warmup_steps)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if decay == "constant" or step < start:
            return 1.0
        progress = min(1.0, (step - start) / max(1, max_steps - start))
        shape = 0.5 * (1 + math.cos(math.pi * progress)) if decay == "cosine" else 1 - progress
        return min_lr_ratio + (1 - min_lr_ratio) * shape

    return factor


def _require_steps(key: str, value: object, meaning: str) -> None:
    """A count of optimizer steps: a whole number >= 0 (a bool is not one)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise GentrainError(
            f"model.schedule.{key}={value!r} must be a whole number of optimizer steps >= 0 "
            f"({meaning})."
        )
