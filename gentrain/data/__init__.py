"""Datasets as the trainer sees them: a :class:`DataModule` built from the ``data`` config."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from gentrain.data.core.base import DataModule
from gentrain.data.core.batch import Batch, DataSpec
from gentrain.instantiation import build_from_config

__all__ = ["Batch", "DataModule", "DataSpec", "build_data"]


# Dataset modules that moved into gentrain.data.datasets; the configs stored in checkpoints
# written before the move still name them (task=sample/eval rebuild the run's data from them).
MOVED_DATASETS = ("mnist", "cifar10", "celeba", "shapes", "folders", "pix2pix")


def build_data(cfg: DictConfig) -> DataModule:
    """Instantiate the ``data`` config (its ``_target_`` builds a :class:`DataModule`)."""
    module, _, builder = str(cfg.get("_target_", "")).rpartition(".")
    name = module.removeprefix("gentrain.data.")
    if name in MOVED_DATASETS:
        cfg = OmegaConf.merge(cfg, {"_target_": f"gentrain.data.datasets.{name}.{builder}"})
    return build_from_config(
        cfg, "data", DataModule, skip=("name",),
        hint="Point it at a dataset builder from gentrain.data.datasets.",
    )
