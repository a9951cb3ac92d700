"""A word-level tokenizer built from the training captions.

Captions of image datasets are short and plainly worded (shapes' templates, CUB's and
Oxford-102's ten descriptions, COCO's five), so whole words are tokens: the vocabulary is
small, every token is readable in a grid or a log, and an unknown word at sampling time maps
to ``<unk>`` instead of failing. The vocabulary travels in the :class:`DataSpec`, which every
checkpoint stores, so a model and its tokenizer never part.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from gentrain.data.core.batch import DataSpec
from gentrain.errors import GentrainError, require

PAD, UNK = 0, 1
SPECIAL = ("<pad>", "<unk>")
_WORD = re.compile(r"[a-z0-9]+")


def words(text: str) -> list[str]:
    """The words of ``text``: lower-cased runs of letters and digits (punctuation dropped)."""
    return _WORD.findall(text.lower())


@dataclass(frozen=True)
class WordTokenizer:
    """Captions to fixed-length token ids: 0 pads, 1 is an unknown word."""

    vocabulary: tuple[str, ...]
    max_length: int

    def __post_init__(self) -> None:
        require(self.vocabulary[:2] == SPECIAL,
                f"A tokenizer's vocabulary starts with {SPECIAL}; this one does not.")
        require(self.max_length >= 1, f"caption_length must be >= 1, not {self.max_length}.")
        object.__setattr__(self, "_index", {w: i for i, w in enumerate(self.vocabulary)})

    @classmethod
    def build(cls, captions: Iterable[str], max_length: int,
              min_count: int = 1) -> WordTokenizer:
        """The words seen at least ``min_count`` times, most frequent first (ties by spelling,
        so the same captions always give the same ids)."""
        counts = Counter(w for caption in captions for w in words(caption))
        kept = sorted((w for w, c in counts.items() if c >= min_count),
                      key=lambda w: (-counts[w], w))
        require(kept, "The training captions hold no word (letters or digits); check the "
                "caption files.")
        return cls((*SPECIAL, *kept), max_length)

    def __len__(self) -> int:
        return len(self.vocabulary)

    def unknown_words(self, text: str) -> list[str]:
        """The words of ``text`` outside the vocabulary (they become ``<unk>``)."""
        return [w for w in words(text) if w not in self._index]  # type: ignore[attr-defined]

    def encode(self, texts: Sequence[str]) -> Tensor:
        """Token ids (N, max_length), long: truncated or padded with 0."""
        index: dict[str, int] = self._index  # type: ignore[attr-defined]
        out = torch.full((len(texts), self.max_length), PAD, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [index.get(w, UNK) for w in words(text)][: self.max_length]
            out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out

    def decode(self, tokens: Tensor) -> list[str]:
        """The captions of token ids (N, L): words joined by spaces, pads dropped."""
        return [" ".join(self.vocabulary[i] for i in row if i != PAD)
                for row in tokens.reshape(-1, tokens.shape[-1]).tolist()]


def tokenizer_of(spec: DataSpec) -> WordTokenizer:
    """The tokenizer a captioned dataset (or a checkpoint's spec) was built with."""
    if not spec.captioned:
        raise GentrainError(
            f"Data {spec.name!r} has no captions, so no text can condition this model. Use a "
            "captioned dataset (data=shapes data.captions=true, data=folder data.captions=true "
            "with NAME.txt next to each image, data=cub, data=flowers or data=coco)."
        )
    return WordTokenizer(spec.vocabulary, spec.caption_length)


def encode_prompts(tokenizer: WordTokenizer, prompts: Sequence[str], where: str) -> Tensor:
    """Token ids of ``prompts``, or a clear error for one without a single word."""
    for number, prompt in enumerate(prompts, 1):
        if not words(prompt):
            raise GentrainError(
                f"{where}: prompt {number} ({prompt!r}) has no word to condition on. Give "
                "each prompt some text, e.g. \"a red circle on a dark background\"."
            )
    return tokenizer.encode(prompts)
