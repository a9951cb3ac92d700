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
    module = build_from_config(
        cfg, "data", DataModule, skip=("name", "patches"),
        hint="Point it at a dataset builder from gentrain.data.datasets.",
    )
    # Key patches (Puzzle-GAN) work on every dataset, so they wrap whatever was built.
    from gentrain.data.pairs.patches import parse_patches, with_patches

    return with_patches(parse_patches(cfg.get("patches")), module, cfg)
