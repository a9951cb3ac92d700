"""Edge maps computed once and kept on disk, keyed by the detector settings.

Tensor datasets store one file per split (keyed also by a digest of the pixels); file datasets
store one PNG per image (keyed also by the image's path, size and mtime), written lazily by
whichever loader worker first needs it. Every write goes through
:func:`gentrain.files.atomic_write`, so concurrent workers and interrupted runs never leave a
truncated cache entry.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from tqdm.auto import tqdm

from gentrain.data.pairs.edges import EdgeSettings, edge_drawing
from gentrain.files import atomic_write

CHUNK = 256  # images per detector call when a whole split is processed


def settings_key(settings: EdgeSettings, *extra: object) -> str:
    """A short hex key for the detector settings plus whatever else shaped the input."""
    text = repr((sorted(asdict(settings).items()), extra))
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def split_edges(images: Tensor, settings: EdgeSettings, cache_dir: Path, tag: str) -> Tensor:
    """Edge drawings uint8 (N, 1, H, W) for a uint8 split, loaded from or saved to the cache."""
    digest = hashlib.blake2b(images.cpu().contiguous().numpy().tobytes(), digest_size=8)
    path = cache_dir / f"edges-{tag}-{settings_key(settings, digest.hexdigest())}.pt"
    if path.exists():
        return torch.load(path, weights_only=True)
    chunks = tqdm(images.split(CHUNK), desc=f"edges {tag}", unit="chunk", leave=False)
    edges = torch.cat([edge_drawing(chunk, settings) for chunk in chunks])
    atomic_write(path, lambda tmp: torch.save(edges, tmp), durable=False)
    return edges


@dataclass(frozen=True)
class FileEdgeCache:
    """Per-image edge drawings for a file dataset, as PNGs under ``folder``.

    ``folder`` is already keyed by the settings and the image preprocessing, so one entry per
    source file (named by its path, size and mtime) identifies the drawing.
    """

    folder: Path
    settings: EdgeSettings

    def get(self, source_file: Path, image: Tensor) -> Tensor:
        """The uint8 (1, H, W) drawing of ``image`` (uint8 (C, H, W) made from ``source_file``)."""
        stat = source_file.stat()
        name = hashlib.blake2b(
            repr((str(source_file), stat.st_size, stat.st_mtime_ns)).encode(), digest_size=10
        ).hexdigest()
        path = self.folder / f"{name}.png"
        if path.exists():
            return torch.from_numpy(np.array(Image.open(path))).unsqueeze(0)
        drawing = edge_drawing(image.unsqueeze(0), self.settings)[0]
        atomic_write(path, lambda tmp: Image.fromarray(drawing[0].numpy()).save(tmp, "PNG"),
                     durable=False)
        return drawing
