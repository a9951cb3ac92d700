"""Exponential moving average of model weights, used for samples and evaluation."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from gentrain.errors import require

# Standing statistics: draws of samples averaged into the batch-norm statistics, and their seed.
STANDING_DRAWS, STANDING_SEED = 16, 0


class EMA:
    """Shadow weights ``θ̄ ← d·θ̄ + (1 − d)·θ`` after every optimizer step.

    With ``warmup`` the decay ramps as ``min(decay, (1 + t) / (10 + t))``, so early averages
    are not dominated by the random initialisation. Buffers (e.g. BatchNorm statistics) are
    copied, not averaged.

    ``networks`` names the sub-networks to average (None: the whole model). The shadow model
    then shares every other child with the live model instead of copying it, so a GAN's
    discriminator costs no memory here and is never averaged or saved twice.
    """

    def __init__(
        self, model: nn.Module, decay: float, warmup: bool = True,
        networks: tuple[str, ...] | None = None,
    ) -> None:
        require(
            isinstance(decay, float) and 0.0 < decay < 1.0,
            f"model.ema.decay={decay!r} must be a number between 0 and 1 (e.g. 0.999), or null "
            "to train without EMA.",
        )
        self.decay, self.warmup, self.networks = decay, warmup, networks
        shared = {} if networks is None else {
            id(child): child for name, child in model.named_children() if name not in networks
        }
        self.model = copy.deepcopy(model, memo=shared)
        for module in self._averaged(self.model):
            module.eval().requires_grad_(False)
        self.updates = 0

    def _averaged(self, model: nn.Module) -> list[nn.Module]:
        if self.networks is None:
            return [model]
        return [model.get_submodule(name) for name in self.networks]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        t = self.updates
        decay = min(self.decay, (1 + t) / (10 + t)) if self.warmup else self.decay
        for mine, live in zip(self._averaged(self.model), self._averaged(model), strict=True):
            shadow = [p for p in mine.parameters() if p.dtype.is_floating_point]
            current = [p.detach() for p in live.parameters() if p.dtype.is_floating_point]
            torch._foreach_lerp_(shadow, current, 1.0 - decay)
            for buffer, theirs in zip(mine.buffers(), live.buffers(), strict=True):
                buffer.copy_(theirs)
        self.updates += 1

    @torch.no_grad()
    def standing_statistics(self, draw: Callable[[torch.Generator], object]) -> None:
        """Give the averaged networks' batch norms statistics of their own (BigGAN's standing
        statistics, Brock et al. 2019).

        :meth:`update` copies the live networks' running statistics, which belong to other
        weights than the average. Here each batch norm's statistics become the cumulative
        average over ``STANDING_DRAWS`` calls of ``draw`` (which samples through the shadow
        model) with the norms in training mode, from a fixed seed: reproducible, and the
        training RNG untouched. Networks without batch norm cost nothing (``draw`` is never
        called), so DDPM's expensive sampler is not run.
        """
        norms = [m for net in self._averaged(self.model) for m in net.modules()
                 if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d) and m.track_running_stats]
        if not norms:
            return
        noise = torch.Generator(norms[0].running_mean.device).manual_seed(STANDING_SEED)
        saved = [(m.momentum, m.training) for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over the draws
            m.train()
        try:
            for _ in range(STANDING_DRAWS):
                draw(noise)
        finally:
            for m, (momentum, training) in zip(norms, saved, strict=True):
                m.momentum = momentum
                m.train(training)

    def state_dict(self) -> dict[str, Any]:
        if self.networks is None:
            return {"model": self.model.state_dict(), "updates": self.updates}
        return {"networks": {name: self.model.get_submodule(name).state_dict()
                             for name in self.networks}, "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.networks is None:
            self.model.load_state_dict(state["model"])
        else:
            for name in self.networks:
                self.model.get_submodule(name).load_state_dict(state["networks"][name])
        self.updates = int(state["updates"])
