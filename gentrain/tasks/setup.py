"""What every task does first: join torchrun's group, pick the device, seed, build objects."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from gentrain.data.core.batch import spec_from_dict
from gentrain.engine import checkpoint as ckpt
from gentrain.engine.config import TrainerConfig
from gentrain.engine.device import configure_backends, resolve_device
from gentrain.engine.distributed import DistEnv, environment, init_distributed
from gentrain.models import build_model
from gentrain.models.base import GenerativeModel
from gentrain.tasks.inference import inference_model_config


@dataclass(frozen=True)
class Runtime:
    dist: DistEnv
    device: torch.device
    trainer: TrainerConfig


def start_runtime(cfg: DictConfig) -> Runtime:
    """Validate ``cfg.trainer``, choose the device, join the process group, set switches."""
    trainer = TrainerConfig.from_cfg(cfg.trainer)
    dist = environment()
    device = resolve_device(trainer.device, dist.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # before NCCL starts, so each rank owns its GPU
    init_distributed(dist, device.type)
    configure_backends(device, tf32=trainer.tf32, deterministic=trainer.deterministic)
    return Runtime(dist=dist, device=device, trainer=trainer)


def model_from_checkpoint(
    path: str, *, use_ema: bool, device: torch.device, cfg: DictConfig | None = None,
    overrides: Sequence[str] = (),
) -> tuple[GenerativeModel, dict[str, Any], DictConfig]:
    """The model a checkpoint holds (EMA weights when asked and present), its state, config.

    With ``cfg`` (this call's composed config) and its command-line ``overrides``, the
    family's inference-time keys given there replace the checkpoint's.
    """
    state = ckpt.load_checkpoint(path)
    config = OmegaConf.create(state["config"])
    model_cfg = config.model
    if cfg is not None:
        model_cfg = inference_model_config(config.model, cfg.model, overrides, cfg.task)
    model = build_model(model_cfg, spec_from_dict(state["data_spec"]))
    model.load_state_dict(state["model"])
    ema = state.get("ema") if use_ema else None
    if ema is not None and "model" in ema:
        model.load_state_dict(ema["model"])
    for name, weights in (ema or {}).get("networks", {}).items():  # EMA of named networks
        model.get_submodule(name).load_state_dict(weights)
    return model.to(device).eval(), state, config
