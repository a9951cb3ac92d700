"""VAE family: the ELBO and likelihoods against hand computations, IS NLL, conditioning, shapes."""

from __future__ import annotations

import math

import pytest
import torch

from gentrain.data.core.batch import DataSpec
from gentrain.errors import GentrainError
from gentrain.likelihoods import bits_per_dim, discretized_logistic_log_prob
from gentrain.models import vae as vae_module
from gentrain.models.vae import VAE

TINY_BINARY = DataSpec("tiny", channels=1, height=4, width=4, values="binary")
TINY_8BIT = DataSpec("tiny8", channels=1, height=4, width=4)
TINY_CLASSES = DataSpec(
    "tiny-classes",
    channels=1,
    height=8,
    width=8,
    values="binary",
    label_kind="class",
    num_classes=3,
)
SMALL = {"latent_dim": 2, "base_channels": 4}


def binary_images(n: int, spec: DataSpec, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    shape = (n, spec.channels, spec.height, spec.width)
    return torch.where(torch.rand(shape, generator=generator) < 0.5, 1.0, -1.0)


def eight_bit_images(n: int, spec: DataSpec, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    shape = (n, spec.channels, spec.height, spec.width)
    return torch.randint(0, 256, shape, generator=generator).double() / 255 * 2 - 1


def test_loss_matches_hand_computed_elbo() -> None:
    torch.manual_seed(1)
    model = VAE(TINY_BINARY, beta=0.5, **SMALL).double()
    x = binary_images(3, TINY_BINARY).double()
    torch.manual_seed(123)
    out = model.loss({"image": x}, "main")
    torch.manual_seed(123)
    eps = torch.randn(3, 2, dtype=torch.float64)  # the one draw the loss makes

    h = model.encoder(x)
    mu, logvar = h[:, :2], h[:, 2:]
    z = mu + torch.sqrt(torch.exp(logvar)) * eps
    p = torch.sigmoid(model.decoder(z))
    t = (x + 1) / 2
    log_px = (t * torch.log(p) + (1 - t) * torch.log(1 - p)).sum(dim=(1, 2, 3))
    var = torch.exp(logvar)
    kl = 0.5 * (mu**2 + var - 1 - torch.log(var)).sum(dim=1)

    torch.testing.assert_close(out["loss"], (-log_px + 0.5 * kl).mean())
    torch.testing.assert_close(out["recon_nats"], -log_px.mean())
    torch.testing.assert_close(out["kl_nats"], kl.mean())
    torch.testing.assert_close(out["elbo_nats"], (log_px - kl).mean())
    assert all(value.dim() == 0 for value in out.values())


def test_discretized_logistic_matches_cdf_differences() -> None:
    mean = torch.tensor([0.1, -0.3, 0.9, -0.95, 0.0, 0.5], dtype=torch.float64)
    log_scale = torch.tensor([-2.0, -1.0, -3.0, 0.5, -6.0, -4.0], dtype=torch.float64)
    levels = torch.tensor([0, 255, 255, 0, 127, 129], dtype=torch.float64)
    x = levels / 255 * 2 - 1  # two lowest bins, two highest, two inner ones
    scale = torch.exp(log_scale)

    def cdf(value: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid((value - mean) / scale)

    expected = cdf(x + 1 / 255) - cdf(x - 1 / 255)
    expected[0] = cdf(x + 1 / 255)[0]  # lowest bin reaches -inf
    expected[3] = cdf(x + 1 / 255)[3]
    expected[1] = 1 - cdf(x - 1 / 255)[1]  # highest bin reaches +inf
    expected[2] = 1 - cdf(x - 1 / 255)[2]
    got = discretized_logistic_log_prob(mean[:, None], log_scale[:, None], x[:, None])
    torch.testing.assert_close(got, torch.log(expected))


@pytest.mark.parametrize("mean,log_scale", [(0.3, -1.5), (-0.99, -6.0), (0.0, 2.0), (1.0, -7.0)])
def test_discretized_logistic_bins_sum_to_one(mean: float, log_scale: float) -> None:
    x = torch.linspace(-1, 1, 256, dtype=torch.float64)[:, None]
    log_p = discretized_logistic_log_prob(
        torch.full_like(x, mean), torch.full_like(x, log_scale), x
    )
    assert torch.isfinite(log_p).all()
    torch.testing.assert_close(torch.logsumexp(log_p, 0), torch.zeros((), dtype=torch.float64))


def test_evaluate_shapes_and_bits_per_dim() -> None:
    torch.manual_seed(0)
    model = VAE(TINY_BINARY, iw_samples=8, **SMALL).eval()
    metrics = model.evaluate({"image": binary_images(5, TINY_BINARY)})
    assert set(metrics) == {"nll_elbo_nats", "bits_per_dim", "nll_is_nats", "nll_is_bits_per_dim"}
    for value in metrics.values():
        assert value.shape == (5,) and torch.isfinite(value).all()
    dims = TINY_BINARY.dims
    assert torch.equal(metrics["bits_per_dim"], metrics["nll_elbo_nats"] / (dims * math.log(2)))
    assert torch.equal(metrics["nll_is_bits_per_dim"], bits_per_dim(metrics["nll_is_nats"], dims))
    assert torch.equal(
        metrics["nll_is_bits_per_dim"], metrics["nll_is_nats"] / (dims * math.log(2))
    )


def test_importance_sampling_bounds() -> None:
    torch.manual_seed(0)
    x = binary_images(1, TINY_BINARY).expand(4000, -1, -1, -1)
    one = VAE(TINY_BINARY, iw_samples=1, **SMALL).eval()
    metrics = one.evaluate({"image": x})
    # With K = 1 the IS estimate is a single-sample ELBO: the same in expectation.
    assert abs(metrics["nll_is_nats"].mean() - metrics["nll_elbo_nats"].mean()) < 0.1
    many = VAE(TINY_BINARY, iw_samples=64, **SMALL).eval()
    many.load_state_dict(one.state_dict())
    tighter = many.evaluate({"image": x[:200]})["nll_is_nats"].mean()
    assert tighter <= metrics["nll_elbo_nats"].mean()


def test_importance_sampling_in_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = VAE(TINY_BINARY, iw_samples=10, **SMALL).eval()
    monkeypatch.setattr(vae_module, "IW_CHUNK_VALUES", 3 * 4 * TINY_BINARY.dims)  # chunks of 3
    nll = model.evaluate({"image": binary_images(4, TINY_BINARY)})["nll_is_nats"]
    assert nll.shape == (4,) and torch.isfinite(nll).all()


def test_evaluate_is_reproducible_and_leaves_global_rng_alone() -> None:
    model = VAE(TINY_BINARY, iw_samples=4, **SMALL).eval()
    batch = {"image": binary_images(3, TINY_BINARY)}
    torch.manual_seed(5)
    first = model.evaluate(batch)
    after = torch.randn(3)
    torch.manual_seed(5)
    torch.testing.assert_close(torch.randn(3), after)
    torch.testing.assert_close(model.evaluate(batch), first)


def test_conditional_label_changes_decoder_output() -> None:
    torch.manual_seed(0)
    model = VAE(TINY_CLASSES, conditional=True, **SMALL).eval()
    zeros = torch.zeros(4, dtype=torch.long)
    a = model.sample(4, {"label": zeros}, torch.Generator().manual_seed(0))
    b = model.sample(4, {"label": zeros + 1}, torch.Generator().manual_seed(0))
    assert not torch.allclose(a, b)
    batch = {"image": binary_images(4, TINY_CLASSES), "label": torch.tensor([0, 1, 2, 0])}
    assert model.condition(batch) == {"label": batch["label"]}
    assert torch.isfinite(model.loss(batch, "main")["loss"])


def test_conditional_needs_labels() -> None:
    model = VAE(TINY_CLASSES, conditional=True, **SMALL)
    with pytest.raises(GentrainError, match="label"):
        model.loss({"image": binary_images(2, TINY_CLASSES)}, "main")
    with pytest.raises(GentrainError, match="conditional=false"):
        VAE(TINY_BINARY, conditional=True, **SMALL)
    assert VAE(TINY_CLASSES, **SMALL).condition({"label": torch.zeros(1)}) is None


def test_bernoulli_on_8bit_data_is_refused() -> None:
    with pytest.raises(GentrainError, match="binarize"):
        VAE(TINY_8BIT, likelihood="bernoulli", **SMALL)
    assert VAE(TINY_8BIT, **SMALL).likelihood == "logistic"
    assert VAE(TINY_BINARY, **SMALL).likelihood == "bernoulli"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"latent_dim": 0},
        {"beta": -1.0},
        {"iw_samples": 0},
        {"likelihood": "gauss"},
        {"num_down": 3},
        {"num_down": 0},
    ],
)
def test_bad_hyperparameters_are_refused(kwargs: dict) -> None:
    with pytest.raises(GentrainError, match="model\\."):
        VAE(TINY_BINARY, **{**SMALL, **kwargs})


@pytest.mark.parametrize("spec", [TINY_BINARY, TINY_8BIT])
def test_adam_steps_reduce_loss(spec: DataSpec) -> None:
    torch.manual_seed(0)
    model = VAE(spec, latent_dim=4, base_channels=8)
    make = binary_images if spec.values == "binary" else eight_bit_images
    batch = {"image": make(8, spec).float()}
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)

    def loss() -> torch.Tensor:
        torch.manual_seed(7)
        return model.loss(batch, "main")["loss"]

    before = loss().detach()
    for _ in range(40):
        optimizer.zero_grad()
        loss().backward()
        optimizer.step()
    assert loss() < before * 0.9


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (3, 64, 64)])
def test_sample_shapes(shape: tuple[int, int, int]) -> None:
    channels, height, width = shape
    spec = DataSpec("s", channels=channels, height=height, width=width)
    model = VAE(spec, **SMALL).eval()
    images = model.sample(3, generator=torch.Generator().manual_seed(0))
    assert images.shape == (3, *shape)
    assert images.min() >= -1 and images.max() <= 1
    out = model.loss({"image": eight_bit_images(2, spec).float()}, "main")
    assert torch.isfinite(out["loss"])


def test_visuals_grids() -> None:
    torch.manual_seed(0)
    model = VAE(TINY_CLASSES, conditional=True, **SMALL).eval()
    batch = {"image": binary_images(40, TINY_CLASSES), "label": torch.arange(40) % 3}
    grids = model.visuals(batch, torch.Generator().manual_seed(0))
    image = (1, 8, 8)
    assert grids["samples"].images.shape == (3 * 8, *image)
    assert grids["samples"].nrow == 8
    reconstructions = grids["reconstructions"].images
    assert reconstructions.shape == (64, *image)
    assert torch.equal(reconstructions[0::2], batch["image"][:32])  # inputs, then outputs
    assert grids["interpolations"].images.shape == (64, *image)
    for grid in grids.values():
        assert grid.images.min() >= -1 and grid.images.max() <= 1


def test_unconditional_visuals_grid_size() -> None:
    model = VAE(TINY_BINARY, **SMALL).eval()
    grids = model.visuals({"image": binary_images(3, TINY_BINARY)}, torch.Generator())
    assert grids["samples"].images.shape == (64, 1, 4, 4)
    assert grids["reconstructions"].images.shape == (6, 1, 4, 4)
    assert grids["interpolations"].images.shape == (8, 1, 4, 4)
