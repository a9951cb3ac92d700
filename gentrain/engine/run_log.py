"""What a run writes besides checkpoints: metrics.jsonl, TensorBoard, sample PNGs, summary."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torchvision.utils import make_grid, save_image

from gentrain.files import atomic_write
from gentrain.models.base import Grid


class RunLog:
    """Writes into the run directory; every method is a no-op off the main process."""

    def __init__(self, run_dir: Path, *, tensorboard: bool, enabled: bool = True) -> None:
        self.run_dir, self.enabled = run_dir, enabled
        self.samples_dir = run_dir / "samples"
        self._writer = None
        if enabled:
            self.samples_dir.mkdir(parents=True, exist_ok=True)
            if tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(log_dir=str(run_dir / "tb"))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"step": step, **values}) + "\n")
        if self._writer is not None:
            for key, value in values.items():
                self._writer.add_scalar(key, value, step)

    def grid(self, step: int, name: str, grid: Grid) -> Path | None:
        """Save ``grid`` as ``samples/<name>_<step>.png`` and to TensorBoard."""
        if not self.enabled:
            return None
        image = make_grid(to_unit(grid.images), nrow=grid.nrow, padding=2)
        if grid.titles:
            image = with_row_titles(image, grid.titles, grid.images.shape[-2])
        path = self.samples_dir / f"{name}_{step:08d}.png"
        save_image(image, path)
        if self._writer is not None:
            self._writer.add_image(name, image, step)
        return path

    def summary(self, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        text = json.dumps(values, indent=2, sort_keys=True) + "\n"
        atomic_write(self.run_dir / "summary.json", lambda tmp: tmp.write_text(text))

    def curves(self, title: str) -> Path | None:
        """``curves.png``: every metric of metrics.jsonl over steps."""
        if not self.enabled:
            return None
        from gentrain.plots import plot_training_curves  # matplotlib only when plotting

        return plot_training_curves(self.run_dir / "metrics.jsonl", self.run_dir / "curves.png",
                                    title=title)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def with_row_titles(image: torch.Tensor, titles: tuple[str, ...], row_height: int,
                    padding: int = 2) -> torch.Tensor:
    """A (3, H, W) grid in [0, 1] with a white strip on its left holding each row's title,
    level with the row (PIL's built-in font: no font file needed)."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    width = int(max(measure.textlength(t, font=font) for t in titles)) + 2 * padding + 2
    strip = Image.new("RGB", (width, image.shape[1]), "white")
    draw = ImageDraw.Draw(strip)
    step = row_height + padding
    for row, title in enumerate(titles):
        top = padding + row * step + max(0, (row_height - 11) // 2)
        draw.text((padding, top), title, fill="black", font=font)
    pixels = torch.frombuffer(bytearray(strip.tobytes()), dtype=torch.uint8)
    text = pixels.view(image.shape[1], width, 3).permute(2, 0, 1).float() / 255
    return torch.cat([text, image], dim=2)


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """Images from [-1, 1] to [0, 1] on the CPU, ready for PNG."""
    return ((images.detach().float().cpu() + 1) / 2).clamp(0, 1)


def as_rgb(images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] with 1, 3 or K one-hot channels as 3-channel images for display."""
    channels = images.shape[1]
    if channels == 3:
        return images
    if channels == 1:
        return images.expand(-1, 3, -1, -1)
    # One-hot label maps: colour each class with a fixed palette.
    palette = torch.rand(channels, 3, generator=torch.Generator().manual_seed(0)) * 2 - 1
    classes = images.argmax(1)
    return palette.to(images.device)[classes].permute(0, 3, 1, 2)
