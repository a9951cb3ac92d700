"""GAN-INT-CLS (Reed, Akata, Yan, Logeswaran, Schiele and Lee, ICML 2016, "Generative
Adversarial Text to Image Synthesis"): a DCGAN whose G and D both read a caption's embedding.

The caption's embedding t comes from the shared text encoder (gentrain.nets.text), trained from
scratch with the model; G and D compress it to 128 dimensions each (gentrain.nets.text2image_gan).

- **GAN-CLS, the matching-aware D.** D sees (real image, right text) as real, and (real image,
  wrong text) and (fake image, right text) as fake, the last two weighted 0.5 each:
  L_D = softplus(−D(x, t)) + 0.5·softplus(D(x, t̂)) + 0.5·softplus(D(G(z, t), t)), each term a
  batch mean, t̂ the batch's embeddings rolled by one (another image's caption). So D must learn
  whether image and text match, not only whether the image looks real. On the shared step the
  (real, wrong) pairs join the duel's fake side: its logits are those of (fake, right) and
  (real, wrong) together, from two passes of D (batch norm sees each kind on its own, as in the
  authors' code), and the mean over both is the 0.5/0.5 weighting.
- **GAN-INT.** G's loss adds the same adversarial loss on fakes made from interpolated
  embeddings β·t + (1 − β)·t̂ (β = 0.5) and judged with them: text no image was captioned with,
  which makes G's map from text to images smooth between captions. Nothing there is real, so
  D's loss never sees them; they are made in the generator phase only, one per example (t̂ as
  above), in a G pass of their own, and their loss is added with ``interpolation_weight`` (the
  paper's sum of the two expectations; the authors' code draws half a batch of them in G's
  batch and averages over all 1.5·B).
- **The text encoder** trains through D's loss alone. Reed et al. pre-trained theirs (a
  char-CNN-RNN with a matching loss between images and captions) and kept it fixed; here it is
  trained from scratch, and D's (real, wrong text) term is that same matching signal. G takes
  the embedding as a fixed input (detached): letting G's loss move the encoder would let G
  fool D by blurring the text features D relies on, instead of by drawing better images.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from gentrain.adversarial import generator_loss
from gentrain.data.core.batch import Batch, DataSpec
from gentrain.errors import GentrainError, require
from gentrain.models.adversarial_step import AdversarialModel, Duel, Fakes, Verdict, frozen
from gentrain.models.base import Grid
from gentrain.nets.text2image_gan import TextDiscriminator, TextGenerator
from gentrain.text.tokenizer import tokenizer_of

GRID_ROWS = 8  # captions of the fixed held-out batch, one per row
GRID_COLUMNS = 8  # samples per caption; column j draws from the same z in every row


def mismatched(embedding: Tensor) -> Tensor:
    """Each example's "wrong" text: the previous example's embedding (the batch rolled by one;
    batches are shuffled, so it is a random other caption, occasionally one that fits too)."""
    return embedding.roll(1, dims=0)


class Text2ImageGAN(AdversarialModel):
    """G(z, t) and a matching-aware D(x, t) conditioned on the caption's embedding t."""

    family = "text2image_gan"
    #: FID needs trainer.eval_sample_quality=true during training; without it no best.pt.
    monitor = "fid"
    sample_quality_metrics = ("fid", "kid", "is")
    #: The encoder is averaged with G: the EMA G samples from the embeddings of an encoder
    #: averaged over the same steps, not from the live one's.
    ema_networks = ("generator", "text_encoder")
    players = {"generator": ("generator",), "discriminator": ("discriminator", "text_encoder")}
    captioned = True  # task=sample's prompts condition it
    needs_caption = True  # and it has no unconditional mode: task=sample requires a prompt

    def __init__(
        self,
        spec: DataSpec,
        *,
        text: Callable[..., nn.Module],
        latent_dim: int = 100,
        projection_dim: int = 128,
        base_channels: int = 128,
        d_base_channels: int = 64,
        interpolation_weight: float = 1.0,
        interpolation_beta: float = 0.5,
    ) -> None:
        super().__init__(spec)
        self.set_game("nonsaturating")  # the authors' binary cross-entropy
        require(min(latent_dim, projection_dim, base_channels, d_base_channels) >= 1,
                f"model.latent_dim, projection_dim, base_channels and d_base_channels must be "
                f">= 1, not {latent_dim}, {projection_dim}, {base_channels} and "
                f"{d_base_channels}.")
        require(interpolation_weight >= 0,
                f"model.interpolation_weight must be >= 0 (0: GAN-CLS without GAN-INT), not "
                f"{interpolation_weight}.")
        require(0.0 <= interpolation_beta <= 1.0,
                f"model.interpolation_beta is β of β·t1 + (1 − β)·t2, in [0, 1] (the paper: "
                f"0.5), not {interpolation_beta}.")
        self.latent_dim = latent_dim
        self.interpolation_weight, self.interpolation_beta = interpolation_weight, \
            interpolation_beta
        require(callable(text), "model.text must be a text encoder config with _partial_: "
                "true (see configs/model/text2image_gan.yaml).")
        self.tokenizer = tokenizer_of(spec)
        try:
            self.text_encoder = text(vocab_size=len(spec.vocabulary),
                                     max_length=spec.caption_length)
        except TypeError as error:
            raise GentrainError(f"model.text could not be built: {error}. Check the keys "
                                "against configs/model/text2image_gan.yaml.") from None
        width = self.text_encoder.width
        self.generator = TextGenerator(latent_dim, width, projection_dim, spec.channels,
                                       spec.height, base_channels)
        self.discriminator = TextDiscriminator(spec.channels, spec.height, width,
                                               projection_dim, d_base_channels)

    @classmethod
    def check_data(cls, spec: DataSpec) -> None:
        if not spec.captioned:
            raise GentrainError(
                f"model=text2image_gan draws images from captions, but data {spec.name!r} has "
                "none. Use data=shapes data.captions=true, data=cub or data=flowers (Reed et "
                "al.'s ten captions per image), data=coco, or data=folder data.captions=true "
                "with a NAME.txt caption next to each image.")
        require(spec.height == spec.width,
                f"model=text2image_gan's DCGAN networks need square images, not "
                f"{spec.height}x{spec.width}; set data.resolution.")

    def condition(self, batch: Batch) -> Batch | None:
        return {"caption": batch["caption"]}

    # -- the game -----------------------------------------------------------------------------

    def _embed(self, caption: Tensor) -> Tensor:
        """The pooled caption embedding (B, model.text.width), through the trainer's wrapped
        encoder."""
        return self.network("text_encoder")(caption)[0]

    def make_fakes(self, batch: Batch) -> Fakes:
        with torch.no_grad():  # G's condition: a fixed input, never a path to the encoder
            embedding = self._embed(batch["caption"])
        latent = torch.randn(embedding.shape[0], self.latent_dim, device=embedding.device)
        return {"image": self.network("generator")(latent, embedding), "embedding": embedding}

    def duels(self, batch: Batch, fakes: Fakes, with_real: bool) -> list[Duel]:
        if not with_real:  # G's phase: (fake, right text), with the text G drew from
            embedding = fakes["embedding"]
            return [Duel("discriminator", fakes["image"],
                         judge=lambda critic, images, fake: critic(images, embedding))]
        require(batch["image"].shape[0] >= 2,
                "model=text2image_gan's D needs batches of 2 or more: each image's wrong "
                "caption is another image's (data.batch_size).")
        embedding = self._embed(batch["caption"])  # D's own, with the graph that trains it

        def judge(critic: nn.Module, images: Tensor, fake: bool
                  ) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
            right = critic(images, embedding)
            if not fake:
                return right
            wrong = critic(batch["image"], mismatched(embedding))
            return torch.cat([right, wrong]), {
                "fake_right_logit": right.detach().float().mean(),
                "real_wrong_logit": wrong.detach().float().mean()}

        return [Duel("discriminator", fakes["image"], batch["image"], judge)]

    def discriminator_terms(self, batch: Batch, fakes: Fakes,
                            verdicts: list[Verdict]) -> dict[str, Tensor]:
        return dict(verdicts[0].fake_extra)  # logged: the fake side's two halves

    def generator_terms(self, batch: Batch, fakes: Fakes,
                        verdicts: list[Verdict]) -> dict[str, Tensor]:
        """GAN-INT: G's adversarial loss on fakes of interpolated embeddings, weighted."""
        if self.interpolation_weight == 0:
            return {}
        embedding = fakes["embedding"]
        beta = self.interpolation_beta
        mixed = beta * embedding + (1 - beta) * mismatched(embedding)
        latent = torch.randn(mixed.shape[0], self.latent_dim, device=mixed.device)
        images = self.network("generator")(latent, mixed)
        with frozen(self.discriminator) as critic:  # the raw D, as the step's G phase
            interpolated = generator_loss(self.objective, critic(images, mixed))
        return {"loss": self.interpolation_weight * interpolated,
                "right_text_loss": verdicts[0].loss, "interpolation_loss": interpolated.detach()}

    # -- sampling -----------------------------------------------------------------------------

    def captions(self, cond: Batch | None, n: int) -> Tensor:
        """``cond``'s captions, checked: (n, caption_length) token ids."""
        require(cond is not None and "caption" in cond,
                "model=text2image_gan draws images for captions: give one per image, as "
                "sample(n, {'caption': tokens}) or task=sample sample.prompt=\"a red circle\" "
                "(sample.prompts=FILE for one prompt per line).")
        caption = cond["caption"]  # type: ignore[index]
        length = self.spec.caption_length
        require(caption.dim() == 2 and caption.shape == (n, length)
                and not caption.dtype.is_floating_point,
                f"sample(n={n}) needs captions as token ids of shape ({n}, {length}) (the "
                f"run's data.caption_length), not {tuple(caption.shape)} {caption.dtype}.")
        return caption

    @torch.no_grad()
    def sample(
        self, n: int, cond: Batch | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        caption = self.captions(cond, n)
        device = next(self.generator.parameters()).device
        latent = torch.randn(n, self.latent_dim, device=device, generator=generator)
        return self.generate(latent, caption.to(device))

    def generate(self, latent: Tensor, caption: Tensor) -> Tensor:
        """G's images in [-1, 1] for ``latent`` (B, latent_dim) and ``caption`` (B, L)."""
        embedding = self.text_encoder(caption)[0]
        return self.generator(latent, embedding).float().clamp(-1, 1)

    @torch.no_grad()
    def visuals(self, batch: Batch, generator: torch.Generator) -> dict[str, Grid]:
        """One row per caption of the fixed held-out batch, titled with it; column j draws
        from the same z in every row, so the rows differ by their text alone."""
        captions = batch["caption"][:GRID_ROWS]
        device = next(self.generator.parameters()).device
        latent = torch.randn(GRID_COLUMNS, self.latent_dim, device=device, generator=generator)
        images = self.generate(latent.repeat(captions.shape[0], 1),
                               captions.repeat_interleave(GRID_COLUMNS, dim=0).to(device))
        titles = tuple(self.tokenizer.decode(captions))
        return {"samples": Grid(images, nrow=GRID_COLUMNS, titles=titles)}
