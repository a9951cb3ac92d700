"""task=sample for models that complete images from key patches (Puzzle-GAN).

The patches come from ``sample.source``, a folder of patch crops, or from the first
``sample.num`` examples of the run's ``eval.split``. In a folder, each sub-folder holds the K
crops of one image; a folder without sub-folders is read K crops at a time in name order. Any
crop size works: each is resized to the full resolution, as in training.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from PIL import Image
from torch import Tensor

from gentrain.data import build_data
from gentrain.data.core.images import list_images, open_image, to_uint8_tensor
from gentrain.engine.run_log import RunLog
from gentrain.errors import require
from gentrain.models.puzzlegan import completion_grid
from gentrain.tasks.sample import write_individual

log = logging.getLogger(__name__)


def patch_groups(folder: Path, count: int) -> list[list[Path]]:
    """The crops of each image in ``folder``: one group per sub-folder, or K files at a time."""
    subfolders = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if subfolders:
        groups = [list_images(sub) for sub in subfolders]
        wrong = [f"{sub.name} ({len(g)})" for sub, g in zip(subfolders, groups, strict=True)
                 if len(g) != count]
        require(not wrong, f"sample.source={folder}: each sub-folder must hold the {count} patch "
                f"crops of one image, but {', '.join(wrong[:3])} do not.")
        return groups
    files = list_images(folder)
    require(bool(files) and len(files) % count == 0,
            f"sample.source={folder} holds {len(files)} images; give the {count} patch crops "
            "of each image in a sub-folder of their own, or a multiple of "
            f"{count} crops read {count} at a time in name order.")
    return [files[i:i + count] for i in range(0, len(files), count)]


def read_patches(groups: list[list[Path]], resolution: int, channels: int) -> Tensor:
    """(N, K, C, H, W) uint8: each crop resized (bilinear) to the full resolution."""
    size = (resolution, resolution)
    return torch.stack([torch.stack([
        to_uint8_tensor(open_image(path, channels).resize(size, Image.Resampling.BILINEAR))
        for path in group]) for group in groups])


def patch_conditions(cfg: DictConfig, run_config: DictConfig, model: Any,
                     device: torch.device) -> dict[str, Tensor]:
    """``patches`` (and, from the data, the real ``image``) of ``sample.num`` examples."""
    spec = model.spec
    if cfg.sample.source is None:
        data = build_data(run_config.data)
        batches = list(data.eval_batches(split=cfg.eval.split, device=device,
                                         limit=cfg.sample.num))
        return {k: torch.cat([b[k] for b in batches]) for k in ("patches", "image")}
    folder = Path(str(cfg.sample.source)).expanduser()
    require(folder.is_dir(), f"sample.source={folder} is not a folder of patch crops.")
    groups = patch_groups(folder, spec.patches)[: cfg.sample.num]
    patches = read_patches(groups, spec.height, spec.channels)
    return {"patches": patches.to(device).float() / 127.5 - 1}


def patch_samples(cfg: DictConfig, run_config: DictConfig, model: Any, step: int,
                  device: torch.device, run_dir: Path,
                  autocast: Callable[[], Any]) -> dict[str, Any]:
    """One row per example: its patches | predicted mask | completed image (| real image)."""
    cond = patch_conditions(cfg, run_config, model, device)
    num, chunk = cond["patches"].shape[0], cfg.sample.batch_size
    generator = torch.Generator(device=device).manual_seed(cfg.sample.seed)
    images, masks = [], []
    for start in range(0, num, chunk):
        with autocast():
            out = model.sample_with_mask(
                min(chunk, num - start), {"patches": cond["patches"][start:start + chunk]},
                generator)
        images.append(out["image"].float())
        masks.append(out["mask"].float())
    image, mask = torch.cat(images), torch.cat(masks)
    shown = completion_grid(cond["patches"], mask, image, cond.get("image"))
    grid = RunLog(run_dir, tensorboard=False).grid(step, "sample", shown)
    if cfg.sample.individual:
        write_individual(run_dir, {f"{i:05d}": x for i, x in enumerate(image)})
    log.info("Wrote %s", grid)
    return {"grid": str(grid), "num": num, "step": step}
