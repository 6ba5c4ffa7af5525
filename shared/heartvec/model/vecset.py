"""The multi-class VecSet autoencoder (3DShape2VecSet / VecSetX family).

surface points + one-hot class (B, N, 3 + C)
  -> Fourier embedding -> cross-attention from M latent queries (FPS of the inputs)
  -> bottleneck (M, latent_dim): the latent set a shape is stored as
  -> self-attention stack -> cross-attention decoder from xyz queries
  -> one SDF per class (B, Q, C); the union surface is their minimum.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from heartvec.model.config import ModelConfig
from heartvec.model.layers import Block, FourierEmbedding
from heartvec.model.sampling import farthest_point_sampling


class VecSetAutoencoder(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        width = config.width
        self.input_embedding = FourierEmbedding(
            config.fourier_frequencies, width, extra_features=config.num_classes
        )
        self.encoder = Block(width, config.heads, cross=True)
        self.to_latent = nn.Linear(width, config.latent_dim)
        self.from_latent = nn.Linear(config.latent_dim, width)
        self.processor = nn.ModuleList(Block(width, config.heads) for _ in range(config.depth))
        self.query_embedding = FourierEmbedding(config.fourier_frequencies, width)
        self.decoder = Block(
            width, config.heads, cross=True, feedforward=config.decoder_feedforward
        )
        self.head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, config.num_classes))

    def encode(self, points: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Surface points (B, N, 3) with classes (B, N) in 1..C -> latent set (B, M, latent_dim)."""
        one_hot = F.one_hot(labels - 1, self.config.num_classes).to(points.dtype)  # (B, N, C)
        features = self.input_embedding(points, one_hot)  # (B, N, W)
        if self.config.latent_sampling == "fps":
            index = farthest_point_sampling(points.detach().float(), self.config.num_latents)
        else:
            index = torch.argsort(torch.rand(points.shape[:2], device=points.device), dim=1)
            index = index[:, : self.config.num_latents]
        queries = torch.gather(
            features, 1, index.unsqueeze(-1).expand(-1, -1, features.shape[-1])
        )  # (B, M, W)
        return self.to_latent(self.encoder(queries, features))  # (B, M, D)

    def process(self, latents: torch.Tensor) -> torch.Tensor:
        """Latent set (B, M, D) -> context for the decoder (B, M, W); once per shape."""
        x = self.from_latent(latents)
        for block in self.processor:
            if self.config.activation_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x

    def decode(self, context: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """Query points (B, Q, 3) -> per-class SDF (B, Q, C), in the training target's units."""
        return self.decode_prepared(context, self.prepare_queries(queries))

    def prepare_queries(self, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What the decoder computes from query points (B, Q, 3) before it meets a context:
        their embedding (B, Q, W) and the cross-attention's query heads (B, h, Q, W / h).
        Refinement decodes the same fit points against a changing context: once for all."""
        x = self.query_embedding(queries)
        return x, self.decoder.attention.query_heads(self.decoder.norm(x))

    def decode_prepared(
        self, context: torch.Tensor, prepared: tuple[torch.Tensor, torch.Tensor]
    ) -> torch.Tensor:
        """`decode` from `prepare_queries`' output -> per-class SDF (B, Q, C)."""
        embedded, query = prepared
        return self.head(self.decoder(embedded, context, query))

    def forward(
        self, points: torch.Tensor, labels: torch.Tensor, queries: torch.Tensor
    ) -> torch.Tensor:
        return self.decode(self.process(self.encode(points, labels)), queries)
