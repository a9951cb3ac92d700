"""Datasets as the trainer sees them: a :class:`DataModule` built from the ``data`` config."""

from __future__ import annotations

from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from gentrain.data.base import DataModule
from gentrain.data.batch import Batch, DataSpec
from gentrain.errors import GentrainError
from gentrain.instantiation import call_with_config_errors

__all__ = ["Batch", "DataModule", "DataSpec", "build_data"]

# Keys every data config has that are not arguments of its builder.
DESCRIPTIVE_KEYS = ("name",)


def build_data(cfg: DictConfig) -> DataModule:
    """Instantiate the ``data`` config (its ``_target_`` builds a :class:`DataModule`)."""
    kwargs: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
    for key in DESCRIPTIVE_KEYS:
        kwargs.pop(key, None)
    data = call_with_config_errors(lambda: instantiate(kwargs, _convert_="all"), "data", cfg)
    if not isinstance(data, DataModule):
        raise GentrainError(
            f"data._target_ ({cfg.get('_target_')}) built a {type(data).__name__}, not a "
            "DataModule. Point it at a dataset builder from gentrain.data."
        )
    return data
