"""task=eval: a checkpoint's family metrics (e.g. ELBO, bits/dim, IS NLL) on a data split."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from gentrain.data import build_data
from gentrain.engine.device import resolve_device
from gentrain.engine.evaluation import evaluate_model
from gentrain.errors import GentrainError
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
    data = build_data(cfg.data if cfg.data.name == trained.data.name else trained.data)
    metrics = evaluate_model(model, data, split=cfg.eval.split, device=device,
                             limit=cfg.eval.limit, progress=True)
    if not metrics:
        raise GentrainError(f"The {model.family} family has no evaluation metrics.")
    result = {"checkpoint": str(cfg.ckpt), "step": int(state["step"]),
              "split": cfg.eval.split, "limit": cfg.eval.limit, "metrics": metrics}
    (run_dir / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    log.info("%s", json.dumps(metrics))
    return result
