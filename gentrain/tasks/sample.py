"""task=sample: draw images from a checkpoint (EMA weights when it has them)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torchvision.utils import save_image
from tqdm.auto import tqdm

from gentrain.engine.device import autocast_factory, resolve_device
from gentrain.engine.run_log import RunLog, to_unit
from gentrain.errors import GentrainError, require
from gentrain.models.base import Grid
from gentrain.tasks.setup import model_from_checkpoint

log = logging.getLogger(__name__)


def sample(cfg: DictConfig, run_dir: Path, overrides: Sequence[str] = ()) -> dict[str, Any]:
    if cfg.ckpt is None:
        raise GentrainError(
            "task=sample needs a checkpoint: add ckpt=<run dir or .pt file>, e.g. "
            "ckpt=outputs/vae-shapes/<date>/checkpoints/last.pt."
        )
    num, nrow, chunk = cfg.sample.num, cfg.sample.nrow, cfg.sample.batch_size
    require(num >= 1 and nrow >= 1 and chunk >= 1,
            f"sample.num ({num}), sample.nrow ({nrow}) and sample.batch_size ({chunk}) must be "
            ">= 1.")
    device = resolve_device(cfg.trainer.device)
    model, state, _ = model_from_checkpoint(
        cfg.ckpt, use_ema=cfg.sample.ema, device=device, cfg=cfg, overrides=overrides
    )
    generator = torch.Generator(device=device).manual_seed(cfg.sample.seed)
    autocast = autocast_factory(device, str(cfg.trainer.precision))
    parts = []
    # Chunks of sample.batch_size bound the memory; the generator runs on across chunks, so
    # the images depend on the seed and the chunk size only.
    for start in tqdm(range(0, num, chunk), desc="sample", unit="chunk", disable=num <= chunk):
        with autocast():
            parts.append(model.sample(min(chunk, num - start), None, generator).float())
    images = torch.cat(parts)
    out = RunLog(run_dir, tensorboard=False)
    grid = out.grid(int(state["step"]), "sample", Grid(images, nrow=nrow))
    if cfg.sample.individual:
        folder = run_dir / "samples" / "individual"
        folder.mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(to_unit(images)):
            save_image(image, folder / f"{i:05d}.png")
    log.info("Wrote %s", grid)
    return {"grid": str(grid), "num": num, "step": int(state["step"])}
