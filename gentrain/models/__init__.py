"""Model families: one module per family, each a subclass of ``base.GenerativeModel``."""

from __future__ import annotations

from omegaconf import DictConfig

from gentrain.data.core.batch import DataSpec
from gentrain.instantiation import build_from_config
from gentrain.models.base import GenerativeModel

# Keys of a model config that are not constructor arguments: the family's name and its
# training defaults, which the trainer reads (see configs/model/*.yaml).
TRAINING_KEYS = ("name", "optim", "schedule", "ema", "growth")


def build_model(cfg: DictConfig, spec: DataSpec) -> GenerativeModel:
    """Instantiate ``cfg`` (a model config) with the data-derived sizes in ``spec``."""
    return build_from_config(
        cfg, "model", GenerativeModel, spec, skip=TRAINING_KEYS,
        hint="Point it at a family class in gentrain.models.",
    )
