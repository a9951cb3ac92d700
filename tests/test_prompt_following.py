"""Prompt following of caption-conditioned models (eval.features=domain): hand-made painters
that draw exactly what they are asked, ignore the colour, or draw only seen shape-colour pairs
score what each should, seen and held-out pairs apart, next to the real images' own score."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import Tensor

from gentrain.data import build_data
from gentrain.data.core.tensor_data import TensorDataModule
from gentrain.data.datasets.shapes import (
    COLOUR_FAMILIES,
    SHAPE_NAMES,
    draw_shapes,
    render_shapes,
    shapes,
)
from gentrain.errors import GentrainError
from gentrain.models.base import GenerativeModel
from gentrain.sample_quality.domain import DomainQuality
from gentrain.sample_quality.judge import JudgeSettings, judge_data_config, judge_path
from gentrain.sample_quality.prompts import HELDOUT_SHARE, asked_for
from gentrain.text.tokenizer import tokenizer_of

CPU = torch.device("cpu")
RESOLUTION = 16
# Captioned 16-px shapes without green triangles in the training captions; the test split
# keeps them (about 1/18 of its 600 images).
DATA = {"_target_": "gentrain.data.datasets.shapes.shapes", "name": "shapes", "batch_size": 64,
        "resolution": RESOLUTION, "channels": 3, "num_train": 1200, "num_test": 600, "seed": 0,
        "hflip": False, "pair": None, "labels": "class", "unpaired": None, "captions": True,
        "caption_holdout": ["green triangle"], "caption_length": 16}
# Enough training for the shape judge to tell the six apart on light grounds too (about 97%).
SETTINGS = {"steps": 300, "batch_size": 64, "width": 16, "lr": 0.005}
NUM_SAMPLES = 300
Choice = Callable[[Tensor, Tensor, torch.Generator], tuple[Tensor, Tensor]]


def data_cfg(**changes: object) -> OmegaConf:
    return OmegaConf.create({**DATA, **changes})


@pytest.fixture(scope="module")
def judge_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("judges")


def settings(cache: Path, **changes: object) -> JudgeSettings:
    return JudgeSettings(**{**SETTINGS, "cache": str(cache), **changes})  # type: ignore[arg-type]


def evaluator(cfg: OmegaConf, cache: Path, reference_split: str = "test") -> DomainQuality:
    return DomainQuality(("fd", "classes"), build_data(cfg), cfg, CPU, 0, settings(cache),
                         num_samples=NUM_SAMPLES, reference_split=reference_split,
                         batch_size=100, kid_subsets=2, kid_subset_size=10)


@pytest.fixture(scope="module")
def quality(judge_cache: Path) -> DomainQuality:
    return evaluator(data_cfg(), judge_cache)


class Bank:
    """Real shapes images of every (colour, shape) pair, drawn apart from the data (another
    seed), that the painters pick from."""

    def __init__(self, n: int = 1800, seed: int = 11) -> None:
        drawn = draw_shapes(n, 3, seed, named_colours=True)
        images = render_shapes(n, RESOLUTION, 3, seed, attributes=True).images.float()
        assert drawn.attributes is not None
        colour = drawn.attributes[:, :3].argmax(1)
        self.pools = {(c, s): images[(colour == c) & (drawn.labels == s)] / 127.5 - 1
                      for c in range(3) for s in range(len(SHAPE_NAMES))}

    def draw(self, shape: Tensor, colour: Tensor, generator: torch.Generator) -> Tensor:
        out = []
        for s, c in zip(shape.tolist(), colour.tolist(), strict=True):
            pool = self.pools[c, s]
            out.append(pool[int(torch.randint(pool.shape[0], (1,), generator=generator))])
        return torch.stack(out)


@pytest.fixture(scope="module")
def bank() -> Bank:
    return Bank()


class Painter(GenerativeModel):
    """A hand-made caption-conditional model: reads its captions with its own tokenizer and
    paints the (shape, colour) that ``choose`` makes of what they ask, recording each ask."""

    family = "painter"

    def __init__(self, spec, bank: Bank, choose: Choice) -> None:  # noqa: ANN001
        super().__init__(spec)
        self.bank, self.choose = bank, choose
        self.asked: list[tuple[str, str]] = []

    def condition(self, batch):  # noqa: ANN001, ANN201
        return {"caption": batch["caption"]}

    def sample(self, n, cond=None, generator=None):  # noqa: ANN001, ANN201
        shape, colour = [], []
        for text in tokenizer_of(self.spec).decode(cond["caption"]):
            said = text.split()
            shape.append(SHAPE_NAMES.index(next(w for w in said if w in SHAPE_NAMES)))
            colour.append(COLOUR_FAMILIES.index(next(w for w in said if w in COLOUR_FAMILIES)))
            self.asked.append((COLOUR_FAMILIES[colour[-1]], SHAPE_NAMES[shape[-1]]))
        shapes_, colours = self.choose(torch.tensor(shape), torch.tensor(colour), generator)
        return self.bank.draw(shapes_, colours, generator)


def faithful(shape: Tensor, colour: Tensor, g: torch.Generator) -> tuple[Tensor, Tensor]:
    return shape, colour


def colour_blind(shape: Tensor, colour: Tensor, g: torch.Generator) -> tuple[Tensor, Tensor]:
    return shape, torch.randint(3, colour.shape, generator=g)


def seen_pairs_only(shape: Tensor, colour: Tensor, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """Asked for a green triangle, it paints a red one: it only knows the pairs it saw."""
    green_triangle = (colour == COLOUR_FAMILIES.index("green")) & (
        shape == SHAPE_NAMES.index("triangle"))
    return shape, torch.where(green_triangle, COLOUR_FAMILIES.index("red"), colour)


def test_captions_are_read_for_the_shape_and_colour_they_ask_for() -> None:
    asked = asked_for(["a small green triangle on a light background", "red ring, lower left",
                       "the square is blue and large", "a dark background", ""])
    assert asked.tolist() == [[2, 1], [5, 0], [1, 2], [-1, -1], [-1, -1]]


def test_the_judges_tell_shapes_and_colours_apart_and_see_every_pair(
        quality: DomainQuality, judge_cache: Path) -> None:
    prompts = quality.prompts
    assert prompts is not None
    shape, colour = prompts.shape_judge.info, prompts.colour_judge.info
    assert shape.label_kind == "class" and shape.accuracy > 0.9
    assert colour.label_kind == "attributes" and colour.accuracy > 0.95
    # the judges are trained on every pair (a holdout keeps the same judge, no retraining)
    for kind in ("class", "attributes"):
        assert judge_path(judge_data_config(data_cfg(), kind), settings(judge_cache)) == \
            judge_path(judge_data_config(data_cfg(caption_holdout=[]), kind),
                       settings(judge_cache))


def test_drawing_exactly_what_is_asked_scores_as_the_real_images_do(
        quality: DomainQuality, bank: Bank) -> None:
    model = Painter(quality.data.spec, bank, faithful)
    values, protocol = quality(model)
    v = {k.removeprefix("eval/"): x for k, x in values.items()}
    for group in ("", "_seen", "_heldout"):
        assert v[f"prompt_accuracy_domain{group}"] > 0.85
        assert v[f"prompt_accuracy_domain{group}"] == pytest.approx(
            v[f"prompt_accuracy_domain{group}_real"], abs=0.07)
        assert v[f"prompt_colour_accuracy_domain{group}"] > 0.95
    # a fixed share of the samples asks for held-out pairs, on top of those of the test split
    extra = round(HELDOUT_SHARE * NUM_SAMPLES)
    assert v["prompt_count_domain"] == NUM_SAMPLES - extra == protocol["num_generated"]
    assert v["prompt_count_domain_heldout"] >= extra
    assert v["prompt_count_domain_seen"] + v["prompt_count_domain_heldout"] == NUM_SAMPLES
    assert "fd_domain" in v and "consistency_domain" not in v
    assert protocol["prompts"]["heldout_prompts"]["count"] == extra
    assert protocol["prompts"]["caption_holdout"] == ["green triangle"]


def test_a_painter_that_ignores_the_colour_scores_chance_on_colour(
        quality: DomainQuality, bank: Bank) -> None:
    values, _ = quality(Painter(quality.data.spec, bank, colour_blind))
    assert values["eval/prompt_colour_accuracy_domain"] == pytest.approx(1 / 3, abs=0.1)
    assert values["eval/prompt_shape_accuracy_domain"] > 0.85
    assert values["eval/prompt_accuracy_domain"] < 0.45


def test_a_painter_of_seen_pairs_only_fails_the_held_out_prompts(
        quality: DomainQuality, bank: Bank) -> None:
    values, _ = quality(Painter(quality.data.spec, bank, seen_pairs_only))
    assert values["eval/prompt_accuracy_domain_seen"] > 0.85
    assert values["eval/prompt_accuracy_domain_heldout"] < 0.1
    assert values["eval/prompt_shape_accuracy_domain_heldout"] > 0.85  # a triangle, but red
    assert values["eval/prompt_accuracy_domain_heldout_real"] > 0.85


def test_the_held_out_prompts_are_those_of_data_caption_holdout(
        judge_cache: Path, bank: Bank) -> None:
    holdout = [("blue", "ring"), ("red", "square")]
    cfg = data_cfg(caption_holdout=[" ".join(pair) for pair in holdout])
    quality = evaluator(cfg, judge_cache, reference_split="train")
    model = Painter(quality.data.spec, bank, faithful)
    values, protocol = quality(model)
    asked_held = sum(pair in holdout for pair in model.asked)
    assert len(model.asked) == NUM_SAMPLES
    # the training split has none of them: every held-out prompt is one of the extra share
    assert values["eval/prompt_count_domain_heldout"] == asked_held == round(
        HELDOUT_SHARE * NUM_SAMPLES)
    assert {pair for pair in model.asked[-asked_held:]} == set(holdout)
    assert protocol["prompts"]["caption_holdout"] == ["blue ring", "red square"]


def test_prompts_reach_a_model_in_its_own_words_whatever_the_datas_token_ids(
        quality: DomainQuality, bank: Bank) -> None:
    """A checkpoint's vocabulary may number the words otherwise (another holdout changes the
    counts): its prompts are re-encoded, so it still reads what is asked."""
    spec = quality.data.spec
    vocabulary = (*spec.vocabulary[:2], *reversed(spec.vocabulary[2:]))
    model = Painter(dataclasses.replace(spec, vocabulary=vocabulary), bank, faithful)
    values, _ = quality(model)
    assert values["eval/prompt_accuracy_domain"] > 0.85


def test_a_caption_model_on_data_without_captions_is_a_clear_error(
        quality: DomainQuality, bank: Bank, judge_cache: Path) -> None:
    cfg = data_cfg(captions=False, caption_holdout=[], labels="attributes")
    plain = DomainQuality(("fd",), build_data(cfg), cfg, CPU, 0,
                          settings(judge_cache, steps=10, width=4), num_samples=20,
                          reference_split="test", batch_size=10, kid_subsets=2,
                          kid_subset_size=10)
    with pytest.raises(GentrainError, match="conditioned on captions"):
        plain(Painter(quality.data.spec, bank, faithful))


def other_captioned(*, batch_size: int, labelled: bool = True) -> TensorDataModule:
    """A captioned dataset that is not shapes (no judge of what its captions say), with or
    without class labels."""
    module = shapes(batch_size=batch_size, resolution=RESOLUTION, num_train=300, num_test=100,
                    hflip=False, captions=True)
    spec = dataclasses.replace(module.spec, name="captioned")
    splits = module.splits
    if not labelled:
        spec = dataclasses.replace(spec, label_kind=None, num_classes=0, class_names=())
        splits = {k: dataclasses.replace(v, labels=None) for k, v in splits.items()}
    return TensorDataModule(spec=spec, splits=splits, batch_size=batch_size)


def test_other_captioned_data_gets_the_distances_where_it_has_labels(
        judge_cache: Path, bank: Bank) -> None:
    cfg = OmegaConf.create({"_target_": "test_prompt_following.other_captioned",
                            "name": "captioned", "batch_size": 50})
    data = build_data(cfg)
    quality = DomainQuality(("fd", "classes"), data, cfg, CPU, 0,
                            settings(judge_cache, steps=20, width=4), num_samples=100,
                            reference_split="test", batch_size=50, kid_subsets=2,
                            kid_subset_size=10)
    assert quality.prompts is None
    values, protocol = quality(Painter(data.spec, bank, faithful))
    assert values["eval/fd_domain"] >= 0 and "eval/consistency_domain" in values
    assert not [k for k in values if "prompt" in k] and "prompts" not in protocol
    assert protocol["num_generated"] == 100
    unlabelled = OmegaConf.merge(cfg, {"labelled": False})
    with pytest.raises(GentrainError, match="no class labels or attributes"):
        DomainQuality(("fd",), build_data(unlabelled), unlabelled, CPU, 0,
                      settings(judge_cache, steps=20, width=4), num_samples=100,
                      reference_split="test", batch_size=50, kid_subsets=2,
                      kid_subset_size=10)


def test_ranks_draw_their_parts_of_the_held_out_prompts_as_one_process_draws_them_all(
        quality: DomainQuality) -> None:
    prompts = quality.prompts
    assert prompts is not None
    one = [b["caption"] for b in prompts.heldout_conditions(90, 0, 1, 40, CPU)]
    assert [c.shape[0] for c in one] == [40, 40, 10]
    ranks = [b["caption"] for rank in range(3)
             for b in prompts.heldout_conditions(90, rank, 3, 40, CPU)]
    assert torch.equal(torch.cat(one), torch.cat(ranks))
    texts = tokenizer_of(quality.data.spec).decode(torch.cat(one))
    assert all("green triangle" in text for text in texts)
    pool = prompts.pool["caption"].shape[0]  # the pool in turn, then again from its start
    assert torch.equal(torch.cat(one)[pool:2 * pool], torch.cat(one)[:pool])
