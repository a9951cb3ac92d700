"""GAN objectives as plain functions on the discriminator's logits (no networks inside).

Every loss is a scalar to minimise. Logits are promoted to float32 first: they are few, and a
bfloat16 mean of a loss is too coarse to log or to compare between runs. Stability warnings
and loss weights (λ for the penalty, pix2pix's 0.5 on D) belong to the caller.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from gentrain.errors import require

LOSSES = ("minimax", "nonsaturating", "wgan-gp", "hinge", "lsgan")


def _check(kind: str) -> None:
    require(kind in LOSSES, f"model.loss={kind!r} is not one of {', '.join(LOSSES)}.")


def discriminator_loss(kind: str, real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """The discriminator's (critic's) loss for ``kind``, one of :data:`LOSSES`.

    minimax and nonsaturating share D's loss −[log D(x) + log(1 − D(G(z)))], i.e. BCE to 1 on
    real and to 0 on fake, written with softplus: −log σ(l) = softplus(−l) and
    −log(1 − σ(l)) = softplus(l). wgan-gp leaves the gradient penalty to
    :func:`gradient_penalty`. lsgan is Mao et al. with a=0, b=1 (MSE to 0 and 1, as in
    pix2pix's LSGAN) and without pix2pix's 0.5 factor.
    """
    _check(kind)
    real, fake = real_logits.float(), fake_logits.float()
    if kind in ("minimax", "nonsaturating"):
        return F.softplus(-real).mean() + F.softplus(fake).mean()
    if kind == "wgan-gp":
        return fake.mean() - real.mean()
    if kind == "hinge":
        return F.relu(1 - real).mean() + F.relu(1 + fake).mean()
    return ((real - 1) ** 2).mean() + (fake**2).mean()


def generator_loss(kind: str, fake_logits: Tensor) -> Tensor:
    """The generator's loss for ``kind``, one of :data:`LOSSES`.

    minimax is the saturating objective of the min-max game, mean log(1 − D(G(z))) =
    mean(−softplus(l)): its gradient vanishes exactly when D confidently rejects the fakes,
    which is why nonsaturating, mean(−log D(G(z))) = mean(softplus(−l)), is used in practice.
    wgan-gp and hinge both minimise −mean(l); lsgan is Mao et al. with c=1.
    """
    _check(kind)
    fake = fake_logits.float()
    if kind == "minimax":
        return (-F.softplus(fake)).mean()
    if kind == "nonsaturating":
        return F.softplus(-fake).mean()
    if kind in ("wgan-gp", "hinge"):
        return -fake.mean()
    return ((fake - 1) ** 2).mean()


def gradient_penalty(
    critic: Callable[[Tensor], Tensor],
    real: Tensor,
    fake: Tensor,
    generator: torch.Generator | None = None,
) -> Tensor:
    """WGAN-GP's penalty mean((‖∇ critic(x̂)‖₂ − 1)²) (Gulrajani et al.); the caller applies λ.

    x̂ = ε·real + (1 − ε)·fake with one ε ~ U[0, 1] per sample, drawn from ``generator`` when
    given (on its device) and from the global RNG otherwise. The gradient keeps its graph
    (create_graph=True) so the penalty trains the critic's parameters; neither real nor fake
    receives gradient.

    Under mixed precision the inner gradient would be computed in bf16/fp16 and its norm is
    then too coarse (and can underflow in fp16). Rather than scaling the inner gradient as in
    PyTorch's AMP gradient-penalty recipe, the interpolation, the critic call and
    ``autograd.grad`` all run in float32 with autocast disabled; the critic's parameters must
    therefore be float32, as they are under autocast.
    """
    real, fake = real.detach().float(), fake.detach().float()
    shape = (real.shape[0],) + (1,) * (real.dim() - 1)
    device = generator.device if generator is not None else real.device
    eps = torch.rand(shape, generator=generator, device=device).to(real.device)
    with torch.autocast(device_type=real.device.type, enabled=False):
        interpolated = (eps * real + (1 - eps) * fake).requires_grad_(True)
        (grads,) = torch.autograd.grad(critic(interpolated).sum(), interpolated, create_graph=True)
        return ((grads.flatten(1).norm(2, dim=1) - 1) ** 2).mean()


def r1_penalty(critic: Callable[[Tensor], Tensor], real: Tensor) -> Tensor:
    """R1 (Mescheder et al. 2018): mean ‖∇ₓ critic(x)‖₂² on real images only; the caller
    applies γ/2. It pushes D's gradient on the data to zero, which makes the game locally
    convergent where unregularised GAN training oscillates. Float32 with autocast off and the
    graph kept, as :func:`gradient_penalty`."""
    with torch.autocast(device_type=real.device.type, enabled=False):
        x = real.detach().float().requires_grad_(True)
        (grads,) = torch.autograd.grad(critic(x).float().sum(), x, create_graph=True)
        return grads.flatten(1).pow(2).sum(1).mean()
