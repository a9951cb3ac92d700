"""task=eval and task=sample on a checkpoint of every family; FID/KID/IS with their protocol,
offline through the stand-in feature extractor; best.pt by a monitor's direction."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import DDPM_FAST, FAST, FAST_RUN, run_task
from omegaconf import OmegaConf
from PIL import Image

from gentrain.data.datasets.shapes import ATTRIBUTE_NAMES
from gentrain.engine.checkpoint import load_checkpoint
from gentrain.errors import GentrainError
from gentrain.tasks.inference import evaluation_data_config

FAMILIES = {
    "vae": FAST,
    "ddpm": DDPM_FAST,
    "gan": [*FAST_RUN, "model=gan", "model.base_channels=8", "model.latent_dim=8",
            "trainer.eval_limit=8"],
    "pix2pix": [*FAST_RUN, "model=pix2pix", "data.pair=labels", "model.base_channels=4",
                "model.d_base_channels=4", "model.d_layers=1", "trainer.eval_limit=8",
                "trainer.num_samples=4"],
    "pixelcnn": [*FAST_RUN, "model=pixelcnn", "model.hidden=12", "model.layers=2",
                 "model.grid_samples=4", "trainer.eval_limit=8", "data.resolution=8"],
    "flow": [*FAST_RUN, "model=flow", "model.levels=2", "model.steps=2", "model.hidden=8",
             "trainer.eval_limit=8", "data.resolution=8"],
    "aae": [*FAST_RUN, "model=aae", "model.base_channels=8", "model.latent_dim=2",
            "model.d_hidden=16", "trainer.eval_limit=8"],
    "infogan": [*FAST_RUN, "model=infogan", "model.base_channels=8", "model.noise_dim=4",
                "model.categorical=3", "model.continuous=1", "trainer.eval_limit=8"],
    "cyclegan": [*FAST_RUN, "model=cyclegan", "data.unpaired=circle:square",
                 "model.base_channels=4", "model.num_blocks=1", "model.d_base_channels=4",
                 "model.d_layers=1", "trainer.eval_limit=8", "trainer.num_samples=4"],
    "stargan": [*FAST_RUN, "model=stargan", "data.labels=attributes", "model.base_channels=4",
                "model.num_blocks=1", "model.d_base_channels=4", "trainer.eval_limit=8",
                "trainer.num_samples=8"],
}
# What task=eval reports by default for each family.
EXPECTED = {
    "vae": {"eval/nll_elbo_nats", "eval/nll_is_nats"},
    "ddpm": {"eval/bits_per_dim", "eval/fid", "eval/kid", "eval/is"},
    "gan": {"eval/fid", "eval/kid", "eval/is"},
    "pix2pix": {"eval/l1", "eval/psnr", "eval/ssim", "eval/fid"},
    "pixelcnn": {"eval/bits_per_dim", "eval/nll_nats"},
    "flow": {"eval/bits_per_dim", "eval/nll_nats"},
    "aae": {"eval/recon_mse"},
    "infogan": {"eval/fid", "eval/kid", "eval/is"},
    "cyclegan": {"eval/cycle_l1", "eval/fid"},  # FID of G(A) against domain B (AtoB)
    "stargan": {"eval/cls_accuracy", "eval/rec_l1", "eval/fid"},
}


def offline_quality(tmp_path: Path, samples: int = 16) -> list[str]:
    """FID/KID/IS settings that run offline and fast: the stand-in features, tiny counts."""
    return ["eval.features=standin", f"eval.num_samples={samples}", "eval.reference_split=test",
            f"eval.reference_cache={tmp_path / 'reference'}", "eval.kid_subset_size=8",
            "eval.kid_subsets=4", "eval.is_splits=2", "eval.limit=16", "eval.batch_size=8"]


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def trained(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
            ) -> tuple[str, Path]:
    family = request.param
    run_dir = tmp_path_factory.mktemp(family) / "run"
    run_task(run_dir, ["trainer.max_steps=2"], base=FAMILIES[family])
    return family, run_dir


def test_eval_writes_the_family_metrics_and_protocol_next_to_the_checkpoint(
        trained: tuple[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    family, run_dir = trained
    result = run_task(tmp_path / "eval", ["task=eval", f"ckpt={run_dir}",
                                          *offline_quality(tmp_path)], base=FAMILIES[family])
    written = json.loads((run_dir / "checkpoints" / "eval.json").read_text())
    assert written == json.loads(json.dumps(result))
    assert EXPECTED[family] <= set(written["metrics"])
    assert all(isinstance(v, float) for v in written["metrics"].values())
    protocol = written["sample_quality_protocol"]
    if "eval/fid" in EXPECTED[family]:
        assert protocol["num_generated"] == 16 and protocol["reference"]["split"] == "test"
        assert protocol["extractor"] == "standin" and not protocol["comparable_to_published"]
        assert written["metrics"]["eval/fid"] >= 0
    else:
        assert protocol is None
    table = capsys.readouterr().out
    assert all(name in table for name in EXPECTED[family])


def test_sample_writes_a_grid_for_every_family(trained: tuple[str, Path], tmp_path: Path
                                               ) -> None:
    family, run_dir = trained
    result = run_task(tmp_path, ["task=sample", f"ckpt={run_dir}", "sample.num=4",
                                 "sample.nrow=2", "sample.individual=true"],
                      base=FAMILIES[family])
    with Image.open(result["grid"]) as grid:
        assert grid.width > 16 and grid.height > 16
    # A translator (StarGAN) writes each image's translation to each of the 4 attributes.
    expected = 4 * len(ATTRIBUTE_NAMES) if family == "stargan" else 4
    assert len(list((tmp_path / "samples" / "individual").glob("*.png"))) == expected


def test_the_reference_features_are_computed_once_and_reused(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_task(run_dir, ["trainer.max_steps=1"], base=FAMILIES["gan"])
    args = ["task=eval", f"ckpt={run_dir}", *offline_quality(tmp_path)]
    first = run_task(tmp_path / "e1", args, base=FAMILIES["gan"])
    cached = list((tmp_path / "reference").glob("*.pt"))
    assert len(cached) == 1 and "shapes-test-16px-standin" in cached[0].name
    stamp = cached[0].stat().st_mtime_ns
    second = run_task(tmp_path / "e2", args, base=FAMILIES["gan"])
    assert cached[0].stat().st_mtime_ns == stamp
    assert second["metrics"] == first["metrics"]  # same seed, same reference: same numbers


def test_eval_scores_the_ema_weights_unless_eval_ema_is_false(tmp_path: Path) -> None:
    """eval.ema=false scores the live G of a run that keeps an EMA, and says so in eval.json."""
    run_dir = tmp_path / "run"
    run_task(run_dir, ["trainer.max_steps=3", "model.ema.decay=0.5"], base=FAMILIES["gan"])
    args = ["task=eval", f"ckpt={run_dir}", *offline_quality(tmp_path)]
    ema = run_task(tmp_path / "ema", args, base=FAMILIES["gan"])
    live = run_task(tmp_path / "live", [*args, "eval.ema=false"], base=FAMILIES["gan"])
    assert (ema["weights"], live["weights"]) == ("ema", "live")
    assert ema["metrics"]["eval/fid"] != live["metrics"]["eval/fid"]


class Replay(torch.nn.Module):
    """A stand-in 'model' whose samples are the reference images themselves (or noise)."""

    reference_images = "image"

    def __init__(self, noise: bool) -> None:
        super().__init__()
        self.noise = noise

    def condition(self, batch: dict) -> dict:
        return batch

    def sample(self, n: int, cond: dict, generator: torch.Generator) -> torch.Tensor:
        images = cond["image"].float()
        return torch.rand(images.shape, generator=generator) * 2 - 1 if self.noise else images


def test_fid_of_the_data_against_itself_is_near_zero_and_noise_is_far(tmp_path: Path) -> None:
    """The whole pipeline (conditions from the reference split, features, statistics, cache)
    compares like with like: the split's own images score FID near 0, noise far higher."""
    from conftest import compose_config

    from gentrain.data import build_data
    from gentrain.sample_quality.evaluate import SampleQuality, settings_from_config

    cfg = compose_config([*FAST, *offline_quality(tmp_path, samples=64)])
    data = build_data(cfg.data)
    settings = settings_from_config(cfg.eval, ("fid", "kid"))
    quality = SampleQuality(settings, data, cfg.data, torch.device("cpu"), seed=0)
    same, protocol = quality(Replay(noise=False))
    noise, _ = quality(Replay(noise=True))
    assert protocol["num_generated"] == protocol["num_reference"] == 64
    assert abs(same["eval/fid"]) < 1e-3 * noise["eval/fid"] and noise["eval/fid"] > 1
    assert noise["eval/kid"] > 10 * abs(same["eval/kid"])  # unbiased: near 0, either sign


def test_gan_keeps_best_pt_by_fid_when_sample_quality_runs_in_training(tmp_path: Path) -> None:
    result = run_task(tmp_path, ["trainer.max_steps=3", "trainer.eval_every=1",
                                 "trainer.eval_sample_quality=true",
                                 "trainer.eval_num_samples=16", *offline_quality(tmp_path)],
                      base=FAMILIES["gan"])
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
            if "eval/fid" in line]
    assert [r["step"] for r in rows] == [1, 2, 3]
    best = min(rows, key=lambda r: r["eval/fid"])
    assert result["best"] == {"metric": "eval/fid", "mode": "min", "value": best["eval/fid"],
                              "step": best["step"]}
    assert load_checkpoint(tmp_path / "checkpoints" / "best.pt")["step"] == best["step"]
    assert result["sample_quality_protocol"]["num_generated"] == 16


def test_best_pt_follows_a_higher_is_better_monitor(tmp_path: Path) -> None:
    result = run_task(tmp_path, ["trainer.max_steps=4", "trainer.eval_every=1",
                                 "trainer.monitor=eval/psnr"], base=FAMILIES["pix2pix"])
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
            if "eval/psnr" in line]
    best = max(rows, key=lambda r: r["eval/psnr"])
    assert result["best"]["mode"] == "max" and result["best"]["value"] == best["eval/psnr"]
    assert load_checkpoint(tmp_path / "checkpoints" / "best.pt")["step"] == best["step"]
    assert result["monitor"] == {"metric": "eval/psnr", "mode": "max", "value": best["eval/psnr"]}


def test_monitor_mode_min_overrides_the_known_direction(tmp_path: Path) -> None:
    result = run_task(tmp_path, ["trainer.max_steps=3", "trainer.eval_every=1",
                                 "trainer.monitor=eval/psnr", "trainer.monitor_mode=min"],
                      base=FAMILIES["pix2pix"])
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
            if "eval/psnr" in line]
    assert result["best"]["value"] == min(r["eval/psnr"] for r in rows)


def test_eval_without_inception_weights_stops_with_the_file_and_where_to_put_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    run_dir = tmp_path / "run"
    run_task(run_dir, ["trainer.max_steps=1"], base=FAMILIES["gan"])
    with pytest.raises(GentrainError) as error:
        run_task(tmp_path / "eval", ["task=eval", f"ckpt={run_dir}", "eval.features=inception"],
                 base=FAMILIES["gan"])
    message = str(error.value)
    assert "weights-inception-2015-12-05-6726825d.pth" in message
    assert str(tmp_path / "hub") in message and "eval.inception_weights" in message


def test_sample_labels_choose_the_classes_of_a_conditional_model(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_task(run_dir, ["trainer.max_steps=1", "model.conditional=true"], base=FAMILIES["gan"])
    seen: list[torch.Tensor] = []
    from gentrain.models.gan import GAN

    original = GAN.sample

    def spy(self, n, cond=None, generator=None):  # noqa: ANN001, ANN202
        seen.append(cond["label"].cpu())
        return original(self, n, cond, generator)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(GAN, "sample", spy)
        run_task(tmp_path / "s", ["task=sample", f"ckpt={run_dir}", "sample.num=5",
                                  "sample.batch_size=2", "sample.labels=[3,1]"],
                 base=FAMILIES["gan"])
    assert torch.cat(seen).tolist() == [3, 1, 3, 1, 3]
    with pytest.raises(GentrainError, match="class ids"):
        run_task(tmp_path / "bad", ["task=sample", f"ckpt={run_dir}", "sample.labels=[99]"],
                 base=FAMILIES["gan"])


@pytest.mark.parametrize(("override", "message"), [
    ("trainer.monitor_mode=best", "trainer.monitor_mode='best' is not one of auto, min, max"),
    ("trainer.monitor=main/loss", "is not a held-out metric"),
    ("eval.features=vgg", "eval.features='vgg' is not one of"),
    ("eval.sample_quality=[fid,lpips]", "eval.sample_quality names lpips"),
])
def test_bad_monitor_and_sample_quality_settings_are_clear_errors(
        override: str, message: str, tmp_path: Path) -> None:
    quality = [] if override.startswith("trainer.") else ["trainer.eval_sample_quality=true"]
    with pytest.raises(GentrainError, match=message.replace("(", r"\(").replace("[", r"\[")):
        run_task(tmp_path, ["trainer.max_steps=1", *quality, override], base=FAMILIES["gan"])


def test_eval_scores_on_the_trained_data_with_only_the_command_lines_data_keys() -> None:
    """An experiment's data settings (captions) survive task=eval, which composes the default
    data config; data.* keys given there still win, and another dataset replaces it."""
    trained = OmegaConf.create({"name": "shapes", "captions": True, "root": "/old"})
    requested = OmegaConf.create({"name": "shapes", "captions": False, "root": "/new"})
    assert evaluation_data_config(trained, requested, []) == trained
    moved = evaluation_data_config(trained, requested, ["data.root=/new", "eval.num_samples=8"])
    assert moved == {"name": "shapes", "captions": True, "root": "/new"}
    same = evaluation_data_config(trained, requested, ["data=shapes"])
    assert same.captions is True
    other = OmegaConf.create({"name": "mnist"})
    assert evaluation_data_config(trained, other, ["data=mnist"]) == other
