"""Sample quality on the data-trained judge's scale (``eval.features=domain``).

The same protocol as FID/KID (generate with the family's sampler on every rank, conditions
from the reference split, gather), but the features are the judge's, so the distances are
reported as ``fd_domain``, ``kid_domain``, ``precision_domain`` and ``recall_domain``, never as
FID; the formulas are torch-fidelity's. The judge's predictions add the class checks of
:mod:`gentrain.sample_quality.classes`, chosen by what the model conditions on: nothing
(histogram, modes, confident share), class labels (+ consistency, within-class FD), an image
(a translator: target accuracy), an image and target attributes (StarGAN: per-attribute target
accuracy and, with a class judge, content kept), captions of shapes (prompt following, see
:mod:`gentrain.sample_quality.prompts`). Each distance comes with its real-versus-real value at
the same count (held-out real images against the reference), so a reader knows what "good" is
on this scale.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor
from tqdm.auto import tqdm

from gentrain.data.core.base import DataModule
from gentrain.data.core.batch import Batch
from gentrain.data.core.seeding import derive_seed, generator_for
from gentrain.errors import GentrainError
from gentrain.models.base import GenerativeModel
from gentrain.sample_quality import classes
from gentrain.sample_quality.conditions import reference_conditions, sample_share
from gentrain.sample_quality.features import fidelity_module, to_uint8_rgb
from gentrain.sample_quality.judge import (
    Judge,
    JudgeSettings,
    judge_data_config,
    obtain_judge,
)
from gentrain.sample_quality.pixels import border_brightness, colour_moments, wasserstein_1d
from gentrain.sample_quality.prompts import PromptChecks, require_captions, with_model_words
from gentrain.sample_quality.statistics import (
    frechet_distance,
    gather_all_rows,
    kernel_inception_distance,
)

DOMAIN_METRICS = ("fd", "kid", "prc", "classes")
#: Real images whose judge features form the reference (rows kept for KID and PRC too).
REFERENCE_LIMIT = 10_000
PRC_NEIGHBORHOOD = 3  # torch-fidelity's default k of the k-NN balls


@dataclass
class Judged:
    """Judge outputs of a set of images, one row each, with what was asked of them."""

    pool: list[Tensor] = field(default_factory=list)
    logits: list[Tensor] = field(default_factory=list)
    wanted: list[Tensor] = field(default_factory=list)  # requested class / attributes
    content: list[Tensor] = field(default_factory=list)  # class judge: [input, output] classes
    codes: list[Tensor] = field(default_factory=list)  # the sampler's discrete code
    border: list[Tensor] = field(default_factory=list)  # each image's border brightness
    colour: list[Tensor] = field(default_factory=list)  # each image's colour moments
    prompts: list[Tensor] = field(default_factory=list)  # prompt rows of the reference captions
    heldout_prompts: list[Tensor] = field(default_factory=list)  # ... of held-out pairs' captions

    translator: bool = False  # the model's condition holds an image

    def gathered(self, name: str, device: torch.device) -> Tensor | None:
        """Every rank's rows of ``name`` in rank order, float (None when no rank kept any)."""
        rows = getattr(self, name)
        local = torch.cat([r.reshape(r.shape[0], -1).float() for r in rows]) if rows else None
        return gather_all_rows(local, device)


class DomainQuality:
    """The judge's distances and class checks of a model's samples (``eval.features=domain``)."""

    def __init__(self, metrics: tuple[str, ...], data: DataModule, data_cfg: DictConfig,
                 device: torch.device, seed: int, judge_settings: JudgeSettings, *,
                 num_samples: int, reference_split: str, batch_size: int, kid_subsets: int,
                 kid_subset_size: int, rank: int = 0) -> None:
        unknown = sorted(set(metrics) - set(DOMAIN_METRICS))
        if unknown:
            raise GentrainError(
                f"eval.sample_quality names {', '.join(unknown)}, which eval.features=domain "
                f"does not compute; with the judge it takes {', '.join(DOMAIN_METRICS)} "
                "(fd, kid and prc on its features, classes for its class checks) or auto (all)."
            )
        self.metrics, self.data, self.device, self.seed = metrics, data, device, seed
        self.num_samples, self.reference_split = num_samples, reference_split
        self.batch_size, self.kid_subsets, self.kid_subset_size = (batch_size, kid_subsets,
                                                                   kid_subset_size)
        self.judge_settings = judge_settings
        self.judge = obtain_judge(judge_data_config(data_cfg), judge_settings, device, rank=rank)
        # StarGAN's attributes say nothing of the shape: a class judge checks it survives.
        self.content_judge: Judge | None = None
        if self.judge.info.label_kind == "attributes" and "labels" in data_cfg:
            self.content_judge = obtain_judge(judge_data_config(data_cfg, "class"),
                                              judge_settings, device, rank=rank)
        # Captions of shapes name a shape and a colour: the class and attribute judges check both.
        self.prompts = (PromptChecks.for_data(data, data_cfg, judge_settings, device, rank)
                        if "classes" in metrics else None)
        self._reference: dict[str, dict[str, Tensor]] = {}

    @property
    def name(self) -> str:
        return "domain"

    def reference(self, key: str, split: str, *, rank: int, world_size: int,
                  progress: bool) -> dict[str, Tensor]:
        """Judge features, logits and (when the data has them) labels of ``split``'s ``key``
        images, at most :data:`REFERENCE_LIMIT` of them, the same on every rank."""
        if (key, split) in self._reference:
            return self._reference[key, split]
        judged = Judged()
        batches = self.data.eval_batches(split=split, device=self.device, rank=rank,
                                         world_size=world_size, limit=REFERENCE_LIMIT)
        for batch in tqdm(batches, desc=f"judging {split} images", unit="batch", leave=False,
                          disable=not progress):
            pixels = to_uint8_rgb(batch[key])
            out = self.judge(pixels)
            judged.pool.append(out["pool"])
            judged.logits.append(out["logits"])
            judged.border.append(border_brightness(pixels))
            judged.colour.append(colour_moments(pixels))
            if "label" in batch and key == "image":
                judged.wanted.append(batch["label"])
        result = {name: judged.gathered(name, self.device)
                  for name in ("pool", "logits", "border", "colour")}
        labels = judged.gathered("wanted", self.device)
        if labels is not None:
            result["labels"] = labels
        if result["pool"] is None or result["pool"].shape[0] < 2:
            raise GentrainError(f"The {split} split of {self.data.spec.name} has fewer than 2 "
                                "images; the judge needs more to compare samples with.")
        self._reference[key, split] = result  # type: ignore[assignment]
        return result  # type: ignore[return-value]

    @torch.no_grad()
    def __call__(
        self, model: GenerativeModel, *, rank: int = 0, world_size: int = 1,
        num_samples: int | None = None, progress: bool = False,
        autocast: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
    ) -> tuple[dict[str, float], dict[str, Any]]:
        """``eval/<metric>_domain`` values and the protocol, the same on every rank."""
        require_captions(model.spec, self.data.spec)
        key = model.reference_images
        real = self.reference(key, self.reference_split, rank=rank, world_size=world_size,
                              progress=progress)
        total = num_samples or self.num_samples
        prompts = self.prompts if model.spec.captioned else None
        held_total = prompts.heldout_count(total) if prompts is not None else 0
        fake = self._judge_samples(model, total - held_total, rank, world_size, progress,
                                   autocast, prompts, held_total)
        heldout_split = self.data.eval_split
        heldout = self.reference(key, heldout_split, rank=rank, world_size=world_size,
                                 progress=progress)
        out = self._distances(real, fake, heldout)
        if "classes" in self.metrics:
            out.update(self._class_checks(real, fake, heldout))
        if prompts is not None:
            out.update(prompts.metrics(fake.get("prompts"), fake.get("heldout_prompts")))
        protocol = {**self.judge.info.describe(), "extractor": "domain judge",
                    "comparable_to_published": False, "metrics": list(self.metrics),
                    "num_generated": int(fake["pool"].shape[0]),
                    "num_reference": int(real["pool"].shape[0]),
                    "reference": {"dataset": self.data.spec.name, "split": self.reference_split,
                                  "images": key, "resolution": self.data.spec.height},
                    "real_baseline": {"split": heldout_split, "images": key},
                    "kid_subsets": self.kid_subsets, "kid_subset_size": self.kid_subset_size,
                    "prc_neighborhood": PRC_NEIGHBORHOOD,
                    "implementation": "torch-fidelity formulas on the judge's features"}
        if self.content_judge is not None:
            protocol["content_judge"] = self.content_judge.info.describe()
        if prompts is not None:
            protocol["prompts"] = prompts.describe(self.reference_split,
                                                   int(fake["pool"].shape[0]), held_total)
        return {f"eval/{k}": v for k, v in out.items()}, protocol

    def _draw(self, model: GenerativeModel, batch: Batch, generator: torch.Generator,
              autocast: Callable[[], Any]) -> tuple[Tensor, Tensor | None, Batch | None]:
        """Samples for ``batch``'s conditions (captions in the model's own words), their
        codes and the condition."""
        cond = model.condition(with_model_words(batch, self.data.spec, model.spec))
        with autocast():
            images, codes = model.sample_with_codes(batch["image"].shape[0], cond, generator)
        return images.float(), codes, cond

    def _judge_samples(self, model: GenerativeModel, total: int, rank: int, world_size: int,
                       progress: bool, autocast: Callable[[], Any],
                       prompts: PromptChecks | None = None,
                       held_total: int = 0) -> dict[str, Tensor]:
        """Judge outputs of ``total`` samples for the reference split's conditions, and with
        ``prompts`` the prompt rows of those and of ``held_total`` more for held-out pairs."""
        share = sample_share(total, rank, world_size)
        held_share = sample_share(held_total, rank, world_size)
        judged = Judged()
        generator = generator_for(self.device, self.seed, "sample_quality", rank)
        was_training = model.training
        model.eval()
        bar = tqdm(total=share + held_share, desc="judging samples", unit="img", leave=False,
                   disable=not progress)
        for batch in reference_conditions(self.data, self.reference_split, share, self.batch_size,
                                          self.device, rank, world_size):
            n = batch["image"].shape[0]
            images, codes, cond = self._draw(model, batch, generator, autocast)
            judged.translator = cond is not None and ("image" in cond or "source" in cond)
            pixels = to_uint8_rgb(images)
            out = self.judge(pixels)
            judged.pool.append(out["pool"])
            judged.logits.append(out["logits"])
            judged.border.append(border_brightness(pixels))
            judged.colour.append(colour_moments(pixels))
            if codes is not None:
                judged.codes.append(codes)
            if prompts is not None:  # judged against what the caption asks for instead
                judged.prompts.append(prompts.rows(pixels, to_uint8_rgb(batch["image"]),
                                                   batch["caption"]))
            elif cond is not None and "label" in cond:
                judged.wanted.append(cond["label"])
            elif cond is not None and model.reference_images in batch:
                # A translator without targets (or a caption model on data without a judge of
                # captions): its output should be judged like the real image of the same
                # example (paired data, a caption's image) or like the target domain.
                real = self.judge(to_uint8_rgb(batch[model.reference_images]))["logits"]
                judged.wanted.append(self.judge.predict(real))
            if self.content_judge is not None and cond is not None:
                source = cond.get("image", cond.get("source"))
                if source is not None:
                    before = self.content_judge(to_uint8_rgb(source[:n].float()))["logits"]
                    after = self.content_judge(to_uint8_rgb(images.float()))["logits"]
                    judged.content.append(torch.stack(
                        [before.argmax(1), after.argmax(1)], dim=1))
            bar.update(n)
        if prompts is not None:
            held_generator = generator_for(self.device, self.seed, "held-out prompts", rank)
            for batch in prompts.heldout_conditions(held_total, rank, world_size,
                                                    self.batch_size, self.device):
                images, _, _ = self._draw(model, batch, held_generator, autocast)
                judged.heldout_prompts.append(prompts.rows(
                    to_uint8_rgb(images), to_uint8_rgb(batch["image"]), batch["caption"]))
                bar.update(images.shape[0])
        bar.close()
        model.train(was_training)
        result = {name: judged.gathered(name, self.device)
                  for name in ("pool", "logits", "wanted", "content", "codes", "border", "colour",
                               "prompts", "heldout_prompts")}
        kept = {k: v for k, v in result.items() if v is not None}
        kept["translator"] = torch.tensor(judged.translator)
        return kept

    def _subsample(self, rows: Tensor, count: int, salt: str) -> Tensor:
        """``count`` of ``rows`` drawn without replacement (seeded): real-vs-real at the
        samples' count, since FD and PRC depend on it."""
        if rows.shape[0] <= count:
            return rows
        g = torch.Generator().manual_seed(derive_seed(self.seed, salt))
        return rows[torch.randperm(rows.shape[0], generator=g)[:count]]

    def _distances(self, real: dict[str, Tensor], fake: dict[str, Tensor],
                   heldout: dict[str, Tensor]) -> dict[str, float]:
        count = fake["pool"].shape[0]
        baseline = self._subsample(heldout["pool"], count, "baseline")
        # Judge-free: how far the samples' border (background) brightness is from the data's.
        out = {"border_brightness": float(fake["border"].mean()),
               "border_brightness_real": float(real["border"].mean()),
               "border_w1": wasserstein_1d(fake["border"], real["border"]),
               "border_w1_real": wasserstein_1d(
                   self._subsample(heldout["border"], count, "baseline"), real["border"]),
               # Judge-free: the colours (a class judge is blind to a single-hue generator).
               "colour_fd": fd_of_rows(real["colour"], fake["colour"]),
               "colour_fd_real": fd_of_rows(
                   real["colour"], self._subsample(heldout["colour"], count, "baseline"))}
        if "fd" in self.metrics:
            out["fd_domain"] = fd_of_rows(real["pool"], fake["pool"])
            out["fd_domain_real"] = fd_of_rows(real["pool"], baseline)
        if "kid" in self.metrics:
            # generated first, as torch-fidelity's input1: its subsets are drawn in that order
            out["kid_domain"], out["kid_domain_std"] = kernel_inception_distance(
                fake["pool"], real["pool"], self.kid_subsets, self.kid_subset_size,
                seed=self.seed)
        if "prc" in self.metrics:
            reference = self._subsample(real["pool"], count, "prc")
            out["precision_domain"], out["recall_domain"] = precision_recall(
                fake["pool"], reference)
            out["precision_domain_real"], out["recall_domain_real"] = precision_recall(
                baseline, reference)
        return out

    def _class_checks(self, real: dict[str, Tensor],
                      fake: dict[str, Tensor], heldout: dict[str, Tensor]) -> dict[str, float]:
        judge, info = self.judge, self.judge.info
        predicted = judge.predict(fake["logits"])
        out = {"confident_domain": classes.confident_share(judge.confidence(fake["logits"]),
                                                           info.confidence_threshold),
               "confident_domain_real": classes.confident_share(
                   judge.confidence(heldout["logits"]), info.confidence_threshold)}
        wanted = fake.get("wanted")
        if info.label_kind == "class":
            num = len(info.class_names)
            shares = classes.class_histogram(predicted, num)
            data = classes.class_histogram(judge.predict(real["logits"]), num)
            out["class_kl_domain"] = classes.histogram_kl(shares, data)
            out["modes_domain"] = float(classes.modes_covered(shares, predicted.shape[0]))
            out["min_class_share_domain"] = float(shares.min())
            for name, share in zip(info.class_names, shares.tolist(), strict=True):
                out[f"class_share_domain/{name}"] = share
            if "codes" in fake:
                out["code_nmi_domain"] = classes.normalised_mutual_information(
                    fake["codes"].flatten(), predicted)
        if wanted is not None:
            out.update(self._target_checks(predicted, wanted.squeeze(1)
                                           if info.label_kind == "class" else wanted,
                                           real, fake, heldout))
        if "content" in fake:
            content = fake["content"]
            out["content_kept_domain"] = classes.agreement(content[:, 1], content[:, 0])
        return out

    def _target_checks(self, predicted: Tensor, wanted: Tensor,
                       real: dict[str, Tensor], fake: dict[str, Tensor],
                       heldout: dict[str, Tensor]) -> dict[str, float]:
        """Class consistency of a conditional model, target accuracy of a translator."""
        info = self.judge.info
        translator = bool(fake["translator"])
        if info.label_kind == "attributes":
            out = {"target_accuracy_domain": classes.agreement(predicted, wanted),
                   "target_exact_domain": classes.exact_agreement(predicted, wanted)}
            for j, name in enumerate(info.class_names):
                out[f"target_accuracy_domain/{name}"] = classes.agreement(predicted[:, j],
                                                                          wanted[:, j])
            return out
        if translator and self.data.spec.unpaired:
            domain = classes.domain_classes(self.judge.predict(real["logits"]),
                                            len(info.class_names))
            return {"target_accuracy_domain": classes.domain_share(predicted, domain)}
        if translator:
            return {"target_accuracy_domain": classes.agreement(predicted, wanted)}
        num = len(info.class_names)
        out = {"consistency_domain": classes.agreement(predicted, wanted)}
        if "labels" in real and "labels" in heldout:
            labels = real["labels"].flatten().long()
            out["within_class_fd_domain"] = classes.within_class_fd(
                fake["pool"], wanted.long(), real["pool"], labels, num)
            count = fake["pool"].shape[0]
            held = self._subsample(torch.cat([heldout["pool"], heldout["labels"]], 1), count,
                                   "baseline")
            out["within_class_fd_domain_real"] = classes.within_class_fd(
                held[:, :-1], held[:, -1].long(), real["pool"], labels, num)
        return out


def judge_monitor(family_metric: str | None) -> str | None:
    """The judge's counterpart of a family's FID/KID monitor (None: keep the family's)."""
    return {"fid": "eval/fd_domain", "kid": "eval/kid_domain"}.get(family_metric or "")


def fd_of_rows(a: Tensor, b: Tensor) -> float:
    """torch-fidelity's Fréchet distance between the Gaussians fitted to two sets of rows."""
    a64, b64 = a.double(), b.double()
    return frechet_distance(a64.mean(0), torch.cov(a64.T), b64.mean(0), torch.cov(b64.T))


def precision_recall(generated: Tensor, real: Tensor) -> tuple[float, float]:
    """torch-fidelity's improved precision and recall (Kynkäänniemi et al., k = 3)."""
    prc = fidelity_module("metric_prc")
    out = prc.prc_features_to_metric(generated.float().cpu(), real.float().cpu(),
                                     prc_neighborhood=PRC_NEIGHBORHOOD, prc_batch_size=10000,
                                     save_cpu_ram=False, verbose=False)
    return float(out[prc.KEY_METRIC_PRECISION]), float(out[prc.KEY_METRIC_RECALL])
