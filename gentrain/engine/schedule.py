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
