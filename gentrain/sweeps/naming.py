"""Deterministic sweep and job directories, so re-running a multirun command finds its jobs.

Hydra's defaults name a sweep by the clock and a job by its number: a re-run starts over in a
new directory, and an Optuna trial's number says nothing about its parameters. gentrain names
the sweep from the command's overrides (or ``sweep_name=``) and each job from its own.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

MAX_NAME = 96  # longer names keep a readable prefix and a hash of the whole


def safe_name(text: str | None) -> str:
    """``text`` as one directory name: no separators or spaces, bounded length, unique."""
    text = "" if text is None else str(text)
    name = text.replace("/", "_").replace("\\", "_").replace(" ", "").replace("'", "")
    name = name.replace('"', "")
    if len(name) <= MAX_NAME:
        return name or "default"
    digest = hashlib.sha1(text.encode()).hexdigest()[:10]
    return f"{name[: MAX_NAME - 11]}-{digest}"


def sweep_name_from_overrides(overrides: Sequence[str]) -> str:
    """The name of the sweep a command's task overrides define: the swept ones first (what
    the sweep is about), then the fixed ones; their order on the command line does not matter."""
    swept = set(swept_overrides(overrides))
    ordered = sorted(o for o in overrides if o in swept) + sorted(
        o for o in overrides if o not in swept)
    return safe_name(",".join(ordered))


def swept_overrides(overrides: Sequence[str]) -> list[str]:
    """The overrides that sweep (``a=1,2``, ``choice(...)``, ``range(...)``...)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(overrides))
    return [o.input_line for o in parsed if o.is_sweep_override()]


def is_multirun(argv: Sequence[str]) -> bool:
    return any(arg in ("-m", "--multirun") for arg in argv)


def task_overrides(argv: Sequence[str]) -> list[str]:
    """The overrides of a command line that configure the job (not Hydra, not flags)."""
    flags_with_value = {"-cn", "--config-name", "-cp", "--config-path", "-cd", "--config-dir",
                        "--info", "-i"}
    overrides, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in flags_with_value:
            skip = arg not in ("--info", "-i")
        elif not arg.startswith("-") and "=" in arg and not arg.lstrip("+~").startswith("hydra"):
            overrides.append(arg)
    return overrides


def with_sweep_name(argv: list[str]) -> list[str]:
    """``argv`` plus ``sweep_name=<name from its overrides>`` for a multirun that names no
    sweep, and the keys its jobs' directory names leave out (the fixed ones).

    Done before Hydra starts, so every job (in this process, a joblib worker or a SLURM node)
    sees the same constant sweep directory.
    """
    if not is_multirun(argv):
        return argv
    overrides = task_overrides(argv)
    swept = set(swept_overrides(overrides))
    added = []
    if not any(a.split("=", 1)[0].lstrip("+") in ("sweep_name", "hydra.sweep.dir")
               for a in argv):
        added.append(f"sweep_name='{sweep_name_from_overrides(overrides)}'")
    if not any(a.startswith("hydra.job.config.override_dirname") for a in argv):
        # Jobs are named by what varies: the fixed overrides are left out of their directories.
        def key(override: str) -> str:
            return override.split("=", 1)[0].lstrip("+~")
        fixed = sorted({key(o) for o in overrides if o not in swept}
                       - {key(o) for o in swept} - {"sweep_name"})
        added.append("hydra.job.config.override_dirname.exclude_keys="
                     f"[{','.join(['sweep_name', *fixed])}]")
    return [*argv, *added]
