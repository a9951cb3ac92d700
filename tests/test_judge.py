"""The data-trained judge (eval.features=domain): cached training, torch-fidelity's numbers on
its features, and class checks that catch what they are for on hand-built generators."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import FAST_RUN, run_task
from omegaconf import OmegaConf

from gentrain.data import build_data
from gentrain.errors import GentrainError
from gentrain.models.base import GenerativeModel
from gentrain.sample_quality import classes
from gentrain.sample_quality.domain import DomainQuality, fd_of_rows, precision_recall
from gentrain.sample_quality.features import to_uint8_rgb
from gentrain.sample_quality.judge import (
    JUDGE_EXTRACTOR,
    JudgeSettings,
    judge_data_config,
    judge_feature_extractor_class,
    judge_path,
    obtain_judge,
)
from gentrain.sample_quality.statistics import kernel_inception_distance

CPU = torch.device("cpu")
# 16-px shapes, as the other tests; enough training for the judge to tell the six apart.
DATA = {"_target_": "gentrain.data.datasets.shapes.shapes", "name": "shapes", "batch_size": 64,
        "resolution": 16, "channels": 3, "num_train": 1200, "num_test": 300, "seed": 0,
        "hflip": True, "pair": None, "labels": "class", "unpaired": None}
SETTINGS = {"steps": 150, "batch_size": 64, "width": 8, "lr": 0.005}


def data_cfg(**changes: object) -> OmegaConf:
    return OmegaConf.create({**DATA, **changes})


@pytest.fixture(scope="module")
def judge_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("judges")


def settings(cache: Path, **changes: object) -> JudgeSettings:
    return JudgeSettings(**{**SETTINGS, "cache": str(cache), **changes})  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def quality(judge_cache: Path) -> DomainQuality:
    """The judge's evaluator on 16-px shapes: 300 samples against the training split."""
    cfg = data_cfg()
    return DomainQuality(("fd", "kid", "prc", "classes"), build_data(cfg), cfg, CPU, 0,
                         settings(judge_cache), num_samples=300, reference_split="train",
                         batch_size=100, kid_subsets=10, kid_subset_size=100)


class Drawn(GenerativeModel):
    """A hand-built 'generator': returns images chosen by ``pick(cond, n)``."""

    family = "hand-built"

    def __init__(self, spec, pick, translator: bool = False) -> None:  # noqa: ANN001
        super().__init__(spec)
        self.pick, self.translator = pick, translator

    def condition(self, batch):  # noqa: ANN001, ANN201
        if self.translator:
            return {"source": batch["image"]}
        return {"label": batch["label"]} if "label" in batch else None

    def sample(self, n, cond=None, generator=None):  # noqa: ANN001, ANN201
        return self.pick(cond, n)


def real_test_images(quality: DomainQuality) -> tuple[torch.Tensor, torch.Tensor]:
    batches = list(quality.data.eval_batches(split="test", device=CPU))
    return torch.cat([b["image"] for b in batches]), torch.cat([b["label"] for b in batches])


def replay_of(images: torch.Tensor, labels: torch.Tensor):  # noqa: ANN201
    """Samples that are real images, of the requested class when one is requested."""
    state = {"next": 0}
    pools = {int(c): images[labels == c] for c in labels.unique()}
    counters = dict.fromkeys(pools, 0)  # each class's images in turn, across calls

    def pick(cond, n):  # noqa: ANN001, ANN202
        if cond is None or "label" not in cond:
            start = state["next"]
            state["next"] = (start + n) % (images.shape[0] - n)
            return images[start:start + n]
        out = []
        for c in cond["label"].tolist():
            out.append(pools[c][counters[c] % pools[c].shape[0]])
            counters[c] += 1
        return torch.stack(out)

    return pick


def test_the_judge_learns_the_classes_and_records_its_accuracy_and_calibration(
        quality: DomainQuality) -> None:
    info = quality.judge.info
    assert info.label_kind == "class" and info.class_names[0] == "circle"
    assert info.accuracy > 0.9 and info.num_train == 1200 and info.num_heldout == 300
    assert 0 < info.confidence_threshold < 1 and info.resolution == 16


def test_the_judge_is_cached_and_retrained_only_when_its_key_changes(judge_cache: Path,
                                                                     quality: DomainQuality
                                                                     ) -> None:
    cfg = data_cfg()
    path = judge_path(cfg, settings(judge_cache))
    stamp = path.stat().st_mtime_ns
    again = obtain_judge(cfg, settings(judge_cache), CPU)  # the fixture's judge, from disk
    assert path.stat().st_mtime_ns == stamp and again.info == quality.judge.info
    # A loader-only change (batch size, flips) keeps the key; translation keys are cleared.
    assert judge_path(data_cfg(batch_size=7, hflip=False), settings(judge_cache)) == path
    assert judge_path(judge_data_config(data_cfg(unpaired="circle:square")),
                      settings(judge_cache)) == path
    # What determines the judge changes it: data, resolution, its own training settings.
    changed = {judge_path(data_cfg(seed=1), settings(judge_cache)),
               judge_path(data_cfg(resolution=8), settings(judge_cache)),
               judge_path(cfg, settings(judge_cache, seed=1)),
               judge_path(cfg, settings(judge_cache, steps=151))}
    assert path not in changed and len(changed) == 4
    state = torch.load(path, weights_only=True)  # plain tensors and types
    assert state["info"]["key"] in path.name


def test_distances_on_judge_features_are_torch_fidelitys_own(quality: DomainQuality,
                                                             tmp_path: Path) -> None:
    """torch-fidelity's calculate_metrics, given the registered judge extractor and the same
    images, gets the numbers gentrain reports."""
    torch_fidelity = pytest.importorskip("torch_fidelity")
    images, _ = real_test_images(quality)
    fake, real = to_uint8_rgb(images[:150].flip(-2)), to_uint8_rgb(images[150:])

    class Images(torch.utils.data.Dataset):
        def __init__(self, x: torch.Tensor) -> None:
            self.x = x

        def __len__(self) -> int:
            return self.x.shape[0]

        def __getitem__(self, i: int) -> torch.Tensor:
            return self.x[i]

    judge_feature_extractor_class()
    path = judge_path(data_cfg(), quality.judge_settings)
    library = torch_fidelity.calculate_metrics(
        input1=Images(fake), input2=Images(real), cuda=False, fid=True, kid=True, prc=True,
        feature_extractor=JUDGE_EXTRACTOR, feature_extractor_weights_path=str(path),
        kid_subsets=10, kid_subset_size=100, batch_size=50, verbose=False, cache=False)
    ours_fake, ours_real = quality.judge(fake)["pool"], quality.judge(real)["pool"]
    assert fd_of_rows(ours_real, ours_fake) == pytest.approx(
        library["frechet_inception_distance"], rel=1e-4)
    kid, _ = kernel_inception_distance(ours_fake, ours_real, 10, 100)
    assert kid == pytest.approx(library["kernel_inception_distance_mean"], rel=1e-3, abs=1e-6)
    precision, recall = precision_recall(ours_fake, ours_real)
    assert (precision, recall) == (pytest.approx(library["precision"]),
                                   pytest.approx(library["recall"]))


def test_real_held_out_images_score_as_real(quality: DomainQuality) -> None:
    images, labels = real_test_images(quality)
    spec = quality.data.spec
    values, protocol = quality(Drawn(spec, replay_of(images, labels)))
    assert values["eval/modes_domain"] == 6 and values["eval/min_class_share_domain"] > 0.08
    assert values["eval/class_kl_domain"] < 0.05
    # the calibration quantile is 5%: about 95% of real images are judged as surely
    assert values["eval/confident_domain"] == pytest.approx(0.95, abs=0.05)
    for name in ("precision_domain", "recall_domain"):  # as held-out real images score
        assert values[f"eval/{name}"] == pytest.approx(values[f"eval/{name}_real"], abs=0.1)
    assert values["eval/fd_domain"] < 3 * values["eval/fd_domain_real"] + 1e-3
    assert values["eval/border_w1"] < 0.02 and values["eval/border_w1_real"] < 0.02
    assert protocol["accuracy"] == quality.judge.info.accuracy
    assert protocol["num_generated"] == 300 and protocol["reference"]["split"] == "train"
    assert protocol["comparable_to_published"] is False
    # real images of the requested class agree as often as the judge is right
    assert values["eval/consistency_domain"] == pytest.approx(quality.judge.info.accuracy,
                                                              abs=0.05)


def test_real_shapes_on_bright_grounds_are_caught_by_the_border_brightness(
    quality: DomainQuality
) -> None:
    """The shapes' grounds are dark (value 0.05-0.3); the same images with every dark pixel
    lifted to a bright grey score a border brightness far from the data's."""
    images, labels = real_test_images(quality)
    ground = images.amax(dim=1, keepdim=True) < -0.3  # value below 0.35
    bright = torch.where(ground, torch.full_like(images, 0.6), images)  # value 0.8
    values, _ = quality(Drawn(quality.data.spec, replay_of(bright, labels)))
    assert values["eval/border_brightness"] == pytest.approx(0.8, abs=0.01)
    assert values["eval/border_brightness_real"] < 0.35
    assert values["eval/border_w1"] > 0.5 > 10 * values["eval/border_w1_real"]


def test_real_shapes_all_in_one_green_are_caught_by_the_colour_moments(
    quality: DomainQuality
) -> None:
    """Every shape recoloured pure green (the hue collapse a class judge barely sees): the
    colour moments' distance is far above the real images' own."""
    images, labels = real_test_images(quality)
    shape = images.amax(dim=1, keepdim=True) > 0.4  # value above 0.7: the vivid shapes
    green = torch.tensor([-1.0, 1.0, -1.0])[None, :, None, None].expand_as(images)
    values, _ = quality(Drawn(quality.data.spec, replay_of(torch.where(shape, green, images),
                                                           labels)))
    real_values, _ = quality(Drawn(quality.data.spec, replay_of(images, labels)))
    assert real_values["eval/colour_fd"] < 2 * real_values["eval/colour_fd_real"] + 1e-3
    assert values["eval/colour_fd"] > 10 * values["eval/colour_fd_real"]


class Unconditional(Drawn):
    def condition(self, batch):  # noqa: ANN001, ANN201
        return None


def test_a_generator_of_one_class_covers_one_mode(quality: DomainQuality) -> None:
    images, labels = real_test_images(quality)
    rings = images[labels == 5]
    values, _ = quality(Unconditional(quality.data.spec,
                                      lambda cond, n: rings[torch.arange(n) % rings.shape[0]]))
    assert values["eval/modes_domain"] <= 2
    assert values["eval/class_share_domain/ring"] > 0.9
    assert values["eval/class_kl_domain"] > 1.0 and values["eval/recall_domain"] < 0.4


def test_one_fixed_image_per_class_scores_a_high_within_class_distance(
        quality: DomainQuality) -> None:
    images, labels = real_test_images(quality)
    spec = quality.data.spec
    judged = quality.judge.predict(quality.judge(to_uint8_rgb(images))["logits"])
    right = judged == labels  # one real image per class, one the judge gets right
    one_each = torch.stack([images[right & (labels == c)][0] for c in range(6)])
    collapsed, _ = quality(Drawn(spec, lambda cond, n: one_each[cond["label"]]))
    varied, _ = quality(Drawn(spec, replay_of(images, labels)))
    # both follow the requested class...
    assert collapsed["eval/consistency_domain"] > 0.9 and varied["eval/consistency_domain"] > 0.9
    # ...but only the varied one has the data's spread within each class
    assert varied["eval/within_class_fd_domain"] <= 2 * varied["eval/within_class_fd_domain_real"]
    assert collapsed["eval/within_class_fd_domain"] > 4 * varied["eval/within_class_fd_domain"]


def test_a_translators_target_accuracy_on_hand_made_translations(judge_cache: Path) -> None:
    """CycleGAN on circle:square: G(A) is judged a square as often as it is one."""
    cfg = data_cfg(unpaired="circle:square")
    data = build_data(cfg)
    square_class = 1
    plain = build_data(data_cfg())
    reals = torch.cat([b["image"] for b in plain.eval_batches(split="test", device=CPU)])
    kinds = torch.cat([b["label"] for b in plain.eval_batches(split="test", device=CPU)])
    squares, crosses = reals[kinds == square_class], reals[kinds == 4]
    quality = DomainQuality(("classes",), data, cfg, CPU, 0, settings(judge_cache),
                            num_samples=100, reference_split="test", batch_size=50,
                            kid_subsets=2, kid_subset_size=10)
    good = Drawn(data.spec, lambda cond, n: squares[torch.arange(n) % squares.shape[0]], True)
    half = Drawn(data.spec, lambda cond, n: torch.where(
        (torch.arange(n) % 2 == 0)[:, None, None, None], squares[torch.arange(n) % 20],
        crosses[torch.arange(n) % 20]), True)
    assert quality(good)[0]["eval/target_accuracy_domain"] > 0.9
    assert quality(half)[0]["eval/target_accuracy_domain"] == pytest.approx(0.5, abs=0.1)


def test_attribute_targets_and_content_kept_on_hand_made_translations(judge_cache: Path
                                                                      ) -> None:
    """StarGAN-like: an identity 'translation' keeps the shape but meets only the targets that
    equal the source's attributes."""
    cfg = data_cfg(labels="attributes")
    data = build_data(cfg)

    class Identity(GenerativeModel):
        family = "identity"

        def condition(self, batch):  # noqa: ANN001, ANN201
            return {"image": batch["image"], "label": batch["label"].roll(1, 0)}

        def sample(self, n, cond=None, generator=None):  # noqa: ANN001, ANN201
            return cond["image"][:n]

    quality = DomainQuality(("classes",), data, cfg, CPU, 0, settings(judge_cache),
                            num_samples=200, reference_split="test", batch_size=100,
                            kid_subsets=2, kid_subset_size=10)
    values, protocol = quality(Identity(data.spec))
    assert values["eval/content_kept_domain"] > 0.9  # the shape is untouched
    # targets are another image's attributes: met where the two images happen to agree
    labels = torch.cat([b["label"] for b in data.eval_batches(split="test", device=CPU)])
    chance = (labels[:200] == labels[:200].roll(1, 0)).float().mean(0)
    for j, name in enumerate(("red", "green", "blue", "light_background")):
        assert values[f"eval/target_accuracy_domain/{name}"] == pytest.approx(
            float(chance[j]), abs=0.1)
    assert protocol["content_judge"]["label_kind"] == "class"


def test_class_check_formulas_on_hand_made_predictions() -> None:
    shares = classes.class_histogram(torch.tensor([0, 0, 1, 3]), 4)
    assert shares.tolist() == [0.5, 0.25, 0.0, 0.25]
    assert classes.modes_covered(shares, 4) == 3
    assert classes.histogram_kl(shares, shares) == pytest.approx(0, abs=1e-9)
    assert classes.normalised_mutual_information(
        torch.tensor([0, 1, 2, 0, 1, 2]), torch.tensor([5, 3, 4, 5, 3, 4])) == pytest.approx(1)
    assert classes.normalised_mutual_information(
        torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 0, 1])) == pytest.approx(0)
    assert classes.domain_share(torch.tensor([1, 1, 4, 2]), torch.tensor([1, 2])) == 0.75


def test_a_dataset_without_labels_is_a_clear_error(tmp_path: Path) -> None:
    from PIL import Image

    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(4):
        Image.new("RGB", (16, 16), (i * 40, 0, 0)).save(folder / f"{i}.png")
    with pytest.raises(GentrainError, match="no class labels or attributes") as error:
        run_task(tmp_path / "run", ["data=folder", f"data.path={folder}", "data.batch_size=2",
                                    "data.resolution=16", "data.num_workers=0", "data.holdout=0.25",
                                    "trainer.max_steps=1", "trainer.eval_sample_quality=true",
                                    "eval.features=domain", f"eval.judge.cache={tmp_path}"],
                 base=[*FAST_RUN[:3], "logger=none", "model=gan", "model.base_channels=8",
                       "model.latent_dim=8"])
    assert "eval.features=inception" in str(error.value)


def test_without_inception_weights_a_gans_best_checkpoint_follows_the_judges_distance(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))  # no weights
    summary = run_task(tmp_path / "run", [
        "model=gan", "model.base_channels=8", "model.latent_dim=8", "trainer.max_steps=4",
        "trainer.eval_every=2", "trainer.eval_limit=8", "trainer.eval_sample_quality=true",
        "trainer.eval_num_samples=32", "eval.batch_size=16", "eval.kid_subset_size=16",
        "eval.kid_subsets=2", f"eval.judge.cache={tmp_path / 'judges'}", "eval.judge.steps=20",
        "eval.judge.width=4"], base=FAST_RUN)
    assert summary["monitor"]["metric"] == "eval/fd_domain"
    assert summary["monitor"]["mode"] == "min" and summary["monitor"]["value"] >= 0
    assert (tmp_path / "run" / "checkpoints" / "best.pt").is_file()
    assert summary["sample_quality_protocol"]["extractor"] == "domain judge"


def test_a_code_that_decides_the_class_has_a_high_normalised_mutual_information(
        quality: DomainQuality) -> None:
    """InfoGAN-style: when the categorical code picks the shape, the judged class follows it."""
    images, labels = real_test_images(quality)
    pools = [images[labels == c] for c in range(6)]

    class Coded(Unconditional):
        def __init__(self, spec, decides: bool) -> None:  # noqa: ANN001
            super().__init__(spec, pick=None)
            self.decides = decides

        def sample_with_codes(self, n, cond=None, generator=None):  # noqa: ANN001, ANN201
            codes = torch.randint(6, (n,), generator=generator)
            picked = torch.stack([pools[c][i % pools[c].shape[0]]
                                  for i, c in enumerate(codes.tolist())])
            return picked, codes if self.decides else codes[torch.randperm(n)]

    decided, _ = quality(Coded(quality.data.spec, True))
    independent, _ = quality(Coded(quality.data.spec, False))
    assert decided["eval/code_nmi_domain"] > 0.8
    assert independent["eval/code_nmi_domain"] < 0.1


def test_the_class_judge_of_attribute_shapes_sees_the_attribute_colour_scheme() -> None:
    """StarGAN's content judge (class labels of data.labels=attributes shapes) trains on the
    same test images the translator is judged on: named colours on light or dark grounds, not
    the free colours of data.labels=class."""
    attributes = data_cfg(labels="attributes", captions=False)
    judged = judge_data_config(attributes, "class")
    assert (judged.labels, judged.colours, judged.captions) == ("class", "named", False)

    def test_images(cfg: OmegaConf) -> torch.Tensor:
        return torch.cat([b["image"] for b in build_data(cfg).eval_batches(split="test",
                                                                             device=CPU)])

    seen = test_images(attributes)
    assert torch.equal(test_images(judged), seen)
    assert not torch.equal(test_images(data_cfg()), seen)
