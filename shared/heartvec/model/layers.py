"""Building blocks of the VecSet autoencoder, named after the paper's parts.

Attention goes through `torch.nn.functional.scaled_dot_product_attention`, so GPUs use the
flash / memory-efficient kernels. Nothing here needs a double backward: the eikonal term is
computed by finite differences of the decoder output (the trainer's losses).

Inference in fp32 on a CPU (decoding a grid on CPUs without native bf16) runs the linear layers
through oneDNN's fused linear (`fused_linear`): the bias added and the GELU applied inside the
matrix product instead of two more passes over the activations.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

_FUSED_LINEAR = (
    getattr(torch.ops.mkldnn, "_linear_pointwise", None)
    if torch.backends.mkldnn.is_available()
    else None
)


def _fused(x: torch.Tensor) -> bool:
    """Whether `fused_linear` takes oneDNN's fused path for `x`: fp32 on a CPU, no autograd (the
    op has no derivative), no autocast (which would not cast the op's inputs)."""
    return (
        _FUSED_LINEAR is not None
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and not torch.is_grad_enabled()
        and not torch.is_autocast_enabled("cpu")
    )


def fused_linear(layer: nn.Linear, x: torch.Tensor, gelu: bool = False) -> torch.Tensor:
    """`layer(x)`, followed by an exact GELU when `gelu`.

    For fp32 inference on a CPU, one oneDNN call with the bias and the GELU fused into the matrix
    product: `addmm` first copies the bias into every output row, and the GELU is another pass
    over the decoder's large feed-forward activations (same values to ~1e-6; BENCHMARKS.md has
    the speed-up). Everywhere else (training, refinement, GPUs, bf16 autocast) the plain
    modules."""
    if _fused(x):
        assert _FUSED_LINEAR is not None
        return _FUSED_LINEAR(x, layer.weight, layer.bias, "gelu" if gelu else "none", [], "none")
    out = layer(x)
    return F.gelu(out) if gelu else out


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
        return fused_linear(self.project, torch.cat(parts, dim=-1))  # (B, N, W)


class Attention(nn.Module):
    """Multi-head attention of x over a context (itself when none is given)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.to_query = nn.Linear(width, width, bias=False)
        self.to_key_value = nn.Linear(width, 2 * width, bias=False)
        self.out = nn.Linear(width, width)

    def query_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, W) -> the attention's queries, (B, heads, N, W / heads)."""
        batch, length, width = x.shape
        return self.to_query(x).view(batch, length, self.heads, width // self.heads).transpose(1, 2)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        return self.attend(self.query_heads(x), x if context is None else context)

    def attend(self, query: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Query heads (B, h, N, d) (`query_heads`) over a context (B, M, W) -> (B, N, W)."""
        batch, _, length, head_width = query.shape
        key, value = (
            self.to_key_value(context)
            .view(batch, context.shape[1], 2, self.heads, head_width)
            .permute(2, 0, 3, 1, 4)
        )  # each (B, h, M, d)
        attended = F.scaled_dot_product_attention(query, key, value)  # (B, h, N, d)
        width = head_width * self.heads
        return fused_linear(self.out, attended.transpose(1, 2).reshape(batch, length, width))


class FeedForward(nn.Module):
    """Pre-norm two-layer MLP with a 4x hidden width."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(width), nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm, expand, _, contract = self.net  # (LayerNorm, Linear, GELU, Linear)
        assert isinstance(expand, nn.Linear) and isinstance(contract, nn.Linear)
        return fused_linear(contract, fused_linear(expand, norm(x), gelu=True))


class Block(nn.Module):
    """Pre-norm residual attention (self, or cross when `cross`) followed by a feed-forward."""

    def __init__(self, width: int, heads: int, cross: bool = False, feedforward: bool = True):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.context_norm = nn.LayerNorm(width) if cross else None
        self.attention = Attention(width, heads)
        self.feedforward = FeedForward(width) if feedforward else None

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        query: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`query`: `self.attention.query_heads(self.norm(x))`, when already known."""
        if self.context_norm is not None:
            assert context is not None, "a cross-attention block needs a context"
            context = self.context_norm(context)
        if query is None:
            x = x + self.attention(self.norm(x), context)
        else:
            assert context is not None, "precomputed queries need a context"
            x = x + self.attention.attend(query, context)
        if self.feedforward is not None:
            x = x + self.feedforward(x)
        return x
