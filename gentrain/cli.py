"""The ``gentrain`` command: a Hydra app that dispatches ``task`` to its function.

Bad input anywhere below raises :class:`GentrainError`; it is printed here as one paragraph
and the process exits with status 2, without a traceback.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

from gentrain.engine.distributed import shutdown_distributed
from gentrain.errors import GentrainError
from gentrain.precedence import Decision, settle
from gentrain.sweeps.jobs import finished_summary, objective
from gentrain.sweeps.naming import safe_name, with_sweep_name

log = logging.getLogger("gentrain")

_STAMP: list[str] = []


def run_stamp() -> str:
    """One timestamp per process (the same for run_name and hydra.run.dir).

    Under torchrun every rank must agree on the run directory, so the rendezvous id (shared by
    all ranks of a job) is used instead of the clock.
    """
    if not _STAMP:
        run_id = os.environ.get("TORCHELASTIC_RUN_ID")
        _STAMP.append(f"torchrun-{run_id}" if run_id and run_id != "none"
                      else time.strftime("%Y-%m-%d_%H-%M-%S"))
    return _STAMP[0]


OmegaConf.register_new_resolver("gentrain_stamp", run_stamp, replace=True)
OmegaConf.register_new_resolver("gentrain_dirname", safe_name, replace=True)


class JobFailed(Exception):
    """A sweep's job stopped on bad input; the sweeper records it and the message says why."""


def _tasks(
    overrides: Sequence[str], length: Decision
) -> dict[str, Callable[[DictConfig, Path], dict[str, Any]]]:
    """The tasks; those that read a checkpoint also get the command-line overrides, and
    training the decision on its length."""
    from gentrain.tasks.evaluate import evaluate
    from gentrain.tasks.preview import preview
    from gentrain.tasks.sample import sample
    from gentrain.tasks.train import train

    return {"train": partial(train, length=length), "sample": partial(sample, overrides=overrides),
            "eval": partial(evaluate, overrides=overrides), "preview": preview}


# Top-level keys of configs/train.yaml and its groups; experiment and recipe files merge into
# these, so a typo in one of them (e.g. `seeed: 1`) is caught here instead of being ignored.
TOP_LEVEL_KEYS = frozenset(
    {"task", "seed", "resume", "ckpt", "run_name", "sweep_name", "sample", "eval",
     "model", "data", "trainer", "logger"}
)


def run(cfg: DictConfig, run_dir: Path, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Run ``cfg.task`` in ``run_dir`` (the Hydra job's output directory).

    ``overrides`` are the command line's: they win over the config files also for settings
    with two names (gentrain.precedence), and ``task=sample``/``eval`` apply the model's
    inference-time keys among them on top of the checkpoint's config.
    """
    unknown = sorted(set(cfg) - TOP_LEVEL_KEYS)
    if unknown:
        raise GentrainError(
            f"Unknown top-level config key(s): {', '.join(unknown)}. gentrain reads "
            f"{', '.join(sorted(TOP_LEVEL_KEYS))}; check the spelling in your experiment or "
            "recipe file."
        )
    tasks = _tasks(overrides, settle(cfg, overrides))
    if cfg.task not in tasks:
        raise GentrainError(
            f"task={cfg.task} is not a gentrain task. Use one of: {', '.join(tasks)}."
        )
    (run_dir / ".hydra").mkdir(parents=True, exist_ok=True)
    (run_dir / ".hydra" / "resolved.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    return tasks[cfg.task](cfg, run_dir)


@hydra.main(version_base="1.3", config_path="pkg://gentrain.configs", config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    """Run the task; return the monitored metric, the objective of a sweeper such as Optuna."""
    hydra_config = HydraConfig.get()
    run_dir = Path(hydra_config.runtime.output_dir)
    in_sweep = hydra_config.mode == RunMode.MULTIRUN
    if in_sweep and cfg.task == "train":
        finished = finished_summary(run_dir)
        if finished is not None:
            log.info("%s trained to the end before; reusing its result (delete its "
                     "summary.json to train it again).", run_dir)
            return objective(finished)
        if cfg.resume is None:
            with open_dict(cfg):
                cfg.resume = "auto"  # a re-run sweep continues an interrupted job
    try:
        result = run(cfg, run_dir, overrides=list(hydra_config.overrides.task))
    except GentrainError as error:
        print(f"gentrain: error: {error}", file=sys.stderr)
        if in_sweep:  # the sweeper records the failure (Optuna goes on with other trials)
            raise JobFailed(str(error)) from None
        sys.exit(2)
    finally:
        shutdown_distributed()
    stop_signal = result.get("stop_signal")
    if stop_signal:
        log.info("Stopped by %s; checkpoint saved. Continue with: resume=auto "
                 "hydra.run.dir=%s", stop_signal, run_dir)
        sys.exit(128 + signal.Signals[stop_signal].value)  # the status a shell reports
    return objective(result) if cfg.task == "train" else None


def register_plugins() -> None:
    """Register gentrain's Hydra plugins by hand: Hydra finds plugins by scanning the
    ``hydra_plugins`` namespace, which an editable install's import hook hides from it."""
    from hydra.core.plugins import Plugins

    from hydra_plugins.gentrain_sweepers.optuna_sweeper import ResumableOptunaSweeper

    Plugins.instance().register(ResumableOptunaSweeper)


def main() -> None:
    """Console-script entry point."""
    register_plugins()
    from gentrain.tasks.inference import checkpoint_model_choice

    # `task=sample ckpt=RUN model.sampler.steps=50`: the checkpoint names the model group.
    sys.argv[1:] = checkpoint_model_choice(sys.argv[1:])
    # `gentrain -m ...`: a sweep directory named from the command, so a re-run resumes it.
    sys.argv[1:] = with_sweep_name(sys.argv[1:])
    _hydra_main()


if __name__ == "__main__":
    main()
