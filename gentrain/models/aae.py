"""Adversarial autoencoder (Makhzani et al. 2016): an autoencoder whose aggregated posterior
q(z) is matched to a prior p(z) by a GAN played in the latent space.

The encoder is deterministic, z = E(x) (the paper's main choice): all the randomness of q(z)
comes from the data, and the discriminator, not a KL term, shapes it. A training step runs
the paper's phases in its order on one batch:

1. ``reconstruction``: encoder and decoder minimise the reconstruction error;
2. ``discriminator``: the latent D learns to call prior samples real (1) and codes fake (0);
3. ``generator``: the encoder, as the generator, makes its codes look real to a frozen D.

Phases 2 and 3 are the shared adversarial step, played on codes. The D phase encodes with the
encoder the reconstruction phase has just updated; the generator phase reuses those codes
(the encoder has not changed since), so the encoder runs twice per step, as it must.

With ``conditional`` the label is given to D (one-hot, next to z) and the prior samples of
each example come from its label's mixture component or swiss-roll segment (the paper's
Fig. 6, "incorporating label information in the adversarial regularization"): each class is
pushed into its own part of the prior, and decoding a part draws that class. Encoder and
decoder never see the label.
"""

from __future__ import annotations

import io

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gentrain.data.core.batch import Batch, DataSpec
from gentrain.errors import require
from gentrain.models.adversarial_step import AdversarialModel, Duel, Fakes
from gentrain.models.base import (
    Grid,
    StepContext,
    labels_of,
    require_class_labels,
    sampling_labels,
)
from gentrain.nets.conv import ConvDecoder, ConvEncoder, checked_num_down
from gentrain.priors import LatentPrior

GRID_ROW = 8
MANIFOLD_SIDE = 12  # 2-d codes: decode a MANIFOLD_SIDE x MANIFOLD_SIDE lattice over the prior
FIGURE_PRIOR_POINTS = 2000  # grey prior samples behind the scatter of held-out codes
FIGURE_SEED = 0


def latent_discriminator(in_features: int, hidden: int, layers: int) -> nn.Sequential:
    """An MLP from a code (and one-hot label) to one logit; the paper's MNIST D has two
    hidden layers of 1000 ReLU units."""
    blocks: list[nn.Module] = []
    width = in_features
    for _ in range(layers):
        blocks += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    return nn.Sequential(*blocks, nn.Linear(width, 1))


class AAE(AdversarialModel):
    """Deterministic encoder E(x), decoder G(z) and a latent discriminator D(z, y)."""

    family = "aae"
    monitor = "recon_mse"
    ema_networks = ("encoder", "decoder")
    players = {"reconstruction": ("encoder", "decoder"), "discriminator": ("discriminator",),
               "generator": ("encoder",)}
    objective = "nonsaturating"  # D: BCE on real/fake codes; encoder: -log D(E(x))

    def __init__(
        self,
        spec: DataSpec,
        *,
        latent_dim: int = 8,
        base_channels: int = 32,
        num_down: int | None = None,
        prior: str = "gaussian",
        prior_components: int | None = None,
        prior_radius: float = 4.0,
        prior_std: float = 0.5,
        conditional: bool = False,
        d_hidden: int = 1000,
        d_layers: int = 2,
    ) -> None:
        super().__init__(spec)
        require(base_channels >= 1, f"model.base_channels must be >= 1, got {base_channels}.")
        require(d_hidden >= 1 and d_layers >= 1,
                f"model.d_hidden and model.d_layers must be >= 1, got {d_hidden} and {d_layers}.")
        num_down = checked_num_down(num_down, spec.height, spec.width)
        classes = spec.num_classes if spec.label_kind == "class" else 0
        if prior_components is None:  # one part of the prior per class, as in the paper
            prior_components = classes or 10
        self.prior = LatentPrior(prior, latent_dim, prior_components, prior_radius, prior_std)
        if conditional:
            require_class_labels(spec, self.family)
            require(self.prior.has_components,
                    "model.conditional=true draws each example's prior sample from its class's "
                    "part of the prior, and model.prior=gaussian has none. Use "
                    "model.prior=mixture or model.prior=swissroll.")
            require(prior_components >= classes,
                    f"model.prior_components={prior_components} is fewer than the "
                    f"{classes} classes of {spec.name!r}: each class needs its own component. "
                    "Set it to at least the number of classes (or null).")
        self.latent_dim, self.conditional = latent_dim, conditional
        self.num_classes = classes if conditional else 0
        self.encoder = ConvEncoder(spec.channels, base_channels, num_down, latent_dim,
                                   spec.height, spec.width)
        self.decoder = ConvDecoder(latent_dim, base_channels, num_down, spec.channels,
                                   spec.height, spec.width)
        self.discriminator = latent_discriminator(latent_dim + self.num_classes, d_hidden,
                                                  d_layers)

    def condition(self, batch: Batch) -> Batch | None:
        label = self._labels(batch)
        return None if label is None else {"label": label}

    # -- the pieces ---------------------------------------------------------------------------

    def _labels(self, batch: Batch) -> Tensor | None:
        return labels_of(batch, self.family) if self.conditional else None

    def _encode(self, x: Tensor) -> Tensor:
        """Codes (B, latent_dim) in float32, through the trainer's wrapped encoder."""
        return self.network("encoder")(x).float()

    def _critic(self, critic: nn.Module, z: Tensor, label: Tensor | None) -> Tensor:
        """D's logits (B,) for codes ``z``, with the one-hot label beside them if conditional."""
        if label is not None:
            z = torch.cat([z, F.one_hot(label, self.num_classes).to(z.dtype)], dim=1)
        return critic(z).squeeze(1)

    # -- training -----------------------------------------------------------------------------

    def own_loss(self, batch: Batch, phase: str, ctx: StepContext) -> dict[str, Tensor]:
        if phase == "reconstruction":
            return self._reconstruction_loss(batch)
        raise KeyError(phase)

    def make_fakes(self, batch: Batch) -> Fakes:
        return {"codes": self._encode(batch["image"])}

    def duels(self, batch: Batch, fakes: Fakes, with_real: bool) -> list[Duel]:
        """D tells prior samples (real) from codes (fake), with the label if conditional."""
        label = self._labels(batch)
        prior = self.prior.sample(fakes["codes"].shape[0], label,
                                  device=fakes["codes"].device) if with_real else None
        return [Duel("discriminator", fakes["codes"], prior,
                     lambda critic, z, fake: self._critic(critic, z, label))]

    def _reconstruction_loss(self, batch: Batch) -> dict[str, Tensor]:
        """Mean squared error per pixel on the [-1, 1] scale.

        The AAE has no likelihood to report (its prior is matched adversarially, not by a
        bound), so the reconstruction term only has to be a good distance. Each phase has its
        own Adam optimizer, which ignores a loss's scale: the phases' learning rates, not this
        term's units, set how hard the encoder is pulled by each.
        """
        x = batch["image"]
        out = self.network("decoder")(self._encode(x)).float()
        mse = (out - x.float()).pow(2).mean()
        return {"loss": mse, "mse": mse.detach()}

    # -- sampling and evaluation --------------------------------------------------------------

    def _device(self) -> torch.device:
        return next(self.decoder.parameters()).device

    def decode(self, z: Tensor) -> Tensor:
        """Images in [-1, 1] decoded from codes ``z``."""
        return self.decoder(z.to(next(self.decoder.parameters()).dtype)).float().clamp(-1, 1)

    @torch.no_grad()
    def sample(
        self, n: int, cond: Batch | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """Decoded prior samples; conditional: from each label's part of the prior (every
        class in turn when ``cond`` is None)."""
        device = self._device()
        label = sampling_labels(cond, n, self.num_classes, device) if self.conditional else None
        return self.decode(self.prior.sample(n, label, generator, device))

    @torch.no_grad()
    def reconstruct(self, batch: Batch) -> Tensor:
        return self.decode(self.encoder(batch["image"]).float())

    @torch.no_grad()
    def evaluate(self, batch: Batch) -> dict[str, Tensor]:
        """Per-example reconstruction MSE per pixel (lower is better)."""
        x = batch["image"].float()
        return {"recon_mse": (self.reconstruct(batch) - x).pow(2).flatten(1).mean(1)}

    # -- pictures -----------------------------------------------------------------------------

    @torch.no_grad()
    def visuals(self, batch: Batch, generator: torch.Generator) -> dict[str, Grid]:
        """Samples (one row per class if conditional), input/reconstruction pairs, and for
        2-d codes the decoded lattice over the prior's extent (the paper's learned manifold)."""
        device = self._device()
        if self.conditional:
            labels = torch.arange(self.num_classes, device=device).repeat_interleave(GRID_ROW)
            samples = self.sample(labels.shape[0], {"label": labels}, generator)
        else:
            samples = self.sample(GRID_ROW * GRID_ROW, None, generator)
        grids = {"samples": Grid(samples, nrow=GRID_ROW)}
        inputs = {key: value[: GRID_ROW * 4] for key, value in batch.items()}
        pairs = torch.stack([inputs["image"].float(), self.reconstruct(inputs)], dim=1)
        grids["reconstructions"] = Grid(pairs.flatten(0, 1), nrow=GRID_ROW)
        if self.latent_dim == 2:
            extent = self.prior.radius + 2 * self.prior.std if self.prior.has_components else 2.5
            axis = torch.linspace(-extent, extent, MANIFOLD_SIDE, device=device)
            ys, xs = torch.meshgrid(axis.flip(0), axis, indexing="ij")  # +y at the top
            lattice = torch.stack([xs, ys], dim=-1).flatten(0, 1)
            grids["manifold"] = Grid(self.decode(lattice), nrow=MANIFOLD_SIDE)
        return grids

    @torch.no_grad()
    def figures(self, batch: Batch) -> dict[str, bytes]:
        """``codes``: the held-out batch's codes coloured by class over prior samples (grey;
        conditional: each class's part faintly in its colour), as a PNG, in the first two
        dimensions (where the mixture and swiss roll are shaped; all of a 2-d code). Nothing
        for 1-d codes."""
        if self.latent_dim < 2:
            return {}
        codes = self.encoder(batch["image"]).float().cpu()[:, :2]
        generator = torch.Generator().manual_seed(FIGURE_SEED)
        parts = (torch.arange(FIGURE_PRIOR_POINTS) % self.num_classes if self.conditional
                 else None)
        prior = self.prior.sample(FIGURE_PRIOR_POINTS, parts, generator)[:, :2]
        labels = batch.get("label") if self.spec.label_kind == "class" else None
        return {"codes": _scatter_png(codes, None if labels is None else labels.cpu(), prior,
                                      parts, self.spec.class_names)}


def _scatter_png(codes: Tensor, labels: Tensor | None, prior: Tensor, parts: Tensor | None,
                 class_names: tuple[str, ...]) -> bytes:
    """A PNG of 2-d ``codes`` (coloured by ``labels``) over ``prior`` samples (coloured by the
    class ``parts`` they were drawn for, if any), drawn headless with Figure + FigureCanvasAgg
    (never pyplot, so no backend switch and no open figures)."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 5), dpi=100, layout="constrained")
    ax = fig.subplots()
    classes = max(int(t.max()) + 1 for t in (labels, parts, torch.zeros(1)) if t is not None)
    palette = colormaps["tab10" if classes <= 10 else "tab20"]
    if parts is None:
        ax.scatter(prior[:, 0], prior[:, 1], s=2, color="0.82", label="prior")
    else:
        ax.scatter(prior[:, 0], prior[:, 1], s=2, c=[palette(k % 20) for k in parts.tolist()],
                   alpha=0.15, label="prior (by class)")
    if labels is None:
        ax.scatter(codes[:, 0], codes[:, 1], s=10, color="C0", label="codes")
    else:
        for k in labels.unique().tolist():
            chosen = labels == k
            name = class_names[k] if k < len(class_names) else str(k)
            ax.scatter(codes[chosen, 0], codes[chosen, 1], s=10, color=palette(k % 20),
                       label=name)
    ax.legend(fontsize="small", markerscale=2, loc="center left", bbox_to_anchor=(1.0, 0.5))
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_title("held-out codes E(x) over prior samples (dims 1-2)", fontsize="medium")
    buffer = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buffer)
    return buffer.getvalue()
