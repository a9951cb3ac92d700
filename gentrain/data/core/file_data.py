"""Datasets read from image files by DataLoader workers (CelebA, pix2pix sets, folders).

Workers only decode and apply the fixed geometry (crop, resize) and return uint8 tensors; the
batch crosses to the device as uint8 (pinned, non-blocking) and random augmentation runs there
on whole batches. All randomness therefore comes from generators seeded by the batch position,
never from a worker's global RNG: batches do not depend on the number of workers, and a resumed
run replays exactly the batches of an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from gentrain.data.core.base import (
    SplitDataModule,
    batches_per_epoch,
    eval_index_batches,
    next_epoch_for_new_size,
)
from gentrain.data.core.batch import Batch
from gentrain.data.core.seeding import epoch_permutation, generator_for
from gentrain.data.core.transforms import BatchTransform
from gentrain.data.pairs.edge_cache import FileEdgeCache

Prepare = Callable[[Path], dict[str, Tensor]]


class FileDataset(Dataset[dict[str, Tensor]]):
    """One example per file: ``prepare(path)`` gives uint8 ``image`` (and maybe ``source``);
    ``labels`` are per-file class indices or attribute vectors; ``captions`` (N, K, L) the
    token ids of each file's K captions; ``edges`` replaces the source with the cached edge
    drawing of the image."""

    def __init__(
        self, files: list[Path], prepare: Prepare, labels: Tensor | None = None,
        edges: FileEdgeCache | None = None, captions: Tensor | None = None,
    ) -> None:
        self.files, self.prepare, self.labels, self.edges = files, prepare, labels, edges
        self.captions = captions

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        path = self.files[index]
        sample = self.prepare(path)
        if self.edges is not None:
            sample["source"] = self.edges.get(path, sample["image"])
        if self.labels is not None:
            sample["label"] = self.labels[index]
        if self.captions is not None:
            sample["captions"] = self.captions[index]
        return sample


def to_batch(raw: dict[str, Tensor], device: torch.device) -> Batch:
    """A collated uint8 batch → the batch format on ``device`` (pixels in [-1, 1])."""
    out: Batch = {}
    for key, value in raw.items():
        value = value.to(device, non_blocking=True)
        out[key] = value.float() / 127.5 - 1 if key in ("image", "source") else value
    return out


class EpochBatchSampler:
    """Index batches of one rank: ``epoch_permutation(n, seed, epoch)[rank::world_size]`` in
    full batches, starting at batch ``start`` of ``epoch`` (both set before each pass)."""

    def __init__(self, n: int, batch_size: int, seed: int, rank: int, world_size: int) -> None:
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.batches = batches_per_epoch(n, batch_size, world_size)
        self.epoch, self.start = 0, 0

    def __iter__(self) -> Iterator[list[int]]:
        order = epoch_permutation(self.n, self.seed, self.epoch)[self.rank :: self.world_size]
        for b in range(self.start, self.batches):
            yield order[b * self.batch_size : (b + 1) * self.batch_size].tolist()

    def __len__(self) -> int:
        return self.batches - self.start


class FileBatchLoader:
    """Endless, resumable training batches from a :class:`FileDataset` via DataLoader workers.

    Same contract as ``DeviceBatchLoader``: state is (epoch, index of the next batch); workers
    persist across epochs; restoring a state drops prefetched batches and restarts there.
    """

    def __init__(
        self, dataset: FileDataset, *, batch_size: int, seed: int, device: torch.device,
        transform: BatchTransform, num_workers: int, rank: int = 0, world_size: int = 1,
    ) -> None:
        self.batch_size, self.seed, self.rank = batch_size, seed, rank
        self.device, self.transform = device, transform
        self.sampler = EpochBatchSampler(len(dataset), batch_size, seed, rank, world_size)
        self.batches_per_epoch = self.sampler.batches
        self.loader = DataLoader(
            dataset, batch_sampler=self.sampler, num_workers=num_workers,
            pin_memory=device.type == "cuda", persistent_workers=num_workers > 0,
        )
        self.epoch, self.index = 0, 0
        self._batches: Iterator[dict[str, Tensor]] | None = None

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        if self.index >= self.sampler.batches:
            self.epoch, self.index, self._batches = self.epoch + 1, 0, None
        if self._batches is None:
            self.sampler.epoch, self.sampler.start = self.epoch, self.index
            self._batches = iter(self.loader)
        raw = next(self._batches)
        generator = generator_for(self.device, self.seed, self.epoch, self.index, self.rank)
        self.index += 1
        return self.transform(to_batch(raw, self.device), generator)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
        self._batches = None

    def set_batch_size(self, batch_size: int) -> None:
        """Draw ``batch_size`` images per batch from now on (a growing schedule's new
        resolution); see :func:`gentrain.data.core.base.next_epoch_for_new_size`."""
        if batch_size != self.batch_size:
            self.batch_size = self.sampler.batch_size = batch_size
            self.sampler.batches = batches_per_epoch(self.sampler.n, batch_size,
                                                     self.sampler.world_size)
            self.batches_per_epoch = self.sampler.batches
            self.epoch, self.index = next_epoch_for_new_size(self.epoch, self.index)
            self._batches = None


@dataclass
class FileDataModule(SplitDataModule):
    """Splits of :class:`FileDataset` read by DataLoader workers."""

    num_workers: int = 2
    held_out: str = "test"  # the split evaluated during training

    @property
    def eval_split(self) -> str:
        return self.held_out

    def train_loader(
        self, *, device: torch.device, seed: int, rank: int = 0, world_size: int = 1
    ) -> FileBatchLoader:
        return FileBatchLoader(
            self.split("train"), batch_size=self.batch_size, seed=seed, device=device,
            transform=self.train_transform(),
            num_workers=self.num_workers, rank=rank, world_size=world_size,
        )

    def eval_batches(
        self, *, split: str, device: torch.device, rank: int = 0, world_size: int = 1,
        limit: int | None = None,
    ) -> Iterator[Batch]:
        data = self.split(split)
        batches = eval_index_batches(
            len(data), self.batch_size, limit=limit, rank=rank, world_size=world_size
        )
        loader = DataLoader(
            data, batch_sampler=batches, num_workers=min(self.num_workers, len(batches)),
            pin_memory=device.type == "cuda",
        )
        transform = self.eval_transform()
        for i, raw in enumerate(loader):
            # Eval randomness (e.g. inpainting holes) is fixed so metrics are comparable.
            generator = generator_for(device, "eval", split, i, rank)
            yield transform(to_batch(raw, device), generator)
