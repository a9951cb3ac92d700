"""The text encoder every caption-conditional family trains from scratch with its model.

No pretrained text encoder can be downloaded here, so captions are encoded by a small
transformer trained jointly (latent diffusion's from-scratch transformer embedder is the
precedent; Reed et al. pre-trained a char-CNN-RNN instead). A learned summary token sits
before the words: its output is the pooled embedding, and it is a key that is never masked,
so cross-attention has something to attend to even for the empty caption, which is how
classifier-free guidance spells "no caption". Unknown words are masked like padding: their
one embedding never learns a meaning of its own (a prompt word the training captions never
had gave near-empty DDPM samples when it was attended to), so a prompt's unknown words are
left out rather than misread.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from gentrain.errors import require
from gentrain.text.tokenizer import PAD, UNK


class TextEncoder(nn.Module):
    """Token ids (B, L) to (pooled (B, width), per-token (B, 1 + L, width), padding mask
    (B, 1 + L), True where a key must be ignored: padding and unknown words); position 0 is
    the summary token."""

    def __init__(self, vocab_size: int, max_length: int, width: int = 128, layers: int = 2,
                 heads: int = 4) -> None:
        super().__init__()
        require(vocab_size > 2, "The text encoder needs a vocabulary beyond <pad> and <unk>.")
        require(width % heads == 0,
                f"model.text.width={width} must be divisible by model.text.heads={heads}.")
        require(layers >= 1, f"model.text.layers must be >= 1, not {layers}.")
        self.max_length = max_length
        self.tokens = nn.Embedding(vocab_size, width, padding_idx=PAD)
        self.summary = nn.Parameter(torch.zeros(1, 1, width))
        self.positions = nn.Parameter(torch.zeros(1, max_length + 1, width))
        nn.init.normal_(self.summary, std=0.02)
        nn.init.normal_(self.positions, std=0.02)
        layer = nn.TransformerEncoderLayer(width, heads, dim_feedforward=4 * width, dropout=0.0,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.width = width

    def forward(self, tokens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        require(tokens.shape[-1] == self.max_length,
                f"Captions of {tokens.shape[-1]} tokens reached a text encoder built for "
                f"{self.max_length}; the checkpoint and the data disagree on caption_length.")
        pad = (tokens == PAD) | (tokens == UNK)
        mask = torch.cat([torch.zeros_like(pad[:, :1]), pad], dim=1)
        x = torch.cat([self.summary.expand(tokens.shape[0], -1, -1), self.tokens(tokens)], 1)
        x = self.norm(self.blocks(x + self.positions, src_key_padding_mask=mask))
        return x[:, 0], x, mask
