"""Build objects from config and turn the failures users cause into one clear paragraph."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

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


def build_from_config(
    cfg: DictConfig, group: str, expected: type[T], *args: Any, skip: tuple[str, ...] = (),
    hint: str = "",
) -> T:
    """Instantiate a ``group`` config (minus the non-argument keys ``skip``) as ``expected``.

    ``args`` go first to the target, e.g. the :class:`DataSpec` of a model.
    """
    kwargs: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
    for key in skip:
        kwargs.pop(key, None)
    built = call_with_config_errors(
        lambda: instantiate(kwargs, *args, _convert_="all"), group, cfg
    )
    if not isinstance(built, expected):
        raise GentrainError(
            f"{group}._target_ ({cfg.get('_target_')}) built a {type(built).__name__}, not a "
            f"{expected.__name__}. {hint}"
        )
    return built
