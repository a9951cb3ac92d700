"""One phase's optimizer, schedule, GradScaler and non-finite guard, stepping without host sync.

A non-finite update is never applied. Where the optimizer takes ``found_inf`` (fused Adam,
AdamW, SGD, Adagrad) it is skipped on the device; the run of skipped steps is counted on the
device too and read by the trainer only at log time and before checkpoint writes.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import torch
from torch import Tensor

from gentrain.engine.optim import build_optimizer, skips_on_device
from gentrain.engine.schedule import lr_multiplier, phase_schedule
from gentrain.models.base import GenerativeModel, Phase

log = logging.getLogger(__name__)


class NonfiniteStreak:
    """Non-finite steps in a row and skipped steps, counted on the device.

    ``longest`` is the longest streak since the last :meth:`reset`, so a streak that reached
    the limit and ended between two reads still stops the run.
    """

    def __init__(self, device: torch.device) -> None:
        self.current = torch.zeros((), device=device)
        self.longest = torch.zeros((), device=device)
        self.skipped = torch.zeros((), device=device)

    def record(self, bad: Tensor) -> None:
        """Count one step; ``bad`` is 1.0 where its update was skipped as non-finite, else 0.0."""
        self.current.add_(bad).mul_(bad)  # (streak + bad) * bad: +1, or back to 0
        torch.maximum(self.longest, self.current, out=self.longest)
        self.skipped.add_(bad)

    def stats(self) -> Tensor:
        """(longest streak, skipped steps) since the last reset, still on the device."""
        return torch.stack([self.longest, self.skipped])

    def reset(self) -> None:
        """Start a new reading period; a streak still running carries on."""
        self.longest.copy_(self.current)
        self.skipped.zero_()


class PhaseState:
    """A phase's parameters, optimizer, LR schedule, GradScaler and non-finite streak."""

    def __init__(
        self, phase: Phase, model: GenerativeModel, optim: dict[str, Any],
        schedule: dict[str, Any], max_steps: int, device: torch.device, fp16: bool,
    ) -> None:
        self.phase = phase
        self.params = [p for p in model.phase_parameters(phase.name) if p.requires_grad]
        self.optimizer = build_optimizer(optim, self.params, device, f"model.optim.{phase.name}")
        # A phase steps ``repeats`` times per training step; schedules count training steps.
        factor = lr_multiplier(max_steps=max_steps * phase.repeats,
                               **phase_schedule(schedule, phase.repeats))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor)
        self._config_lrs = list(self.scheduler.base_lrs)
        self.scaler = torch.amp.GradScaler(device.type, enabled=fp16)
        self.streak = NonfiniteStreak(device)
        self.skips_on_device = skips_on_device(self.optimizer)
        if not self.skips_on_device:
            log.info("%s has no fused kernel on %s here: phase %s reads its non-finite flag on "
                     "the host every step (one device sync per step).",
                     type(self.optimizer).__name__, device.type, phase.name)

    def set_base_lr(self, lr: float | None) -> None:
        """Make ``lr`` every group's learning rate before the schedule's factor (None: the
        optimizer config's), e.g. a growing schedule's rate for a new resolution."""
        lrs = self._config_lrs if lr is None else [lr] * len(self._config_lrs)
        self.scheduler.base_lrs = list(lrs)
        for group, base, factor in zip(self.optimizer.param_groups, lrs,
                                       self.scheduler.lr_lambdas, strict=True):
            group["initial_lr"] = base
            group["lr"] = base * factor(self.scheduler.last_epoch)

    def grad_norm(self, max_norm: float | None) -> Tensor:
        """The unscaled total gradient norm (clipped to ``max_norm`` when set), on the device.

        It is non-finite exactly when a gradient is (or when the norm itself overflows).
        """
        self.scaler.unscale_(self.optimizer)  # a no-op unless fp16; no host sync
        if max_norm is None:
            grads = [p.grad for p in self.params if p.grad is not None]
            return torch.nn.utils.get_total_norm(grads)
        return torch.nn.utils.clip_grad_norm_(self.params, max_norm)

    def update(self, grad_norm: Tensor, losses: Tensor) -> None:
        """Apply the update unless ``grad_norm`` is non-finite; the schedule steps either way.

        ``losses`` are the step's micro-batch losses (fp16 tells divergence from calibration
        with them).
        """
        bad = ~torch.isfinite(grad_norm)
        if self.scaler.is_enabled():
            self._scaled_update(bad, losses)
        else:
            self._update(bad.float())
        with warnings.catch_warnings():
            # The schedule counts training steps, also those the guard or the GradScaler
            # skipped; torch warns about that order, which is intended here.
            warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step")
            self.scheduler.step()

    def _update(self, bad: Tensor) -> None:
        self.streak.record(bad)
        if self.skips_on_device:
            # The fused kernel leaves weights, moments and step count alone where found_inf
            # is 1, as under GradScaler.
            self.optimizer.found_inf = bad  # type: ignore[attr-defined]
            self.optimizer.step()
            del self.optimizer.found_inf  # type: ignore[attr-defined]
        elif not bool(bad):  # a host sync: this optimizer cannot skip on the device
            self.optimizer.step()

    def _scaled_update(self, bad: Tensor, losses: Tensor) -> None:
        """fp16: GradScaler skips the step itself, on its own found_inf (a non-finite unscaled
        gradient, i.e. ``bad``), on the device for fused optimizers and with a host read
        (``.item()``) for the others, then lowers the scale.

        An overflow at a finite loss while the scale is above 1 is the scaler calibrating (the
        demo VAE overflows its first 13 steps from the initial 2**16), not divergence, so it
        is not counted. A NaN loss, or an overflow even at a scale <= 1, is.
        """
        scale = self.scaler._get_scale_async()  # the device tensor; get_scale() would sync
        calibrating = torch.isfinite(losses).all() & (scale > 1)
        self.streak.record((bad & ~calibrating).float())
        self.scaler.step(self.optimizer)
        self.scaler.update()
