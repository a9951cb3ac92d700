"""Deterministic seeds derived from positions, so data order and augmentation are replayable."""

from __future__ import annotations

import hashlib

import torch


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed that depends only on ``parts`` (e.g. seed, epoch, batch index, rank)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def generator_for(device: torch.device, *parts: int | str) -> torch.Generator:
    """A generator on ``device`` seeded from ``parts``."""
    return torch.Generator(device=device).manual_seed(derive_seed(*parts))


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The order of ``n`` examples in ``epoch``; computed on the CPU so every device agrees."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(derive_seed(seed, epoch)))
