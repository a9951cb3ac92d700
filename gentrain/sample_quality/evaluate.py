"""FID, KID and IS of a model: generate with its sampler on every rank, compare to real data.

The real images' features (the reference) are computed once per dataset, split, resolution
and extractor and cached; every number is reported with the protocol that produced it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from gentrain.data.core.base import DataModule
from gentrain.data.core.seeding import generator_for
from gentrain.data.storage.roots import cache_dir, resolve_root
from gentrain.engine.distributed import barrier
from gentrain.errors import GentrainError
from gentrain.models.base import GenerativeModel
from gentrain.sample_quality.conditions import reference_conditions, sample_share
from gentrain.sample_quality.domain import DOMAIN_METRICS, DomainQuality
from gentrain.sample_quality.features import (
    FEATURE_KINDS,
    FeatureExtractor,
    build_feature_extractor,
    find_inception_weights,
    protocol,
    to_uint8_rgb,
)
from gentrain.sample_quality.judge import JudgeSettings
from gentrain.sample_quality.statistics import (
    FeatureStats,
    frechet_distance,
    inception_score,
    kernel_inception_distance,
    load_reference,
    save_reference,
)

log = logging.getLogger(__name__)

METRICS = ("fid", "kid", "is")
# Data config keys that change how batches are served, never which images a split holds.
LOADER_KEYS = {"batch_size", "num_workers", "download", "hflip", "root", "pin_memory"}


@dataclass(frozen=True)
class SampleQualitySettings:
    """The ``eval.*`` keys of configs/train.yaml that define the protocol."""

    metrics: tuple[str, ...]
    num_samples: int
    reference_split: str
    features: str = "inception"
    inception_weights: str | None = None
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    is_splits: int = 10
    batch_size: int = 250
    reference_cache: str | None = None
    judge: JudgeSettings = JudgeSettings()

    def __post_init__(self) -> None:
        unknown = sorted(set(self.metrics) - set(METRICS))
        if unknown and self.features != "domain":
            raise GentrainError(
                f"eval.sample_quality names {', '.join(unknown)}; it takes a list of "
                f"{', '.join(METRICS)}, auto (the family's) or [] (none)."
            )
        if self.features not in FEATURE_KINDS:
            raise GentrainError(
                f"eval.features={self.features!r} is not one of {', '.join(FEATURE_KINDS)}: "
                "inception (the papers' TF-compatible network), domain (a judge trained on "
                "the data's labels), auto (inception when its weights are here, else domain) "
                "or standin (offline tests only)."
            )
        for key in ("num_samples", "batch_size", "kid_subsets", "kid_subset_size", "is_splits"):
            if getattr(self, key) < 1:
                raise GentrainError(f"eval.{key} must be at least 1, not {getattr(self, key)}.")


def settings_from_config(eval_cfg: DictConfig, family_metrics: tuple[str, ...]
                         ) -> SampleQualitySettings | None:
    """The settings of ``eval`` for a family (None when no metric is asked for).

    ``auto`` takes the family's metrics (none for the likelihood families, whose sampling can
    be slow); on the judge's scale a family that has them gets every judge metric instead
    (:data:`DOMAIN_METRICS`).
    """
    chosen = eval_cfg.sample_quality
    if chosen == "auto":
        metrics = family_metrics
    elif chosen is None or isinstance(chosen, str):
        metrics = (chosen,) if chosen else ()
    else:
        metrics = tuple(OmegaConf.to_container(chosen))  # type: ignore[arg-type]
    if not metrics:
        return None
    features = str(eval_cfg.features)
    if features == "auto" and chosen != "auto":  # the metrics named decide the scale
        features = "domain" if set(metrics) <= set(DOMAIN_METRICS) else "inception"
    features = resolve_features(features, eval_cfg.inception_weights)
    if features == "domain" and chosen == "auto":
        metrics = DOMAIN_METRICS  # the judge's scale has its own metrics, never FID
    return SampleQualitySettings(
        metrics=tuple(str(m) for m in metrics), features=features,
        judge=JudgeSettings.from_config(eval_cfg.get("judge")),
        num_samples=eval_cfg.num_samples,
        reference_split=eval_cfg.reference_split,
        inception_weights=eval_cfg.inception_weights, kid_subsets=eval_cfg.kid_subsets,
        kid_subset_size=eval_cfg.kid_subset_size, is_splits=eval_cfg.is_splits,
        batch_size=eval_cfg.batch_size, reference_cache=eval_cfg.reference_cache,
    )


def resolve_features(features: str, inception_weights: str | None) -> str:
    """``auto``: the Inception network when its weights file is here, else the data's judge
    (with one log line saying so); any other choice as it is."""
    if features != "auto":
        return features
    try:
        find_inception_weights(inception_weights)
    except GentrainError:
        log.info("No Inception weights here, so sample quality is scored by a judge trained "
                 "on the data (eval.features=domain: fd_domain, kid_domain, ..., not FID).")
        return "domain"
    return "inception"


def build_sample_quality(settings: SampleQualitySettings, data: DataModule,
                         data_cfg: DictConfig, device: torch.device, seed: int,
                         rank: int = 0) -> SampleQuality | DomainQuality:
    """The evaluator for ``settings.features``: Inception/stand-in features or the judge."""
    if settings.features == "domain":
        return DomainQuality(
            settings.metrics, data, data_cfg, device, seed, settings.judge,
            num_samples=settings.num_samples, reference_split=settings.reference_split,
            batch_size=settings.batch_size, kid_subsets=settings.kid_subsets,
            kid_subset_size=settings.kid_subset_size, rank=rank)
    return SampleQuality(settings, data, data_cfg, device, seed)


class SampleQuality:
    """Computes the asked metrics of any family's samples against one reference split."""

    def __init__(self, settings: SampleQualitySettings, data: DataModule, data_cfg: DictConfig,
                 device: torch.device, seed: int) -> None:
        self.settings, self.data, self.device, self.seed = settings, data, device, seed
        self.extractor: FeatureExtractor = build_feature_extractor(
            settings.features, settings.inception_weights, device)
        self.data_cfg = data_cfg

    def reference_path(self, key: str = "image") -> Path:
        """Where the features of the reference split's ``key`` images are cached."""
        content = {k: v for k, v in OmegaConf.to_container(self.data_cfg, resolve=True).items()
                   if k not in LOADER_KEYS and k != "_target_"}
        digest = hashlib.sha1(json.dumps(content, sort_keys=True, default=str).encode())
        spec = self.data.spec
        images = "" if key == "image" else f"-{key}"
        name = (f"{spec.name}-{self.settings.reference_split}{images}-{spec.height}px-"
                f"{self.extractor.name}-{digest.hexdigest()[:10]}.pt")
        root = (Path(self.settings.reference_cache) if self.settings.reference_cache
                else cache_dir(resolve_root(self.data_cfg.get("root"))) / "reference_features")
        return root / name

    def protocol(self, num_reference: int, num_generated: int,
                 key: str = "image") -> dict[str, Any]:
        """What a reader needs to compare a number with another: recorded next to it."""
        return {**protocol(self.extractor), "metrics": list(self.settings.metrics),
                "num_generated": num_generated, "num_reference": num_reference,
                "reference": {"dataset": self.data.spec.name,
                              "split": self.settings.reference_split,
                              "images": key,
                              "resolution": self.data.spec.height},
                "kid_subsets": self.settings.kid_subsets,
                "kid_subset_size": self.settings.kid_subset_size,
                "is_splits": self.settings.is_splits,
                "reference_cache": str(self.reference_path(key))}

    def reference(self, *, rank: int, world_size: int, progress: bool,
                  key: str = "image") -> FeatureStats:
        """The real split's features of its ``key`` images (the family's
        ``reference_images``): from the cache, or computed once on all ranks."""
        path = self.reference_path(key)
        cached = load_reference(path, self.device)
        if cached is not None:
            return cached
        stats = FeatureStats(keep=self._kept_rows(), keep_logits=False)
        batches = self.data.eval_batches(split=self.settings.reference_split,
                                         device=self.device, rank=rank, world_size=world_size)
        for batch in tqdm(batches, desc="reference features", unit="batch", leave=False,
                          disable=not progress):
            stats.update(self.extractor(to_uint8_rgb(batch[key])))
        stats.merge_across_ranks()
        if rank == 0:
            save_reference(stats, path)
            log.info("Cached the reference features of %s in %s.",
                     self.settings.reference_split, path)
        barrier()
        return stats

    def _kept_rows(self) -> int:
        """Raw rows KID draws its subsets from (none when KID is not asked for)."""
        return 10_000 if "kid" in self.settings.metrics else 0

    @torch.no_grad()
    def __call__(
        self, model: GenerativeModel, *, rank: int = 0, world_size: int = 1,
        num_samples: int | None = None, progress: bool = False,
        autocast: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
    ) -> tuple[dict[str, float], dict[str, Any]]:
        """``eval/<metric>`` values and the protocol, the same on every rank."""
        key = model.reference_images
        real = self.reference(rank=rank, world_size=world_size, progress=progress, key=key)
        total = num_samples or self.settings.num_samples
        share = sample_share(total, rank, world_size)
        fake = FeatureStats(keep=self._kept_rows(), keep_logits="is" in self.settings.metrics)
        generator = generator_for(self.device, self.seed, "sample_quality", rank)
        was_training = model.training
        model.eval()
        bar = tqdm(total=share, desc="sample quality", unit="img", leave=False,
                   disable=not progress)
        conditions = reference_conditions(self.data, self.settings.reference_split, share,
                                          self.settings.batch_size, self.device, rank,
                                          world_size)
        for batch in conditions:
            n = batch["image"].shape[0]
            with autocast():
                images = model.sample(n, model.condition(batch), generator)
            fake.update(self.extractor(to_uint8_rgb(images.float())))
            bar.update(n)
        bar.close()
        model.train(was_training)
        fake.merge_across_ranks()
        return self._metrics(real, fake), self.protocol(int(real.count), int(fake.count), key)

    def _metrics(self, real: FeatureStats, fake: FeatureStats) -> dict[str, float]:
        s, out = self.settings, {}
        if "fid" in s.metrics:
            out["eval/fid"] = frechet_distance(real.mean(), real.covariance(), fake.mean(),
                                               fake.covariance())
        if "kid" in s.metrics:
            mean, std = kernel_inception_distance(real.pool, fake.pool, s.kid_subsets,
                                                  s.kid_subset_size, seed=self.seed)
            out["eval/kid"], out["eval/kid_std"] = mean, std
        if "is" in s.metrics:
            mean, std = inception_score(fake.logits, s.is_splits, seed=self.seed)
            out["eval/is"], out["eval/is_std"] = mean, std
        return out
