"""FID, KID and IS: the formulas, the running statistics, the extractors, offline behaviour."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from gentrain.errors import GentrainError
from gentrain.sample_quality import (
    INCEPTION_WEIGHTS_FILE,
    INCEPTION_WEIGHTS_URL,
    FeatureStats,
    InceptionFeatures,
    StandInFeatures,
    build_feature_extractor,
    find_inception_weights,
    frechet_distance,
    inception_score,
    kernel_inception_distance,
    load_reference,
    protocol,
    save_reference,
    to_uint8_rgb,
)

REPO = Path(__file__).resolve().parents[1]


def random_covariance(d: int, seed: int) -> torch.Tensor:
    a = torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return a @ a.T / d + 0.1 * torch.eye(d, dtype=torch.float64)


# --- Fréchet distance --------------------------------------------------------------------------


def test_frechet_distance_matches_the_closed_form_for_diagonal_gaussians() -> None:
    g = torch.Generator().manual_seed(0)
    mu1, mu2 = torch.randn(8, generator=g), torch.randn(8, generator=g)
    a, b = torch.rand(8, generator=g) + 0.1, torch.rand(8, generator=g) + 0.1
    expected = ((mu1 - mu2) ** 2).sum() + (a + b - 2 * (a * b).sqrt()).sum()
    got = frechet_distance(mu1, torch.diag(a), mu2, torch.diag(b))
    assert got == pytest.approx(float(expected), rel=1e-6)


def test_frechet_distance_is_zero_for_identical_gaussians_and_agrees_with_sqrtm() -> None:
    mu = torch.randn(16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    s1, s2 = random_covariance(16, 2), random_covariance(16, 3)
    assert abs(frechet_distance(mu, s1, mu, s1)) < 1e-9
    linalg = pytest.importorskip("scipy.linalg")  # the reference TTUR / pytorch-fid formula
    root = linalg.sqrtm(s1.numpy() @ s2.numpy()).real
    expected = float(np.trace(s1.numpy() + s2.numpy() - 2 * root))
    assert frechet_distance(mu, s1, mu, s2) == pytest.approx(expected, rel=1e-8)


# --- FeatureStats ------------------------------------------------------------------------------


def test_feature_stats_match_torch_and_round_trip_through_torch_save(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    pool = torch.randn(137, 16, generator=g) * 3 + 5
    logits = torch.randn(137, 4, generator=g)
    stats = FeatureStats(keep=100)
    for start, stop in [(0, 50), (50, 87), (87, 137)]:
        stats.update({"pool": pool[start:stop], "logits": logits[start:stop]})
    stats.merge_across_ranks()  # a no-op in a single process
    assert stats.count == 137
    torch.testing.assert_close(stats.mean(), pool.double().mean(0))
    torch.testing.assert_close(stats.covariance(), torch.cov(pool.double().T))
    assert torch.equal(stats.pool, pool[:100])
    assert torch.equal(stats.logits, logits)

    torch.save(stats.state_dict(), tmp_path / "stats.pt")
    loaded = FeatureStats.from_state_dict(torch.load(tmp_path / "stats.pt", weights_only=True))
    assert loaded.count == 137 and loaded.keep == 100
    torch.testing.assert_close(loaded.covariance(), stats.covariance(), rtol=0, atol=0)
    assert torch.equal(loaded.pool, stats.pool) and torch.equal(loaded.logits, logits)


def test_reference_files_save_atomically_and_a_corrupt_one_says_delete_it(tmp_path: Path) -> None:
    path = tmp_path / "refs" / "cifar10-train.pt"
    assert load_reference(path) is None
    stats = FeatureStats(keep_logits=False)
    stats.update({"pool": torch.randn(10, 3), "logits": torch.randn(10, 5)})
    save_reference(stats, path)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left
    loaded = load_reference(path)
    assert loaded is not None and loaded.count == 10 and loaded.logits.numel() == 0
    torch.testing.assert_close(loaded.mean(), stats.mean())

    path.write_bytes(b"not a checkpoint")
    with pytest.raises(GentrainError, match="Delete the file") as info:
        load_reference(path)
    assert str(path) in str(info.value)


def test_two_ranks_with_unequal_counts_merge_to_the_single_process_statistics(
        tmp_path: Path) -> None:
    """Two gloo processes: rank 0 sees rows 0-4, rank 1 rows 5-6; both end with all 7."""
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(f"""
        import os, torch, torch.distributed as dist
        from gentrain.sample_quality import FeatureStats
        rank = int(os.environ["RANK"])
        dist.init_process_group("gloo", init_method="file://{tmp_path}/store", rank=rank,
                                world_size=2)
        g = torch.Generator().manual_seed(0)
        pool, logits = torch.randn(7, 5, generator=g), torch.randn(7, 3, generator=g)
        rows = slice(0, 5) if rank == 0 else slice(5, 7)
        stats = FeatureStats(keep=6)
        stats.update({{"pool": pool[rows], "logits": logits[rows]}})
        stats.merge_across_ranks()
        torch.save(stats.state_dict(), "{tmp_path}/rank%d.pt" % rank)
        dist.destroy_process_group()
    """))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    workers = [subprocess.Popen([sys.executable, str(script)], env={**env, "RANK": str(r)},
                                stderr=subprocess.PIPE, text=True) for r in range(2)]
    for worker in workers:
        _, err = worker.communicate(timeout=120)
        assert worker.returncode == 0, err[-3000:]

    g = torch.Generator().manual_seed(0)
    pool, logits = torch.randn(7, 5, generator=g), torch.randn(7, 3, generator=g)
    for rank in range(2):
        state = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        merged = FeatureStats.from_state_dict(state)
        assert merged.count == 7
        torch.testing.assert_close(merged.mean(), pool.double().mean(0))
        torch.testing.assert_close(merged.covariance(), torch.cov(pool.double().T))
        assert torch.equal(merged.pool, pool[:6])  # rank order, cut at keep
        assert torch.equal(merged.logits, logits)


# --- KID and IS --------------------------------------------------------------------------------


def test_kid_is_near_zero_for_one_distribution_and_larger_for_a_shifted_one() -> None:
    g = torch.Generator().manual_seed(0)
    real, fake = torch.randn(400, 32, generator=g), torch.randn(400, 32, generator=g)
    same, same_std = kernel_inception_distance(real, fake, subsets=20, subset_size=200, seed=0)
    shifted, _ = kernel_inception_distance(real, fake + 0.5, subsets=20, subset_size=200, seed=0)
    assert abs(same) < 0.02 and same_std >= 0
    assert shifted > 0.2 and shifted > 20 * abs(same)
    # subset_size larger than the rows available is capped rather than refused
    capped, _ = kernel_inception_distance(real[:50], fake[:50], subsets=3, subset_size=1000, seed=0)
    assert math.isfinite(capped)


def test_inception_score_is_one_for_uniform_and_c_for_confident_even_predictions() -> None:
    mean, std = inception_score(torch.zeros(100, 10), splits=5)
    assert mean == pytest.approx(1.0) and std == pytest.approx(0.0, abs=1e-12)
    classes = 10
    confident = 50.0 * torch.eye(classes).repeat(100, 1)  # 1000 rows, each class 100 times
    mean, _ = inception_score(confident, splits=1)
    assert mean == pytest.approx(classes, rel=1e-6)
    mean, _ = inception_score(confident, splits=10)  # random splits: marginals nearly uniform
    assert 0.9 * classes < mean <= classes + 1e-6


# --- extractors --------------------------------------------------------------------------------


def test_to_uint8_rgb_rounds_like_png_saving_and_expands_one_channel() -> None:
    images = torch.tensor([-1.0, -0.999, 0.0, 0.999, 1.0, -2.0, 2.0]).reshape(1, 1, 1, 7)
    out = to_uint8_rgb(images)
    assert out.dtype == torch.uint8 and out.shape == (1, 3, 1, 7)
    assert out[0, 0, 0].tolist() == [0, 0, 128, 255, 255, 0, 255]
    assert torch.equal(out[:, 0], out[:, 2])
    with pytest.raises(GentrainError, match="1 or 3"):
        to_uint8_rgb(torch.zeros(1, 2, 4, 4))


def test_standin_features_are_deterministic_with_documented_shapes() -> None:
    images = to_uint8_rgb(torch.rand(6, 3, 20, 20, generator=torch.Generator().manual_seed(0))
                          * 2 - 1)
    first, second = StandInFeatures()(images), build_feature_extractor("standin", None, "cpu")(
        images)
    assert first["pool"].shape == (6, 64) and first["logits"].shape == (6, 10)
    assert first["pool"].dtype == torch.float32
    assert torch.equal(first["pool"], second["pool"])
    assert torch.equal(first["logits"], second["logits"])
    assert protocol(StandInFeatures())["comparable_to_published"] is False


def test_missing_inception_weights_name_the_file_the_url_and_the_option(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(GentrainError) as info:
        build_feature_extractor("inception", None, "cpu")
    message = str(info.value)
    for part in (INCEPTION_WEIGHTS_FILE, INCEPTION_WEIGHTS_URL, "eval.inception_weights",
                 str(tmp_path / "hub" / "checkpoints" / INCEPTION_WEIGHTS_FILE)):
        assert part in message
    assert "\n" not in message and "network" in message
    with pytest.raises(GentrainError, match="eval.inception_weights="):
        find_inception_weights(str(tmp_path / "nowhere.pth"))
    with pytest.raises(GentrainError, match="standin"):
        build_feature_extractor("clip", None, "cpu")


def test_inception_is_selected_when_its_weights_are_in_the_hub_cache(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Real architecture, random weights: saved where torch-fidelity would have downloaded."""
    module = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3")

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("tried to download the Inception weights")

    monkeypatch.setattr(module, "load_state_dict_from_url", no_network)

    class Untrained(module.FeatureExtractorInceptionV3):
        def load_state_dict(self, *args: object, **kwargs: object) -> None:
            return None  # keep the random initialisation: there are no real weights here

    empty = tmp_path / "empty.pth"
    torch.save({}, empty)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        untrained = Untrained("inception-v3-compat", ["2048"],
                              feature_extractor_weights_path=str(empty))
    hub = tmp_path / "hub"
    (hub / "checkpoints").mkdir(parents=True)
    torch.save(untrained.state_dict(), hub / "checkpoints" / INCEPTION_WEIGHTS_FILE)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))

    extractor = build_feature_extractor("inception", None, torch.device("cpu"))
    assert isinstance(extractor, InceptionFeatures)
    out = extractor(to_uint8_rgb(torch.rand(2, 1, 8, 8) * 2 - 1))
    assert out["pool"].shape == (2, 2048) and out["logits"].shape == (2, 1008)
    assert out["pool"].dtype == out["logits"].dtype == torch.float32
    assert torch.isfinite(out["pool"]).all() and torch.isfinite(out["logits"]).all()
    described = protocol(extractor)
    assert described["implementation"] == "torch-fidelity" and described["input_size"] == 299
    assert described["resize"] == "TF-compatible bilinear" and described["feature_layer"] == "2048"
