"""Datasets as the trainer sees them: a :class:`DataModule` built from the ``data`` config."""

from __future__ import annotations

from omegaconf import DictConfig

from gentrain.data.base import DataModule
from gentrain.data.batch import Batch, DataSpec
from gentrain.instantiation import build_from_config

__all__ = ["Batch", "DataModule", "DataSpec", "build_data"]


def build_data(cfg: DictConfig) -> DataModule:
    """Instantiate the ``data`` config (its ``_target_`` builds a :class:`DataModule`)."""
    return build_from_config(
        cfg, "data", DataModule, skip=("name",),
        hint="Point it at a dataset builder from gentrain.data.",
    )
