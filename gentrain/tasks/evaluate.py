"""task=eval: a checkpoint's family metrics on a data split, written next to the checkpoint.

Per-example metrics (ELBO and importance-sampled NLL, bits/dim, L1/PSNR/SSIM) average over
``eval.split``; sample-quality metrics (FID/KID/IS) compare generated images with
``eval.reference_split`` and carry the protocol that produced them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from gentrain.data import build_data
from gentrain.engine import checkpoint as ckpt
from gentrain.engine.device import autocast_factory, resolve_device
from gentrain.engine.evaluation import evaluate_model
from gentrain.errors import GentrainError
from gentrain.files import atomic_write
from gentrain.sample_quality.evaluate import build_sample_quality, settings_from_config
from gentrain.sweeps.summary import format_table
from gentrain.tasks.setup import model_from_checkpoint

log = logging.getLogger(__name__)


def evaluate(cfg: DictConfig, run_dir: Path, overrides: Sequence[str] = ()) -> dict[str, Any]:
    if cfg.ckpt is None:
        raise GentrainError(
            "task=eval needs a checkpoint: add ckpt=<run dir or .pt file> (and optionally "
            "eval.split=test eval.limit=N)."
        )
    device = resolve_device(cfg.trainer.device)
    model, state, trained = model_from_checkpoint(
        cfg.ckpt, use_ema=True, device=device, cfg=cfg, overrides=overrides
    )
    # The data the model was trained on; naming the same dataset on the command line (e.g.
    # `data=mnist data.root=/new/place`) takes the command line's settings instead.
    data_cfg = cfg.data if cfg.data.name == trained.data.name else trained.data
    data = build_data(data_cfg)
    # Built first: missing Inception weights stop the task before any costly evaluation.
    settings = settings_from_config(cfg.eval, model.sample_quality_metrics)
    quality = settings and build_sample_quality(settings, data, data_cfg, device, cfg.seed)
    metrics: dict[str, float] = {}
    if cfg.eval.per_example:
        metrics.update(evaluate_model(model, data, split=cfg.eval.split, device=device,
                                      limit=cfg.eval.limit, progress=True))
    protocol = None
    if quality:
        values, protocol = quality(model, progress=True,
                                   autocast=autocast_factory(device, str(cfg.trainer.precision)))
        metrics.update(values)
    if not metrics:
        raise GentrainError(
            f"Nothing to evaluate: the {model.family} family has no per-example metrics and no "
            "sample-quality metric was asked for. Set eval.sample_quality=[fid] (and "
            "eval.per_example=true)."
        )
    checkpoint = ckpt.resolve_checkpoint(cfg.ckpt)
    result = {"checkpoint": str(checkpoint), "step": int(state["step"]),
              "family": model.family, "split": cfg.eval.split, "limit": cfg.eval.limit,
              "metrics": metrics, "sample_quality_protocol": protocol}
    text = json.dumps(result, indent=2) + "\n"
    for path in (checkpoint.parent / "eval.json", run_dir / "eval.json"):
        atomic_write(path, lambda tmp: tmp.write_text(text))  # noqa: B023 (called at once)
    print(format_table(["metric", "value"], [[k, f"{v:.6g}"] for k, v in metrics.items()]))
    print(f"Written to {checkpoint.parent / 'eval.json'}")
    return result
