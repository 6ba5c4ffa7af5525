"""Model hyper-parameters, with the named presets `tiny`, `small` and `base`."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from heartvec.errors import InputError
from heartvec.labels import CLASS_NAMES


@dataclass(frozen=True)
class ModelConfig:
    """Shape of a VecSet autoencoder.

    Args:
        num_classes: C, SDF channels out and one-hot classes in.
        width: feature channels of every attention block.
        depth: self-attention blocks over the latent set.
        heads: attention heads (width must divide by it).
        num_latents: M, latent vectors per shape (taken from the input by FPS).
        latent_dim: channels of each latent vector at the bottleneck.
        num_inputs: surface points fed to the encoder per shape.
        fourier_frequencies: octaves of the Fourier point embedding (normalized coordinates).
        latent_sampling: 'fps' (farthest point sampling) or 'random' subsampling of the inputs
            that become latent queries.
        decoder_feedforward: a feed-forward block after the decoder's cross-attention.
        activation_checkpointing: recompute each self-attention block in the backward pass
            instead of storing its activations (training only): about a third more compute
            for a fraction of the memory, what lets `base` train at large batches.
    """

    num_classes: int = len(CLASS_NAMES)
    width: int = 256
    depth: int = 6
    heads: int = 8
    num_latents: int = 256
    latent_dim: int = 32
    num_inputs: int = 2048
    fourier_frequencies: int = 8
    latent_sampling: Literal["fps", "random"] = "fps"
    decoder_feedforward: bool = True
    activation_checkpointing: bool = False

    def __post_init__(self) -> None:
        if self.width % self.heads:
            raise InputError(
                "model config", f"width {self.width} must divide by heads {self.heads}"
            )
        if self.num_latents > self.num_inputs:
            raise InputError(
                "model config",
                f"num_latents {self.num_latents} exceeds num_inputs {self.num_inputs}",
            )
        if self.latent_sampling not in ("fps", "random"):
            raise InputError(
                "model config", f"latent_sampling {self.latent_sampling!r}: expected fps or random"
            )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


MODEL_PRESETS: dict[str, ModelConfig] = {
    # CPU tests: trains in minutes
    "tiny": ModelConfig(width=64, depth=2, heads=4, num_latents=64, latent_dim=16, num_inputs=512),
    # the bundled checkpoint: about 6M parameters
    "small": ModelConfig(),
    # VecSetX scale
    "base": ModelConfig(
        width=1024,
        depth=24,
        heads=16,
        num_latents=1024,
        latent_dim=64,
        num_inputs=8192,
        activation_checkpointing=True,
    ),
}
