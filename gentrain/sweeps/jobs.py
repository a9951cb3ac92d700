"""One job of a sweep: reuse a finished job's result, resume an interrupted one."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

FINISHED = "completed"


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    """A run's summary.json, or None if it has none (or a torn one)."""
    try:
        return json.loads((run_dir / "summary.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def finished_summary(run_dir: Path) -> dict[str, Any] | None:
    """The summary of a job that trained to the end in ``run_dir`` before (None otherwise)."""
    summary = read_summary(run_dir)
    return summary if summary is not None and summary.get("status") == FINISHED else None


def objective(summary: dict[str, Any]) -> float | None:
    """What a sweeper optimises: the monitored metric's best (or last) value, if finite."""
    value = (summary.get("monitor") or {}).get("value")
    if value is None or not math.isfinite(float(value)):
        return None
    return float(value)
