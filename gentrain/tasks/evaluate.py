"""task=eval: a checkpoint's family metrics on a data split, written next to the checkpoint.

Per-example metrics (ELBO and importance-sampled NLL, bits/dim, L1/PSNR/SSIM) average over
``eval.split``; sample-quality metrics (FID/KID/IS) compare generated images with
``eval.reference_split`` and carry the protocol that produced them. ``eval.samplers`` scores
the sample quality once per sampler (DDPM: ``[ddim:20,dpm_solver++:20:quadratic]``), each row
the ``model.sampler.*`` call-time keys applied on top of the command line's.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from gentrain.data import build_data
from gentrain.engine import checkpoint as ckpt
from gentrain.engine.device import autocast_factory, resolve_device
from gentrain.engine.evaluation import evaluate_model
from gentrain.errors import GentrainError
from gentrain.files import atomic_write
from gentrain.models.base import GenerativeModel
from gentrain.sample_quality.evaluate import build_sample_quality, settings_from_config
from gentrain.sweeps.summary import format_table
from gentrain.tasks.inference import evaluation_data_config
from gentrain.tasks.setup import model_from_checkpoint

log = logging.getLogger(__name__)

#: The parts of an ``eval.samplers`` entry ``name[:steps[:spacing]]``: ``model.sampler`` keys.
SAMPLER_ROW_KEYS = ("name", "steps", "spacing")


def evaluate(cfg: DictConfig, run_dir: Path, overrides: Sequence[str] = ()) -> dict[str, Any]:
    if cfg.ckpt is None:
        raise GentrainError(
            "task=eval needs a checkpoint: add ckpt=<run dir or .pt file> (and optionally "
            "eval.split=test eval.limit=N)."
        )
    device = resolve_device(cfg.trainer.device)
    model, state, trained = model_from_checkpoint(
        cfg.ckpt, use_ema=cfg.eval.ema, device=device, cfg=cfg, overrides=overrides
    )
    # The data the model was trained on, with the data keys the command line gives.
    data_cfg = evaluation_data_config(trained.data, cfg.data, overrides)
    data = build_data(data_cfg)
    # Built first: missing Inception weights stop the task before any costly evaluation.
    settings = settings_from_config(cfg.eval, model.sample_quality_metrics)
    quality = settings and build_sample_quality(settings, data, data_cfg, device, cfg.seed)
    # Every row's model is built (on the CPU) before anything is scored: a bad row stops here.
    rows = sampler_models(cfg, overrides, model, bool(quality))
    metrics: dict[str, float] = {}
    if cfg.eval.per_example:
        metrics.update(evaluate_model(model, data, split=cfg.eval.split, device=device,
                                      limit=cfg.eval.limit, progress=True))
    protocol = None
    autocast = autocast_factory(device, str(cfg.trainer.precision))
    per_sampler: dict[str, dict[str, Any]] = {}
    if quality and rows is None:
        values, protocol = quality(model, progress=True, autocast=autocast)
        metrics.update(values)
    for label, row_model in rows or {}:
        log.info("Sample quality with the sampler %s.", label)
        row_model.to(device)
        start = time.perf_counter()
        values, protocol = quality(row_model, progress=True, autocast=autocast)
        per_sampler[label] = {"sampler": _sampler_settings(row_model), "metrics": values,
                              "seconds": round(time.perf_counter() - start, 3)}
        row_model.cpu()
    if not metrics and not per_sampler:
        raise GentrainError(
            f"Nothing to evaluate: the {model.family} family has no per-example metrics and no "
            "sample-quality metric was asked for. Set eval.sample_quality=[fid] (and "
            "eval.per_example=true)."
        )
    checkpoint = ckpt.resolve_checkpoint(cfg.ckpt)
    result = {"checkpoint": str(checkpoint), "step": int(state["step"]),
              "family": model.family, "split": cfg.eval.split, "limit": cfg.eval.limit,
              "weights": "ema" if cfg.eval.ema and state.get("ema") is not None else "live",
              "metrics": metrics, "sample_quality_protocol": protocol}
    if rows is not None:
        result["samplers"] = per_sampler  # the protocol above holds for every row
    text = json.dumps(result, indent=2) + "\n"
    for path in (checkpoint.parent / "eval.json", run_dir / "eval.json"):
        atomic_write(path, lambda tmp: tmp.write_text(text))  # noqa: B023 (called at once)
    if metrics:
        print(format_table(["metric", "value"], [[k, f"{v:.6g}"] for k, v in metrics.items()]))
    if per_sampler:
        print(("\n" if metrics else "") + sampler_table(per_sampler))
    print(f"Written to {checkpoint.parent / 'eval.json'}")
    return result


def sampler_rows(entries: Sequence[Any], mapping: bool = True
                 ) -> list[tuple[str, dict[str, Any]]]:
    """``eval.samplers`` entries as (label, {override key: value}).

    Where ``model.sampler`` is a mapping (DDPM) an entry is ``name[:steps[:spacing]]``, its
    parts ``model.sampler.name`` … (a part left out keeps the command line's or the
    checkpoint's value); where it is one value (PixelCNN's cached | naive), the entry is it.
    """
    rows: list[tuple[str, dict[str, Any]]] = []
    for entry in entries:
        label = str(entry)
        parts = label.split(":")
        if not mapping:
            if len(parts) != 1:
                raise GentrainError(
                    f"eval.samplers entry {label!r}: this family's model.sampler is one value, "
                    "so each entry is one of its values.")
            rows.append((label, {"model.sampler": label}))
            continue
        if not 1 <= len(parts) <= len(SAMPLER_ROW_KEYS) or not all(parts):
            raise GentrainError(
                f"eval.samplers entry {label!r} is not name[:steps[:spacing]], e.g. ddim:20 "
                "or dpm_solver++:20:quadratic.")
        keys: dict[str, Any] = dict(zip(SAMPLER_ROW_KEYS, parts, strict=False))
        if "steps" in keys:
            if not keys["steps"].isdigit():
                raise GentrainError(
                    f"eval.samplers entry {label!r}: the steps {keys['steps']!r} are not a "
                    "whole number (name[:steps[:spacing]]).")
            keys["steps"] = int(keys["steps"])
        rows.append((label, {f"model.sampler.{k}": v for k, v in keys.items()}))
    labels = [label for label, _ in rows]
    twice = sorted({label for label in labels if labels.count(label) > 1})
    if twice:
        raise GentrainError(f"eval.samplers names {', '.join(twice)} twice.")
    return rows


def sampler_models(cfg: DictConfig, overrides: Sequence[str], model: GenerativeModel,
                   scored: bool) -> list[tuple[str, GenerativeModel]] | None:
    """The checkpoint's model once per ``eval.samplers`` row (None without the key), on the
    CPU: each row's keys go through the same call-time path as ``model.sampler...`` on the
    command line, so the family checks them as it checks those."""
    entries = cfg.eval.get("samplers")
    if entries is None:
        return None
    if not OmegaConf.is_list(entries) or not entries:
        raise GentrainError(
            f"eval.samplers={entries} must be a non-empty list such as "
            "[ddim:20,dpm_solver++:20,ancestral] (or null: the model's own sampler).")
    if "sampler" not in model.inference_keys:
        raise GentrainError(
            f"eval.samplers compares samplers, but the {model.family} family has no "
            "model.sampler call-time key (ddpm has); drop eval.samplers.")
    if not scored:
        raise GentrainError(
            "eval.samplers scores each sampler's sample quality, but no sample-quality metric "
            "is asked for: set eval.sample_quality (e.g. auto) or drop eval.samplers.")
    mapping = OmegaConf.is_dict(cfg.model.get("sampler"))
    models = []
    for label, keys in sampler_rows(list(entries), mapping):
        row_cfg = copy.deepcopy(cfg)
        row_overrides = list(overrides)
        with open_dict(row_cfg):
            for key, value in keys.items():
                OmegaConf.update(row_cfg, key, value, force_add=True)
                row_overrides.append(f"{key}={value}")
        try:
            row_model, _, _ = model_from_checkpoint(
                cfg.ckpt, use_ema=cfg.eval.ema, device=torch.device("cpu"), cfg=row_cfg,
                overrides=row_overrides)
        except GentrainError as error:
            raise GentrainError(f"eval.samplers entry {label!r}: {error}") from None
        models.append((label, row_model))
    return models


def _sampler_settings(model: GenerativeModel) -> Any:
    """The sampler a row's model drew with, as the family resolved it (None: not readable)."""
    sampler = getattr(model, "sampler", None)
    if dataclasses.is_dataclass(sampler) and not isinstance(sampler, type):
        return dataclasses.asdict(sampler)
    return sampler if isinstance(sampler, str | int | float) else None


def sampler_table(per_sampler: dict[str, dict[str, Any]]) -> str:
    """One row per sampler, one column per sample-quality number (and the seconds taken)."""
    names = list(dict.fromkeys(k for row in per_sampler.values() for k in row["metrics"]))
    rows = [[label, *(f"{row['metrics'][k]:.6g}" if k in row["metrics"] else "-"
                      for k in names), f"{row['seconds']:.1f}"]
            for label, row in per_sampler.items()]
    return format_table(["sampler", *names, "seconds"], rows)
