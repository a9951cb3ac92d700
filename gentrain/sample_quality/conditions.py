"""The conditions samples are drawn under when they are scored against a reference split."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from gentrain.data.core.base import DataModule
from gentrain.data.core.batch import Batch
from gentrain.errors import GentrainError


def sample_share(total: int, rank: int, world_size: int) -> int:
    """How many of ``total`` samples ``rank`` draws (the first ranks one more when uneven)."""
    return total // world_size + (rank < total % world_size)


def reference_conditions(data: DataModule, split: str, share: int, batch_size: int,
                         device: torch.device, rank: int, world_size: int) -> Iterator[Batch]:
    """This rank's ``share`` of conditions in chunks of at most ``batch_size``: the reference
    split's batches (labels or sources, so conditional samples follow the data), cycled as
    often as needed."""
    left = share
    while left > 0:
        served = 0
        for batch in data.eval_batches(split=split, device=device, rank=rank,
                                       world_size=world_size):
            for start in range(0, batch["image"].shape[0], batch_size):
                chunk = {k: v[start:start + min(batch_size, left)] for k, v in batch.items()}
                served += chunk["image"].shape[0]
                left -= chunk["image"].shape[0]
                yield chunk
                if left <= 0:
                    return
        if served == 0:
            raise GentrainError(
                f"The {split} split of {data.spec.name} is empty on this rank; choose another "
                "eval.reference_split."
            )
