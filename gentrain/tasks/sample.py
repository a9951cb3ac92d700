"""task=sample: draw images from a checkpoint (EMA weights when it has them)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor
from torchvision.utils import save_image
from tqdm.auto import tqdm

from gentrain.data import build_data
from gentrain.data.core.batch import DataSpec
from gentrain.data.core.images import SquareImage, list_images
from gentrain.engine.device import autocast_factory, resolve_device
from gentrain.engine.run_log import RunLog, to_unit
from gentrain.errors import GentrainError, require
from gentrain.models.base import GenerativeModel, Grid
from gentrain.tasks.setup import model_from_checkpoint
from gentrain.text.tokenizer import encode_prompts, tokenizer_of

log = logging.getLogger(__name__)


def sample(cfg: DictConfig, run_dir: Path, overrides: Sequence[str] = ()) -> dict[str, Any]:
    if cfg.ckpt is None:
        raise GentrainError(
            "task=sample needs a checkpoint: add ckpt=<run dir or .pt file>, e.g. "
            "ckpt=outputs/vae-shapes/<date>/checkpoints/last.pt."
        )
    num, nrow, chunk = cfg.sample.num, cfg.sample.nrow, cfg.sample.batch_size
    require(num >= 1 and nrow >= 1 and chunk >= 1,
            f"sample.num ({num}), sample.nrow ({nrow}) and sample.batch_size ({chunk}) must be "
            ">= 1.")
    device = resolve_device(cfg.trainer.device)
    model, state, config = model_from_checkpoint(
        cfg.ckpt, use_ema=cfg.sample.ema, device=device, cfg=cfg, overrides=overrides
    )
    generator = torch.Generator(device=device).manual_seed(cfg.sample.seed)
    autocast = autocast_factory(device, str(cfg.trainer.precision))
    if hasattr(model, "domain_grid"):  # attribute translators (StarGAN): nothing from noise
        return domain_translations(cfg, config, model, int(state["step"]), device, run_dir,
                                   autocast)
    if model.spec.patches:  # Puzzle-GAN: whole images from key patches
        from gentrain.tasks.patch_sample import patch_samples

        return patch_samples(cfg, config, model, int(state["step"]), device, run_dir, autocast)
    pairs = sources_to_translate(cfg, config, model.spec, device) if model.spec.source_channels \
        else None
    if pairs is not None:
        num = min(num, pairs["source"].shape[0])
    labels = class_labels(cfg, model, num, device)
    prompted = prompt_captions(cfg, model, num, device)
    total = num if prompted is None else prompted[1].shape[0]
    parts = []
    # Chunks of sample.batch_size bound the memory; the generator runs on across chunks, so
    # the images depend on the seed and the chunk size only.
    for start in tqdm(range(0, total, chunk), desc="sample", unit="chunk",
                      disable=total <= chunk):
        size = min(chunk, total - start)
        cond = None if pairs is None else {k: v[start : start + size] for k, v in pairs.items()}
        if labels is not None:
            cond = {"label": labels[start : start + size]}
        if prompted is not None:
            cond = {"caption": prompted[1][start : start + size]}
        with autocast():
            parts.append(model.sample(size, cond, generator).float())
    images = torch.cat(parts)
    out = RunLog(run_dir, tensorboard=False)
    shown = Grid(images, nrow=nrow) if prompted is None else prompt_grid(images, prompted[0], nrow)
    if pairs is not None:  # rows of source | output (| target)
        columns = [pairs["source"][:num], images, *([pairs["image"][:num]] if "image" in pairs
                                                    else [])]
        columns = [c.float().expand(-1, images.shape[1], -1, -1) if c.shape[1] == 1 else
                   c.float()[:, : images.shape[1]] for c in columns]
        shown = Grid(torch.stack(columns, dim=1).flatten(0, 1), nrow=len(columns))
    grid = out.grid(int(state["step"]), "sample", shown)
    if cfg.sample.individual:
        write_individual(run_dir, {f"{i:05d}": image for i, image in enumerate(images)})
    log.info("Wrote %s", grid)
    return {"grid": str(grid), "num": total, "step": int(state["step"])}


def domain_translations(cfg: DictConfig, run_config: DictConfig, model: GenerativeModel,
                        step: int, device: torch.device, run_dir: Path,
                        autocast: Callable[[], Any]) -> dict[str, Any]:
    """``sample.num`` images of the run's ``eval.split``, each in every domain of the model
    (one row per image: the input, then its translations), in chunks of ``sample.batch_size``."""
    require(cfg.sample.source is None,
            f"This {model.family} translates images with their own labels (each image's "
            "attributes), which a folder does not give: drop sample.source; task=sample "
            "translates sample.num images of the run's eval.split.")
    data = build_data(run_config.data)
    batches = list(data.eval_batches(split=cfg.eval.split, device=device, limit=cfg.sample.num))
    batch = {k: torch.cat([b[k] for b in batches]) for k in ("image", "label")}
    num, chunk = batch["image"].shape[0], cfg.sample.batch_size
    grids = []
    for start in range(0, num, chunk):
        with autocast():
            grids.append(model.domain_grid({k: v[start : start + chunk]  # type: ignore[operator]
                                            for k, v in batch.items()}))
    shown = Grid(torch.cat([g.images for g in grids]), nrow=grids[0].nrow)
    grid = RunLog(run_dir, tensorboard=False).grid(step, "sample", shown)
    if cfg.sample.individual:  # each translation, named by the image and its target attribute
        rows = shown.images.unflatten(0, (num, shown.nrow))[:, 1:]
        names = model.spec.class_names
        write_individual(run_dir, {f"{i:05d}_{names[j]}": rows[i, j]
                                   for i in range(num) for j in range(rows.shape[1])})
    log.info("Wrote %s", grid)
    return {"grid": str(grid), "num": num, "step": step}


def write_individual(run_dir: Path, images: dict[str, Tensor]) -> None:
    """One PNG per image in [-1, 1] under samples/individual/, named by its key."""
    folder = run_dir / "samples" / "individual"
    folder.mkdir(parents=True, exist_ok=True)
    for name, image in images.items():
        save_image(to_unit(image), folder / f"{name}.png")


def class_labels(cfg: DictConfig, model: GenerativeModel, num: int,
                 device: torch.device) -> Tensor | None:
    """A class-conditional model's label per image: ``sample.labels`` (or every class) in
    turn, over the whole grid (so rows line up whatever ``sample.batch_size`` is)."""
    asked = cfg.sample.labels
    conditional = bool(getattr(model, "conditional", False)) and model.spec.num_classes > 0
    if asked is None and not conditional:
        return None
    require(conditional, f"sample.labels needs a class-conditional model; this {model.family} "
            "was not trained with model.conditional=true. Drop sample.labels.")
    classes = list(asked) if asked is not None else list(range(model.spec.num_classes))
    bad = [c for c in classes if not (isinstance(c, int) and 0 <= c < model.spec.num_classes)]
    require(bool(classes) and not bad,
            f"sample.labels={classes} must be class ids in 0..{model.spec.num_classes - 1}.")
    return torch.tensor(classes, device=device).repeat(num // len(classes) + 1)[:num]


def prompt_captions(cfg: DictConfig, model: GenerativeModel, num: int,
                    device: torch.device) -> tuple[list[str], Tensor] | None:
    """A caption-conditional model's prompts (``sample.prompt``, or the lines of the file
    ``sample.prompts``) and the tokens of each image: ``num`` per prompt, prompt after prompt.

    Words the training captions never had are logged and become ``<unk>``; None when no prompt
    is asked for (a caption-conditional model then draws for the empty caption, unconditionally).
    """
    prompt, path = cfg.sample.prompt, cfg.sample.prompts
    if prompt is None and path is None:
        if model.captioned:
            require(not model.needs_caption,
                    f"model={model.family} draws images for captions only (it never learned an "
                    "empty one): give sample.prompt=\"a red circle on a dark background\" or "
                    "sample.prompts=FILE (one prompt per line).")
            log.info("No sample.prompt or sample.prompts: drawing unconditional samples (the "
                     "empty caption).")
        return None
    require(prompt is None or path is None,
            "Give sample.prompt (one prompt) or sample.prompts (a file of prompts), not both.")
    require(model.captioned,
            f"sample.prompt and sample.prompts need a caption-conditional model; this "
            f"{model.family} was trained without captions (train one with "
            "model.conditional=caption on captioned data). Drop the prompt.")
    prompts = [str(prompt)] if prompt is not None else read_prompts(Path(str(path)))
    tokenizer = tokenizer_of(model.spec)
    for text in prompts:
        unknown = tokenizer.unknown_words(text)
        if unknown:
            log.warning("Prompt %r: %s never appeared in the training captions (a vocabulary "
                        "of %d words); each becomes <unk>.", text, ", ".join(unknown),
                        len(tokenizer) - 2)
    where = "sample.prompt" if prompt is not None else f"sample.prompts={path}"
    tokens = encode_prompts(tokenizer, prompts, where)
    return prompts, tokens.to(device).repeat_interleave(num, 0)


def read_prompts(path: Path) -> list[str]:
    """The non-blank lines of ``path``, one prompt each."""
    path = path.expanduser()
    require(path.is_file(), f"sample.prompts={path} is not a file. Give a text file with one "
            "prompt per line, e.g. \"a green triangle on a light background\".")
    prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    prompts = [line for line in prompts if line]
    require(bool(prompts), f"sample.prompts={path} has no prompt: write one prompt per line, "
            "e.g. \"a green triangle on a light background\".")
    return prompts


def prompt_grid(images: Tensor, prompts: list[str], nrow: int) -> Grid:
    """One prompt's images in rows of ``sample.nrow``; several prompts one row each (all of a
    prompt's images); every row titled with its prompt."""
    if len(prompts) > 1:
        return Grid(images, nrow=images.shape[0] // len(prompts), titles=tuple(prompts))
    rows = -(-images.shape[0] // nrow)
    return Grid(images, nrow=nrow, titles=(prompts[0],) * rows)


def sources_to_translate(
    cfg: DictConfig, run_config: DictConfig, spec: DataSpec, device: torch.device
) -> dict[str, Tensor]:
    """Inputs of an image-to-image model: the images in ``sample.source`` (a folder), or
    ``sample.num`` pairs of the run's data split ``eval.split``."""
    if cfg.sample.source is None:
        data = build_data(run_config.data)
        batches = data.eval_batches(split=cfg.eval.split, device=device, limit=cfg.sample.num)
        pairs = list(batches)
        return {k: torch.cat([b[k] for b in pairs]) for k in ("source", "image")}
    folder = Path(str(cfg.sample.source)).expanduser()
    files = list_images(folder) if folder.is_dir() else []
    require(bool(files), f"sample.source={folder} is not a folder with images (JPEG, PNG, ...). "
            "Point it at a folder of source images, or leave it null to translate the run's "
            "test split.")
    prepare = SquareImage(spec.height, channels=spec.source_channels)
    sources = torch.stack([prepare(path)["image"] for path in files[: cfg.sample.num]])
    return {"source": sources.to(device).float() / 127.5 - 1.0}
