"""Unpaired image-to-image data (CycleGAN): two domains streamed independently.

A batch carries ``source`` = images of domain A and ``image`` = images of domain B with no
correspondence between them (``DataSpec.unpaired``). Each domain is an ordinary data module
(a folder, a CycleGAN archive's trainA/trainB, one class of shapes) with its own shuffled,
resumable stream and its own augmentation, so B is shuffled on its own as in the reference
code (``serial_batches=False``). An epoch is max(len A, len B) examples, as there; the shorter
domain simply starts its next epoch early.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from gentrain.data.core.base import DataModule, ResumableLoader, SplitDataModule
from gentrain.data.core.batch import Batch, DataSpec
from gentrain.data.core.seeding import derive_seed
from gentrain.data.core.tensor_data import TensorDataModule, TensorSplit
from gentrain.errors import require


class UnpairedLoader:
    """Zips the training streams of A and B; its state is both streams' states."""

    def __init__(self, a: ResumableLoader, b: ResumableLoader) -> None:
        self.a, self.b = a, b
        self.batch_size = a.batch_size
        self.batches_per_epoch = max(a.batches_per_epoch, b.batches_per_epoch)

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        return {"source": next(self.a)["image"], "image": next(self.b)["image"]}

    def state_dict(self) -> dict[str, dict[str, int]]:  # type: ignore[override]
        return {"a": self.a.state_dict(), "b": self.b.state_dict()}

    def load_state_dict(self, state: dict[str, dict[str, int]]) -> None:  # type: ignore[override]
        self.a.load_state_dict(state["a"])
        self.b.load_state_dict(state["b"])


def _cycled(make: Callable[[], Iterator[Batch]], count: int, size: int) -> Iterator[Tensor]:
    """``count`` images in batches of ``size`` from passes of ``make()``, restarting it as
    often as needed (the shorter test split is repeated to the length of the longer)."""
    held: Tensor | None = None
    stream, fresh, emitted = make(), True, 0
    while emitted < count:
        want = min(size, count - emitted)
        while held is None or held.shape[0] < want:
            batch = next(stream, None)
            if batch is None:
                require(not fresh, "An unpaired domain has no images in this split on this "
                        "rank; use more images or fewer ranks.")
                stream, fresh = make(), True
                continue
            fresh = False
            held = batch["image"] if held is None else torch.cat([held, batch["image"]])
        yield held[:want]
        held, emitted = held[want:], emitted + want


@dataclass
class UnpairedDataModule(DataModule):
    """Domain A (→ ``source``) and domain B (→ ``image``), each a split data module."""

    spec: DataSpec
    domain_a: SplitDataModule
    domain_b: SplitDataModule
    batch_size: int

    def __post_init__(self) -> None:
        require(self.domain_a.spec.height == self.domain_b.spec.height
                and self.domain_a.spec.width == self.domain_b.spec.width,
                "The two unpaired domains must have the same image size.")

    @property
    def eval_split(self) -> str:
        return self.domain_a.eval_split

    def train_loader(
        self, *, device: torch.device, seed: int, rank: int = 0, world_size: int = 1
    ) -> UnpairedLoader:
        # Independent seeds: B's order and crops never follow A's.
        streams = [domain.train_loader(device=device, seed=derive_seed(seed, name), rank=rank,
                                       world_size=world_size)
                   for name, domain in (("domain_a", self.domain_a), ("domain_b", self.domain_b))]
        return UnpairedLoader(*streams)

    def eval_batches(
        self, *, split: str, device: torch.device, rank: int = 0, world_size: int = 1,
        limit: int | None = None,
    ) -> Iterator[Batch]:
        """max(len A, len B) examples (capped by ``limit``): the i-th test image of A beside
        the i-th of B, the shorter split repeated; sharded over ranks by each domain."""
        total = max(len(self.domain_a.split(split)), len(self.domain_b.split(split)))
        count = len(range(rank, total if limit is None else min(limit, total), world_size))

        def stream(domain: SplitDataModule) -> Iterator[Tensor]:
            return _cycled(lambda: domain.eval_batches(split=split, device=device, rank=rank,
                                                       world_size=world_size),
                           count, self.batch_size)

        for a, b in zip(stream(self.domain_a), stream(self.domain_b), strict=True):
            yield {"source": a, "image": b}


def unpaired_spec(name: str, a: DataSpec, b: DataSpec) -> DataSpec:
    return DataSpec(name=name, channels=b.channels, height=b.height, width=b.width,
                    values=b.values, source_channels=a.channels, unpaired=True)


def parse_domains(value: str, names: tuple[str, ...]) -> tuple[int, int]:
    """``"circle:square"`` → the class indices of domain A and domain B."""
    parts = str(value).split(":")
    require(len(parts) == 2 and all(p in names for p in parts) and parts[0] != parts[1],
            f"data.unpaired={value!r} must name two different classes as A:B, e.g. "
            f"{names[0]}:{names[1]}; the classes are {', '.join(names)}.")
    return names.index(parts[0]), names.index(parts[1])


def _class_split(split: TensorSplit, label: int) -> TensorSplit:
    keep = split.labels == label  # type: ignore[operator]
    return TensorSplit(*(t[keep] if t is not None else None for t in split.fields()))


def unpaired_classes(module: TensorDataModule, unpaired: str) -> UnpairedDataModule:
    """Two classes of a labelled tensor dataset as two domains, e.g. circles ↔ squares."""
    spec = module.spec
    require(spec.label_kind == "class" and bool(spec.class_names) and not spec.paired,
            f"data.unpaired picks two classes of {spec.name!r} as domains; it needs class "
            "labels and no data.pair (unpaired data has no aligned pairs).")
    domains = []
    for label in parse_domains(unpaired, spec.class_names):
        splits = {name: _class_split(split, label) for name, split in module.splits.items()}
        for name, split in splits.items():
            require(len(split) > 0, f"data.unpaired: class {spec.class_names[label]!r} has "
                    f"no images in the {name} split; use more images (data.num_{name}).")
        domains.append(dataclasses.replace(module, splits=splits))
    a, b = domains
    return UnpairedDataModule(spec=unpaired_spec(spec.name, a.spec, b.spec), domain_a=a,
                              domain_b=b, batch_size=module.batch_size)
