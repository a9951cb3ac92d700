"""Choosing the device and numeric precision, with clear errors for what is not there."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager

import torch

from gentrain.errors import GentrainError


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` picks cuda > mps > cpu; an explicit device must exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise GentrainError(
            f"trainer.device={name!r} is not a device name. Use auto, cpu, cuda, cuda:N or mps."
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise GentrainError(
                f"trainer.device={name} but this machine has no usable CUDA GPU "
                f"(torch {torch.__version__}, cuda build {torch.version.cuda}). Use "
                "trainer.device=cpu, or trainer.device=auto to pick what is there."
            )
        index = device.index if device.index is not None else local_rank
        if index >= torch.cuda.device_count():
            raise GentrainError(
                f"trainer.device={name} but only {torch.cuda.device_count()} GPU(s) are visible. "
                "Pick an index below that or use trainer.device=auto."
            )
        return torch.device("cuda", index)
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise GentrainError(
            "trainer.device=mps but Apple's Metal backend is not available here. Use "
            "trainer.device=auto or cpu."
        )
    return device


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes in bfloat16 natively: a CUDA GPU that supports it, or a CPU
    with AVX-512 BF16 or AMX. Elsewhere bf16 autocast is emulated and slower than float32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """``trainer.precision`` with ``auto`` made concrete: bf16 where it is native, else 32."""
    if precision != "auto":
        return precision
    return "bf16" if native_bf16(device) else "32"


def autocast_factory(
    device: torch.device, precision: str
) -> Callable[[], AbstractContextManager[object]]:
    """A function returning the autocast context for ``precision`` (a no-op for 32)."""
    precision = resolve_precision(precision, device)
    if precision == "32":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


def configure_backends(device: torch.device, *, tf32: bool, deterministic: bool) -> None:
    """Global numeric switches: TF32 on CUDA, deterministic algorithms when asked."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        torch.backends.cudnn.benchmark = not deterministic
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
