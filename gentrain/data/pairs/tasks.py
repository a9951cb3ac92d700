"""Pair tasks: turn any dataset into image-to-image pairs by degrading the target.

``data.pair`` names the task (``edges``, ``grayscale``, ``lowres``, ``mask``, ``labels``) or
is a mapping with its settings, e.g. ``data.pair={kind:lowres,factor:8}``. The input side goes
to ``batch["source"]``. Cheap tasks are batch transforms on the device, run after augmentation
so both sides stay aligned; edges are computed once per image and cached on disk.
"""

from __future__ import annotations

import colorsys
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from gentrain.data.core.batch import Batch, DataSpec
from gentrain.data.core.file_data import FileDataModule, FileDataset
from gentrain.data.core.tensor_data import TensorDataModule
from gentrain.data.core.transforms import BatchTransform
from gentrain.data.pairs.edge_cache import FileEdgeCache, settings_key, split_edges
from gentrain.data.pairs.edges import EdgeSettings, to_gray
from gentrain.errors import GentrainError, require

PAIR_KINDS = ("edges", "grayscale", "lowres", "mask", "labels")


@dataclass(frozen=True)
class PairTask:
    kind: str
    factor: int = 4  # lowres: downscale factor (the source is upscaled back, bicubic)
    hole: float = 0.5  # mask: side of the square hole as a fraction of the image side
    sigma: float = 1.0  # edges: see EdgeSettings
    low: float = 0.1
    high: float = 0.2
    thin: bool = True

    @property
    def edge_settings(self) -> EdgeSettings:
        return EdgeSettings(sigma=self.sigma, low=self.low, high=self.high, thin=self.thin)


def parse_pair(value: str | dict[str, Any] | None) -> PairTask | None:
    """``data.pair`` as a :class:`PairTask` (None: no pair task)."""
    if value is None:
        return None
    settings = {"kind": value} if isinstance(value, str) else dict(value)
    fields = [f.name for f in dataclasses.fields(PairTask)]
    unknown = sorted(set(settings) - set(fields))
    require(not unknown, f"Unknown data.pair setting(s) {unknown}; the settings are {fields}.")
    require(
        settings.get("kind") in PAIR_KINDS,
        f"data.pair={settings.get('kind')!r} is not a pair task; choose one of "
        f"{', '.join(PAIR_KINDS)} (or null for unpaired data).",
    )
    return PairTask(**settings)


@dataclass(frozen=True)
class PairPlan:
    """What a data module must do for a pair task: the new spec, a batch transform to run
    after augmentation, and edge settings when sources come from the edge cache."""

    spec: DataSpec
    transform: BatchTransform | None = None
    edges: EdgeSettings | None = None


def plan_pair(task: PairTask | None, spec: DataSpec) -> PairPlan:
    """Check ``task`` against the data and say how to build its sources."""
    if task is None:
        return PairPlan(spec)
    kind, channels = task.kind, spec.channels
    if kind == "labels":
        if spec.paired:  # e.g. facades: the label side is the dataset's own source
            return PairPlan(spec)
        require(
            spec.has_label_map,
            f"data.pair=labels needs per-pixel label maps, and '{spec.name}' has none. Use "
            "data=shapes (exact label maps) or a paired dataset such as data=facades.",
        )
        return PairPlan(_with_source(spec, 3), labels_to_colours(spec.num_classes))
    if kind == "edges":
        return PairPlan(_with_source(spec, 1), edges=task.edge_settings)
    if kind == "grayscale":
        require(channels == 3, f"data.pair=grayscale needs colour images; '{spec.name}' has "
                f"{channels} channel(s). Pick another pair task or a colour dataset.")
        return PairPlan(_with_source(spec, 1), grayscale_source)
    if kind == "lowres":
        require(task.factor >= 2 and spec.height % task.factor == 0
                and spec.width % task.factor == 0,
                f"data.pair factor {task.factor} must be at least 2 and divide the image size "
                f"{spec.height}x{spec.width} of '{spec.name}'.")
        return PairPlan(_with_source(spec, channels), lowres_source(task.factor))
    require(0 < task.hole < 1, f"data.pair hole must be between 0 and 1, not {task.hole}.")
    return PairPlan(_with_source(spec, channels + 1), mask_source(task.hole))


def _with_source(spec: DataSpec, source_channels: int) -> DataSpec:
    return dataclasses.replace(spec, source_channels=source_channels)


def grayscale_source(batch: Batch, generator: torch.Generator) -> Batch:
    """Colourisation: the input is the luma of the target."""
    return {**batch, "source": to_gray(batch["image"])}


def lowres_source(factor: int) -> BatchTransform:
    """Super-resolution: the input is the target box-downscaled by ``factor`` and upscaled
    back (bicubic) so both sides share one size."""

    def apply(batch: Batch, generator: torch.Generator) -> Batch:
        small = F.avg_pool2d(batch["image"], factor)
        up = F.interpolate(small, scale_factor=factor, mode="bicubic", align_corners=False)
        return {**batch, "source": up.clamp(-1, 1)}

    return apply


def mask_source(hole: float) -> BatchTransform:
    """Inpainting: a random square hole per image is set to grey (0); the source carries the
    masked image plus a mask channel (1 in the hole, -1 elsewhere)."""

    def apply(batch: Batch, generator: torch.Generator) -> Batch:
        image = batch["image"]
        b, _, h, w = image.shape
        hh, hw = max(1, round(hole * h)), max(1, round(hole * w))
        top = torch.randint(h - hh + 1, (b, 1, 1), generator=generator, device=image.device)
        left = torch.randint(w - hw + 1, (b, 1, 1), generator=generator, device=image.device)
        rows = torch.arange(h, device=image.device).view(1, h, 1)
        cols = torch.arange(w, device=image.device).view(1, 1, w)
        inside = (rows >= top) & (rows < top + hh) & (cols >= left) & (cols < left + hw)
        mask = inside.unsqueeze(1).to(image.dtype)
        return {**batch, "source": torch.cat([image * (1 - mask), mask * 2 - 1], dim=1)}

    return apply


def label_palette(num_classes: int) -> torch.Tensor:
    """(num_classes + 1, 3) colours in [-1, 1]: black background, evenly spaced hues."""
    colours = [(0.0, 0.0, 0.0)] + [
        colorsys.hsv_to_rgb(i / num_classes, 0.85, 1.0) for i in range(num_classes)
    ]
    return torch.tensor(colours) * 2 - 1


def labels_to_colours(num_classes: int) -> BatchTransform:
    """Labels→image: the input is the label map colour-coded with :func:`label_palette`
    (3 channels, like the colour label images of pix2pix's facades)."""
    palette = label_palette(num_classes)

    def apply(batch: Batch, generator: torch.Generator) -> Batch:
        if "label_map" not in batch:
            raise GentrainError("data.pair=labels needs label maps in every batch.")
        colours = palette.to(batch["image"].device, batch["image"].dtype)
        return {**batch, "source": colours[batch["label_map"]].permute(0, 3, 1, 2)}

    return apply


def _with_transform(transforms: list[BatchTransform], plan: PairPlan) -> list[BatchTransform]:
    return [*transforms, plan.transform] if plan.transform else list(transforms)


def pair_tensor_module(
    task: PairTask | None, module: TensorDataModule, cache_dir: Path
) -> TensorDataModule:
    """``module`` with ``task``'s sources: edges precomputed per split (cached under
    ``cache_dir``), other tasks as a batch transform."""
    plan = plan_pair(task, module.spec)
    splits = module.splits
    if plan.edges is not None:
        splits = {
            name: dataclasses.replace(split, sources=split_edges(
                split.images, plan.edges, cache_dir, f"{module.spec.name}-{name}"))
            for name, split in splits.items()
        }
    return dataclasses.replace(
        module, spec=plan.spec, splits=splits, transforms=_with_transform(module.transforms, plan)
    )


def pair_file_module(
    task: PairTask | None, module: FileDataModule, cache_dir: Path
) -> FileDataModule:
    """``module`` with ``task``'s sources: edges drawn by the workers and cached per image
    under ``cache_dir`` (keyed by settings and preprocessing), other tasks as a transform."""
    plan = plan_pair(task, module.spec)
    splits = module.splits
    if plan.edges is not None:
        splits = {}
        for name, data in module.splits.items():
            key = settings_key(plan.edges, module.spec.name, repr(data.prepare))
            edges = FileEdgeCache(cache_dir / f"edges-{module.spec.name}-{key}", plan.edges)
            splits[name] = FileDataset(data.files, data.prepare, data.labels, edges,
                                        data.captions)
    return dataclasses.replace(
        module, spec=plan.spec, splits=splits, transforms=_with_transform(module.transforms, plan)
    )
