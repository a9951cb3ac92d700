"""Sampling and evaluation settings given at call time, on top of a checkpoint's config.

A checkpoint fixes its network; how it samples or evaluates may change at every call. Each
family lists those model keys (``GenerativeModel.inference_keys``: DDPM's ``sampler``, the
VAE's ``iw_samples``). At ``task=sample`` and ``task=eval`` command-line overrides of those
keys apply to the checkpoint's model config; overriding any other model key to a value other
than the checkpoint's is an error, because it would describe a different network.
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Sequence
from pathlib import Path

import torch
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from gentrain.engine import checkpoint as ckpt
from gentrain.errors import GentrainError
from gentrain.models.base import GenerativeModel

CHECKPOINT_TASKS = ("sample", "eval")


def evaluation_data_config(trained: DictConfig, requested: DictConfig,
                           overrides: Sequence[str]) -> DictConfig:
    """The data ``task=eval`` scores on: the checkpoint's ``trained`` data config, with the
    ``data.*`` keys the command line gives (``overrides``) taken from ``requested`` (the
    composed data config), e.g. ``data.root=/new/place``; another dataset named with
    ``data=NAME`` replaces it whole. So a run's settings that no config file holds (an
    experiment's captions, a sweep's resolution) are never lost to the defaults."""
    merged = OmegaConf.create(OmegaConf.to_container(trained, resolve=True))
    for override in OverridesParser.create().parse_overrides(list(overrides)):
        key = override.key_or_group
        if key == "data" and str(override.value()) != trained.name:
            return requested
        if key.startswith("data.") and not override.is_delete():
            path = key.removeprefix("data.")
            OmegaConf.update(merged, path, OmegaConf.select(requested, path), force_add=True)
    return merged


def inference_model_config(
    trained: DictConfig, requested: DictConfig, overrides: Sequence[str], task: str
) -> DictConfig:
    """The checkpoint's ``trained`` model config with the inference-time keys of
    ``overrides`` (command-line strings) taken from ``requested`` (the composed model config).
    """
    family: type[GenerativeModel] = get_class(trained._target_)
    allowed = family.inference_keys
    merged = OmegaConf.create(OmegaConf.to_container(trained, resolve=True))
    for override in OverridesParser.create().parse_overrides(list(overrides)):
        key = override.key_or_group
        if key == "model" or key.startswith("model/"):
            _check_group_choice(key, str(override.value()), trained, requested, task)
            continue
        if not key.startswith("model."):
            continue
        path = key.removeprefix("model.")
        if path.split(".")[0] in allowed and not override.is_delete():
            value = OmegaConf.to_container(requested, resolve=True)
            for part in path.split("."):
                value = value[part]
            OmegaConf.update(merged, path, value, force_add=True)
            continue
        before = OmegaConf.select(trained, path)
        after = None if override.is_delete() else OmegaConf.select(requested, path)
        if _plain(after) != _plain(before):
            names = ", ".join(f"model.{k}" for k in allowed) or "none"
            raise GentrainError(
                f"{key}={_plain(after)} would change the {trained.name} network the checkpoint "
                f"was trained with ({key}={_plain(before)}). At task={task} only the family's "
                f"inference-time keys can be overridden ({names}); drop {key}, or train a new "
                "model with it."
            )
    return merged


def _plain(value: object) -> object:
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def _check_group_choice(
    key: str, choice: str, trained: DictConfig, requested: DictConfig, task: str
) -> None:
    """``model=X`` must name the checkpoint's family; ``model/net=X`` its network."""
    if key == "model" and requested.get("name") == trained.get("name"):
        return
    if key != "model":
        subgroup = key.removeprefix("model/")
        if _plain(requested.get(subgroup)) == _plain(trained.get(subgroup)):
            return
    raise GentrainError(
        f"{key}={choice} does not match the checkpoint, which holds a {trained.name} model "
        f"with its own network. At task={task} the checkpoint decides the model; drop {key}."
    )


def checkpoint_model_choice(args: Sequence[str]) -> list[str]:
    """``args`` plus ``model=<family>`` when they ask to sample or evaluate a checkpoint
    without naming the model, so that overrides like ``model.sampler.steps=50`` compose.

    Anything unreadable is left for the task itself to report.
    """
    values = dict(arg.split("=", 1) for arg in args if "=" in arg and not arg.startswith("-"))
    if values.get("task") not in CHECKPOINT_TASKS or not values.get("ckpt") or "model" in values:
        return list(args)
    try:
        path = ckpt.resolve_checkpoint(values["ckpt"])
        # mmap: only the small config is read, not the weights.
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        name = OmegaConf.create(state["config"]).model.name
    except Exception:  # noqa: BLE001 - the task reports a bad checkpoint with a clear message
        return list(args)
    configs = importlib.resources.files("gentrain.configs") / "model"
    if not (Path(str(configs)) / f"{name}.yaml").is_file():
        return list(args)
    return [*args, f"model={name}"]
