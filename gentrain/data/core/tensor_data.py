"""Small datasets held as one uint8 tensor on the training device.

MNIST, CIFAR-10 and shapes fit in memory many times over; keeping them on the device as uint8
and augmenting whole batches there removes per-sample Python from the training loop.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from gentrain.data.core.base import (
    SplitDataModule,
    batches_per_epoch,
    eval_index_batches,
    next_epoch_for_new_size,
)
from gentrain.data.core.batch import Batch
from gentrain.data.core.seeding import epoch_permutation, generator_for
from gentrain.data.core.transforms import BatchTransform


@dataclass
class TensorSplit:
    """One split as tensors: ``images`` uint8 (N, C, H, W), optional labels and label maps."""

    images: Tensor
    labels: Tensor | None = None
    label_maps: Tensor | None = None
    sources: Tensor | None = None  # uint8 (N, Cs, H, W) when pairs are precomputed
    captions: Tensor | None = None  # long (N, K, L): K captions' token ids per image

    def __len__(self) -> int:
        return self.images.shape[0]

    def to(self, device: torch.device) -> TensorSplit:
        return TensorSplit(*(t.to(device) if t is not None else None for t in self.fields()))

    def fields(self) -> tuple[Tensor | None, ...]:
        return (self.images, self.labels, self.label_maps, self.sources, self.captions)

    def batch(self, index: Tensor) -> Batch:
        """Examples at ``index`` in the batch format, pixel values scaled to [-1, 1]."""
        out: Batch = {"image": self.images[index].float() / 127.5 - 1}
        if self.labels is not None:
            out["label"] = self.labels[index]
        if self.label_maps is not None:
            out["label_map"] = self.label_maps[index].long()
        if self.sources is not None:
            out["source"] = self.sources[index].float() / 127.5 - 1
        if self.captions is not None:
            out["captions"] = self.captions[index]
        return out


class DeviceBatchLoader:
    """Endless, resumable batches from a :class:`TensorSplit` living on ``device``.

    Each epoch is a seeded permutation, split across ranks as ``perm[rank::world_size]``; the
    last incomplete batch is dropped. The state is just (epoch, index).
    """

    def __init__(
        self, split: TensorSplit, *, batch_size: int, seed: int, device: torch.device,
        transform: BatchTransform, rank: int = 0, world_size: int = 1,
    ) -> None:
        self.split = split.to(device)
        self.batch_size = batch_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.device = device
        self.transform = transform
        self.batches_per_epoch = batches_per_epoch(len(split), batch_size, world_size)
        self.epoch, self.index = 0, 0
        self._order: tuple[int, Tensor] | None = None

    def _epoch_order(self) -> Tensor:
        if self._order is None or self._order[0] != self.epoch:
            perm = epoch_permutation(len(self.split), self.seed, self.epoch)
            self._order = (self.epoch, perm[self.rank :: self.world_size].to(self.device))
        return self._order[1]

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        if self.index >= self.batches_per_epoch:
            self.epoch, self.index = self.epoch + 1, 0
        start = self.index * self.batch_size
        index = self._epoch_order()[start : start + self.batch_size]
        generator = generator_for(self.device, self.seed, self.epoch, self.index, self.rank)
        self.index += 1
        return self.transform(self.split.batch(index), generator)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.index = int(state["epoch"]), int(state["index"])

    def set_batch_size(self, batch_size: int) -> None:
        """Draw ``batch_size`` images per batch from now on (a growing schedule's new
        resolution); see :func:`gentrain.data.core.base.next_epoch_for_new_size`."""
        if batch_size != self.batch_size:
            self.batch_size = batch_size
            self.batches_per_epoch = batches_per_epoch(len(self.split), batch_size,
                                                       self.world_size)
            self.epoch, self.index = next_epoch_for_new_size(self.epoch, self.index)


class TensorDataModule(SplitDataModule):
    """Splits of :class:`TensorSplit` held on the training device."""

    def train_loader(
        self, *, device: torch.device, seed: int, rank: int = 0, world_size: int = 1
    ) -> DeviceBatchLoader:
        return DeviceBatchLoader(
            self.split("train"), batch_size=self.batch_size, seed=seed, device=device,
            transform=self.train_transform(),
            rank=rank, world_size=world_size,
        )

    def eval_batches(
        self, *, split: str, device: torch.device, rank: int = 0, world_size: int = 1,
        limit: int | None = None,
    ) -> Iterator[Batch]:
        data = self.split(split)
        batches = eval_index_batches(
            len(data), self.batch_size, limit=limit, rank=rank, world_size=world_size
        )
        transform = self.eval_transform()
        for i, index in enumerate(batches):
            # Eval randomness (e.g. dynamic binarisation) is fixed so metrics are comparable.
            generator = generator_for(device, "eval", split, i, rank)
            batch = {k: v.to(device) for k, v in data.batch(torch.tensor(index)).items()}
            yield transform(batch, generator)
