"""PNG plots of a run's ``metrics.jsonl`` and of a sweep's results.

Figures are drawn with ``Figure`` + ``FigureCanvasAgg`` directly rather than through pyplot, so
importing this module never switches the user's matplotlib backend or leaks open figures.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

Series = tuple[list[int], list[float]]
_NCOLS = 3
_LABEL_CHARS = 40


@dataclass(frozen=True)
class SweepRun:
    """One sweep job: its overrides as a label, where its metrics are and how it ended."""

    name: str
    metrics_path: Path | None
    value: float | None
    status: str


def read_metrics(path: Path) -> dict[str, Series]:
    """Series per metric name, sorted by step.

    Lines that do not parse are skipped (a run killed mid-write leaves a truncated last line),
    and when a resumed run logs a step again the later line wins. A missing file reads as no
    metrics: a job that failed before its first log never wrote one.
    """
    if not path.is_file():
        return {}
    by_name: dict[str, dict[int, float]] = {}
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
            step = int(record.pop("step"))
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
        for name, value in record.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                by_name.setdefault(name, {})[step] = float(value)
    return {
        name: (sorted(points), [points[s] for s in sorted(points)])
        for name, points in sorted(by_name.items())
    }


def _finite(values: list[float]) -> list[float]:
    return [v for v in values if math.isfinite(v)]


def _gaps(values: list[float]) -> list[float]:
    """Non-finite values become NaN, which matplotlib draws as a gap in the line."""
    return [v if math.isfinite(v) else math.nan for v in values]


def _maybe_log(ax: Axes, values: list[float]) -> None:
    """Log y only when it helps: all positive and spanning more than two decades."""
    finite = _finite(values)
    if finite and min(finite) > 0 and max(finite) / min(finite) > 100:
        ax.set_yscale("log")


def _panels(metrics: dict[str, Series]) -> list[tuple[str, list[str]]]:
    """(title, metric names) per panel: losses, other scalars, eval, lr, throughput, skips."""
    def skipped(name: str) -> bool:
        if name == "perf/images_seen":  # a counter that only says how far the run got
            return True
        return name.endswith("/nonfinite_skipped") and not any(metrics[name][1])

    names = [n for n in metrics if _finite(metrics[n][1]) and not skipped(n)]
    lrs = [n for n in names if n.startswith("lr/")]

    def order(name: str) -> int:
        for rank, prefix in ((2, "eval/"), (3, "lr/"), (4, "perf/")):
            if name.startswith(prefix):
                return rank
        if name.endswith("/nonfinite_skipped"):
            return 5
        return 0 if name.endswith("/loss") else 1

    panels: list[tuple[str, list[str]]] = []
    for name in sorted(names, key=order):  # stable: names stay alphabetical within a group
        if name not in lrs:
            panels.append((name, [name]))
        elif name == lrs[0]:
            panels.append(("learning rate" if len(lrs) > 1 else name, lrs))
    return panels


def _grid(n: int, width: float = 4.4, height: float = 3.0) -> tuple[Figure, list[Axes]]:
    cols = min(_NCOLS, n)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(width * cols, height * rows), dpi=100, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def _save(fig: Figure, out_path: Path) -> Path:
    out_path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig).print_png(out_path)
    return out_path


def plot_training_curves(metrics_path: Path, out_path: Path, title: str | None = None
                         ) -> Path | None:
    """One PNG of small multiples, one panel per metric worth seeing; None if there is none."""
    metrics = read_metrics(metrics_path)
    panels = _panels(metrics)
    if not panels:
        return None
    fig, axes = _grid(len(panels))
    for ax, (panel_title, names) in zip(axes, panels, strict=True):
        for name in names:
            steps, values = metrics[name]
            sparse = name.startswith("eval/")  # a few points: markers show where they are
            ax.plot(steps, _gaps(values), marker="o" if sparse else None, markersize=4,
                    linewidth=1.2, label=name.removeprefix("lr/"))
        if names[0].startswith("lr/"):
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
            if len(names) > 1:
                ax.legend(fontsize="small")
        elif not names[0].startswith("perf/"):
            _maybe_log(ax, metrics[names[0]][1])
        ax.set_title(panel_title, fontsize="medium")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    return _save(fig, out_path)


def _label(name: str) -> str:
    return name if len(name) <= _LABEL_CHARS else name[: _LABEL_CHARS - 1] + "…"


def _curves(runs: list[SweepRun], monitor: str) -> tuple[str, dict[int, Series]]:
    """Per run index, the monitored series; when no run logged it, the main training loss
    (the last non-eval ``*/loss``), so that one panel never mixes two metrics."""
    metrics = [read_metrics(r.metrics_path) if r.metrics_path else {} for r in runs]
    for key in (monitor, f"eval/{monitor}"):
        found = {i: m[key] for i, m in enumerate(metrics) if _finite(m.get(key, ([], []))[1])}
        if found:
            return key, found
    losses = sorted({k for m in metrics for k in m if k.endswith("/loss")
                     and not k.startswith("eval/")})
    if not losses:
        return monitor, {}
    return losses[-1], {i: m[losses[-1]] for i, m in enumerate(metrics) if losses[-1] in m}


def plot_sweep_comparison(runs: list[SweepRun], monitor: str, out_path: Path,
                          higher_is_better: bool) -> Path | None:
    """Curves of every run (left) beside their final values (right), in the order given: the
    sweep summary ranks the runs and names them by what differs. None if all are empty."""
    key, curves = _curves(runs, monitor)
    if not curves and not any(r.value is not None and math.isfinite(r.value) for r in runs):
        return None
    # One color per run in both panels; past ten runs the default cycle would repeat.
    palette = colormaps["tab10" if len(runs) <= 10 else "tab20"]
    labels = [_label(r.name) for r in runs]
    colors = [palette(i % palette.N) for i in range(len(runs))]

    fig = Figure(figsize=(13, max(4.0, 1.5 + 0.32 * len(runs))), dpi=100, layout="constrained")
    left, right = fig.subplots(1, 2, width_ratios=[3, 2])
    for i, (steps, values) in curves.items():
        left.plot(steps, _gaps(values), color=colors[i], linewidth=1.2,
                  marker="o" if len(steps) < 30 else None, markersize=3, label=labels[i])
    fallback = key not in (monitor, f"eval/{monitor}")
    left.set_title(f"{key} (no {monitor} curve logged)" if fallback else key, fontsize="medium")
    left.set_xlabel("step")
    left.grid(alpha=0.3)
    _maybe_log(left, [v for _, values in curves.values() for v in values])
    if curves:
        left.legend(fontsize="small")

    for y, run in enumerate(runs):
        if run.value is not None and math.isfinite(run.value):
            # Dots, not bars from zero: runs of a sweep differ by a few percent of the value.
            right.plot(run.value, y, "o", color=colors[y], markersize=8)
            right.annotate(f"   {run.value:.5g}", (run.value, y), va="center", fontsize="small")
        else:
            right.annotate(f" {run.status}", (0, y), va="center", fontsize="small",
                           color="firebrick", xycoords=("axes fraction", "data"))
    right.set_yticks(range(len(runs)), labels, fontsize="small")
    right.set_ylim(len(runs) - 0.5, -0.5)  # best at the top; rows without a bar stay in view
    right.margins(x=0.2)
    direction = "higher" if higher_is_better else "lower"
    right.set_title(f"final {monitor} ({direction} is better)", fontsize="medium")
    right.grid(alpha=0.3)
    return _save(fig, out_path)
