"""An Optuna sweeper that resumes: re-running the same command continues the study to n_trials.

Why not hydra-optuna-sweeper: it pins Optuna below 3 (whose SQLite storage does not open under
SQLAlchemy 2), and a re-run adds n_trials more trials instead of finishing the study. Here the
study lives in the sweep directory; trials an interrupted sweep left running are asked again
with the same parameters, so their jobs (named by their overrides) resume from last.pt.
Optuna is imported only when a sweep starts: Hydra imports every plugin at start-up.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

REQUEUED = "gentrain_requeued"  # study attribute: numbers of trials an interruption cut short


class ResumableOptunaSweeper(Sweeper):
    """Minimise or maximise a job's return value (gentrain's monitored metric) with Optuna."""

    def __init__(
        self, direction: str = "minimize", study_name: str = "gentrain",
        storage: str | None = None, n_trials: int = 20, n_jobs: int = 1,
        sampler: str = "tpe", seed: int | None = None, max_failure_rate: float = 0.5,
        params: dict[str, Any] | None = None,
    ) -> None:
        if direction not in ("minimize", "maximize"):
            raise ValueError(f"hydra.sweeper.direction must be minimize or maximize, not "
                             f"{direction!r}.")
        if sampler not in ("tpe", "random"):
            raise ValueError(f"hydra.sweeper.sampler must be tpe or random, not {sampler!r}.")
        self.direction, self.study_name, self.storage = direction, study_name, storage
        self.n_trials, self.n_jobs, self.sampler_name = n_trials, max(1, n_jobs), sampler
        self.seed, self.max_failure_rate = seed, max_failure_rate
        self.params = dict(params or {})
        self.config: DictConfig | None = None
        self.launcher: Any = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> None:
        import optuna

        assert self.config is not None
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        space, fixed = search_space([*(f"{k}={v}" for k, v in self.params.items()), *arguments])
        study = optuna.create_study(
            study_name=self.study_name, storage=self.storage, sampler=self._sampler(0),
            direction=self.direction, load_if_exists=True,
        )
        if study.trials:  # resumed: a sampler seeded as before would repeat the first trials
            study = optuna.load_study(study_name=self.study_name, storage=self.storage,
                                      sampler=self._sampler(len(study.trials)))
        requeue_interrupted(study)
        done = finished_trials(study)
        log.info("Optuna study %r (%s): %d of %d trials done.", self.study_name,
                 self.storage or "in memory", done, self.n_trials)
        failures = sum(t.state == optuna.trial.TrialState.FAIL for t in study.trials) - len(
            study.user_attrs.get(REQUEUED, []))
        while done < self.n_trials:
            trials = [study.ask(space) for _ in range(min(self.n_jobs, self.n_trials - done))]
            overrides = [[*fixed, *(f"{k}={v}" for k, v in t.params.items())] for t in trials]
            returns = self.launcher.launch(overrides, initial_job_idx=trials[0].number)
            for trial, ret in zip(trials, returns, strict=True):
                value = job_value(ret)
                if value is None:
                    failures += 1
                    study.tell(trial, state=optuna.trial.TrialState.FAIL)
                else:
                    study.tell(trial, value)
            done += len(trials)
            if failures / done > self.max_failure_rate:
                raise RuntimeError(
                    f"{failures} of {done} trials failed (more than hydra.sweeper."
                    f"max_failure_rate={self.max_failure_rate}); see the jobs' logs in "
                    f"{sweep_dir}. Fix the cause and re-run the same command to continue."
                )
        write_results(study, sweep_dir / "optimization_results.yaml")


    def _sampler(self, offset: int) -> Any:
        import optuna

        seed = None if self.seed is None else self.seed + offset
        return (optuna.samplers.TPESampler(seed=seed) if self.sampler_name == "tpe"
                else optuna.samplers.RandomSampler(seed=seed))


def search_space(overrides: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
    """Optuna distributions of the sweep overrides; the other overrides stay fixed. A key given
    twice takes its last value (the command line's beats the preset's ``params``)."""
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    space: dict[str, Any] = {}
    fixed: dict[str, str] = {}
    for override in OverridesParser.create().parse_overrides(list(overrides)):
        key, value = override.get_key_element(), override.value()
        space.pop(key, None)  # a later override of a key (the command line) beats an earlier
        fixed.pop(key, None)
        if not override.is_sweep_override():
            fixed[key] = f"{key}={override.get_value_element_as_str()}"
        elif isinstance(value, IntervalSweep):
            space[key] = FloatDistribution(value.start, value.end, log="log" in value.tags)
        elif isinstance(value, RangeSweep) and all(
                isinstance(v, int) for v in (value.start, value.stop, value.step)):
            high = value.stop - 1 - (value.stop - 1 - value.start) % value.step
            space[key] = IntDistribution(value.start, high, log="log" in value.tags,
                                         step=value.step)
        elif isinstance(value, ChoiceSweep | RangeSweep):
            space[key] = CategoricalDistribution(list(_choices(override)))
        else:
            raise ValueError(f"Cannot turn the sweep override {override.input_line!r} into a "
                             "search space: use interval(), tag(log, interval()), range() or "
                             "choice().")
    return space, list(fixed.values())


def _choices(override: Override) -> list[Any]:
    return [v if isinstance(v, int | float | str | bool) or v is None else str(v)
            for v in override.sweep_iterator()]


def requeue_interrupted(study: Any) -> None:
    """Trials a killed sweep left RUNNING: fail them and ask their parameters again first."""
    import optuna

    running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    if not running:
        return
    requeued = list(study.user_attrs.get(REQUEUED, []))
    for trial in running:
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
        study.enqueue_trial(trial.params)
        requeued.append(trial.number)
        log.info("Trial %d was interrupted; it runs again with %s.", trial.number, trial.params)
    study.set_user_attr(REQUEUED, requeued)


def finished_trials(study: Any) -> int:
    """Trials that count toward n_trials: complete, pruned or failed (not interrupted)."""
    import optuna

    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED,
              optuna.trial.TrialState.FAIL)
    requeued = set(study.user_attrs.get(REQUEUED, []))
    return sum(t.state in states and t.number not in requeued for t in study.trials)


def job_value(ret: JobReturn) -> float | None:
    """The job's objective, or None (logged) when it failed or reported no finite value."""
    if ret.status != JobStatus.COMPLETED:
        log.warning("Trial with %s failed: %s", " ".join(ret.overrides or []),
                    ret._return_value)
        return None
    value = ret.return_value
    if value is None or not math.isfinite(float(value)):
        log.warning("Trial with %s returned no finite monitored metric (%r); set "
                    "trainer.monitor to an eval metric the run reports.",
                    " ".join(ret.overrides or []), value)
        return None
    return float(value)


def write_results(study: Any, path: Path) -> None:
    """The best trial, as Hydra's own Optuna sweeper reports it."""
    try:
        best = study.best_trial
    except ValueError:  # no trial completed
        return
    OmegaConf.save(OmegaConf.create({"name": "optuna", "best_params": best.params,
                                     "best_value": best.value, "best_trial": best.number}), path)
    log.info("Best trial %d: %s = %s", best.number, best.params, best.value)
