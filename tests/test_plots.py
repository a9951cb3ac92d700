"""Plots of metrics.jsonl: parsing survives NaN, interleaved eval lines and a torn last line."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from gentrain.plots import (
    SweepRun,
    plot_sweep_comparison,
    plot_training_curves,
    read_metrics,
)


def write_metrics(path: Path, steps: int = 20, eval_every: int = 5, torn: bool = True) -> Path:
    lines = []
    for step in range(1, steps + 1):
        lines.append(json.dumps({
            "step": step,
            "main/loss": math.nan if step == 3 else 10.0 / step,
            "main/kl": 0.5 * step,
            "main/grad_norm": math.inf if step == 4 else 1.0,
            "main/nonfinite_skipped": 0.0,
            "lr/main": 1e-3,
            "perf/images_per_sec": 100.0,
            "perf/images_seen": 8.0 * step,
        }))
        if step % eval_every == 0:
            lines.append(json.dumps({"step": step, "eval/bpd": 5.0 - step / 10}))
    text = "\n".join(lines) + "\n"
    if torn:  # a run killed mid-write
        text += '{"step": 21, "main/lo'
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_read_metrics_series(tmp_path: Path) -> None:
    metrics = read_metrics(write_metrics(tmp_path / "metrics.jsonl"))
    steps, values = metrics["main/loss"]
    assert steps == list(range(1, 21))
    assert math.isnan(values[2]) and values[0] == 10.0 and values[-1] == 0.5
    assert math.isinf(metrics["main/grad_norm"][1][3])
    assert metrics["eval/bpd"] == ([5, 10, 15, 20], [4.5, 4.0, 3.5, 3.0])
    assert "step" not in metrics


def test_read_metrics_later_line_wins_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    # A resumed run logs steps 2 and 3 again after its checkpoint at step 1.
    path.write_text("".join(json.dumps({"step": s, "main/loss": v}) + "\n"
                            for s, v in [(1, 1.0), (2, 2.0), (3, 3.0), (2, 20.0), (3, 30.0)]))
    assert read_metrics(path) == {"main/loss": ([1, 2, 3], [1.0, 20.0, 30.0])}
    assert read_metrics(tmp_path / "absent.jsonl") == {}


def test_training_curves_png(tmp_path: Path) -> None:
    out = plot_training_curves(write_metrics(tmp_path / "metrics.jsonl"),
                               tmp_path / "plots" / "curves.png", title="vae mnist")
    assert out == tmp_path / "plots" / "curves.png"
    with Image.open(out) as image:
        width, height = image.size
    # Panels: main/loss, main/grad_norm, main/kl, eval/bpd, lr, images_per_sec -> 3 x 2 grid.
    assert 900 <= width <= 2000 and 400 <= height <= 1200


def test_training_curves_nothing_to_plot(tmp_path: Path) -> None:
    empty = tmp_path / "metrics.jsonl"
    empty.write_text("")
    out = tmp_path / "curves.png"
    assert plot_training_curves(empty, out) is None
    assert not out.exists()
    # Only counters that are skipped: still nothing worth a figure.
    empty.write_text(json.dumps({"step": 1, "perf/images_seen": 8.0,
                                 "main/nonfinite_skipped": 0.0}) + "\n")
    assert plot_training_curves(empty, out) is None
    assert not out.exists()


def sweep_runs(tmp_path: Path) -> list[SweepRun]:
    a = write_metrics(tmp_path / "0" / "metrics.jsonl", torn=False)
    b = write_metrics(tmp_path / "1" / "metrics.jsonl")
    return [
        SweepRun("optimizer.lr=0.001,model.latent_dim=32", a, 3.0, "COMPLETED"),
        SweepRun("optimizer.lr=0.01,model.latent_dim=32", None, None, "FAILED"),
        SweepRun("optimizer.lr=0.0001,model.latent_dim=32", b, 3.4, "COMPLETED"),
    ]


@pytest.mark.parametrize("monitor", ["bpd", "eval/bpd", "fid"])  # "fid": falls back to the loss
def test_sweep_comparison_png(tmp_path: Path, monitor: str) -> None:
    out = plot_sweep_comparison(sweep_runs(tmp_path), monitor, tmp_path / "sweep.png",
                                higher_is_better=False)
    assert out is not None
    with Image.open(out) as image:
        width, height = image.size
    assert 900 <= width <= 2000 and 300 <= height <= 1000


def test_sweep_comparison_nothing_to_show(tmp_path: Path) -> None:
    runs = [SweepRun("a=1", None, None, "FAILED"), SweepRun("a=2", None, math.nan, "FAILED")]
    out = tmp_path / "sweep.png"
    assert plot_sweep_comparison(runs, "bpd", out, higher_is_better=False) is None
    assert not out.exists()


def test_import_and_plot_keep_backend(tmp_path: Path) -> None:
    # A fresh interpreter, so that no earlier test has already imported matplotlib.
    metrics = write_metrics(tmp_path / "metrics.jsonl")
    code = (
        "import sys; from pathlib import Path; import matplotlib; matplotlib.use('svg'); "
        "before = matplotlib.get_backend(); import gentrain.plots as p; "
        "assert matplotlib.get_backend() == before == 'svg', matplotlib.get_backend(); "
        "p.plot_training_curves(Path(sys.argv[1]), Path(sys.argv[2])); "
        "import matplotlib.pyplot as plt; "
        "assert matplotlib.get_backend() == 'svg' and not plt.get_fignums()"
    )
    subprocess.run([sys.executable, "-c", code, str(metrics), str(tmp_path / "c.png")],
                   check=True)
