"""Model families: one module per family, each a subclass of ``base.GenerativeModel``."""

from __future__ import annotations

from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from gentrain.data.batch import DataSpec
from gentrain.errors import GentrainError
from gentrain.instantiation import call_with_config_errors
from gentrain.models.base import GenerativeModel

# Keys of a model config that are not constructor arguments: the family's name and its
# training defaults, which the trainer reads (see configs/model/*.yaml).
TRAINING_KEYS = ("name", "optim", "schedule", "ema")


def build_model(cfg: DictConfig, spec: DataSpec) -> GenerativeModel:
    """Instantiate ``cfg`` (a model config) with the data-derived sizes in ``spec``."""
    kwargs: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
    for key in TRAINING_KEYS:
        kwargs.pop(key, None)
    model = call_with_config_errors(lambda: instantiate(kwargs, spec), "model", cfg)
    if not isinstance(model, GenerativeModel):
        raise GentrainError(
            f"model._target_ ({cfg.get('_target_')}) built a {type(model).__name__}, not a "
            "GenerativeModel. Point it at a family class in gentrain.models."
        )
    return model
