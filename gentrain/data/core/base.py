"""What the trainer needs from a dataset: its spec, a resumable training stream, eval passes."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import torch

from gentrain.data.core.batch import Batch, DataSpec
from gentrain.data.core.transforms import BatchTransform, choose_caption, compose
from gentrain.errors import GentrainError

T = TypeVar("T")


def batches_per_epoch(n: int, batch_size: int, world_size: int) -> int:
    """Full batches per rank and epoch (the last incomplete batch is dropped)."""
    count = n // world_size // batch_size
    if count == 0:
        raise GentrainError(
            f"The training split has {n} examples, fewer than one batch of {batch_size} per "
            f"rank on {world_size} rank(s). Lower data.batch_size or use more data."
        )
    return count


def next_epoch_for_new_size(epoch: int, index: int) -> tuple[int, int]:
    """Where a stream goes on after its batch size changed (a growing schedule's new
    resolution): at the start of the next epoch of the seeded order, unless it is at the start
    of one. Positions (epoch, index) then keep meaning one batch for one size, so the order
    stays a function of (seed, epoch, index, batch size) and a resume stays exact; the cost is
    the rest of one epoch, once per change."""
    return (epoch + 1, 0) if index > 0 else (epoch, index)


def pick_split(splits: Mapping[str, T], name: str, dataset: str) -> T:
    """``splits[name]``, or an error that lists the splits ``dataset`` has."""
    if name not in splits:
        raise GentrainError(
            f"Dataset '{dataset}' has no split '{name}'; it has {sorted(splits)}. Pick one of "
            "those."
        )
    return splits[name]


class ResumableLoader(Protocol):
    """An endless stream of training batches whose position can be saved and restored.

    The order depends only on (seed, epoch, rank, world size), so restoring ``state_dict()``
    replays exactly the batches an uninterrupted run would have seen.
    """

    batch_size: int
    batches_per_epoch: int

    def __iter__(self) -> Iterator[Batch]: ...

    def __next__(self) -> Batch: ...

    def state_dict(self) -> dict[str, int]: ...

    def load_state_dict(self, state: dict[str, int]) -> None: ...

    # Streams that a growing schedule drives also have ``set_batch_size(n)``.


class DataModule(ABC):
    """A dataset as the trainer sees it. Subclasses set ``spec`` in their constructor."""

    spec: DataSpec
    batch_size: int

    @abstractmethod
    def train_loader(
        self, *, device: torch.device, seed: int, rank: int = 0, world_size: int = 1
    ) -> ResumableLoader:
        """The training stream for this rank (``batch_size`` images per rank and step)."""

    @abstractmethod
    def eval_batches(
        self, *, split: str, device: torch.device, rank: int = 0, world_size: int = 1,
        limit: int | None = None,
    ) -> Iterator[Batch]:
        """One pass over ``split`` without augmentation, sharded across ranks.

        ``limit`` caps the number of examples over all ranks (None: the whole split).
        """

    def fixed_batch(self, n: int, device: torch.device) -> Batch:
        """The first ``n`` examples of the eval split: conditions and inputs for sample grids."""
        images: list[Batch] = []
        count = 0
        for batch in self.eval_batches(split=self.eval_split, device=device, limit=n):
            images.append(batch)
            count += batch["image"].shape[0]
            if count >= n:
                break
        return {k: torch.cat([b[k] for b in images])[:n] for k in images[0]}

    @property
    def eval_split(self) -> str:
        """The held-out split used for evaluation during training."""
        return "test"


@dataclass
class SplitDataModule(DataModule):
    """A :class:`DataModule` over named splits with on-device batch transforms.

    ``train_transforms`` augment training batches, ``eval_transforms`` run on eval batches
    only, ``transforms`` on every batch (e.g. binarisation, pair construction). Subclasses say
    how a split is streamed (tensors on the device, or files through DataLoader workers).
    """

    spec: DataSpec
    splits: dict[str, Any]
    batch_size: int
    transforms: list[BatchTransform] = field(default_factory=list)
    train_transforms: list[BatchTransform] = field(default_factory=list)
    eval_transforms: list[BatchTransform] = field(default_factory=list)

    def __post_init__(self) -> None:
        size = self.batch_size
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise GentrainError(
                f"data.batch_size={size!r} must be a whole number >= 1 (images per rank and "
                "optimizer micro-step)."
            )

    def split(self, name: str) -> Any:
        return pick_split(self.splits, name, self.spec.name)

    def train_transform(self) -> BatchTransform:
        return compose([*self.train_transforms, *self.transforms,
                        *self._caption_choice(at_random=True)])

    def eval_transform(self) -> BatchTransform:
        return compose([*self.eval_transforms, *self.transforms,
                        *self._caption_choice(at_random=False)])

    def _caption_choice(self, at_random: bool) -> list[BatchTransform]:
        """Captioned data carries every caption of an image; batches carry one."""
        return [choose_caption(at_random)] if self.spec.captioned else []


def eval_index_batches(
    size: int, batch_size: int, *, limit: int | None, rank: int, world_size: int
) -> list[list[int]]:
    """This rank's index batches for one eval pass over the first ``limit`` of ``size``."""
    n = size if limit is None else min(limit, size)
    indices = list(range(rank, n, world_size))
    return [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]
