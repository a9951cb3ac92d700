"""The trainer's config schema: a typo'd or unknown key is an error, never silently ignored."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from gentrain.errors import GentrainError

PRECISIONS = ("32", "bf16", "16", "auto")


@dataclass(frozen=True)
class TrainerConfig:
    """Mirrors configs/trainer/default.yaml; see the comments there."""

    device: str = "auto"
    precision: str = "32"
    max_steps: int | None = 2000
    max_epochs: int | None = None
    grad_accum: int = 1
    clip_grad: float | dict | None = None
    deterministic: bool = False
    compile: bool = False
    channels_last: bool = False
    tf32: bool = True
    log_every: int = 50
    sample_every: int = 500
    ckpt_every: int = 500
    eval_every: int | None = None
    eval_limit: int | None = 1000
    eval_sample_quality: bool = False
    eval_num_samples: int = 5000
    monitor: str | None = None
    monitor_mode: str = "auto"
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
                "Use 32 (full precision), bf16 (autocast to bfloat16), 16 (fp16 with a "
                "GradScaler) or auto (bf16 where the hardware runs it natively, else 32)."
            )
        for key in ("grad_accum", "log_every", "sample_every", "ckpt_every",
                    "num_samples", "max_nonfinite", "eval_num_samples"):
            if getattr(self, key) < 1:
                raise GentrainError(f"trainer.{key} must be at least 1, not {getattr(self, key)}.")
        for key in ("max_steps", "eval_every", "eval_limit"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise GentrainError(
                    f"trainer.{key} must be at least 1 or null, not {getattr(self, key)}."
                )
        clips = self.clip_grad if isinstance(self.clip_grad, dict) else {"": self.clip_grad}
        for phase, clip in clips.items():
            key = f"trainer.clip_grad.{phase}" if phase else "trainer.clip_grad"
            if clip is not None and not (_accepts((float,), clip) and clip > 0):
                raise GentrainError(
                    f"{key} must be a positive max gradient norm (e.g. 1.0) or null for no "
                    f"clipping, not {clip!r}. Per phase: trainer.clip_grad={{discriminator: "
                    "1.0}."
                )
        if self.max_epochs is not None and self.max_epochs < 1:
            raise GentrainError(
                f"trainer.max_epochs must be at least 1 or null (null: trainer.max_steps "
                f"decides), not {self.max_epochs}."
            )
        if self.max_steps is None and self.max_epochs is None:
            raise GentrainError(
                "trainer.max_steps and trainer.max_epochs are both null; set one of them to say "
                "how long to train."
            )
        if self.keep_last < 0:
            raise GentrainError(f"trainer.keep_last must be 0 or more, not {self.keep_last}.")

    @classmethod
    def clip_for(self, phase: str) -> float | None:
        """The max gradient norm of ``phase`` (one value for all, or per phase)."""
        if isinstance(self.clip_grad, dict):
            return self.clip_grad.get(phase)
        return self.clip_grad

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
