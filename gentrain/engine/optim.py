"""Optimizers from config: fused where the device has them, one clear error for bad values.

A fused optimizer (Adam, AdamW, SGD, Adagrad on most devices) reads an ``found_inf`` tensor
and skips the whole update on the device when it is 1, which is how the trainer skips a
non-finite step without a host sync (the same contract GradScaler uses).
"""

from __future__ import annotations

import functools
import inspect
import json
import re
from collections.abc import Mapping
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate

from gentrain.errors import GentrainError

# What torch's optimizers accept for the keys their ValueErrors complain about.
ACCEPTED = {
    "lr": "a number >= 0, e.g. 1e-3",
    "betas": "two numbers in [0, 1), e.g. [0.9, 0.999]",
    "eps": "a number >= 0, e.g. 1e-8",
    "weight_decay": "a number >= 0, e.g. 0.01",
    "momentum": "a number >= 0, e.g. 0.9",
    "dampening": "a number, 0 with nesterov",
    "nesterov": "true only with momentum > 0 and dampening 0",
    "alpha": "a number >= 0, e.g. 0.99",
    "lr_decay": "a number >= 0",
    "initial_accumulator_value": "a number >= 0",
    "fused": "true, false or null, and not true together with foreach",
    "foreach": "true, false or null, and not true together with fused",
}
# torch names some keys in words ("Invalid learning rate: -1").
_WORDS = {"learning rate": "lr", "beta": "betas", "epsilon": "eps"}
_UNEXPECTED = re.compile(r"unexpected keyword argument '(\w+)'")
_NOT_ARGUMENTS = ("_target_", "_partial_")


def build_optimizer(
    cfg: Mapping[str, Any], params: list[torch.Tensor], device: torch.device, path: str
) -> torch.optim.Optimizer:
    """The optimizer ``cfg`` describes (``_target_`` and its keywords) over ``params``.

    Fused when the class has a fused kernel on ``device`` and the config chose neither
    ``fused`` nor ``foreach``. Anything torch refuses becomes a :class:`GentrainError` that
    names the key under ``path`` (e.g. ``model.optim.main``) and what it accepts.
    """
    factory = _factory(cfg, path)
    fused = {"fused": True} if _fused_available(factory, device) else {}
    try:
        return factory(params, **fused)
    except (ValueError, TypeError, RuntimeError) as error:
        raise GentrainError(_refusal(cfg, path, error)) from None


def skips_on_device(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer.step`` honours ``optimizer.found_inf`` (GradScaler's contract)."""
    return bool(getattr(optimizer, "_step_supports_amp_scaling", False))


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load ``state`` but keep this run's kernel choice (fused or foreach).

    A checkpoint from another torch or device must not switch a fused optimizer to a path
    that rejects ``found_inf``; torch would otherwise take these flags from the checkpoint.
    """
    groups = [
        {**saved, **{k: mine[k] for k in ("fused", "foreach") if k in mine}}
        for saved, mine in zip(state["param_groups"], optimizer.param_groups, strict=False)
    ]
    optimizer.load_state_dict({**state, "param_groups": groups})


def _factory(cfg: Mapping[str, Any], path: str) -> functools.partial[torch.optim.Optimizer]:
    target = cfg.get("_target_")
    example = "Name an optimizer class, e.g. torch.optim.Adam or torch.optim.AdamW."
    if not target:
        raise GentrainError(f"{path}._target_ is missing. {example}")
    try:
        factory = instantiate({**cfg, "_partial_": True})
    except InstantiationException:
        raise GentrainError(f"{path}._target_={target} cannot be imported. {example}") from None
    cls = getattr(factory, "func", None)
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        raise GentrainError(f"{path}._target_={target} is not a torch.optim.Optimizer. {example}")
    return factory


def _fused_available(factory: functools.partial[torch.optim.Optimizer],
                     device: torch.device) -> bool:
    """Whether ``factory`` builds a working fused optimizer on ``device``.

    torch checks the device and dtype only at the first step, so a one-element probe steps
    once (skipped through ``found_inf``, which also proves the skip works).
    """
    if {"fused", "foreach"} & factory.keywords.keys():
        return False
    if "fused" not in inspect.signature(factory.func).parameters:
        return False
    probe = torch.zeros(1, device=device, requires_grad=True)
    probe.grad = torch.ones_like(probe)
    try:
        optimizer = factory([probe], fused=True)
        optimizer.found_inf = torch.ones((), device=device)  # type: ignore[attr-defined]
        optimizer.step()
    except (RuntimeError, ValueError, TypeError, NotImplementedError):
        return False  # no kernel here, or a bad value the real build reports
    return skips_on_device(optimizer) and not probe.detach().any().item()


def _refusal(cfg: Mapping[str, Any], path: str, error: Exception) -> str:
    """One paragraph naming the key torch refused and what it accepts."""
    target = cfg.get("_target_")
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    unknown = _UNEXPECTED.search(text)
    if unknown:
        return (
            f"Unknown key {path}.{unknown.group(1)}: {target} does not take it. Check the "
            "spelling against the class's documentation (print the composed config with "
            "`gentrain --cfg job`)."
        )
    key = _key_named(text, cfg)
    if key is None:
        return (
            f"{target} refused the settings under {path} ({text}). Check the values there "
            "(print the composed config with `gentrain --cfg job`)."
        )
    value = f"={json.dumps(cfg[key], default=str)}" if key in cfg else ""
    accepted = ACCEPTED.get(key, "the values its documentation lists")
    return f"{path}.{key}{value} is refused by {target} ({text}). It takes {accepted}."


def _key_named(text: str, cfg: Mapping[str, Any]) -> str | None:
    """The config key ``text`` (torch's message) is about, if it names one."""
    lower = text.lower()
    for key in cfg:
        if key not in _NOT_ARGUMENTS and re.search(rf"\b{re.escape(key.lower())}\b", lower):
            return key
    return next((key for words, key in _WORDS.items() if words in lower), None)
