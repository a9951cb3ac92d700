"""The edge detector, the pair tasks, and the data configs' keys."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import get_method
from omegaconf import OmegaConf

from gentrain.data import build_data
from gentrain.data.datasets.shapes import shapes
from gentrain.data.pairs.edges import EdgeSettings, detect_edges
from gentrain.data.pairs.tasks import parse_pair
from gentrain.errors import GentrainError

CPU = torch.device("cpu")
CONFIGS = sorted((Path(__file__).parents[1] / "configs" / "data").glob("*.yaml"))


def square_image() -> torch.Tensor:
    image = torch.full((1, 3, 40, 40), 30, dtype=torch.uint8)
    image[:, :, 10:30, 10:30] = 220
    return image


def test_edges_trace_the_border_of_a_square_and_nothing_else() -> None:
    edges = detect_edges(square_image())[0, 0]
    inside = torch.zeros(40, 40, dtype=torch.bool)
    inside[10:30, 10:30] = True
    near_border = F.max_pool2d(inside[None].float(), 5, 1, 2)[0].bool() & ~(
        -F.max_pool2d(-inside[None].float(), 5, 1, 2)[0]).bool()  # within 2 px of the border
    assert edges.any() and not (edges & ~near_border).any()  # nothing in the flat regions
    for side in (edges[8:12, 12:28], edges[28:32, 12:28], edges[12:28, 8:12], edges[12:28, 28:32]):
        assert side.any(dim=0).all() or side.any(dim=1).all()  # each side is one closed line
    assert not detect_edges(torch.full((2, 3, 16, 16), 128, dtype=torch.uint8)).any()


def test_thinning_leaves_one_pixel_lines() -> None:
    image = torch.zeros(1, 1, 40, 40, dtype=torch.uint8)
    disc = (torch.arange(40)[:, None] - 20) ** 2 + (torch.arange(40)[None] - 18) ** 2 < 120
    image[0, 0][disc] = 255
    thin = detect_edges(image, EdgeSettings(thin=True))[0, 0].float()
    blocks = F.avg_pool2d(thin[None, None], 2, stride=1)
    assert thin.sum() > 20 and not (blocks == 1).any()  # no 2x2 squares of edge pixels


@pytest.mark.parametrize(("pair", "channels"), [
    ("grayscale", 1), ({"kind": "lowres", "factor": 4}, 3), ({"kind": "mask", "hole": 0.5}, 4),
    ("labels", 3), ("edges", 1),
])
def test_pair_tasks_on_tensor_data(pair, channels, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENTRAIN_DATA", str(tmp_path))
    data = shapes(batch_size=8, num_train=32, num_test=16, pair=pair)
    assert data.spec.source_channels == channels and data.spec.paired
    for batch in (next(iter(data.train_loader(device=CPU, seed=0))),
                  next(data.eval_batches(split="test", device=CPU))):
        source = batch["source"]
        assert source.shape == (8, channels, 32, 32) and source.dtype == torch.float32
        assert source.min() >= -1 and source.max() <= 1
    batch = next(data.eval_batches(split="test", device=CPU))
    image, source = batch["image"], batch["source"]
    if pair == "grayscale":
        assert torch.allclose(source.mean(dim=(2, 3)),
                              (image.mean(dim=(2, 3)) * torch.tensor([.299, .587, .114])).sum(1,
                              keepdim=True), atol=1e-5)
    if isinstance(pair, dict) and pair["kind"] == "lowres":
        # Same content at 1/4 resolution, but the fine detail is gone.
        assert (F.avg_pool2d(image, 4) - F.avg_pool2d(source, 4)).abs().mean() < 0.03
        assert (image - source).abs().mean() > 0.01
    if isinstance(pair, dict) and pair["kind"] == "mask":
        hole = source[:, 3] > 0
        assert torch.equal(hole.sum(dim=(1, 2)), torch.full((8,), 256))  # 16x16 each
        assert (source[:, :3][hole[:, None].expand(-1, 3, -1, -1)] == 0).all()
        assert torch.equal(source[:, :3][~hole[:, None].expand(-1, 3, -1, -1)],
                           image[~hole[:, None].expand(-1, 3, -1, -1)])


def test_tensor_edge_cache_is_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gentrain.data.pairs import edge_cache

    monkeypatch.setenv("GENTRAIN_DATA", str(tmp_path))
    first = shapes(batch_size=8, num_train=32, num_test=16, pair="edges")
    files = sorted((tmp_path / "cache").iterdir())
    assert len(files) == 2  # one per split
    stamps = [f.stat().st_mtime_ns for f in files]
    monkeypatch.setattr(edge_cache, "edge_drawing", lambda *a, **k: pytest.fail("recomputed"))
    second = shapes(batch_size=8, num_train=32, num_test=16, pair="edges")
    assert torch.equal(first.split("train").sources, second.split("train").sources)
    assert [f.stat().st_mtime_ns for f in files] == stamps


@pytest.mark.parametrize(("value", "message"), [
    ("edge", "not a pair task"), ({"kind": "lowres", "factr": 2}, "Unknown data.pair setting"),
    ({"kind": "lowres", "factor": 5}, "divide the image size"),
])
def test_bad_pair_settings_are_explained(value, message: str) -> None:
    with pytest.raises(GentrainError, match=message):
        shapes(batch_size=8, num_train=16, num_test=8, pair=value)


def test_grayscale_pair_needs_colour() -> None:
    with pytest.raises(GentrainError, match="colour"):
        shapes(batch_size=8, num_train=16, num_test=8, channels=1, pair="grayscale")
    assert parse_pair(None) is None


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_data_configs_match_their_builders(path: Path) -> None:
    cfg = OmegaConf.load(path)
    assert cfg.name == path.stem and "batch_size" in cfg
    keys = set(cfg) - {"_target_", "name"}
    builder = get_method(cfg._target_)
    parameters = inspect.signature(builder).parameters
    assert not any(p.kind == p.VAR_KEYWORD for p in parameters.values())  # typos must fail
    assert keys <= set(parameters), keys - set(parameters)
    required = {n for n, p in parameters.items() if p.default is inspect.Parameter.empty}
    assert required <= keys


def test_typo_in_data_config_is_an_error() -> None:
    cfg = OmegaConf.load(CONFIGS[0].parent / "shapes.yaml")
    cfg.hflipp = True
    with pytest.raises(GentrainError, match="hflipp"):
        build_data(cfg)
