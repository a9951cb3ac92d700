"""task=preview: a grid of real training examples (pairs side by side), as the model sees them."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from gentrain.data import build_data
from gentrain.engine.device import resolve_device
from gentrain.engine.run_log import RunLog, as_rgb
from gentrain.models.base import Grid

log = logging.getLogger(__name__)


def preview(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    device = resolve_device(cfg.trainer.device)
    data = build_data(cfg.data)
    batch = next(iter(data.train_loader(device=device, seed=cfg.seed)))
    images = as_rgb(batch["image"][:32])
    if "source" in batch:  # input | target, side by side
        sources = as_rgb(batch["source"][: images.shape[0]])
        grid = Grid(torch.stack([sources, images], dim=1).flatten(0, 1), nrow=8)
    else:
        grid = Grid(images, nrow=8)
    path = RunLog(run_dir, tensorboard=False).grid(0, "preview", grid)
    log.info("Wrote %s", path)
    return {"grid": str(path), "spec": repr(data.spec)}
