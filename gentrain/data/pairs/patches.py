"""Key patches: ``data.patches=...`` gives every example K boxes of its image and their crops.

Puzzle-GAN (Lee et al. 2018) completes a whole image from K = 3 of its local patches. The boxes
(x, y, w, h, in pixels of the dataset's images) come from one of three places:

- ``file``: a box file, one (x, y, w, h) per patch per image, as the authors ship for CelebA
  (``celebA_allbbs.mat``: an (N, 3, 4) array ``allbbs`` in 128-px coordinates of the cropped
  faces, rows in the sorted order of the image files). A ``.npy`` array of the same shape and a
  text file (one line per image: an optional file name, then K*4 numbers) work too.
  ``box_resolution`` is the side the file's coordinates refer to; they are scaled to the data's
  resolution as the authors do (rounded down).
- ``labels``: the exact label maps where a dataset has them (shapes): each box is centred on a
  pixel of the object, so every patch shows part of it.
- ``drawn``: a seeded rule, boxes of ``min_size``-``max_size`` of the side placed uniformly.

``labels`` and ``drawn`` draw each example's boxes from a generator seeded by (``seed``, split,
example index) only, so an example has the same boxes in every epoch and a resumed run replays
them, exactly as a box file would. The boxes travel with the example as ``boxes`` (B, K, 4), a
flip mirrors them with the image (transforms.random_hflip), and a batch transform then adds

- ``patches`` (B, K, C, H, W): each box's crop resized (bilinear) to the full resolution;
- ``mask`` (B, 1, H, W): the union of the boxes, the ground truth of the predicted mask;
- ``shuffled`` (B, C, H, W): another real image of the batch (a random cyclic derangement drawn
  from the batch's seeded generator), for the box-swap negatives of the discriminator. The
  authors draw it from outside the batch; from inside it costs no extra reading, and any other
  real image serves the same purpose.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from gentrain.data.core.base import DataModule, SplitDataModule
from gentrain.data.core.batch import Batch
from gentrain.data.core.file_data import FileDataModule, FileDataset
from gentrain.data.core.seeding import derive_seed
from gentrain.data.core.tensor_data import TensorDataModule, TensorSplit
from gentrain.data.storage.roots import resolve_root
from gentrain.errors import GentrainError, require

SOURCES = ("auto", "file", "labels", "drawn")


@dataclass(frozen=True)
class PatchTask:
    """``data.patches``: where the boxes come from and how many per image."""

    source: str = "auto"  # auto: file when it is placed, labels where the data has them, else drawn
    count: int = 3  # K, the authors' 3
    min_size: float = 0.25  # drawn/labels box sides, as a fraction of the image side (the
    max_size: float = 0.40  # authors' boxes on 128-px CelebA are 32-51 px)
    seed: int = 0
    file: str | None = None  # the box file (relative paths: under the data root)
    box_resolution: int | None = None  # side the file's coordinates refer to (null: the data's)


def parse_patches(value: str | dict[str, Any] | None) -> PatchTask | None:
    """``data.patches`` as a :class:`PatchTask` (None: no patches)."""
    if value is None:
        return None
    settings = {"source": value} if isinstance(value, str) else dict(value)
    fields = [f.name for f in dataclasses.fields(PatchTask)]
    unknown = sorted(set(settings) - set(fields))
    require(not unknown, f"Unknown data.patches setting(s) {unknown}; the settings are {fields}.")
    task = PatchTask(**settings)
    require(task.source in SOURCES, f"data.patches source {task.source!r} is not one of "
            f"{', '.join(SOURCES)}.")
    require(isinstance(task.count, int) and task.count >= 1,
            f"data.patches count must be a whole number >= 1, not {task.count!r}.")
    require(0 < task.min_size <= task.max_size <= 1,
            f"data.patches sizes must satisfy 0 < min_size <= max_size <= 1 (fractions of the "
            f"side), not {task.min_size} and {task.max_size}.")
    return task


# -- boxes ------------------------------------------------------------------------------------


def example_draws(task: PatchTask, n: int, split: str) -> Tensor:
    """(n, K, 5) uniforms per example: its box sizes (2), position (2) and object pixel (1),
    each example's from a generator seeded by (seed, split, index) only."""
    draws = torch.empty(n, task.count, 5)
    for i in range(n):
        g = torch.Generator().manual_seed(derive_seed(task.seed, "patches", split, i))
        draws[i] = torch.rand(task.count, 5, generator=g)
    return draws


def _sizes(task: PatchTask, side: int, draws: Tensor) -> Tensor:
    """(n, K, 2) box sides (w, h) in pixels, each uniform in [min_size, max_size] of ``side``."""
    fraction = task.min_size + (task.max_size - task.min_size) * draws[..., :2]
    return (fraction * side).round().clamp(1, side).long()


def drawn_boxes(task: PatchTask, n: int, side: int, split: str) -> Tensor:
    """(n, K, 4) boxes placed uniformly inside the image."""
    draws = example_draws(task, n, split)
    wh = _sizes(task, side, draws)
    xy = (draws[..., 2:4] * (side - wh + 1)).long()
    return torch.cat([xy, wh], dim=-1)


def label_boxes(task: PatchTask, label_maps: Tensor, split: str) -> Tensor:
    """(n, K, 4) boxes centred on a uniformly chosen pixel of each example's object
    (label > 0), kept inside the image; an example without object pixels gets drawn boxes."""
    n, side = label_maps.shape[0], label_maps.shape[-1]
    draws = example_draws(task, n, split)
    wh = _sizes(task, side, draws)
    inside = (label_maps.reshape(n, -1) > 0).long()
    count = inside.sum(dim=1, keepdim=True)
    # The r-th object pixel (r uniform below the count): where the running count passes r.
    rank = (draws[..., 4] * count).long().clamp(max=(count - 1).clamp(min=0))
    pixel = torch.searchsorted(inside.cumsum(dim=1), rank + 1).clamp(max=side * side - 1)
    centre = torch.stack([pixel % side, pixel // side], dim=-1)
    on_object = torch.minimum((centre - wh // 2).clamp(min=0), side - wh)
    anywhere = (draws[..., 2:4] * (side - wh + 1)).long()
    xy = torch.where(count[:, :, None] > 0, on_object, anywhere)
    return torch.cat([xy, wh], dim=-1)


def read_box_file(path: Path, count: int) -> tuple[list[str] | None, np.ndarray]:
    """The file's rows as (names or None, an (N, count, 4) array of (x, y, w, h))."""
    require(path.is_file(), f"data.patches box file {path} does not exist. Place the box file "
            "there (e.g. the authors' celebA_allbbs.mat from hellbell/KeyPatchGan), or use "
            "data.patches=drawn.")
    suffix = path.suffix.lower()
    if suffix in (".mat", ".npy"):
        if suffix == ".mat":
            try:
                import scipy.io
            except ImportError:  # pragma: no cover - scipy ships with torchvision's extras
                raise GentrainError(f"Reading {path} (a MATLAB file) needs scipy; install it "
                                    "or convert the boxes to .npy or text.") from None
            content = scipy.io.loadmat(str(path))
            arrays = [k for k, v in content.items() if isinstance(v, np.ndarray)
                      and not k.startswith("__")]
            require(bool(arrays), f"The box file {path} holds no array; it needs one (N, "
                    f"{count}, 4) array of (x, y, w, h) boxes, as the authors' 'allbbs'.")
            array = content["allbbs" if "allbbs" in arrays else arrays[0]]
        else:
            array = np.load(path)
        require(array.ndim == 3 and array.shape[1:] == (count, 4),
                f"The box file {path} holds an array of shape {tuple(array.shape)}, but "
                f"data.patches count={count} needs (images, {count}, 4): one (x, y, w, h) per "
                "patch per image. Use a file with that many boxes per image, or set "
                f"data.patches.count to the file's.")
        return None, array.astype(np.int64)
    names: list[str] = []
    rows: list[list[float]] = []
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines, start=1):
        tokens = line.replace(",", " ").split()
        if not tokens or tokens[0].startswith("#"):
            continue
        try:
            float(tokens[0])
        except ValueError:
            names.append(tokens[0])
            tokens = tokens[1:]
        require(len(tokens) == 4 * count,
                f"Line {number} of the box file {path} has {len(tokens)} numbers, but "
                f"data.patches count={count} needs {4 * count}: one (x, y, w, h) per patch, "
                "after an optional file name. Fix that line, or set data.patches.count to the "
                "file's number of boxes per image.")
        try:
            rows.append([float(t) for t in tokens])
        except ValueError:
            raise GentrainError(f"Line {number} of the box file {path} is not numbers after "
                                f"its file name: {line.strip()!r}.") from None
    require(bool(rows), f"The box file {path} has no boxes.")
    require(not names or len(names) == len(rows),
            f"Some lines of the box file {path} start with a file name and others do not; "
            "name every image or none.")
    array = np.floor(np.asarray(rows)).astype(np.int64).reshape(len(rows), count, 4)
    return names or None, array


def check_boxes(array: np.ndarray, side: int, path: Path, labels: list[str]) -> None:
    """Every box inside a ``side``-px image with a positive size, or one clear error."""
    x, y, w, h = (array[..., j] for j in range(4))
    bad = (x < 0) | (y < 0) | (w < 1) | (h < 1) | (x + w > side) | (y + h > side)
    if bad.any():
        row, patch = (int(v) for v in np.argwhere(bad)[0])
        raise GentrainError(
            f"Box {patch + 1} of {labels[row]} in the box file {path}, (x, y, w, h) = "
            f"{tuple(int(v) for v in array[row, patch])}, is not inside the {side}x{side} image "
            f"its coordinates refer to ({int(bad.any(axis=1).sum())} image(s) have such boxes). "
            "Boxes need x, y >= 0, w, h >= 1, x + w <= side and y + h <= side; set "
            "data.patches.box_resolution to the side the file was made for (the authors' "
            "CelebA boxes: 128), or fix the file.")


def file_boxes(task: PatchTask, module: SplitDataModule, root: Path
               ) -> dict[str, Tensor]:
    """Each split's (n, K, 4) boxes from the box file, scaled to the data's resolution.

    Rows follow the file names when the file gives them, else the sorted file names of all the
    dataset's images (the authors' order), or for in-memory datasets their splits in order."""
    assert task.file is not None
    path = Path(task.file).expanduser()
    path = path if path.is_absolute() else root / path
    names, array = read_box_file(path, task.count)
    side = module.spec.height
    box_side = task.box_resolution or side
    if isinstance(module, FileDataModule):
        split_keys = {s: [p.name if names else str(p) for p in d.files]
                      for s, d in module.splits.items()}
    else:
        require(names is None, f"The box file {path} names its images, but data "
                f"{module.spec.name!r} is held in memory without file names; give one line "
                "per image in the order of its splits instead.")
        split_keys = {s: [f"{s}:{i}" for i in range(len(d))] for s, d in module.splits.items()}
    if names is None:
        every = sorted({key for keys in split_keys.values() for key in keys}) if isinstance(
            module, FileDataModule) else [k for keys in split_keys.values() for k in keys]
        require(array.shape[0] == len(every),
                f"The box file {path} has boxes for {array.shape[0]} images, but data "
                f"{module.spec.name!r} has {len(every)}. A box file gives one row of "
                f"{task.count} boxes per image of the whole dataset, in the sorted order of the "
                "image files; use the file made for this dataset.")
        row_of = {key: i for i, key in enumerate(every)}
        labels = [f"image {i + 1} ({key})" for i, key in enumerate(every)]
    else:
        row_of = {name: i for i, name in enumerate(names)}
        missing = sorted({k for keys in split_keys.values() for k in keys} - set(row_of))
        require(not missing, f"The box file {path} has no boxes for {len(missing)} image(s) "
                f"of data {module.spec.name!r}, e.g. {missing[:3]}; it needs a line for every "
                "image.")
        labels = [f"line {i + 1} ({name})" for i, name in enumerate(names)]
    check_boxes(array, box_side, path, labels)
    scaled = torch.from_numpy(array)
    if box_side != side:  # as the authors: floor(box * side / box_side)
        scaled = torch.floor(scaled.double() * side / box_side).long()
        scaled[..., 2:] = scaled[..., 2:].clamp(min=1)
    return {s: scaled[[row_of[k] for k in keys]] for s, keys in split_keys.items()}


# -- the examples carry their boxes ------------------------------------------------------------


@dataclass
class BoxedTensorSplit(TensorSplit):
    """A :class:`TensorSplit` whose examples carry (K, 4) ``boxes``."""

    boxes: Tensor | None = None

    def to(self, device: torch.device) -> BoxedTensorSplit:
        moved = [t.to(device) if t is not None else None for t in self.fields()]
        return BoxedTensorSplit(*moved, boxes=None if self.boxes is None
                                else self.boxes.to(device))

    def batch(self, index: Tensor) -> Batch:
        out = super().batch(index)
        assert self.boxes is not None
        out["boxes"] = self.boxes[index]
        return out


class BoxedFileDataset(FileDataset):
    """A :class:`FileDataset` whose examples carry (K, 4) ``boxes``."""

    def __init__(self, data: FileDataset, boxes: Tensor) -> None:
        super().__init__(data.files, data.prepare, data.labels, data.edges, data.captions)
        self.boxes = boxes

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return {**super().__getitem__(index), "boxes": self.boxes[index]}


# -- the batch transform ------------------------------------------------------------------------


def crop_boxes(images: Tensor, boxes: Tensor) -> Tensor:
    """(B, K, C, H, W): each box of each image resized (bilinear) to the full resolution."""
    b, c, h, w = images.shape
    k = boxes.shape[1]
    x, y, bw, bh = (boxes[..., j].to(images.dtype).reshape(-1) for j in range(4))
    theta = torch.zeros(b * k, 2, 3, dtype=images.dtype, device=images.device)
    # Output pixel centres at normalised u map to cx + s*u: the box's edges land on -1 and 1.
    theta[:, 0, 0], theta[:, 0, 2] = bw / w, (2 * x + bw) / w - 1
    theta[:, 1, 1], theta[:, 1, 2] = bh / h, (2 * y + bh) / h - 1
    grid = F.affine_grid(theta, [b * k, c, h, w], align_corners=False)
    source = images.repeat_interleave(k, dim=0)
    crops = F.grid_sample(source, grid, mode="bilinear", padding_mode="border",
                          align_corners=False)
    return crops.reshape(b, k, c, h, w)


def box_mask(boxes: Tensor, height: int, width: int) -> Tensor:
    """(B, 1, H, W) float: 1 inside any of the boxes, 0 elsewhere."""
    rows = torch.arange(height, device=boxes.device).view(1, 1, height, 1)
    cols = torch.arange(width, device=boxes.device).view(1, 1, 1, width)
    x, y, w, h = (boxes[..., j, None, None] for j in range(4))
    inside = (rows >= y) & (rows < y + h) & (cols >= x) & (cols < x + w)
    return inside.any(dim=1, keepdim=True).float()


def partner_order(n: int, generator: torch.Generator, device: torch.device) -> Tensor:
    """Each example's partner: another example of the batch (itself only when alone)."""
    order = torch.randperm(n, generator=generator, device=device)
    partner = torch.empty_like(order)
    partner[order] = order.roll(-1)
    return partner


def key_patches(batch: Batch, generator: torch.Generator) -> Batch:
    """``patches``, ``mask`` and ``shuffled`` from the (possibly flipped) image and boxes."""
    if "boxes" not in batch:
        raise GentrainError("data.patches needs boxes in every batch.")
    image, boxes = batch["image"], batch["boxes"]
    partner = partner_order(image.shape[0], generator, image.device)
    return {**batch, "patches": crop_boxes(image, boxes),
            "mask": box_mask(boxes, image.shape[-2], image.shape[-1]).to(image.dtype),
            "shuffled": image[partner]}


def resolve_source(task: PatchTask, module: SplitDataModule, root: Path) -> str:
    if task.source != "auto":
        return task.source
    if task.file is not None:
        path = Path(task.file).expanduser()
        if (path if path.is_absolute() else root / path).is_file():
            return "file"
    labelled = module.spec.has_label_map and all(
        isinstance(s, TensorSplit) and s.label_maps is not None for s in module.splits.values())
    return "labels" if labelled else "drawn"


def with_patches(task: PatchTask | None, module: DataModule, data_cfg: Any) -> DataModule:
    """``module`` with K key patches per example (nothing changes when ``task`` is None)."""
    if task is None:
        return module
    require(isinstance(module, TensorDataModule | FileDataModule) and not module.spec.unpaired,
            f"data.patches needs a dataset of single images, but data {module.spec.name!r} is "
            f"{'unpaired (two domains)' if module.spec.unpaired else type(module).__name__}; "
            "drop data.unpaired or data.patches.")
    assert isinstance(module, TensorDataModule | FileDataModule)
    require(data_cfg.get("load_size") is None,
            f"data.patches does not follow pix2pix's resize-and-crop jitter (data.load_size="
            f"{data_cfg.get('load_size')}); set data.load_size=null (flips are kept).")
    spec = module.spec
    require(spec.height == spec.width, f"data.patches needs square images; data "
            f"{spec.name!r} is {spec.height}x{spec.width}.")
    root = resolve_root(data_cfg.get("root"))
    source = resolve_source(task, module, root)
    if source == "file":
        require(task.file is not None, "data.patches source=file needs data.patches.file, the "
                "box file (one (x, y, w, h) per patch per image).")
        boxes = file_boxes(task, module, root)
    elif source == "labels":
        require(all(isinstance(s, TensorSplit) and s.label_maps is not None
                    for s in module.splits.values()),
                f"data.patches source=labels needs exact label maps, and data {spec.name!r} has "
                "none; use data=shapes or data.patches=drawn.")
        boxes = {name: label_boxes(task, split.label_maps, name)
                 for name, split in module.splits.items()}
    else:
        boxes = {name: drawn_boxes(task, len(split), spec.height, name)
                 for name, split in module.splits.items()}
    if isinstance(module, TensorDataModule):
        splits: dict[str, Any] = {
            name: BoxedTensorSplit(*split.fields(), boxes=boxes[name])
            for name, split in module.splits.items()}
    else:
        splits = {name: BoxedFileDataset(split, boxes[name])
                  for name, split in module.splits.items()}
    return dataclasses.replace(module, spec=dataclasses.replace(spec, patches=task.count),
                               splits=splits, transforms=[*module.transforms, key_patches])
