"""Build objects from config and turn the failures users cause into one clear paragraph."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TypeVar

from hydra.errors import InstantiationException
from omegaconf import DictConfig

from gentrain.errors import GentrainError

T = TypeVar("T")

_UNEXPECTED = re.compile(r"unexpected keyword argument '(\w+)'")


def call_with_config_errors(build: Callable[[], T], group: str, cfg: DictConfig) -> T:
    """Run ``build`` (usually ``hydra.utils.instantiate``), explaining config mistakes.

    Hydra wraps every error raised by a constructor; a :class:`GentrainError` inside is
    re-raised as it is, and an unknown keyword becomes a message that names the key.
    """
    try:
        return build()
    except InstantiationException as error:
        cause = error.__cause__
        if isinstance(cause, GentrainError):
            raise cause from None
        target = cfg.get("_target_", "?")
        unknown = _UNEXPECTED.search(str(cause or error))
        if unknown:
            raise GentrainError(
                f"Unknown key '{group}.{unknown.group(1)}': {target} does not take it. "
                f"Check the spelling against configs/{group}/ (print the composed config "
                "with `gentrain --cfg job`)."
            ) from None
        raise GentrainError(
            f"Could not build '{group}' from {target}: {cause or error}. Check the values in "
            f"the {group} config and its overrides."
        ) from None
