"""Building blocks of the VecSet autoencoder, named after the paper's parts.

Attention goes through `torch.nn.functional.scaled_dot_product_attention`, so GPUs use the
flash / memory-efficient kernels. Nothing here needs a double backward: the eikonal term is
computed by finite differences of the decoder output (see heartvec_trainer.losses).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class FourierEmbedding(nn.Module):
    """xyz (normalized, about [-1, 1]) -> [xyz, sin(2^k pi x), cos(2^k pi x), extra] -> width.

    Args:
        frequencies: octaves k = 0..frequencies-1.
        width: output channels.
        extra_features: channels concatenated after the embedding (e.g. a one-hot class).
    """

    def __init__(self, frequencies: int, width: int, extra_features: int = 0) -> None:
        super().__init__()
        self.bands: torch.Tensor
        self.register_buffer("bands", (2.0 ** torch.arange(frequencies)) * math.pi)
        self.project = nn.Linear(3 + 6 * frequencies + extra_features, width)

    def forward(self, xyz: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        scaled = (xyz[..., None] * self.bands).flatten(-2)  # (B, N, 3F)
        parts = [xyz, scaled.sin(), scaled.cos()]
        if extra is not None:
            parts.append(extra)
        return self.project(torch.cat(parts, dim=-1))  # (B, N, W)


class Attention(nn.Module):
    """Multi-head attention of x over a context (itself when none is given)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.to_query = nn.Linear(width, width, bias=False)
        self.to_key_value = nn.Linear(width, 2 * width, bias=False)
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        batch, length, width = x.shape
        head_width = width // self.heads
        query = self.to_query(x).view(batch, length, self.heads, head_width).transpose(1, 2)
        key, value = (
            self.to_key_value(context)
            .view(batch, context.shape[1], 2, self.heads, head_width)
            .permute(2, 0, 3, 1, 4)
        )  # each (B, h, M, d)
        attended = F.scaled_dot_product_attention(query, key, value)  # (B, h, N, d)
        return self.out(attended.transpose(1, 2).reshape(batch, length, width))


class FeedForward(nn.Module):
    """Pre-norm two-layer MLP with a 4x hidden width."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(width), nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Block(nn.Module):
    """Pre-norm residual attention (self, or cross when `cross`) followed by a feed-forward."""

    def __init__(self, width: int, heads: int, cross: bool = False, feedforward: bool = True):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.context_norm = nn.LayerNorm(width) if cross else None
        self.attention = Attention(width, heads)
        self.feedforward = FeedForward(width) if feedforward else None

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        if self.context_norm is not None:
            assert context is not None, "a cross-attention block needs a context"
            context = self.context_norm(context)
        x = x + self.attention(self.norm(x), context)
        if self.feedforward is not None:
            x = x + self.feedforward(x)
        return x
