"""InfoGAN (Chen et al. 2016): a GAN whose generator also takes latent codes c, made
recoverable from G(z, c) by maximising a lower bound of the mutual information I(c; G(z, c)).

G's input is [z, c]: noise z ~ N(0, I) and the codes, a k-way categorical code (one-hot,
uniform) and continuous codes ~ U(-1, 1). A recognition head Q(c | x) shares every layer of
D's body (nets.gan.InfoDiscriminator). The bound is

    L_I = E_{c, z} [log Q(c | G(z, c))] + H(c) <= I(c; G(z, c)),

with Q softmax for the categorical code and a factored Gaussian for the continuous ones (σ = 1
fixed, as the reference code's MNIST run; ``learn_std`` makes Q output log σ too). Both players
minimise λ·(−L_I) on top of their GAN losses (H(c) is constant and left out), as in the
authors' code (openai/InfoGAN): the D step adds it on the detached fakes, training D's body and
the Q head (both discriminator-phase parameters); the G step adds it through the frozen D and Q,
training G alone. So the shared body learns to tell real from fake and to read the codes, and
Q's head is never in the generator's optimizer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gentrain.data.core.batch import Batch, DataSpec
from gentrain.errors import require
from gentrain.models.base import Grid
from gentrain.models.gan import GAN, GRID_ROW
from gentrain.nets.gan import InfoDiscriminator

# Continuous traversals sweep each code over [-2, 2] (beyond the prior's [-1, 1], as the
# paper's figures do), 9 columns so that 0 is one of them.
SWEEP = (-2.0, 2.0, 9)
LOG_2PI = math.log(2 * math.pi)


def code_nlls(q: Tensor, codes: Tensor, categorical: int, continuous: int,
              learn_std: bool) -> dict[str, Tensor]:
    """−E[log Q(c | x)] per kind of code, averaged over the batch, in nats.

    ``q``: Q's raw outputs (B, categorical + continuous·(2 if learn_std else 1)): the
    categorical logits, the continuous means, then (learn_std) their log σ. ``codes``: the
    codes G got (B, categorical + continuous), one-hot then continuous. The continuous term sums
    the factored Gaussian's log-likelihoods over the codes (0.5·log 2π + log σ +
    (c − μ)² / 2σ², σ = 1 unless learned).
    """
    q, codes = q.float(), codes.float()
    out: dict[str, Tensor] = {}
    if categorical:
        target = codes[:, :categorical].argmax(dim=1)
        logits = q[:, :categorical]
        out["categorical"] = F.cross_entropy(logits, target)
        out["accuracy"] = (logits.argmax(dim=1) == target).float().mean()
    if continuous:
        c = codes[:, categorical:]
        mean = q[:, categorical : categorical + continuous]
        log_std = q[:, categorical + continuous :] if learn_std else torch.zeros_like(mean)
        nll = 0.5 * LOG_2PI + log_std + 0.5 * ((c - mean) * torch.exp(-log_std)) ** 2
        out["continuous"] = nll.sum(dim=1).mean()
    return out


class InfoGAN(GAN):
    """A GAN with categorical and continuous codes that a Q head on D recovers from the fakes."""

    family = "infogan"

    def __init__(
        self,
        spec: DataSpec,
        *,
        noise_dim: int = 62,
        categorical: int = 10,
        continuous: int = 2,
        categorical_weight: float = 1.0,
        continuous_weight: float = 1.0,
        learn_std: bool = False,
        q_hidden: int = 128,
        arch: str = "dcgan",
        loss: str = "nonsaturating",
        base_channels: int | None = None,
        d_norm: str = "auto",
        spectral_norm: bool = False,
        critic_steps: int = 1,
        gp_weight: float = 10.0,
        diffaugment: Sequence[str] = (),
    ) -> None:
        require(noise_dim >= 1, f"model.noise_dim must be >= 1, not {noise_dim}.")
        require(categorical == 0 or categorical >= 2,
                f"model.categorical is the number of values of the categorical code: 0 (none) "
                f"or >= 2, not {categorical}.")
        require(continuous >= 0, f"model.continuous must be >= 0, not {continuous}.")
        require(categorical + continuous > 0,
                "InfoGAN needs at least one latent code: set model.categorical (e.g. 10) or "
                "model.continuous (e.g. 2); with neither it is model=gan.")
        require(categorical_weight >= 0 and continuous_weight >= 0,
                f"model.categorical_weight and model.continuous_weight (λ) must be >= 0, not "
                f"{categorical_weight} and {continuous_weight}.")
        super().__init__(spec, arch=arch, loss=loss, latent_dim=noise_dim + categorical +
                         continuous, base_channels=base_channels, d_norm=d_norm,
                         spectral_norm=spectral_norm, critic_steps=critic_steps,
                         gp_weight=gp_weight, diffaugment=diffaugment)
        self.noise_dim, self.categorical, self.continuous = noise_dim, categorical, continuous
        self.weights = {"categorical": categorical_weight, "continuous": continuous_weight}
        self.learn_std = learn_std
        q_outputs = categorical + continuous * (2 if learn_std else 1)
        self.discriminator: InfoDiscriminator = InfoDiscriminator(
            self.discriminator, q_outputs, q_hidden)

    # -- the codes ----------------------------------------------------------------------------

    def _latent(self, n: int, device: torch.device,
                generator: torch.Generator | None = None) -> Tensor:
        """[z, one-hot c_cat, c_cont]: z ~ N(0, I), c_cat uniform, c_cont ~ U(-1, 1)."""
        parts = [torch.randn(n, self.noise_dim, device=device, generator=generator)]
        if self.categorical:
            index = torch.randint(self.categorical, (n,), device=device, generator=generator)
            parts.append(F.one_hot(index, self.categorical).float())
        if self.continuous:
            parts.append(torch.rand(n, self.continuous, device=device, generator=generator) * 2
                         - 1)
        return torch.cat(parts, dim=1)

    @torch.no_grad()
    def sample_with_codes(
        self, n: int, cond: Batch | None = None, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """Samples and the categorical code's value of each (None without one)."""
        latent = self._latent(n, next(self.generator.parameters()).device, generator)
        codes = (latent[:, self.noise_dim:self.noise_dim + self.categorical].argmax(dim=1)
                 if self.categorical else None)
        return self.generate(latent, cond), codes

    def _judge_fakes(self, critic: nn.Module, fake: Tensor, label: Tensor | None,
                     latent: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """D's logits and λ·(−L_I + H(c)) on the fakes; logged: the bound L_I per kind of code
        (nats; H(c) is log k, and log 2 per U(-1, 1) code) and Q's categorical accuracy."""
        logits, q = critic(fake, label, with_q=True)
        nlls = code_nlls(q, latent[:, self.noise_dim :], self.categorical, self.continuous,
                         self.learn_std)
        info = logits.new_zeros((), dtype=torch.float32)
        out: dict[str, Tensor] = {}
        if self.categorical:
            info = info + self.weights["categorical"] * nlls["categorical"]
            out["mi_categorical"] = math.log(self.categorical) - nlls["categorical"].detach()
            out["q_accuracy"] = nlls["accuracy"]
        if self.continuous:
            info = info + self.weights["continuous"] * nlls["continuous"]
            out["mi_continuous"] = self.continuous * math.log(2.0) - nlls["continuous"].detach()
        return logits, {"loss": info, "info_loss": info.detach(), **out}

    # -- grids --------------------------------------------------------------------------------

    def traversal_latents(self, name: str, generator: torch.Generator | None = None) -> Tensor:
        """G's inputs (rows, columns, latent_dim) for the traversal grid ``name``.

        ``categorical``: 8 rows of one z each, continuous codes 0, one column per category.
        ``continuous_<j>``: one row per category (8 rows without a categorical code), each its
        own z with the other continuous codes 0, code j swept over [-2, 2] in the columns.
        Rows and columns change only the code named: everything else of a row is fixed.
        """
        device = next(self.generator.parameters()).device
        k, start = self.categorical, self.noise_dim
        if name == "categorical":
            require(k > 0, "This InfoGAN has no categorical code (model.categorical=0).")
            values = torch.eye(k, device=device)
            span = slice(start, start + k)
            rows = GRID_ROW
        else:
            index = name.removeprefix("continuous_")
            require(name.startswith("continuous_") and index.isdigit()
                    and int(index) < self.continuous,
                    f"No traversal {name!r}: this InfoGAN has categorical (if "
                    f"model.categorical > 0) and continuous_0..continuous_{self.continuous - 1}.")
            j = int(index)
            values = torch.linspace(*SWEEP, device=device)[:, None]
            span = slice(start + k + j, start + k + j + 1)
            rows = k or GRID_ROW
        base = self._latent(rows, device, generator)
        base[:, start + k :] = 0.0  # continuous codes at the prior's centre
        if name != "categorical" and k:
            base[:, start : start + k] = torch.eye(k, device=device)  # row r: category r
        latents = base[:, None, :].repeat(1, values.shape[0], 1)
        latents[:, :, span] = values
        return latents

    @torch.no_grad()
    def visuals(self, batch: Batch, generator: torch.Generator) -> dict[str, Grid]:
        """Samples (as a GAN's) and one traversal grid per code: rows fixed, one code varying
        along each row."""
        grids = super().visuals(batch, generator)
        names = (["categorical"] if self.categorical else []) + \
            [f"continuous_{j}" for j in range(self.continuous)]
        for name in names:
            latents = self.traversal_latents(name, generator)
            images = self.generator(latents.flatten(0, 1)).float().clamp(-1, 1)
            grids[name] = Grid(images, nrow=latents.shape[1])
        return grids
