"""Exponential moving average of model weights, used for samples and evaluation."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from gentrain.errors import require


class EMA:
    """Shadow weights ``θ̄ ← d·θ̄ + (1 − d)·θ`` after every optimizer step.

    With ``warmup`` the decay ramps as ``min(decay, (1 + t) / (10 + t))``, so early averages
    are not dominated by the random initialisation. Buffers (e.g. BatchNorm statistics) are
    copied, not averaged.
    """

    def __init__(self, model: nn.Module, decay: float, warmup: bool = True) -> None:
        require(
            isinstance(decay, float) and 0.0 < decay < 1.0,
            f"model.ema.decay={decay!r} must be a number between 0 and 1 (e.g. 0.999), or null "
            "to train without EMA.",
        )
        self.decay, self.warmup = decay, warmup
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        t = self.updates
        decay = min(self.decay, (1 + t) / (10 + t)) if self.warmup else self.decay
        shadow = [p for p in self.model.parameters() if p.dtype.is_floating_point]
        live = [p.detach() for p in model.parameters() if p.dtype.is_floating_point]
        torch._foreach_lerp_(shadow, live, 1.0 - decay)
        for mine, theirs in zip(self.model.buffers(), model.buffers(), strict=True):
            mine.copy_(theirs)
        self.updates += 1

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.updates = int(state["updates"])
