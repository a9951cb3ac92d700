"""Learning-rate schedules: linear warmup, then constant, cosine or linear decay."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from gentrain.errors import GentrainError

DECAYS = ("constant", "cosine", "linear")
SCHEDULE_KEYS = frozenset({"warmup_steps", "decay", "min_lr_ratio", "decay_start",
                           "warmup_epochs", "decay_start_epoch"})
# Keys counted in epochs, and the step-counted key each becomes.
EPOCH_KEYS = {"warmup_epochs": "warmup_steps", "decay_start_epoch": "decay_start"}


def schedule_in_steps(schedule: dict[str, Any], steps_per_epoch: int) -> dict[str, Any]:
    """``schedule`` with its epoch-counted keys turned into training steps.

    pix2pix's "100 epochs at the base LR, then 100 of linear decay to zero" is
    ``trainer.max_epochs=200`` with ``decay: linear, decay_start_epoch: 100``.
    """
    converted = {k: v for k, v in schedule.items() if k not in EPOCH_KEYS}
    for key, step_key in EPOCH_KEYS.items():
        if schedule.get(key) is None:
            continue
        if schedule.get(step_key) is not None:
            raise GentrainError(
                f"model.schedule sets both {key} and {step_key}; give one of them (set the "
                f"other to null)."
            )
        _require_steps(key, schedule[key], "a whole number of epochs")
        converted[step_key] = schedule[key] * steps_per_epoch
    return converted


def phase_schedule(schedule: dict[str, Any], repeats: int) -> dict[str, Any]:
    """``schedule`` in a phase's own optimizer steps: it steps ``repeats`` times per training
    step, so a 5x critic warms up and decays at the same training steps as its generator."""
    scaled = dict(schedule)
    for key in ("warmup_steps", "decay_start"):
        if isinstance(scaled.get(key), int) and not isinstance(scaled[key], bool):
            scaled[key] = scaled[key] * repeats
    return scaled


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
