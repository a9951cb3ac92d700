"""The trainer's config schema: a typo'd or unknown key is an error, never silently ignored."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from gentrain.errors import GentrainError

PRECISIONS = ("32", "bf16", "16")


@dataclass(frozen=True)
class TrainerConfig:
    """Mirrors configs/trainer/default.yaml; see the comments there."""

    device: str = "auto"
    precision: str = "32"
    max_steps: int = 2000
    grad_accum: int = 1
    clip_grad: float | None = None
    deterministic: bool = False
    compile: bool = False
    channels_last: bool = False
    tf32: bool = True
    log_every: int = 50
    sample_every: int = 500
    ckpt_every: int = 500
    eval_every: int | None = None
    eval_limit: int | None = 1000
    keep_last: int = 3
    num_samples: int = 64
    max_nonfinite: int = 10
    progress: bool = True

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            allowed = typing.get_args(hints[f.name]) or (hints[f.name],)
            if not _accepts(allowed, value):
                names = " or ".join("null" if a is type(None) else a.__name__ for a in allowed)
                raise GentrainError(
                    f"trainer.{f.name}={value!r} has the wrong type; it takes {names}."
                )
        if self.precision not in PRECISIONS:
            raise GentrainError(
                f"trainer.precision={self.precision!r} is not one of {', '.join(PRECISIONS)}. "
                "Use 32 (full precision), bf16 (autocast to bfloat16) or 16 (fp16 with a "
                "GradScaler)."
            )
        for key in ("max_steps", "grad_accum", "log_every", "sample_every", "ckpt_every",
                    "num_samples", "max_nonfinite"):
            if getattr(self, key) < 1:
                raise GentrainError(f"trainer.{key} must be at least 1, not {getattr(self, key)}.")
        for key in ("eval_every", "eval_limit"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise GentrainError(
                    f"trainer.{key} must be at least 1 or null, not {getattr(self, key)}."
                )
        if self.clip_grad is not None and not self.clip_grad > 0:
            raise GentrainError(
                f"trainer.clip_grad must be a positive max gradient norm (e.g. 1.0) or null for "
                f"no clipping, not {self.clip_grad}."
            )
        if self.keep_last < 0:
            raise GentrainError(f"trainer.keep_last must be 0 or more, not {self.keep_last}.")

    @classmethod
    def from_cfg(cls, cfg: DictConfig) -> TrainerConfig:
        values: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise GentrainError(
                f"Unknown trainer key(s): {', '.join('trainer.' + k for k in unknown)}. "
                f"The trainer takes {', '.join(sorted(known))}; check the spelling."
            )
        values["precision"] = str(values.get("precision", "32"))
        return cls(**values)


def _accepts(types: tuple[type, ...], value: object) -> bool:
    """Whether ``value`` fits one of ``types`` (an int fits a float; a bool fits only bool)."""
    if isinstance(value, bool):
        return bool in types
    if isinstance(value, int) and float in types:
        return True
    return isinstance(value, types)
