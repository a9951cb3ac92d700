"""At the end of a multirun: one table of its jobs (CSV and printed) and a comparison plot."""

from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from gentrain.sweeps.jobs import read_summary

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobRow:
    """What the summary says about one job directory of the sweep."""

    job: str
    status: str
    value: float | None
    steps: int | None
    wall_time_s: float | None
    overrides: list[str]
    run_dir: Path


def collect_jobs(sweep_dir: Path) -> tuple[list[JobRow], str | None, str]:
    """Every job directory of ``sweep_dir`` and the monitored metric (name, min|max)."""
    rows, metric, mode = [], None, "min"
    for overrides_file in sorted(sweep_dir.glob("*/.hydra/overrides.yaml")):
        run_dir = overrides_file.parent.parent
        overrides = [str(o) for o in OmegaConf.load(overrides_file)]
        summary = read_summary(run_dir) or {}
        monitor = summary.get("monitor") or {}
        metric, mode = monitor.get("metric", metric), monitor.get("mode", mode)
        value = monitor.get("value")
        rows.append(JobRow(
            job=run_dir.name,
            status=summary.get("status") or _status_without_summary(run_dir),
            value=float(value) if value is not None else None,
            steps=summary.get("steps"), wall_time_s=summary.get("wall_time_s"),
            overrides=[o for o in overrides if not o.startswith("sweep_name=")],
            run_dir=run_dir,
        ))
    return rows, metric, mode


def _status_without_summary(run_dir: Path) -> str:
    return "interrupted" if (run_dir / "checkpoints" / "last.pt").is_file() else "failed"


def rank_rows(rows: list[JobRow], higher_is_better: bool) -> list[JobRow]:
    """Best first by the monitored value; jobs without a finite value last, in job order."""
    def key(row: JobRow) -> tuple[int, float]:
        if row.value is None or not math.isfinite(row.value):
            return (1, 0.0)
        return (0, -row.value if higher_is_better else row.value)
    return sorted(rows, key=key)


def varying_overrides(rows: list[JobRow]) -> dict[str, list[str]]:
    """Each job's overrides less those every job shares, keys shortened to their last part
    where that stays unambiguous (``lr=0.003`` for ``model.optim.main.lr=0.003``)."""
    common = set.intersection(*(set(r.overrides) for r in rows)) if rows else set()
    varying = {r.job: [o for o in r.overrides if o not in common] or r.overrides for r in rows}
    keys = {o.split("=", 1)[0] for labels in varying.values() for o in labels}
    last = {k: k.rsplit(".", 1)[-1] for k in keys}
    unique = {k for k in keys if list(last.values()).count(last[k]) == 1}

    def short(override: str) -> str:
        key, _, value = override.partition("=")
        return f"{last[key]}={value}" if key in unique else override
    return {job: [short(o) for o in labels] for job, labels in varying.items()}


def write_summary(sweep_dir: Path) -> Path | None:
    """summary.csv, a printed table and comparison.png for the jobs under ``sweep_dir``."""
    rows, metric, mode = collect_jobs(sweep_dir)
    if not rows:
        return None
    higher = mode == "max"
    ranked = rank_rows(rows, higher)
    labels = varying_overrides(rows)
    header = ["rank", "job", "status", metric or "monitor", "steps", "wall_time_s",
              "overrides", "run_dir"]
    table: list[list[Any]] = [
        [i + 1, r.job, r.status, "" if r.value is None else f"{r.value:.6g}",
         "" if r.steps is None else r.steps,
         "" if r.wall_time_s is None else f"{r.wall_time_s:.1f}", " ".join(r.overrides),
         str(r.run_dir)]
        for i, r in enumerate(ranked)
    ]
    path = sweep_dir / "summary.csv"
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([header, *table])
    shown = [[row[0], " ".join(labels[r.job]), row[2], row[3], row[4], row[5]]
             for row, r in zip(table, ranked, strict=True)]
    print(format_table(["rank", "job overrides", "status", metric or "monitor", "steps",
                        "time_s"], shown))
    direction = "higher" if higher else "lower"
    print(f"Sorted by {metric or 'no monitored metric'} ({direction} is better). "
          f"Summary: {path}")
    _plot(ranked, labels, metric, higher, sweep_dir / "comparison.png")
    return path


def format_table(header: list[str], rows: list[list[Any]]) -> str:
    """A plain aligned text table."""
    cells = [[str(c) for c in row] for row in [header, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
             for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _plot(rows: list[JobRow], labels: dict[str, list[str]], metric: str | None,
          higher: bool, out: Path) -> None:
    from gentrain.plots import SweepRun, plot_sweep_comparison

    runs = [SweepRun(name=" ".join(labels[r.job]),
                     metrics_path=(r.run_dir / "metrics.jsonl")
                     if (r.run_dir / "metrics.jsonl").is_file() else None,
                     value=r.value, status=r.status) for r in rows]
    if plot_sweep_comparison(runs, metric or "", out, higher_is_better=higher):
        print(f"Comparison plot: {out}")


class SweepSummary(Callback):
    """Hydra callback: summarise the sweep directory when a multirun ends."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            write_summary(Path(str(config.hydra.sweep.dir)))
        except Exception as error:  # a summary must never turn a finished sweep into a failure
            log.warning("Could not write the sweep summary: %s", error)
