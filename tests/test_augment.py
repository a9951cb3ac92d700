"""DiffAugment (gentrain.augment): each policy does what the paper's does, gradients pass
through it, and a GAN with model.diffaugment shows D augmented reals and fakes in both phases."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from gentrain.augment import color, cutout, diff_augment, translation
from gentrain.data.core.batch import DataSpec
from gentrain.errors import GentrainError
from gentrain.models.gan import GAN


def test_translation_shifts_each_image_by_whole_pixels_within_an_eighth_and_fills_zeros() -> None:
    torch.manual_seed(0)
    n, side = 200, 16  # shifts of up to round(16 / 8) = 2 pixels per axis
    x = torch.zeros(n, 1, side, side)
    x[:, 0, 8, 8] = 1.0  # one lit pixel away from every border
    out = translation(x)
    shifts = set()
    for image in out[:, 0]:
        assert image.sum() == 1.0 and image.max() == 1.0  # moved, not blurred or lost
        y, x_ = divmod(int(image.argmax()), side)
        shifts.add((y - 8, x_ - 8))
    assert all(abs(dy) <= 2 and abs(dx) <= 2 for dy, dx in shifts)
    assert len(shifts) == 25  # every shift in [-2, 2]² occurs

    ones = translation(torch.ones(n, 1, side, side))
    blank_rows = (ones[:, 0] == 0).all(dim=2).sum(dim=1)
    assert blank_rows.max() == 2 and blank_rows.min() == 0  # zeros fill what came in


def test_cutout_zeroes_one_square_of_half_the_side_clipped_at_the_border() -> None:
    torch.manual_seed(0)
    out = cutout(torch.ones(300, 1, 16, 16))[:, 0]
    zeros = out == 0
    rows, cols = zeros.any(dim=2).sum(dim=1), zeros.any(dim=1).sum(dim=1)
    assert (zeros.sum(dim=(1, 2)) == rows * cols).all()  # a rectangle
    assert rows.max() == cols.max() == 8 and rows.min() < 8  # half the side, clipped at edges
    assert (zeros.sum(dim=(1, 2)) == 64).float().mean() > 0.2  # often fully inside


def test_color_moves_a_grey_image_by_one_brightness_per_image_within_half() -> None:
    """A grey, flat image has no saturation or contrast to scale: only brightness moves it."""
    torch.manual_seed(0)
    x = torch.full((100, 3, 4, 4), 0.2)
    shift = color(x) - x
    assert torch.allclose(shift, shift[:, :1, :1, :1].expand_as(shift), atol=1e-6)
    assert shift.abs().max() <= 0.5 and shift.std() > 0.2


def test_augmentation_is_differentiable_and_reproducible_from_the_global_seed() -> None:
    augment = diff_augment(["color", "translation", "cutout"])
    assert augment is not None and diff_augment([]) is None
    x = torch.randn(4, 3, 16, 16, requires_grad=True)
    torch.manual_seed(3)
    out = augment(x)
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    torch.manual_seed(3)
    assert torch.equal(augment(x.detach()), out.detach())


def test_an_unknown_policy_is_a_clear_error() -> None:
    with pytest.raises(GentrainError, match=r"model.diffaugment.*color, translation, cutout"):
        diff_augment(["colour"])


class Recording(nn.Module):
    """Wraps D and records every batch of images it is shown."""

    def __init__(self, critic: nn.Module) -> None:
        super().__init__()
        self.critic, self.seen = critic, []

    def forward(self, x: Tensor, label: Tensor | None = None) -> Tensor:
        self.seen.append(x.detach().clone())
        return self.critic(x, label)


def test_a_gan_with_diffaugment_shows_d_augmented_reals_and_fakes_in_both_phases() -> None:
    spec = DataSpec(name="t", channels=3, height=16, width=16)
    torch.manual_seed(0)
    model = GAN(spec, base_channels=8, latent_dim=8, diffaugment=["translation", "cutout"])
    model.discriminator = Recording(model.discriminator)
    real = torch.rand(4, 3, 16, 16) * 2 - 1
    d_out = model.loss({"image": real}, "discriminator")
    shown_real, shown_fake = model.discriminator.seen
    assert not torch.equal(shown_real, real)
    assert (shown_real == 0).any() and (shown_fake == 0).any()  # cut out / shifted in
    g_out = model.loss({"image": real}, "generator")
    (shown_to_g,) = model.discriminator.seen[2:]
    assert (shown_to_g == 0).any()
    g_out["loss"].backward()  # G learns through the augmentation
    assert all(p.grad is not None for p in model.generator.parameters())
    assert torch.isfinite(d_out["loss"])
