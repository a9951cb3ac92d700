"""Captions as data: the word tokenizer, the shapes captions, the caption choice in the
stream, the text encoder's padding and titled grids."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gentrain.data.core.seeding import epoch_permutation
from gentrain.data.datasets.shape_captions import TEMPLATES
from gentrain.data.datasets.shapes import COLOUR_FAMILIES, SHAPE_NAMES, shapes
from gentrain.engine.run_log import RunLog
from gentrain.errors import GentrainError
from gentrain.models.base import Grid
from gentrain.nets.text import TextEncoder
from gentrain.text.tokenizer import PAD, UNK, WordTokenizer, encode_prompts, tokenizer_of

CPU = torch.device("cpu")


def captioned(**overrides: object):
    settings = {"batch_size": 16, "num_train": 300, "num_test": 60, "resolution": 16,
                "captions": True, **overrides}
    return shapes(**settings)  # type: ignore[arg-type]


def test_tokenizer_round_trips_known_words_and_maps_unknown_ones_to_unk() -> None:
    tokenizer = WordTokenizer.build(["A red circle.", "a blue ring, upper left"], max_length=6)
    ids = tokenizer.encode(["a red ring", "a purple circle on the moon"])
    assert tokenizer.decode(ids[:1]) == ["a red ring"]
    assert ids[1, 1] == UNK and ids[1].tolist().count(UNK) == 4  # purple, on, the, moon
    assert ids.shape == (2, 6) and ids[0, 3:].eq(PAD).all()
    assert tokenizer.unknown_words("a purple circle") == ["purple"]
    assert tokenizer.vocabulary[:3] == ("<pad>", "<unk>", "a")  # most frequent word first


def test_tokenizer_truncates_and_is_built_the_same_from_the_same_captions() -> None:
    captions = ["one two three four five", "two three"]
    a, b = WordTokenizer.build(captions, 3), WordTokenizer.build(list(captions), 3)
    assert a == b
    assert a.decode(a.encode(["one two three four five"])) == ["one two three"]


def test_a_prompt_without_words_is_a_clear_error() -> None:
    tokenizer = WordTokenizer.build(["a red circle"], 4)
    with pytest.raises(GentrainError, match="prompt 2"):
        encode_prompts(tokenizer, ["a red circle", " ,. "], "sample.prompts")


def test_uncaptioned_data_has_no_tokenizer() -> None:
    with pytest.raises(GentrainError, match="no captions"):
        tokenizer_of(shapes(batch_size=4, num_train=8, num_test=4, resolution=8).spec)


def test_every_shapes_caption_names_its_images_shape_and_colour() -> None:
    module = captioned(labels="attributes")
    split = module.splits["test"]
    tokenizer = tokenizer_of(module.spec)
    shape_split = captioned().splits["test"]  # the same images with class labels
    assert torch.equal(split.images, shape_split.images)
    for i in range(len(split)):
        texts = tokenizer.decode(split.captions[i])
        colour = COLOUR_FAMILIES[int(split.labels[i, :3].argmax())]
        shape = SHAPE_NAMES[int(shape_split.labels[i])]
        assert len(texts) == len(TEMPLATES)
        ground = "light" if split.labels[i, 3] else "dark"
        for text in texts:
            assert f"{colour} {shape}" in text or f"{shape} is {colour}" in text
            assert "background" not in text or ground in text


def test_held_out_pairs_leave_the_training_split_only() -> None:
    module = captioned(caption_holdout=["green triangle", "red ring"])
    tokenizer = tokenizer_of(module.spec)

    def pairs(split: str) -> set[str]:
        return {text for text in tokenizer.decode(module.splits[split].captions[:, 0])}

    train, test = " ".join(pairs("train")), " ".join(pairs("test"))
    for pair in ("green triangle", "red ring"):
        assert pair not in train and pair in test
    with pytest.raises(GentrainError, match="<colour> <shape>"):
        captioned(caption_holdout=["purple triangle"])


def test_training_draws_every_phrasing_and_eval_keeps_the_first() -> None:
    module = captioned(num_train=32, batch_size=32)
    loader = module.train_loader(device=CPU, seed=0)
    split = module.splits["train"]
    seen: dict[int, set[tuple[int, ...]]] = {}
    for _ in range(12):  # one batch per epoch: the whole split each time
        batch = next(loader)
        assert "captions" not in batch and batch["caption"].shape == (32, 16)
        for caption in batch["caption"]:
            rows = (split.captions == caption).all(-1).nonzero()
            seen.setdefault(int(rows[0, 0]), set()).add(tuple(caption.tolist()))
    assert max(len(v) for v in seen.values()) >= 4
    fixed = module.fixed_batch(8, CPU)
    assert torch.equal(fixed["caption"], module.splits["test"].captions[:8, 0])


def test_captioned_shapes_are_not_flipped_since_captions_name_left_and_right() -> None:
    module = captioned(num_train=16, batch_size=16)
    batch = next(module.train_loader(device=CPU, seed=0))
    order = epoch_permutation(16, 0, 0)
    expected = module.splits["train"].images[order].float() / 127.5 - 1
    assert torch.equal(batch["image"], expected)


def test_text_encoder_leaves_unknown_words_out() -> None:
    torch.manual_seed(0)
    encoder = TextEncoder(vocab_size=12, max_length=5, width=16, layers=1, heads=2)
    known, _, _ = encoder(torch.tensor([[3, 4, 0, 0, 0]]))
    with_unknown, _, mask = encoder(torch.tensor([[3, 4, UNK, 0, 0]]))
    assert mask[0, 3] and torch.allclose(with_unknown, known, atol=1e-6)


def test_text_encoder_ignores_padding_and_encodes_the_empty_caption() -> None:
    torch.manual_seed(0)
    encoder = TextEncoder(vocab_size=12, max_length=5, width=16, layers=1, heads=2)
    tokens = torch.tensor([[3, 4, 0, 0, 0], [0, 0, 0, 0, 0]])
    pooled, per_token, mask = encoder(tokens)
    assert per_token.shape == (2, 6, 16) and mask[:, 0].eq(False).all()
    assert torch.isfinite(pooled).all()  # the empty caption still has its summary token
    with torch.no_grad():
        encoder.tokens.weight[PAD] += 1.0  # what sits at padded positions
    again, _, _ = encoder(tokens)
    assert torch.equal(again, pooled)
    changed, _, _ = encoder(torch.tensor([[3, 5, 0, 0, 0], [0, 0, 0, 0, 0]]))
    assert not torch.allclose(changed[0], pooled[0]) and torch.equal(changed[1], pooled[1])


def test_grid_titles_widen_the_grid_with_text_level_with_each_row(tmp_path: Path) -> None:
    images = torch.zeros(4, 3, 16, 16)
    log = RunLog(tmp_path, tensorboard=False)
    plain = log.grid(0, "plain", Grid(images, nrow=2))
    titled = log.grid(0, "titled", Grid(images, nrow=2, titles=("a red circle", "")))
    from PIL import Image

    a, b = Image.open(plain), Image.open(titled)
    assert b.height == a.height and b.width > a.width + 40
    strip = torch.tensor(list(b.convert("L").getdata())).view(b.height, b.width)
    text_rows = (strip[:, : b.width - a.width] < 128).any(1).nonzero()
    assert text_rows.max() < 2 + 16  # only the first row has a title
