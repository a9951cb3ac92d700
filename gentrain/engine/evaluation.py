"""Held-out metrics of a family, averaged over a split and over ranks."""

from __future__ import annotations

import torch
from torch import Tensor
from tqdm.auto import tqdm

from gentrain.data.core.base import DataModule
from gentrain.engine.distributed import all_reduce_sum
from gentrain.models.base import GenerativeModel


@torch.no_grad()
def evaluate_model(
    model: GenerativeModel, data: DataModule, *, split: str, device: torch.device,
    limit: int | None = None, rank: int = 0, world_size: int = 1, progress: bool = False,
) -> dict[str, float]:
    """Mean of ``model.evaluate`` per example, keyed ``eval/<metric>`` (empty if none)."""
    was_training = model.training
    model.eval()
    sums: dict[str, Tensor] = {}
    count = torch.zeros((), dtype=torch.float64, device=device)
    batches = data.eval_batches(
        split=split, device=device, rank=rank, world_size=world_size, limit=limit
    )
    for batch in tqdm(batches, desc=f"eval {split}", unit="batch", leave=False,
                      disable=not progress):
        for key, value in model.evaluate(batch).items():
            total = value.double().sum()
            sums[key] = sums[key] + total if key in sums else total
        count += batch["image"].shape[0]
    model.train(was_training)
    if not sums:
        return {}
    names = sorted(sums)
    totals = all_reduce_sum(torch.stack([*(sums[n] for n in names), count]))
    means = (totals[:-1] / totals[-1]).tolist()
    return {f"eval/{name}": mean for name, mean in zip(names, means, strict=True)}
