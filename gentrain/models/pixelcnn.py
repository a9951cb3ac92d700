"""PixelCNN (van den Oord et al. 2016): an exact likelihood by the chain rule over pixels.

p(x) = Π_i p(x_i | x_<i) in raster order (and R → G → B within a pixel), every factor from
one masked network pass, so training is one pass per batch while sampling takes one pass per
pixel (or sub-pixel). The output is a 256-way softmax per sub-pixel (the paper), PixelCNN++'s
discretised logistic mixture, or a Bernoulli for binarised data; the likelihoods are
gentrain.likelihoods'.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from gentrain.data.core.batch import Batch, DataSpec
from gentrain.errors import require
from gentrain.likelihoods import (
    bernoulli_log_prob,
    bits_per_dim,
    categorical_log_prob,
    logistic_mixture_log_prob,
    mixture_channels,
    sample_categorical,
    sample_logistic_mixture,
)
from gentrain.models.base import (
    GenerativeModel,
    Grid,
    StepContext,
    labels_of,
    require_class_labels,
    sampling_labels,
)
from gentrain.nets.cached_sampling import CachedSampling
from gentrain.nets.pixelcnn import GatedPixelCNN, PixelCNN
from gentrain.nets.pixelrnn import DiagonalBiLSTM, RowLSTM

ARCHS = {"pixelcnn": PixelCNN, "gated": GatedPixelCNN}
# PixelRNN's nets (model=pixelrnn): the same contract, so the same family code.
RNN_ARCHS = {"row_lstm": RowLSTM, "diagonal_bilstm": DiagonalBiLSTM}
OUTPUTS = ("auto", "softmax", "logistic_mixture", "bernoulli")
SAMPLERS = ("cached", "naive")


class PixelCNNModel(GenerativeModel):
    """Trained on the exact NLL; evaluated in bits/dim (and nats, the binarised-MNIST unit)."""

    family = "pixelcnn"
    #: The nets this family's model.arch chooses from.
    archs: dict[str, type[torch.nn.Module]] = ARCHS
    monitor = "bits_per_dim"
    inference_keys = ("grid_samples", "sampler")

    def __init__(
        self,
        spec: DataSpec,
        *,
        arch: str = "gated",
        output: str = "auto",
        mixtures: int = 10,
        hidden: int = 96,
        layers: int = 8,
        kernel_size: int = 7,
        conditional: bool = False,
        grid_samples: int = 16,
        sampler: str = "cached",
    ) -> None:
        super().__init__(spec)
        require(arch in self.archs,
                f"model.arch must be one of {', '.join(self.archs)}, got {arch!r}.")
        require(output in OUTPUTS,
                f"model.output must be one of {', '.join(OUTPUTS)}, got {output!r}.")
        require(hidden >= 1 and layers >= 1 and mixtures >= 1 and grid_samples >= 1,
                "model.hidden, model.layers, model.mixtures and model.grid_samples must be >= 1.")
        require(kernel_size % 2 == 1, f"model.kernel_size must be odd, got {kernel_size}.")
        require(sampler in SAMPLERS,
                f"model.sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}.")
        if output == "auto":
            output = "bernoulli" if spec.values == "binary" else "softmax"
        require(
            (output == "bernoulli") == (spec.values == "binary"),
            f"model.output={output} does not fit data {spec.name!r} ({spec.values} pixels): use "
            "bernoulli for binarised data (data.binarize=static|dynamic) and softmax or "
            "logistic_mixture for 8-bit images.",
        )
        if conditional:
            require_class_labels(spec, self.family)
        channels = spec.channels
        require(channels == 1 or output == "logistic_mixture" or hidden % channels == 0,
                f"model.hidden={hidden} must be divisible by the {channels} image channels, so "
                "the feature maps split into one group per colour (R, G, B).")
        self.output, self.mixtures, self.conditional = output, mixtures, conditional
        self.grid_samples, self.sampler = grid_samples, sampler
        per_channel = {"softmax": 256, "bernoulli": 1, "logistic_mixture": None}[output]
        self.net = self.archs[arch](
            data_channels=channels, out_per_channel=per_channel, hidden=hidden, layers=layers,
            kernel_size=kernel_size, num_classes=spec.num_classes if conditional else 0,
            out_channels=mixture_channels(channels, mixtures)
            if output == "logistic_mixture" else None,
        )

    def condition(self, batch: Batch) -> Batch | None:
        return {"label": labels_of(batch, self.family)} if self.conditional else None

    def _label(self, cond: Batch | None, n: int, device: torch.device) -> Tensor | None:
        if not self.conditional:
            return None
        return sampling_labels(cond, n, self.spec.num_classes, device)

    def log_prob(self, x: Tensor, label: Tensor | None) -> Tensor:
        """log p(x) per image in nats, exact."""
        out = self.net(x, label)
        if self.output == "softmax":
            return categorical_log_prob(out, x)
        if self.output == "bernoulli":
            return bernoulli_log_prob(out[:, :, 0].float(), x)
        return logistic_mixture_log_prob(out, x, self.mixtures)

    def loss(self, batch: Batch, phase: str, ctx: StepContext | None = None
             ) -> dict[str, Tensor]:
        x = batch["image"]
        nll = -self.log_prob(x, labels_of(batch, self.family) if self.conditional else None)
        nats = nll.mean()
        # Minimised per dimension so the learning rate does not depend on the image size.
        return {"loss": nats / self.spec.dims, "nll_nats": nats.detach(),
                "bits_per_dim": bits_per_dim(nats.detach(), self.spec.dims)}

    @torch.no_grad()
    def evaluate(self, batch: Batch) -> dict[str, Tensor]:
        """Exact NLL per image: nats (binarised MNIST's unit) and bits/dim."""
        nll = -self.log_prob(batch["image"],
                             labels_of(batch, self.family) if self.conditional else None)
        return {"nll_nats": nll, "bits_per_dim": bits_per_dim(nll, self.spec.dims)}

    @torch.no_grad()
    def sample(self, n: int, cond: Batch | None = None,
               generator: torch.Generator | None = None) -> Tensor:
        """Pixel by pixel in raster order (and channel by channel for per-sub-pixel outputs),
        for the whole batch at once. ``model.sampler=cached`` computes every layer at the new
        position only, from cached activations (about one network pass per image);
        ``naive`` reruns the whole network for every draw (the reference: the same
        distributions drawn in the same order, so the same images from the same generator)."""
        param = next(self.parameters())
        c, h, w = self.spec.channels, self.spec.height, self.spec.width
        x = torch.zeros(n, c, h, w, device=param.device, dtype=param.dtype)
        self.fill(x, self._label(cond, n, param.device), generator)
        return x

    @torch.no_grad()
    def fill(self, x: Tensor, label: Tensor | None, generator: torch.Generator | None,
             draws: int | None = None) -> None:
        """Draw the all-zero canvas ``x`` (B, C, H, W) in place; ``draws`` stops after that
        many (scripts/bench.py times the naive sampler's first draws). A net without a cached
        step (:class:`~gentrain.nets.cached_sampling.CachedSampling`) samples naively."""
        c, h, w = x.shape[1:]
        per_channel = self.output != "logistic_mixture"
        steps = c if per_channel else 1
        state = (self.net.begin_sampling(x, label)
                 if self.sampler == "cached" and isinstance(self.net, CachedSampling) else None)
        order = [(i, j, channel) for i in range(h) for j in range(w) for channel in range(steps)]
        for i, j, channel in tqdm(order[:draws], desc="pixelcnn sampling", unit="draw",
                                  leave=False, disable=len(order[:draws]) < 1024):
            if state is not None:
                out = self.net.step(state, i, j, channel)
            else:
                full = self.net(x, label)
                out = full[:, channel, :, i, j] if per_channel else full[:, :, i, j]
            if per_channel:
                x[:, channel, i, j] = self._draw(out, generator)
            else:
                x[:, :, i, j] = sample_logistic_mixture(
                    out[:, :, None, None], c, self.mixtures, generator)[:, :, 0, 0]

    def _draw(self, out: Tensor, generator: torch.Generator | None) -> Tensor:
        """One sub-pixel from its output: a level of the softmax, or a binary pixel."""
        if self.output == "softmax":
            return sample_categorical(out, generator)
        p = torch.sigmoid(out[:, 0].float())
        return torch.bernoulli(p, generator=generator) * 2 - 1

    @torch.no_grad()
    def visuals(self, batch: Batch, generator: torch.Generator) -> dict[str, Grid]:
        """A few samples only (``model.grid_samples``): sampling costs a pass per pixel."""
        n = min(self.grid_samples, batch["image"].shape[0])
        cond = self.condition({k: v[:n] for k, v in batch.items()})
        return {"samples": Grid(self.sample(n, cond, generator),
                                nrow=max(1, int(math.sqrt(n))))}


class PixelRNNModel(PixelCNNModel):
    """PixelRNN (van den Oord, Kalchbrenner, Kavukcuoglu 2016): the pixelcnn family with
    recurrent nets (Row LSTM, Diagonal BiLSTM; gentrain.nets.pixelrnn). Its own family name,
    so checkpoints, summaries and messages say pixelrnn; likelihoods, outputs, conditioning,
    evaluation and sampling are PixelCNNModel's."""

    family = "pixelrnn"
    archs = RNN_ARCHS

    def __init__(self, spec: DataSpec, *, arch: str = "diagonal_bilstm", **kwargs: Any
                 ) -> None:
        super().__init__(spec, arch=arch, **kwargs)
