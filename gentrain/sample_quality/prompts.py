"""Does a caption-conditioned model draw what its prompt asks? An offline R-precision.

Text-to-image papers score prompt following with a pretrained image-text model (R-precision);
none can be downloaded here, but every shapes caption names two facts the data's judges can
check: the shape (the class judge) and the colour family (the attribute judge, the most likely
of its three colour attributes). Each sample is judged and compared with the shape and colour
its caption asks for, and the real image whose caption it was drawn for is judged too, so each
share comes with what good is: the judges' own accuracy on real images of those captions.
Shape-colour pairs held out of the training captions (``data.caption_holdout``) are scored
apart, since drawing them is composition, not memory. They are rare among the data's captions
(about 1/18 of the test split each, none in the training split), so a fixed share of the
samples is drawn for the test split's captions of held-out pairs instead.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor

from gentrain.data.core.base import DataModule
from gentrain.data.core.batch import Batch, DataSpec
from gentrain.data.datasets.shape_captions import parse_holdout
from gentrain.data.datasets.shapes import COLOUR_FAMILIES, SHAPE_NAMES
from gentrain.errors import GentrainError
from gentrain.sample_quality.conditions import sample_share
from gentrain.sample_quality.judge import Judge, JudgeSettings, judge_data_config, obtain_judge
from gentrain.text.tokenizer import WordTokenizer, tokenizer_of, words

log = logging.getLogger(__name__)

#: The share of the samples drawn for captions of held-out pairs (when the data holds some out).
HELDOUT_SHARE = 0.3
#: Columns of a prompt row: (shape, colour) asked for, judged in the sample, judged in the real
#: image of the caption, and whether the pair asked for is held out (1) or seen (0).
ASKED, DRAWN, REAL, HELD = slice(0, 2), slice(2, 4), slice(4, 6), 6


def require_captions(model_spec: DataSpec, data_spec: DataSpec) -> None:
    """A caption-conditioned model can only be scored on data with captions to prompt it."""
    if model_spec.captioned and not data_spec.captioned:
        raise GentrainError(
            f"This model is conditioned on captions, but the evaluation data {data_spec.name!r} "
            "has none to prompt it with. Evaluate it on the data it was trained on: repeat its "
            "data keys on the command line (e.g. data=shapes data.captions=true "
            "data.caption_holdout='[green triangle]'), or leave data=... out."
        )


def with_model_words(batch: Batch, data_spec: DataSpec, model_spec: DataSpec) -> Batch:
    """``batch`` with its captions in the model's own token ids: the same words, whatever ids
    the evaluation data's tokenizer gave them (another holdout changes the word counts, so the
    order of the vocabulary)."""
    if "caption" not in batch or not model_spec.captioned or (
            model_spec.vocabulary == data_spec.vocabulary
            and model_spec.caption_length == data_spec.caption_length):
        return batch
    texts = tokenizer_of(data_spec).decode(batch["caption"])
    tokens = tokenizer_of(model_spec).encode(texts).to(batch["caption"].device)
    return {**batch, "caption": tokens}


def asked_for(texts: Sequence[str]) -> Tensor:
    """(n, 2) long: the first shape (:data:`SHAPE_NAMES` index) and colour family
    (:data:`COLOUR_FAMILIES` index) each text names, -1 where it names none."""
    out = torch.full((len(texts), 2), -1, dtype=torch.long)
    for row, text in enumerate(texts):
        named = words(text)
        shape = next((w for w in named if w in SHAPE_NAMES), None)
        colour = next((w for w in named if w in COLOUR_FAMILIES), None)
        if shape is not None:
            out[row, 0] = SHAPE_NAMES.index(shape)
        if colour is not None:
            out[row, 1] = COLOUR_FAMILIES.index(colour)
    return out


class PromptChecks:
    """Prompt following on captioned shapes: rows per sample, then the shares."""

    def __init__(self, shape_judge: Judge, colour_judge: Judge, spec: DataSpec,
                 holdout: Sequence[tuple[int, int]], heldout_pool: Batch,
                 heldout_split: str) -> None:
        self.shape_judge, self.colour_judge = shape_judge, colour_judge
        self.tokenizer: WordTokenizer = tokenizer_of(spec)
        self.holdout = tuple(holdout)  # (colour family, shape) index pairs
        self.pool, self.heldout_split = heldout_pool, heldout_split
        self._colour_columns = [colour_judge.info.class_names.index(c) for c in COLOUR_FAMILIES]
        self._shape_of_class = torch.tensor(
            [SHAPE_NAMES.index(name) for name in shape_judge.info.class_names])

    @classmethod
    def for_data(cls, data: DataModule, data_cfg: DictConfig, settings: JudgeSettings,
                 device: torch.device, rank: int = 0) -> PromptChecks | None:
        """The checks of captioned shapes, whose captions all name a shape and a colour the
        judges know (None for any other data: no judge of what its captions say)."""
        spec = data.spec
        if not (spec.captioned and spec.name == "shapes"):
            return None
        shape_judge, colour_judge = (
            obtain_judge(judge_data_config(data_cfg, kind), settings, device, rank=rank)
            for kind in ("class", "attributes"))
        holdout = parse_holdout(data_cfg.get("caption_holdout") or ())
        split = data.eval_split
        pool = heldout_images(data, split, holdout) if holdout else {}
        if holdout and pool["caption"].shape[0] == 0:
            log.warning("The %s split holds no image of the held-out pairs, so prompt "
                        "following is scored on seen pairs only.", split)
        return cls(shape_judge, colour_judge, spec, holdout, pool, split)

    def heldout_count(self, total: int) -> int:
        """How many of ``total`` samples are drawn for held-out pairs' captions."""
        if not self.pool or self.pool["caption"].shape[0] == 0:
            return 0
        return max(0, min(round(HELDOUT_SHARE * total), total - 1))

    def heldout_conditions(self, total: int, rank: int, world_size: int, batch_size: int,
                           device: torch.device) -> Iterator[Batch]:
        """This rank's part of ``total`` held-out conditions, in chunks of at most
        ``batch_size``: the pool's images and captions in turn, cycled, the ranks' parts one
        after another (as one process would draw them all)."""
        start = sum(sample_share(total, r, world_size) for r in range(rank))
        count = sample_share(total, rank, world_size)
        size = self.pool["caption"].shape[0]
        for first in range(0, count, batch_size):
            index = (start + first + torch.arange(min(batch_size, count - first))) % size
            yield {k: v[index].to(device) for k, v in self.pool.items()}

    def judged(self, pixels: Tensor) -> Tensor:
        """(n, 2) long: the judged shape and colour family of uint8 RGB images."""
        shape = self.shape_judge(pixels)["logits"].argmax(1)
        colour = self.colour_judge(pixels)["logits"][:, self._colour_columns].argmax(1)
        return torch.stack([self._shape_of_class.to(shape.device)[shape], colour], dim=1)

    def rows(self, samples: Tensor, real: Tensor, captions: Tensor) -> Tensor:
        """One prompt row (:data:`ASKED` ... :data:`HELD`) per sample, from uint8 RGB samples,
        the real images of their captions and the captions' token ids (the data's)."""
        samples_judged = self.judged(samples)
        device = samples_judged.device
        asked = asked_for(self.tokenizer.decode(captions)).to(device)
        held = torch.zeros(asked.shape[0], dtype=torch.bool, device=device)
        for colour, shape in self.holdout:
            held |= (asked[:, 1] == colour) & (asked[:, 0] == shape)
        return torch.cat([asked, samples_judged, self.judged(real).to(device),
                          held[:, None].long()], dim=1)

    def metrics(self, reference: Tensor | None, heldout: Tensor | None) -> dict[str, float]:
        """The shares of samples judged the shape, the colour and both that their captions ask
        for, each with its real images' counterpart (``_real``) and count: over the reference
        split's captions, then (with a holdout) over seen and held-out pairs apart."""
        reference, heldout = _parsed(reference), _parsed(heldout)
        groups = {"": reference}
        if self.holdout:
            every = torch.cat([reference, heldout])
            groups["_seen"] = every[every[:, HELD] == 0]
            groups["_heldout"] = every[every[:, HELD] == 1]
        out: dict[str, float] = {}
        for suffix, rows in groups.items():
            out[f"prompt_count_domain{suffix}"] = float(rows.shape[0])
            if rows.shape[0] == 0:
                continue
            for judged, end in ((DRAWN, ""), (REAL, "_real")):
                right = rows[:, judged] == rows[:, ASKED]
                for name, hits in (("prompt_accuracy", right.all(dim=1)),
                                   ("prompt_shape_accuracy", right[:, 0]),
                                   ("prompt_colour_accuracy", right[:, 1])):
                    out[f"{name}_domain{suffix}{end}"] = float(hits.double().mean())
        return out

    def describe(self, reference_split: str, num_reference: int,
                 num_heldout: int) -> dict[str, Any]:
        """How the prompt shares were made: recorded in the protocol next to them."""
        return {
            "shape_judge": self.shape_judge.info.describe(),
            "colour_judge": self.colour_judge.info.describe(),
            "asked": "the first shape name and colour family among the words of each caption",
            "judged": "shape: the class judge's class; colour: the attribute judge's most "
                      "likely of red, green, blue",
            "real": "*_real: the same judges on the real image each caption belongs to",
            "caption_holdout": [f"{COLOUR_FAMILIES[c]} {SHAPE_NAMES[s]}"
                                for c, s in self.holdout],
            "reference_prompts": {"split": reference_split, "count": num_reference,
                                  "captions": "each image's caption 0, in turn (the samples "
                                              "behind fd_domain and the other distances)"},
            "heldout_prompts": {"split": self.heldout_split, "count": num_heldout,
                                "share": HELDOUT_SHARE if num_heldout else 0.0,
                                "images": int(self.pool["caption"].shape[0]) if self.pool else 0,
                                "captions": "caption 0 of the split's images of held-out "
                                            "pairs, cycled; scored apart from the distances"},
        }


def heldout_images(data: DataModule, split: str, holdout: Sequence[tuple[int, int]]) -> Batch:
    """``{"image", "caption"}`` (CPU) of the images of ``split`` whose caption asks for a
    held-out (colour, shape) pair."""
    tokenizer = tokenizer_of(data.spec)
    images, captions = [], []
    for batch in data.eval_batches(split=split, device=torch.device("cpu")):
        asked = asked_for(tokenizer.decode(batch["caption"]))
        keep = torch.zeros(asked.shape[0], dtype=torch.bool)
        for colour, shape in holdout:
            keep |= (asked[:, 1] == colour) & (asked[:, 0] == shape)
        images.append(batch["image"][keep])
        captions.append(batch["caption"][keep])
    if not images:
        raise GentrainError(f"The {split} split of {data.spec.name} is empty; prompt following "
                            "needs its captions.")
    return {"image": torch.cat(images), "caption": torch.cat(captions)}


def _parsed(rows: Tensor | None) -> Tensor:
    """Rows (gathered as float) back to long, without captions that name no shape or colour."""
    if rows is None:
        return torch.zeros(0, HELD + 1, dtype=torch.long)
    rows = rows.round().long().cpu()
    return rows[(rows[:, ASKED] >= 0).all(dim=1)]
