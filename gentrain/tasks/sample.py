"""task=sample: draw images from a checkpoint (EMA weights when it has them)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torchvision.utils import save_image

from gentrain.engine.device import resolve_device
from gentrain.engine.run_log import RunLog, to_unit
from gentrain.errors import GentrainError, require
from gentrain.models.base import Grid
from gentrain.tasks.setup import model_from_checkpoint

log = logging.getLogger(__name__)


def sample(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    if cfg.ckpt is None:
        raise GentrainError(
            "task=sample needs a checkpoint: add ckpt=<run dir or .pt file>, e.g. "
            "ckpt=outputs/vae-shapes/<date>/checkpoints/last.pt."
        )
    require(cfg.sample.num >= 1 and cfg.sample.nrow >= 1,
            f"sample.num ({cfg.sample.num}) and sample.nrow ({cfg.sample.nrow}) must be >= 1.")
    device = resolve_device(cfg.trainer.device)
    model, state, _ = model_from_checkpoint(cfg.ckpt, use_ema=cfg.sample.ema, device=device)
    generator = torch.Generator(device=device).manual_seed(cfg.sample.seed)
    images = model.sample(cfg.sample.num, None, generator)
    out = RunLog(run_dir, tensorboard=False)
    grid = out.grid(int(state["step"]), "sample", Grid(images, nrow=cfg.sample.nrow))
    if cfg.sample.individual:
        folder = run_dir / "samples" / "individual"
        folder.mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(to_unit(images)):
            save_image(image, folder / f"{i:05d}.png")
    log.info("Wrote %s", grid)
    return {"grid": str(grid), "num": cfg.sample.num, "step": int(state["step"])}
