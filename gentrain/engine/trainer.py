"""The one training loop: every family plugs in through ``phases``, ``loss`` and ``sample``.

The trainer owns the device, autocast and one GradScaler per phase, gradient accumulation
(DDP syncs only on the last micro-batch), clipping, EMA, LR schedules, step accounting,
logging, sample/eval/checkpoint cadences, stop signals and the non-finite guard.

The optimizer step makes no host sync (see phase.py); the host reads device values only at
log time, before checkpoint writes and, under torchrun, every few steps for stop signals.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

import gentrain
from gentrain.data.core.base import DataModule
from gentrain.data.core.batch import Batch
from gentrain.data.core.seeding import derive_seed, generator_for
from gentrain.engine import checkpoint as ckpt
from gentrain.engine.config import TrainerConfig
from gentrain.engine.device import autocast_factory, resolve_precision
from gentrain.engine.distributed import (
    DistEnv,
    all_reduce_max,
    all_reduce_sum,
    any_rank,
    broadcast_module,
    gather_to_all,
)
from gentrain.engine.ema import EMA
from gentrain.engine.evaluation import evaluate_model
from gentrain.engine.growth import GrowthSchedule, GrowthStage
from gentrain.engine.monitor import resolve_monitor
from gentrain.engine.optim import load_optimizer_state
from gentrain.engine.phase import PhaseState
from gentrain.engine.run_log import RunLog
from gentrain.engine.schedule import SCHEDULE_KEYS, schedule_in_steps
from gentrain.engine.signals import StopRequest
from gentrain.errors import GentrainError
from gentrain.models.base import GenerativeModel, StepContext, batches_per_step
from gentrain.precedence import Decision
from gentrain.sample_quality.evaluate import SampleQuality

log = logging.getLogger(__name__)

# Under torchrun the ranks agree on a stop signal through a collective, which is a host sync,
# so they ask only every this many steps (and at the last step); alone, every step is free.
STOP_CHECK_EVERY = 10


@dataclass
class FamilyTraining:
    """A family's training defaults from its model config: optimizers, LR schedule, EMA."""

    optim: dict[str, Any]
    schedule: dict[str, Any] = field(default_factory=dict)
    ema: dict[str, Any] = field(default_factory=dict)
    growth: dict[str, Any] = field(default_factory=dict)  # a growing schedule (growth.py)

    def __post_init__(self) -> None:
        allowed = {"schedule": SCHEDULE_KEYS, "ema": {"decay", "warmup"}}
        for group, keys in allowed.items():
            unknown = sorted(set(getattr(self, group)) - keys)
            if unknown:
                raise GentrainError(
                    f"Unknown key(s) {', '.join(f'model.{group}.{k}' for k in unknown)}; "
                    f"model.{group} takes {', '.join(sorted(keys))}."
                )


class _LossForward(nn.Module):
    """Routes ``forward`` to ``model.loss`` so DDP and torch.compile see the family's loss."""

    def __init__(self, model: GenerativeModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: Batch, phase: str, ctx: StepContext) -> dict[str, Tensor]:
        return self.model.loss(batch, phase, ctx)


class Trainer:
    """Trains ``model`` on ``data`` into ``run_dir`` according to ``config``."""

    def __init__(
        self, *, model: GenerativeModel, data: DataModule, config: TrainerConfig,
        family: FamilyTraining, run_dir: Path, seed: int, config_yaml: str, dist: DistEnv,
        device: torch.device, length: Decision, tensorboard: bool = True,
        sample_quality: SampleQuality | None = None,
    ) -> None:
        """``length`` says which setting decided how long to train (see gentrain.precedence)."""
        self.data, self.run_dir, self.seed = data, run_dir, seed
        self.sample_quality = sample_quality  # FID/KID/IS at each evaluation (when set)
        self.sample_quality_protocol: dict[str, Any] | None = None
        self.config_yaml, self.dist, self.device = config_yaml, dist, device
        self.loader = data.train_loader(
            device=device, seed=seed, rank=dist.rank, world_size=dist.world_size
        )
        # A training step takes grad_accum micro-batches for each batch its phases draw (one
        # shared by the phases that do not ask for fresh ones); epochs count those.
        batches = config.grad_accum * batches_per_step(model.phases)
        steps_per_epoch = max(1, self.loader.batches_per_epoch // batches)
        if config.max_epochs is not None:
            config = dataclasses.replace(config, max_steps=config.max_epochs * steps_per_epoch)
        self.cfg = config
        self.length = {"steps": config.max_steps, "epochs": config.max_epochs,
                       "steps_per_epoch": steps_per_epoch, **length.record()}
        epochs = (f"{config.max_epochs} epochs of {steps_per_epoch} steps = "
                  if config.max_epochs is not None else "")
        self._length_line = f"Training for {epochs}{config.max_steps} steps ({length.reason()})."
        self.model = model.to(device)
        if config.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        missing = [p.name for p in model.phases if p.name not in family.optim]
        if missing:
            raise GentrainError(
                f"model.optim has no optimizer for phase(s) {', '.join(missing)} of "
                f"{model.family}. Add model.optim.<phase> entries (see configs/model/)."
            )
        unknown = sorted(set(config.clip_grad) - {p.name for p in model.phases}
                         if isinstance(config.clip_grad, dict) else [])
        if unknown:
            raise GentrainError(
                f"trainer.clip_grad names phase(s) {', '.join(unknown)} that {model.family} does "
                f"not have; its phases are {', '.join(p.name for p in model.phases)}."
            )
        if config.precision == "auto":
            config = dataclasses.replace(config, precision=resolve_precision("auto", device))
            self.cfg = config
            log.info("trainer.precision=auto: training in %s on %s.", config.precision,
                     device.type)
        schedule = schedule_in_steps(family.schedule, steps_per_epoch)
        self.phases = [
            PhaseState(p, model, family.optim[p.name], schedule, config.max_steps,
                       device, fp16=config.precision == "16")
            for p in model.phases
        ]
        ema_decay = family.ema.get("decay")
        self._new_ema = lambda: EMA(model, ema_decay, family.ema.get("warmup", True),
                                    model.ema_networks)
        self.ema = self._new_ema() if ema_decay else None
        self._standing_at: int | None = None  # the step of the EMA copy's norm statistics
        self.autocast = autocast_factory(device, config.precision)
        self.forward: nn.Module = _LossForward(self.model)
        self._ddp: list[DistributedDataParallel] = []  # whose no_sync skips the all-reduce
        self._wrap_for_speed_and_ranks()
        self.images_per_batch = data.batch_size * dist.world_size
        self.step = 0
        self.images_seen = 0
        self.growth = self._growth_schedule(family.growth)
        self._stage: GrowthStage | None = None
        self._grow()
        self.train_time = 0.0
        self.best: dict[str, Any] | None = None
        self.monitor = resolve_monitor(config.monitor, config.monitor_mode, model.monitor)
        self._monitor_missing_warned = False
        self.last_metrics: dict[str, float] = {}
        self.last_eval: dict[str, float] = {}
        self._sums: dict[str, Tensor] = {}
        self._counts: dict[str, int] = {}
        self.latest_grids: dict[str, str] = {}
        # Step at which each output was last produced, so the end of training never repeats
        # an evaluation, a grid or a checkpoint write the cadences already did at that step.
        self._done_at: dict[str, int] = {}
        self.fixed_batch = data.fixed_batch(config.num_samples, device)
        self.log = RunLog(run_dir, tensorboard=tensorboard, enabled=dist.is_main)
        self.ckpt_dir = run_dir / "checkpoints"
        torch.manual_seed(derive_seed(seed, "train", dist.rank))

    def _wrap_for_speed_and_ranks(self) -> None:
        """DDP and torch.compile around each network the family names (or its whole loss).

        Wrapping networks one by one means a G step all-reduces only G's gradients, and no
        parameter is unused in a backward (no ``find_unused_parameters``).
        """
        if self.cfg.compile and self.model.compile_unsupported:
            raise GentrainError(
                f"trainer.compile=true does not work here: {self.model.compile_unsupported} "
                "Set trainer.compile=false."
            )
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        networks = self.model.networks()
        if not networks:
            if self.dist.enabled:
                self.forward = DistributedDataParallel(self.forward, device_ids=device_ids)
                self._ddp = [self.forward]
            if self.cfg.compile:
                self.forward = torch.compile(self.forward)
            return
        wrapped: dict[str, nn.Module] = {}
        for name, network in networks.items():
            module: nn.Module = network
            if self.dist.enabled:
                module = DistributedDataParallel(
                    network, device_ids=device_ids,
                    find_unused_parameters=self.model.has_idle_parameters)
                self._ddp.append(module)
            wrapped[name] = torch.compile(module) if self.cfg.compile else module
        self.model.wrap_networks(wrapped)

    # ------------------------------------------------------------------ state
    @property
    def sampling_model(self) -> GenerativeModel:
        """EMA weights when EMA is on: samples and evaluation use them."""
        if self.ema is None:
            return self.model
        self._refresh_standing_statistics()
        return self.ema.model  # type: ignore[return-value]

    def _refresh_standing_statistics(self) -> None:
        """Give the EMA copy its own batch-norm statistics (:meth:`EMA.standing_statistics`)
        once per step, before it samples or is saved: it samples the grid's size from the
        grid's fixed held-out conditions, the same on every rank."""
        if self.ema is None or self._standing_at == self.step:
            return
        shadow, batch = self.ema.model, self.fixed_batch
        n = batch["image"].shape[0]
        self.ema.standing_statistics(
            lambda noise: shadow.sample(n, shadow.condition(batch), noise))  # type: ignore[operator]
        self._standing_at = self.step

    def state_dict(self) -> dict[str, Any]:
        rng = gather_to_all(ckpt.capture_rng())  # collective: every rank calls state_dict
        self._refresh_standing_statistics()
        model = self.model.state_dict()
        return {
            "format": ckpt.FORMAT,
            "version": gentrain.__version__,
            "family": self.model.family,
            "data_spec": dataclasses.asdict(self.data.spec),
            "model": model,
            "rank_local": self._rank_local_state(model),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "optimizers": {s.phase.name: s.optimizer.state_dict() for s in self.phases},
            "schedulers": {s.phase.name: s.scheduler.state_dict() for s in self.phases},
            "scalers": {s.phase.name: s.scaler.state_dict() for s in self.phases},
            "step": self.step,
            "images_seen": self.images_seen,
            "train_time": self.train_time,
            "data": self.loader.state_dict(),
            "world_size": self.dist.world_size,
            "rng": rng,
            "best": self.best,
            "config": self.config_yaml,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue exactly where ``state`` stopped: weights, optimizers, data order, RNG."""
        try:
            self.model.load_state_dict(state["model"])
            if self.ema is not None and state.get("ema") is not None:
                self.ema.load_state_dict(state["ema"])
            for s in self.phases:
                load_optimizer_state(s.optimizer, state["optimizers"][s.phase.name])
                s.scheduler.load_state_dict(state["schedulers"][s.phase.name])
                s.scaler.load_state_dict(state["scalers"][s.phase.name])
        except (RuntimeError, KeyError, ValueError) as e:
            raise GentrainError(
                "The checkpoint does not fit the model built from this config "
                f"({str(e).splitlines()[0][:300]}). Resume with the model settings the run "
                "was started with (they are in the checkpoint's run dir, .hydra/config.yaml)."
            ) from None
        self.step, self.images_seen = int(state["step"]), int(state["images_seen"])
        self.train_time = float(state.get("train_time", 0.0))
        self.best = state.get("best")
        self._stage = None  # the stage the checkpoint's run applied after its last step
        self._grow()
        self.loader.load_state_dict(state["data"])
        rng, rank_local = state["rng"], state.get("rank_local")
        if state.get("world_size") == self.dist.world_size and len(rng) == self.dist.world_size:
            ckpt.restore_rng(rng[self.dist.rank])
            if rank_local:
                self.model.load_state_dict(rank_local[self.dist.rank], strict=False)
        else:
            log.warning("World size changed since the checkpoint; each rank now sees other "
                        "shards and fresh RNG streams, so this resume is not bitwise exact.")
            torch.manual_seed(derive_seed(self.seed, "resume", self.step, self.dist.rank))

    def _rank_local_state(self, model: dict[str, Tensor]) -> list[dict[str, Tensor]] | None:
        """Every rank's part of the model state that it keeps for itself (collective)."""
        prefixes = self.model.rank_local_state
        if not prefixes:
            return None
        own = {k: v.detach().cpu() for k, v in model.items() if k.startswith(prefixes)}
        return gather_to_all(own)  # type: ignore[return-value]

    def save(self, *, periodic: bool = False, best: bool = False) -> None:
        """Write last.pt (and a periodic or best copy) unless already written at this step.

        Refuses to save non-finite weights, so a NaN never replaces the last good checkpoint.
        """
        names = [ckpt.LAST]
        names += [ckpt.periodic_name(self.step)] if periodic else []
        names += [ckpt.BEST] if best else []
        names = [name for name in names if self._done_at.get(name) != self.step]
        if not names:
            return
        # Collective checks and state: every rank takes the same decision above and below.
        self._stop_if_diverged(self._streak_stats().tolist())  # a host read before any write
        self._refuse_nonfinite_weights()
        state = self.state_dict()
        self._done_at.update(dict.fromkeys(names, self.step))
        if not self.dist.is_main:
            return
        for name in names:
            ckpt.atomic_save(state, self.ckpt_dir / name)
        if periodic:
            ckpt.prune_periodic(self.ckpt_dir, self.cfg.keep_last)

    def _refuse_nonfinite_weights(self) -> None:
        """Raise on every rank if any rank holds a non-finite weight (a collective host read)."""
        weights = [*self.model.parameters(), *(self.ema.model.parameters() if self.ema else [])]
        finite = torch.stack([torch.isfinite(p).all() for p in weights]).all()
        if all_reduce_max((~finite).float().reshape(1)).item():
            raise GentrainError(
                f"Non-finite weights at step {self.step}; not overwriting the last good "
                "checkpoint. Lower the learning rate or enable trainer.clip_grad."
            )

    # ------------------------------------------------------------------ loop
    def fit(self) -> dict[str, Any]:
        """Train to ``max_steps`` or until a stop signal; returns the summary."""
        cfg = self.cfg
        bar = tqdm(
            total=cfg.max_steps, initial=self.step, unit="step", dynamic_ncols=True,
            disable=not (cfg.progress and self.dist.is_main), desc=self.model.family,
        )
        status, stop_signal = "completed", None
        self.start_step = self.step  # above 0 after a resume
        if self.dist.is_main:
            log.info(self._length_line)
        if self.step == 0:
            self._data_dependent_init()
        self._mark = (time.perf_counter(), self.images_seen)
        with StopRequest() as stop:
            while self.step < cfg.max_steps:
                started = time.perf_counter()
                self._training_step()
                if self.ema is not None:
                    self.ema.update(self.model)
                self.step += 1
                self._grow()
                bar.update(1)
                self._cadences(bar)
                self.train_time += time.perf_counter() - started
                if self._stop_agreed(stop):
                    status, stop_signal = "stopped", stop.signal_name or "SIGTERM"
                    break
        if self._done_at.get("log") != self.step and self._sums:
            self._log_metrics(bar)  # the tail since the last log, non-finite steps included
        bar.close()
        if status == "completed":
            self._final_outputs()
        self.save(periodic=status == "completed")
        summary = {**self._summary(status), "stop_signal": stop_signal}
        self.log.summary(summary)
        self.log.curves(f"{self.model.family} on {self.data.spec.name}")
        self.log.close()
        return summary

    def _data_dependent_init(self) -> None:
        """The family's initialisation from data (actnorm), on a batch of its own stream (the
        training order stays as without it); rank 0's result is broadcast, and the EMA copy
        is taken afterwards."""
        loader = self.data.train_loader(
            device=self.device, seed=derive_seed(self.seed, "data_init"), rank=self.dist.rank,
            world_size=self.dist.world_size,
        )
        with torch.no_grad():
            ran = self.model.data_dependent_init(next(loader))
        if not ran:
            return
        broadcast_module(self.model)
        if self.ema is not None:
            self.ema = self._new_ema()
        log.info("Initialised %s from a batch of training data.", self.model.family)

    def _growth_schedule(self, growth: dict[str, Any]) -> GrowthSchedule | None:
        """The family's growing schedule (model.growth), checked against the data and model."""
        if not growth:
            return None
        spec = self.data.spec
        if spec.height != spec.width:
            raise GentrainError(
                f"{self.model.family} grows square images, but {spec.name} is {spec.height}x"
                f"{spec.width}. Use a square resolution (data.resolution) whose side is a "
                "power of two.")
        schedule = GrowthSchedule.from_config(growth, spec.height, self.data.batch_size)
        if not hasattr(self.loader, "set_batch_size"):
            raise GentrainError(
                f"The training stream of {spec.name} cannot change its batch size, which "
                "model.growth does per resolution; use a dataset with a single image stream.")
        self.model.check_growth({r: schedule.batch_at(r) for r in schedule.resolutions})
        if self.dist.is_main:
            log.info(schedule.describe())
        return schedule

    def _grow(self) -> None:
        """Apply the growing schedule's stage for the next step, from the images shown so far:
        the family's resolution and fade weight every step; at a new level of detail the
        stream's batch size, each phase's learning rate and (model.growth.reset_optimizer)
        fresh optimizer moments. Applied after each step, before any checkpoint of it, so a
        resume re-applies the same stage and never resets twice."""
        if self.growth is None:
            return
        stage = self.growth.at(self.images_seen)
        previous, self._stage = self._stage, stage
        self.model.set_growth(stage)
        if self.ema is not None:
            self.ema.model.set_growth(stage)  # type: ignore[operator]
        if previous is not None and previous.level == stage.level:
            return
        self.loader.set_batch_size(stage.batch_size)  # type: ignore[attr-defined]
        self.images_per_batch = stage.batch_size * self.dist.world_size
        for s in self.phases:
            s.set_base_lr(stage.lr)
            if previous is not None and self.growth.reset_optimizer:
                s.optimizer.state.clear()  # moments and step count, as the official code
        if previous is not None and self.dist.is_main:
            what = "fading in" if stage.fade < 1 else "stabilising"
            log.info("Step %d, %d images: %s %d px (batch %d per rank).", self.step,
                     self.images_seen, what, stage.resolution, stage.batch_size)

    def _growth_values(self) -> dict[str, float]:
        if self._stage is None:
            return {}
        return {"growth/resolution": float(self._stage.resolution),
                "growth/fade": self._stage.fade, "growth/lod": self._stage.lod}

    def _stop_agreed(self, stop: StopRequest) -> bool:
        """Whether every rank stops after this step (all ranks ask at the same steps)."""
        asks = (not self.dist.enabled or self.step % STOP_CHECK_EVERY == 0
                or self.step == self.cfg.max_steps)
        return asks and any_rank(stop.requested, self.device)

    def _training_step(self) -> None:
        """Every phase's repeats on the step's shared micro-batches (drawn on first use), or on
        fresh ones for phases that ask; phases of one micro-batch share one context."""
        accum = self.cfg.grad_accum
        shared: list[Batch] = []
        reuse = not (self._ddp and accum > 1)
        contexts = [StepContext(step=self.step, max_steps=self.cfg.max_steps, micro=m,
                                reuse_graphs=reuse) for m in range(accum)]
        for state in self.phases:
            for repeat in range(state.phase.repeats):
                last = repeat == state.phase.repeats - 1
                if state.phase.fresh_batch and not (state.phase.shares_last and last):
                    batches = [self._next_batch() for _ in range(accum)]
                else:
                    while len(shared) < accum:
                        shared.append(self._next_batch())
                    batches = shared
                for ctx in contexts:
                    ctx.repeat = repeat
                self._optimizer_step(state, batches, contexts)

    def _optimizer_step(
        self, state: PhaseState, batches: list[Batch], contexts: list[StepContext]
    ) -> None:
        """Accumulate the micro-batches' gradients and update; no host sync (see phase.py)."""
        name, accum = state.phase.name, self.cfg.grad_accum
        state.optimizer.zero_grad(set_to_none=True)
        losses: list[Tensor] = []
        for micro, (batch, ctx) in enumerate(zip(batches, contexts, strict=True)):
            with self._sync_gradients(micro == accum - 1):
                with self.autocast():
                    out = self.forward(batch, name, ctx)
                # The mean over the step's examples: each micro-batch's mean loss / accum.
                state.scaler.scale(out["loss"] / accum).backward()
            losses.append(out["loss"].detach())
            self._accumulate(name, out)
        grad_norm = state.grad_norm(self.cfg.clip_for(name))
        self._accumulate(name, {"grad_norm": grad_norm})
        state.update(grad_norm, torch.stack(losses))

    def _sync_gradients(self, final: bool) -> contextlib.AbstractContextManager[Any]:
        """DDP all-reduces on the last micro-batch only (forward and backward both inside)."""
        stack = contextlib.ExitStack()
        if not final:
            for ddp in self._ddp:
                stack.enter_context(ddp.no_sync())
        return stack

    def _streak_stats(self) -> Tensor:
        """Per phase: longest non-finite streak, skipped steps (since the last log, max over
        ranks), on the device."""
        return all_reduce_max(torch.stack([s.streak.stats() for s in self.phases]))

    def _stop_if_diverged(self, stats: list[list[float]]) -> None:
        for s, (longest, _) in zip(self.phases, stats, strict=True):
            if longest >= self.cfg.max_nonfinite:
                raise GentrainError(
                    f"Training diverged: {int(longest)} non-finite updates in a row in phase "
                    f"{s.phase.name} by step {self.step} (trainer.max_nonfinite="
                    f"{self.cfg.max_nonfinite}). The last good checkpoint is "
                    f"{self.ckpt_dir / ckpt.LAST}. Lower the learning rate, set "
                    "trainer.clip_grad, or use trainer.precision=32."
                )

    def _next_batch(self) -> Batch:
        batch = next(self.loader)
        self.images_seen += self.images_per_batch
        if self.cfg.channels_last:
            batch = {k: v.contiguous(memory_format=torch.channels_last) if v.dim() == 4 else v
                     for k, v in batch.items()}
        return batch

    def _accumulate(self, phase: str, out: dict[str, Tensor]) -> None:
        """Add detached metrics on the device; they are read only at log time."""
        for key, value in out.items():
            name = f"{phase}/{key}"
            value = value.detach().float()
            self._sums[name] = self._sums[name] + value if name in self._sums else value
            self._counts[name] = self._counts.get(name, 0) + 1

    # ------------------------------------------------------------------ cadences
    def _cadences(self, bar: tqdm) -> None:
        cfg, step = self.cfg, self.step
        if step % cfg.log_every == 0:
            self._log_metrics(bar)
        if step % cfg.sample_every == 0:
            self._write_visuals()
        is_eval_step = cfg.eval_every is not None and step % cfg.eval_every == 0
        improved = self._evaluate_and_track() if is_eval_step else False
        if step % cfg.ckpt_every == 0 or improved:
            self.save(periodic=step % cfg.ckpt_every == 0, best=improved)

    def _log_metrics(self, bar: tqdm) -> None:
        names = sorted(self._sums)
        if not names:
            return
        means = torch.stack([self._sums[n] / self._counts[n] for n in names])
        means = all_reduce_sum(means) / self.dist.world_size
        streaks = self._streak_stats()
        host = torch.cat([means, streaks.flatten()]).tolist()  # the one host read per log
        values = dict(zip(names, host[: len(names)], strict=True))
        stats = [host[i : i + 2] for i in range(len(names), len(host), 2)]
        for s, (_, skipped) in zip(self.phases, stats, strict=True):
            s.streak.reset()
            values[f"{s.phase.name}/nonfinite_skipped"] = skipped
            if skipped:
                log.warning("%d update(s) of phase %s skipped for a non-finite loss or gradient "
                            "since the last log (step %d).", skipped, s.phase.name, self.step)
        now = time.perf_counter()
        elapsed, images = now - self._mark[0], self.images_seen - self._mark[1]
        self._mark = (now, self.images_seen)
        values["perf/images_per_sec"] = images / max(elapsed, 1e-9)
        values["perf/images_seen"] = float(self.images_seen)
        values.update(self._growth_values())
        for s in self.phases:
            values[f"lr/{s.phase.name}"] = s.optimizer.param_groups[0]["lr"]
        self.last_metrics = values
        self.log.scalars(self.step, values)
        self._sums.clear()
        self._counts.clear()
        self._done_at["log"] = self.step
        main_loss = f"{self.phases[-1].phase.name}/loss"
        growing = ({"px": self._stage.resolution, "fade": f"{self._stage.fade:.2f}"}
                   if self._stage is not None else {})
        bar.set_postfix(loss=f"{values.get(main_loss, float('nan')):.4g}",
                        img_s=f"{values['perf/images_per_sec']:.0f}", **growing, refresh=False)
        for s in self.phases:
            if not math.isfinite(values.get(f"{s.phase.name}/loss", 0.0)):
                log.warning("Mean %s loss since the last log is not finite at step %d.",
                            s.phase.name, self.step)
        for message in self.model.training_warnings(values):
            log.warning("Step %d: %s", self.step, message)
        self._stop_if_diverged(stats)

    def _write_visuals(self) -> None:
        if not self.dist.is_main:
            return
        model = self.sampling_model
        was_training = model.training
        model.eval()
        generator = generator_for(self.device, self.seed, "samples")
        with self.autocast():  # samplers (DDPM: 50 network passes a grid) run at train precision
            grids = model.visuals(self.fixed_batch, generator)
            figures = model.figures(self.fixed_batch)
        model.train(was_training)
        self.model.train()  # an EMA model shares the networks it does not average
        written = {name: self.log.grid(self.step, name, grid) for name, grid in grids.items()}
        for name, png in figures.items():  # pictures that are not grids: PNG bytes as they are
            path = written[name] = self.log.samples_dir / f"{name}_{self.step:08d}.png"
            path.write_bytes(png)
        self.latest_grids = {name: str(path) for name, path in written.items() if path}
        self._done_at["visuals"] = self.step

    def evaluate(self) -> dict[str, float]:
        metrics = evaluate_model(
            self.sampling_model, self.data, split=self.data.eval_split, device=self.device,
            limit=self.cfg.eval_limit, rank=self.dist.rank, world_size=self.dist.world_size,
            progress=self.cfg.progress and self.dist.is_main,
        )
        if self.sample_quality is not None:
            values, self.sample_quality_protocol = self.sample_quality(
                self.sampling_model, rank=self.dist.rank, world_size=self.dist.world_size,
                num_samples=self.cfg.eval_num_samples, autocast=self.autocast,
                progress=self.cfg.progress and self.dist.is_main,
            )
            metrics.update(values)
        self.model.train()  # an EMA model shares the networks it does not average
        return metrics

    def _evaluate_and_track(self) -> bool:
        """Evaluate, log, and say whether the monitored metric improved."""
        self.last_eval = self.evaluate()
        self._done_at["eval"] = self.step
        self.log.scalars(self.step, self.last_eval)
        if self.monitor is None:
            return False
        value = self.last_eval.get(self.monitor.metric)
        if value is None:
            if not self._monitor_missing_warned and self.dist.is_main:
                log.warning("The monitored metric %s is not among this evaluation's (%s); no "
                            "best.pt is kept. Set trainer.monitor to one of them, or "
                            "trainer.eval_sample_quality=true for FID/KID/IS.",
                            self.monitor.metric, ", ".join(sorted(self.last_eval)) or "none")
            self._monitor_missing_warned = True
            return False
        if not self.monitor.improved(value, self.best):
            return False
        self.best = self.monitor.record(value, self.step)
        return True

    def _final_outputs(self) -> None:
        if self._done_at.get("eval") != self.step and self._evaluate_and_track():
            self.save(best=True)
        if self._done_at.get("visuals") != self.step:
            self._write_visuals()

    def _monitor_summary(self) -> dict[str, Any] | None:
        """The monitored metric's best value (or, with no best, its last one): a sweep's
        objective."""
        if self.monitor is None:
            return None
        value = (self.best or {}).get("value", self.last_eval.get(self.monitor.metric))
        return {"metric": self.monitor.metric, "mode": self.monitor.mode, "value": value}

    def _summary(self, status: str) -> dict[str, Any]:
        return {
            "status": status,
            "family": self.model.family,
            "data": self.data.spec.name,
            "steps": self.step,
            "length": self.length,  # how long it was to train, and which setting decided it
            "resumed_from_step": self.start_step,
            "step_unit": f"optimizer steps of phase '{self.phases[-1].phase.name}'",
            "images_seen": self.images_seen,
            **({"growth": {"resolution": self._stage.resolution, "fade": self._stage.fade,
                           "lod": self._stage.lod, "final_resolution":
                           self.growth.final_resolution}}
               if self._stage is not None and self.growth is not None else {}),
            "wall_time_s": round(self.train_time, 3),
            "device": str(self.device),
            "device_name": (torch.cuda.get_device_name(self.device)
                            if self.device.type == "cuda" else self.device.type),
            "world_size": self.dist.world_size,
            "precision": self.cfg.precision,
            "final_metrics": self.last_metrics,
            "eval": self.last_eval,
            "best": self.best,
            "monitor": self._monitor_summary(),
            "sample_quality_protocol": self.sample_quality_protocol,
            "samples": self.latest_grids,
            "checkpoint": str(self.ckpt_dir / ckpt.LAST),
            "gentrain_version": gentrain.__version__,
            "torch_version": torch.__version__,
        }
