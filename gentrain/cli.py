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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from gentrain.engine.distributed import shutdown_distributed
from gentrain.errors import GentrainError

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


def _tasks() -> dict[str, Callable[[DictConfig, Path], dict[str, Any]]]:
    from gentrain.tasks.evaluate import evaluate
    from gentrain.tasks.preview import preview
    from gentrain.tasks.sample import sample
    from gentrain.tasks.train import train

    return {"train": train, "sample": sample, "eval": evaluate, "preview": preview}


# Top-level keys of configs/train.yaml and its groups; experiment and recipe files merge into
# these, so a typo in one of them (e.g. `seeed: 1`) is caught here instead of being ignored.
TOP_LEVEL_KEYS = frozenset(
    {"task", "seed", "resume", "ckpt", "run_name", "sample", "eval",
     "model", "data", "trainer", "logger"}
)


def run(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Run ``cfg.task`` in ``run_dir`` (the Hydra job's output directory)."""
    unknown = sorted(set(cfg) - TOP_LEVEL_KEYS)
    if unknown:
        raise GentrainError(
            f"Unknown top-level config key(s): {', '.join(unknown)}. gentrain reads "
            f"{', '.join(sorted(TOP_LEVEL_KEYS))}; check the spelling in your experiment or "
            "recipe file."
        )
    tasks = _tasks()
    if cfg.task not in tasks:
        raise GentrainError(
            f"task={cfg.task} is not a gentrain task. Use one of: {', '.join(tasks)}."
        )
    (run_dir / ".hydra").mkdir(parents=True, exist_ok=True)
    (run_dir / ".hydra" / "resolved.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    return tasks[cfg.task](cfg, run_dir)


@hydra.main(version_base="1.3", config_path="pkg://gentrain.configs", config_name="train")
def _hydra_main(cfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        result = run(cfg, run_dir)
    except GentrainError as error:
        print(f"gentrain: error: {error}", file=sys.stderr)
        sys.exit(2)
    finally:
        shutdown_distributed()
    stop_signal = result.get("stop_signal")
    if stop_signal:
        log.info("Stopped by %s; checkpoint saved. Continue with: resume=auto "
                 "hydra.run.dir=%s", stop_signal, run_dir)
        sys.exit(128 + signal.Signals[stop_signal].value)  # the status a shell reports


def main() -> None:
    """Console-script entry point."""
    _hydra_main()


if __name__ == "__main__":
    main()
