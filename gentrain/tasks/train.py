"""task=train: build data, model and trainer from the config, resume if asked, train."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from gentrain.data import DataModule, build_data
from gentrain.data.core.seeding import derive_seed
from gentrain.engine import checkpoint as ckpt
from gentrain.engine.distributed import DistEnv, barrier
from gentrain.engine.trainer import FamilyTraining, Trainer
from gentrain.models import build_model
from gentrain.precedence import Decision
from gentrain.sample_quality.domain import DomainQuality, judge_monitor
from gentrain.sample_quality.evaluate import build_sample_quality, settings_from_config
from gentrain.tasks.setup import start_runtime

log = logging.getLogger(__name__)


def resume_source(resume: str | None, run_dir: Path) -> Path | None:
    """The checkpoint to continue from: ``auto`` finds this run dir's last.pt, if any."""
    if resume is None:
        return None
    if resume == "auto":
        last = run_dir / "checkpoints" / ckpt.LAST
        return last if last.is_file() else None
    return ckpt.resolve_checkpoint(resume)


def build_data_rank0_first(cfg: DictConfig, dist: DistEnv) -> DataModule:
    """Rank 0 downloads, extracts and caches first; the other ranks then read its files."""
    if not dist.enabled:
        return build_data(cfg)
    if dist.is_main:
        try:
            return build_data(cfg)
        finally:
            barrier()  # also on failure, so the others fail with the same message, not a hang
    barrier()
    return build_data(cfg)


def train(cfg: DictConfig, run_dir: Path, length: Decision) -> dict[str, Any]:
    runtime = start_runtime(cfg)
    data = build_data_rank0_first(cfg.data, runtime.dist)
    torch.manual_seed(derive_seed(cfg.seed, "init"))  # identical initial weights on all ranks
    model = build_model(cfg.model, data.spec)
    family = FamilyTraining(
        optim=OmegaConf.to_container(cfg.model.optim, resolve=True),  # type: ignore[arg-type]
        schedule=OmegaConf.to_container(cfg.model.get("schedule", {}), resolve=True),  # type: ignore[arg-type]
        ema=OmegaConf.to_container(cfg.model.get("ema", {}), resolve=True),  # type: ignore[arg-type]
        growth=(OmegaConf.to_container(cfg.model.growth, resolve=True)  # type: ignore[arg-type]
                if cfg.model.get("growth") else {}),
    )
    quality = None
    if runtime.trainer.eval_sample_quality:
        settings = settings_from_config(cfg.eval, model.sample_quality_metrics or ("fid",))
        quality = settings and build_sample_quality(settings, data, cfg.data, runtime.device,
                                                    cfg.seed, rank=runtime.dist.rank)
    config = runtime.trainer
    if isinstance(quality, DomainQuality) and config.monitor is None:
        # Without Inception weights best.pt follows the judge's distance instead of no metric.
        config = dataclasses.replace(config, monitor=judge_monitor(model.monitor))
    trainer = Trainer(
        model=model, data=data, config=config, family=family, run_dir=run_dir,
        seed=cfg.seed, config_yaml=OmegaConf.to_yaml(cfg, resolve=True), dist=runtime.dist,
        device=runtime.device, length=length, tensorboard=cfg.logger.tensorboard,
        sample_quality=quality,
    )
    source = resume_source(cfg.resume, run_dir)
    if source is not None:
        trainer.load_state_dict(ckpt.load_checkpoint(source, family=model.family))
        log.info("Resumed from %s at step %d.", source, trainer.step)
    summary = trainer.fit()
    if runtime.dist.is_main and summary["status"] == "completed":
        log.info(finished_line(summary, run_dir))
    return summary


def finished_line(summary: dict[str, Any], run_dir: Path) -> str:
    """One line for the terminal at the end of a run: where it is and how it scored."""
    monitor = summary.get("monitor") or {}
    score = (f"; {monitor['metric']} = {monitor['value']:.4g}"
             if monitor.get("value") is not None else "")
    grids = summary.get("samples") or {}
    grid = grids.get("samples") or next(iter(grids.values()), None)
    seen = f"; samples: {grid}" if grid else ""
    return (f"Trained {summary['family']} on {summary['data']} for {summary['steps']} steps in "
            f"{summary['wall_time_s']:.0f} s of training{score}. Run dir: {run_dir}{seen}")
