"""The data-trained judge: a small classifier trained on the dataset's own labels.

Inception features need weights no offline machine has, and a random network's features mean
little. A classifier trained on the training split's class labels (or attributes) knows what
the data holds: its penultimate features feed the Fréchet distance, KID and precision/recall
(torch-fidelity's formulas, through :class:`JudgeFeatures`, a registered torch-fidelity
feature extractor), and its predictions give the class checks of
:mod:`gentrain.sample_quality.classes`. It is trained once and cached under the data root,
keyed by everything that determines it, with its held-out accuracy and the confidence it has
in real held-out images (the calibration of "as sure as of real images").
"""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from tqdm.auto import tqdm

from gentrain.data import build_data
from gentrain.data.core.base import DataModule
from gentrain.data.storage.roots import cache_dir, resolve_root
from gentrain.engine.checkpoint import atomic_save
from gentrain.engine.distributed import barrier
from gentrain.errors import GentrainError
from gentrain.sample_quality.features import fidelity_module, to_uint8_rgb

#: Bumped whenever the network, its training or its calibration changes: old caches retrain.
JUDGE_VERSION = 1
#: Data config keys that change how batches are served, never which images and labels exist.
LOADER_KEYS = frozenset({"batch_size", "num_workers", "download", "hflip", "root", "pin_memory"})
#: Keys that make a labelled dataset a translation task; the judge sees the plain images.
TASK_KEYS = ("pair", "unpaired")
LABEL_KINDS = ("class", "attributes")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JudgeSettings:
    """``eval.judge.*``: how the judge is trained (all part of its cache key)."""

    steps: int = 600
    batch_size: int = 128
    lr: float = 2e-3
    width: int = 32
    max_resolution: int = 64  # larger data is judged downsampled to this side
    max_train: int = 50_000   # training examples held in memory (as uint8)
    calibration_quantile: float = 0.05  # "as sure as of real": this quantile of held-out confidence
    seed: int = 0
    cache: str | None = None  # folder of cached judges (null: <data root>/cache/judges)

    def __post_init__(self) -> None:
        for key in ("steps", "batch_size", "width", "max_resolution", "max_train"):
            if getattr(self, key) < 1:
                raise GentrainError(f"eval.judge.{key} must be at least 1, not "
                                    f"{getattr(self, key)}.")
        if not 0 < self.calibration_quantile < 1:
            raise GentrainError("eval.judge.calibration_quantile must lie in (0, 1), not "
                                f"{self.calibration_quantile}.")

    @classmethod
    def from_config(cls, cfg: DictConfig | dict[str, Any] | None) -> JudgeSettings:
        values = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) \
            else dict(cfg or {})
        unknown = sorted(set(values) - set(cls.__dataclass_fields__))  # type: ignore[arg-type]
        if unknown:
            raise GentrainError(f"Unknown eval.judge key(s) {', '.join(unknown)}; it takes "
                                f"{', '.join(cls.__dataclass_fields__)}.")
        return cls(**values)  # type: ignore[arg-type]


class JudgeNet(nn.Module):
    """Four 3×3 conv blocks (BN, ReLU, stride 2 from the second), global average pooling to
    ``4·width`` features, one linear head: small enough to train in a minute on 2 cores."""

    def __init__(self, channels: int, num_outputs: int, width: int) -> None:
        super().__init__()
        widths = (width, 2 * width, 4 * width, 4 * width)
        layers: list[nn.Module] = []
        previous = channels
        for i, w in enumerate(widths):
            layers += [nn.Conv2d(previous, w, 3, stride=1 if i == 0 else 2, padding=1,
                                 bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            previous = w
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(previous, num_outputs)
        self.feature_dim = previous

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(features, logits) of images in [-1, 1]."""
        features = self.body(x).mean(dim=(2, 3))
        return features, self.head(features)


@dataclass(frozen=True)
class JudgeInfo:
    """What a judge is and how good it is: saved with it, recorded next to its numbers."""

    dataset: str
    label_kind: str
    class_names: tuple[str, ...]
    channels: int
    resolution: int
    accuracy: float  # held-out: class accuracy, or mean per-attribute accuracy
    confidence_threshold: float  # calibration_quantile of real held-out images' confidence
    calibration_quantile: float
    num_train: int
    num_heldout: int
    heldout_split: str
    key: str  # digest of everything that determines the judge
    version: int = JUDGE_VERSION

    def describe(self) -> dict[str, Any]:
        return {"judge": f"gentrain judge v{self.version} ({self.dataset}, {self.label_kind})",
                **asdict(self), "class_names": list(self.class_names)}


class Judge:
    """A trained :class:`JudgeNet` with its :class:`JudgeInfo`; call it on uint8 RGB images."""

    def __init__(self, net: JudgeNet, info: JudgeInfo, width: int) -> None:
        self.net, self.info, self.width = net.eval(), info, width

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def to(self, device: torch.device | str) -> Judge:
        self.net.to(device)
        return self

    def prepare(self, images: Tensor) -> Tensor:
        """uint8 RGB (B, 3, H, W), as :func:`to_uint8_rgb` makes them, to the judge's input."""
        x = images.to(self.device).float() / 127.5 - 1
        if self.info.channels == 1:
            x = x.mean(dim=1, keepdim=True)  # grey images come as three equal channels
        if x.shape[-1] != self.info.resolution or x.shape[-2] != self.info.resolution:
            x = F.interpolate(x, size=(self.info.resolution, self.info.resolution),
                              mode="bilinear", antialias=True, align_corners=False)
        return x

    def __call__(self, images: Tensor) -> dict[str, Tensor]:
        """``{"pool": features (B, D), "logits": (B, C)}`` of uint8 RGB images, float32."""
        with torch.no_grad(), torch.autocast(device_type=self.device.type, enabled=False):
            features, logits = self.net(self.prepare(images))
        return {"pool": features.float(), "logits": logits.float()}

    def confidence(self, logits: Tensor) -> Tensor:
        """How sure the judge is of each image, (B,): the top class probability, or for
        attributes the least certain attribute's max(p, 1 − p)."""
        if self.info.label_kind == "class":
            return logits.softmax(dim=1).amax(dim=1)
        p = logits.sigmoid()
        return torch.maximum(p, 1 - p).amin(dim=1)

    def predict(self, logits: Tensor) -> Tensor:
        """The judged class (B,) long, or the judged attributes (B, A) in {0, 1}."""
        if self.info.label_kind == "class":
            return logits.argmax(dim=1)
        return (logits > 0).float()

    def state_dict(self) -> dict[str, Any]:
        """Tensors and plain types: saves with torch.save, loads with weights_only=True."""
        return {"net": self.net.state_dict(), "width": self.width,
                "info": {**asdict(self.info), "class_names": list(self.info.class_names)}}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> Judge:
        info = JudgeInfo(**{**state["info"], "class_names": tuple(state["info"]["class_names"])})
        net = JudgeNet(info.channels, len(info.class_names), int(state["width"]))
        net.load_state_dict(state["net"])
        return cls(net, info, int(state["width"]))


def judge_data_config(data_cfg: DictConfig, label_kind: str | None = None) -> DictConfig:
    """The labelled dataset behind ``data_cfg``: translation keys (``pair``, ``unpaired``)
    cleared and ``patches`` dropped, so a judge of shapes serves pix2pix, CycleGAN and
    Puzzle-GAN on shapes too; ``label_kind`` asks for class labels or attributes where the
    dataset offers both (shapes' ``labels``; a class judge of attribute shapes keeps their
    colour scheme, ``data.colours``). Shape-colour pairs held out of the training
    captions come back: the judge measures every pair, most of all those a model never saw."""
    cfg = OmegaConf.create(OmegaConf.to_container(data_cfg, resolve=True))
    for key in TASK_KEYS:
        if key in cfg:
            cfg[key] = None
    cfg.pop("patches", None)  # key patches (Puzzle-GAN) change no image or label
    if "caption_holdout" in cfg:
        cfg.caption_holdout = []
    if label_kind is not None and "labels" in cfg:
        if cfg.labels == "attributes" and label_kind == "class":
            # Shapes' attributes draw the named colours (light or dark grounds), the class
            # labels free ones: a class judge of the free colours misreads light grounds.
            cfg.colours = "named"
        cfg.labels = label_kind
    return cfg


def judge_key(data_cfg: DictConfig, settings: JudgeSettings) -> tuple[str, dict[str, Any]]:
    """The cache digest and what it covers: the dataset content, the judge's training
    settings and :data:`JUDGE_VERSION` (never the loader's batch size or workers)."""
    content = {k: v for k, v in OmegaConf.to_container(data_cfg, resolve=True).items()  # type: ignore[union-attr]
               if k not in LOADER_KEYS}
    training = {k: v for k, v in asdict(settings).items() if k != "cache"}
    covered = {"data": content, "judge": training, "version": JUDGE_VERSION}
    digest = hashlib.sha1(json.dumps(covered, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:12], covered


def no_labels_error(name: str) -> GentrainError:
    return GentrainError(
        f"eval.features=domain trains a judge on the dataset's own labels, but data {name!r} "
        "has no class labels or attributes. Score it with eval.features=inception (the "
        "Inception weights file, see the README), or judge a labelled dataset: data=shapes, "
        "mnist, cifar10, celeba (attributes), or data=folder with one sub-folder per class."
    )


def _collect(data: DataModule, split: str, limit: int, device: torch.device,
             desc: str) -> tuple[Tensor, Tensor]:
    """The first ``limit`` examples of ``split`` as uint8 RGB pixels and their labels."""
    images, labels, count = [], [], 0
    for batch in tqdm(data.eval_batches(split=split, device=torch.device("cpu"), limit=limit),
                      desc=desc, unit="batch", leave=False):
        if "label" not in batch:
            raise no_labels_error(data.spec.name)
        images.append(to_uint8_rgb(batch["image"]))
        labels.append(batch["label"])
        count += batch["image"].shape[0]
    if count == 0:
        raise GentrainError(f"The {split} split of {data.spec.name} is empty, so no judge can "
                            "be trained or calibrated on it.")
    return torch.cat(images).to(device), torch.cat(labels).to(device)


def _loss(logits: Tensor, labels: Tensor, kind: str) -> Tensor:
    if kind == "class":
        return F.cross_entropy(logits, labels.long())
    return F.binary_cross_entropy_with_logits(logits, labels.float())


def _augment(x: Tensor, hflip: bool, g: torch.Generator) -> Tensor:
    """Random shifts of up to 1/16 of the side (reflect-padded), and flips where the data
    allows them: a judge that is not fooled by a sample drawn two pixels off."""
    n, side = x.shape[0], x.shape[-1]
    pad = max(1, side // 16)
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    dx, dy = (int(v) for v in torch.randint(0, 2 * pad + 1, (2,), generator=g))
    x = padded[..., dy:dy + side, dx:dx + side]
    if hflip:
        flip = torch.rand(n, generator=g) < 0.5
        x = torch.where(flip.to(x.device)[:, None, None, None], x.flip(-1), x)
    return x


def train_judge(data_cfg: DictConfig, settings: JudgeSettings, device: torch.device,
                heldout_split: str = "test", progress: bool = True) -> Judge:
    """Train a judge on ``data_cfg``'s training split, measure it on ``heldout_split``."""
    data = build_data(data_cfg)
    spec = data.spec
    if spec.label_kind not in LABEL_KINDS or spec.num_classes < 1:
        raise no_labels_error(spec.name)
    kind = str(spec.label_kind)
    key, _ = judge_key(data_cfg, settings)
    resolution = min(spec.height, settings.max_resolution)
    torch.manual_seed(settings.seed)
    net = JudgeNet(spec.channels, spec.num_classes, settings.width).to(device)
    info = JudgeInfo(dataset=spec.name, label_kind=kind, class_names=spec.class_names or tuple(
        str(i) for i in range(spec.num_classes)), channels=spec.channels, resolution=resolution,
        accuracy=0.0, confidence_threshold=0.0,
        calibration_quantile=settings.calibration_quantile, num_train=0, num_heldout=0,
        heldout_split=heldout_split, key=key)
    judge = Judge(net, info, settings.width)
    images, labels = _collect(data, "train", settings.max_train, device, "judge data")
    g = torch.Generator().manual_seed(settings.seed)
    optimizer = torch.optim.AdamW(net.parameters(), lr=settings.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, settings.lr, settings.steps)
    hflip = bool(data_cfg.get("hflip", False))
    net.train()
    for _ in tqdm(range(settings.steps), desc="training the judge", unit="step", leave=False,
                  disable=not progress):
        index = torch.randint(images.shape[0], (settings.batch_size,), generator=g)
        x = _augment(judge.prepare(images[index.to(device)]), hflip, g)
        _, logits = net(x)
        loss = _loss(logits, labels[index.to(device)], kind)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    net.eval()
    held_images, held_labels = _collect(data, heldout_split, settings.max_train, device,
                                        "judge held-out")
    logits = torch.cat([judge(chunk)["logits"] for chunk in held_images.split(500)])
    confidence = judge.confidence(logits)
    accuracy = (judge.predict(logits) == held_labels.to(logits.dtype if kind != "class"
                                                          else torch.long)).float().mean()
    judge.info = JudgeInfo(**{
        **asdict(info), "accuracy": float(accuracy),
        "confidence_threshold": float(torch.quantile(confidence.double(),
                                                     settings.calibration_quantile)),
        "num_train": int(images.shape[0]), "num_heldout": int(held_images.shape[0])})
    return judge


def judge_path(data_cfg: DictConfig, settings: JudgeSettings) -> Path:
    """Where the judge of ``data_cfg`` trained with ``settings`` is cached."""
    key, _ = judge_key(data_cfg, settings)
    root = (Path(settings.cache) if settings.cache
            else cache_dir(resolve_root(data_cfg.get("root"))) / "judges")
    labels = data_cfg.get("labels", "labels")
    resolution = min(int(data_cfg.get("resolution", settings.max_resolution)),
                     settings.max_resolution)
    return root / f"{data_cfg.get('name', 'data')}-{labels}-{resolution}px-{key}.pt"


def load_judge(path: Path) -> Judge | None:
    """The judge cached at ``path``, or None when there is none yet."""
    if not path.is_file():
        return None
    try:
        return Judge.from_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    except (RuntimeError, OSError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile,
            KeyError, TypeError, ValueError) as e:
        raise GentrainError(
            f"The cached judge {path} is unreadable ({type(e).__name__}: {e}). Delete it; the "
            "next evaluation trains it again."
        ) from e


def obtain_judge(data_cfg: DictConfig, settings: JudgeSettings, device: torch.device, *,
                 rank: int = 0, progress: bool = True) -> Judge:
    """The cached judge of ``data_cfg``, trained first (on rank 0) if it is not cached."""
    path = judge_path(data_cfg, settings)
    judge = load_judge(path)
    if judge is None:
        if rank == 0:
            log.info("Training the data's judge for eval.features=domain (once; cached in "
                     "%s).", path)
            trained = train_judge(data_cfg, settings, device, progress=progress)
            atomic_save(trained.state_dict(), path)
            info = trained.info
            log.info("The judge of %s (%s) scores %.1f%% on held-out %s images.", info.dataset,
                     info.label_kind, 100 * info.accuracy, info.heldout_split)
        barrier()
        judge = load_judge(path)
        assert judge is not None
    return judge.to(device)


def judge_feature_extractor_class() -> type:
    """torch-fidelity's ``FeatureExtractorBase`` subclass serving a cached judge's features,
    so torch-fidelity's own ``calculate_metrics`` can score with it (made on first use: the
    base class imports torch-fidelity, which costs a second)."""
    if _EXTRACTOR:
        return _EXTRACTOR[0]
    base = fidelity_module("feature_extractor_base").FeatureExtractorBase

    class JudgeFeatures(base):  # type: ignore[misc, valid-type]
        """The judge's penultimate features (``pool``, for FD/KID/PRC) and its logits."""

        def __init__(self, name: str, features_list: list[str],
                     feature_extractor_weights_path: str | None = None, **_: Any) -> None:
            super().__init__(name, features_list)
            if feature_extractor_weights_path is None:
                raise GentrainError("The judge's features need its cached file: pass "
                                    "feature_extractor_weights_path=<judge .pt>.")
            judge = load_judge(Path(feature_extractor_weights_path))
            if judge is None:
                raise GentrainError(f"No judge at {feature_extractor_weights_path}.")
            self.judge = judge
            self.net = judge.net  # registered, so .cuda() moves it

        @staticmethod
        def get_provided_features_list() -> tuple[str, ...]:
            return ("pool", "logits")

        @staticmethod
        def get_default_feature_layer_for_metric(metric: str) -> str:
            return {"isc": "logits"}.get(metric, "pool")

        @staticmethod
        def can_be_compiled() -> bool:
            return False

        @staticmethod
        def get_dummy_input_for_compile() -> Tensor:
            return torch.zeros(1, 3, 32, 32, dtype=torch.uint8)

        def forward(self, images: Tensor) -> tuple[Tensor, ...]:
            out = self.judge(images)
            return tuple(out[name] for name in self.features_list)

    fidelity = fidelity_module("registry")
    if JUDGE_EXTRACTOR not in fidelity.FEATURE_EXTRACTORS_REGISTRY:
        fidelity.register_feature_extractor(JUDGE_EXTRACTOR, JudgeFeatures)
    _EXTRACTOR.append(JudgeFeatures)
    return JudgeFeatures


#: The name the judge's extractor is registered under in torch-fidelity.
JUDGE_EXTRACTOR = "gentrain-judge"
_EXTRACTOR: list[type] = []
