"""Feature extractors for sample-quality metrics (FID, KID, IS).

The real one is torch-fidelity's TF-compatible InceptionV3, the network behind published FID
numbers; its weights are read from a local file only, because evaluation must never stall on
(or silently depend on) the network. The stand-in is a tiny fixed-seed network for tests and
offline smoke runs: its numbers rank samples but are NOT comparable to published ones.

torch-fidelity is imported on first use: importing it pulls in torchvision.models (about a
second), which every ``gentrain`` command would otherwise pay.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import pickle
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from gentrain.errors import GentrainError

#: The file torch-fidelity 0.4.0 downloads into the torch hub cache (``URL_INCEPTION_V3``).
INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_WEIGHTS_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/" + INCEPTION_WEIGHTS_FILE
)
FEATURE_KINDS = ("inception", "domain", "auto", "standin")


def fidelity_module(name: str) -> ModuleType:
    """``torch_fidelity.<name>``, imported now, with a clear error if it is not installed."""
    try:
        return importlib.import_module(f"torch_fidelity.{name}")
    except ImportError as e:
        raise GentrainError(
            f"FID, KID and IS are computed with the torch-fidelity library, which could not be "
            f"imported ({e}); install it with `pip install torch-fidelity==0.4.0`."
        ) from e


class FeatureExtractor(Protocol):
    """Maps uint8 RGB images (B, 3, H, W) on any device to float32 features on its device.

    Returns ``{"pool": (B, D), "logits": (B, C)}``: pooled features for FID/KID and the
    classifier logits for the Inception Score.
    """

    name: str

    def __call__(self, images: Tensor) -> dict[str, Tensor]: ...


def to_uint8_rgb(images: Tensor) -> Tensor:
    """[-1, 1] float images (B, 1 or 3, H, W) as the uint8 RGB pixels a saved PNG would hold.

    Same arithmetic as gentrain's PNG path (``to_unit`` then torchvision's ``save_image``:
    clamp, ×255, +0.5, truncate), i.e. round-half-up of x·127.5 + 127.5 clamped to 0..255, so
    metrics on tensors equal metrics on the written files. One channel is repeated 3 times.
    """
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise GentrainError(
            f"Sample-quality metrics need images of shape (B, 1 or 3, H, W); got "
            f"{tuple(images.shape)}. Only grayscale and RGB data can be scored with FID/KID/IS."
        )
    unit = ((images.detach().float() + 1) / 2).clamp(0, 1)
    pixels = unit.mul(255).add(0.5).clamp(0, 255).to(torch.uint8)
    return pixels.expand(-1, 3, -1, -1).contiguous() if pixels.shape[1] == 1 else pixels


@contextlib.contextmanager
def _exact_float32(device: torch.device) -> Iterator[None]:
    """No grad, no autocast and no TF32 inside: the trainer may enable both for speed, but
    reference numbers were computed in true float32."""
    cuda = device.type == "cuda"
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        if cuda:
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        with torch.no_grad(), torch.autocast(device_type=device.type, enabled=False):
            yield
    finally:
        if cuda:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


class InceptionFeatures:
    """torch-fidelity's ``inception-v3-compat``: 2048-d pool features and unbiased logits.

    The network resizes to 299×299 with its TF1-compatible bilinear resize, as torch-fidelity
    and the original TF code do, so numbers are comparable to published ones.
    """

    name = "inception-v3-compat"
    pool_layer = "2048"
    logits_layer = "logits_unbiased"  # torch-fidelity's default layer for IS
    input_size = 299

    def __init__(self, weights_path: str | Path, device: str | torch.device = "cpu") -> None:
        module = fidelity_module("feature_extractor_inceptionv3")
        self.weights_path = Path(weights_path)
        self.device = torch.device(device)
        try:
            model = module.FeatureExtractorInceptionV3(
                self.name, [self.pool_layer, self.logits_layer],
                feature_extractor_weights_path=str(self.weights_path),
            )
        except (RuntimeError, OSError, EOFError, pickle.UnpicklingError, KeyError) as e:
            raise GentrainError(
                f"The Inception weights file {self.weights_path} could not be loaded ({e}). It "
                f"should be {INCEPTION_WEIGHTS_FILE} as downloaded from {INCEPTION_WEIGHTS_URL}; "
                f"replace it with a fresh copy."
            ) from e
        self.model = model.to(self.device).eval()

    def __call__(self, images: Tensor) -> dict[str, Tensor]:
        with _exact_float32(self.device):
            pool, logits = self.model(images.to(self.device))
        return {"pool": pool.float(), "logits": logits.float()}

    def describe(self) -> dict[str, Any]:
        return {
            "extractor": self.name,
            "implementation": "torch-fidelity",
            "version": importlib.metadata.version("torch-fidelity"),
            "feature_layer": self.pool_layer,
            "logits_layer": self.logits_layer,
            "input_size": self.input_size,
            "resize": "TF-compatible bilinear",
            "weights": self.weights_path.name,
            "comparable_to_published": True,
        }


class StandInFeatures:
    """A tiny fixed-seed random conv net: 64-d pool features and 10-way logits.

    For tests and offline smoke runs only. Its weights come from a seeded CPU generator, so
    every instance in every process computes the same features; but they mean nothing
    semantically, and FID/KID/IS computed on them are NOT comparable to published numbers.
    """

    name = "standin"
    input_size = 32
    pool_dim = 64
    num_classes = 10
    seed = 20240601

    def __init__(self, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        g = torch.Generator().manual_seed(self.seed)

        def weight(*shape: int) -> Tensor:
            fan_in = shape[1] * (shape[2] * shape[3] if len(shape) == 4 else 1)
            return (torch.randn(*shape, generator=g) / fan_in**0.5).to(self.device)

        self.conv1 = weight(32, 3, 3, 3)
        self.conv2 = weight(self.pool_dim, 32, 3, 3)
        self.fc = weight(self.num_classes, self.pool_dim)

    def __call__(self, images: Tensor) -> dict[str, Tensor]:
        with _exact_float32(self.device):
            x = images.to(self.device).float() / 127.5 - 1
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear",
                              align_corners=False)
            x = F.relu(F.conv2d(x, self.conv1, stride=2, padding=1))
            x = F.relu(F.conv2d(x, self.conv2, stride=2, padding=1))
            pool = x.mean(dim=(2, 3))
            # ×10 so the logits are confident enough for IS to move away from 1.
            return {"pool": pool, "logits": pool @ self.fc.T * 10}

    def describe(self) -> dict[str, Any]:
        return {
            "extractor": self.name,
            "implementation": "gentrain stand-in (fixed-seed random conv net)",
            "feature_layer": f"pool{self.pool_dim}",
            "logits_layer": f"logits{self.num_classes}",
            "input_size": self.input_size,
            "resize": "bilinear",
            "comparable_to_published": False,
        }


def find_inception_weights(path: str | Path | None) -> Path:
    """The local Inception weights file: ``path`` if given, else the torch hub cache.

    Never downloads: a run must not hang or fail half-way on a machine without network, so a
    missing file is reported up front with where to get it and where to put it.
    """
    cached = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_FILE
    where = (
        f"Download {INCEPTION_WEIGHTS_FILE} from {INCEPTION_WEIGHTS_URL} on a machine with "
        f"network access, then put it at {cached} (the torch hub cache, where torch-fidelity "
        f"itself keeps it) or pass eval.inception_weights=PATH."
    )
    if path is not None:
        given = Path(path).expanduser()
        if given.is_dir():
            given = given / INCEPTION_WEIGHTS_FILE
        if not given.is_file():
            raise GentrainError(
                f"The Inception weights for FID/KID/IS were not found at "
                f"eval.inception_weights={path} ({given} is not a file); gentrain never "
                f"reaches the network for them. {where}"
            )
        return given
    if not cached.is_file():
        raise GentrainError(
            f"The Inception weights for FID/KID/IS are not in the torch hub cache ({cached} "
            f"does not exist) and no eval.inception_weights path was given; gentrain never "
            f"reaches the network for them. {where}"
        )
    return cached


def build_feature_extractor(
    kind: str, weights: str | Path | None, device: str | torch.device
) -> FeatureExtractor:
    """The extractor named by the config: "inception" (real metrics) or "standin" (offline)."""
    if kind == "inception":
        return InceptionFeatures(find_inception_weights(weights), device)
    if kind == "standin":
        return StandInFeatures(device)
    raise GentrainError(
        f"Unknown sample-quality feature extractor {kind!r}; choose one of "
        f"{', '.join(FEATURE_KINDS)} (standin numbers are not comparable to published ones)."
    )


def protocol(extractor: FeatureExtractor) -> dict[str, Any]:
    """How features were computed, to store beside the numbers so runs compare like with like."""
    describe = getattr(extractor, "describe", None)
    if callable(describe):
        return describe()
    return {"extractor": extractor.name, "implementation": type(extractor).__qualname__,
            "comparable_to_published": False}
