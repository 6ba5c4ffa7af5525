"""The model a reconstruction encodes with, and what it encodes: a checkpoint loaded once, the
frame of its training data, and the input's surface points with their classes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from heartvec.errors import InputError
from heartvec.model.checkpoint import file_sha256, load_checkpoint, model_from_checkpoint
from heartvec.model.sampling import balanced_pick, class_members
from heartvec.model.vecset import VecSetAutoencoder
from heartvec.normalization import (
    DEFAULT_SCALE_MM,
    Normalization,
    fitted_normalization,
    fixed_normalization,
)
from heartvec.samples import sample_surfaces
from heartvec.surfaces import Surface
from heartvec.volume import LabelVolume


@dataclass(frozen=True)
class LoadedModel:
    """A checkpoint loaded once and reused for many volumes (a worker process keeps one).

    Args:
        checkpoint: the file it came from.
        sha256: hex digest of that file (recorded in every report).
        state: the checkpoint's contents (class names, configs, normalization).
        model: the autoencoder in eval mode on `device`.
    """

    checkpoint: Path
    sha256: str
    state: dict[str, Any]
    model: VecSetAutoencoder
    device: torch.device


def load_model(checkpoint: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Load a checkpoint for reconstruction.

    Raises:
        CheckpointError: a missing or broken checkpoint.
    """
    device = torch.device(device)
    state = load_checkpoint(checkpoint, map_location=device)
    model = model_from_checkpoint(state).to(device).eval()
    return LoadedModel(Path(checkpoint), file_sha256(Path(checkpoint)), state, model, device)


def check_classes(state: dict[str, Any], volume: LabelVolume, checkpoint: Path) -> None:
    """Refuse a checkpoint whose classes are not the volume's label table's.

    Raises:
        InputError: naming both lists of classes.
    """
    names = state["class_names"]
    present = np.flatnonzero(volume.class_present()) + 1
    wanted = [volume.label_table.class_name(int(c)) for c in present]
    missing = [n for n in wanted if n not in names]
    if missing or list(names) != list(volume.label_table.class_names):
        raise InputError(
            checkpoint,
            f"checkpoint classes {names} do not fit the volume's classes {wanted} "
            f"(label table '{volume.label_table.name}')",
        )


def checkpoint_normalization(state: dict[str, Any], surfaces: dict[int, Surface]) -> Normalization:
    """The frame of the checkpoint's training data (checkpoints before it was recorded used the
    default fixed scale)."""
    recorded = state.get("normalization", {"scale_mm": DEFAULT_SCALE_MM})
    scale = recorded["scale_mm"]
    return fitted_normalization(surfaces) if scale is None else fixed_normalization(surfaces, scale)


@dataclass(frozen=True)
class EncoderSample:
    """The encoder's surface points in world mm (N, 3) and their classes (N,): drawn once, so
    every frame a search tries encodes the same points."""

    world: np.ndarray
    labels: np.ndarray

    @classmethod
    def draw(
        cls, model: VecSetAutoencoder, surfaces: dict[int, Surface], rng: np.random.Generator
    ) -> EncoderSample:
        """`model.config.num_inputs` points drawn evenly per class, as in training."""
        count = model.config.num_inputs
        world, labels, _ = sample_surfaces(surfaces, 8 * count, rng)
        order = balanced_pick(class_members(labels), count, rng)
        return cls(world[order], labels[order].astype(np.int64))

    def inputs(self, frame: Normalization) -> tuple[torch.Tensor, torch.Tensor]:
        """The encoder's inputs in `frame`: points (1, N, 3) float32, classes (1, N) int64."""
        points = frame.to_normalized(self.world).astype(np.float32)
        return torch.from_numpy(points)[None], torch.from_numpy(self.labels)[None]


def encoder_inputs(
    model: VecSetAutoencoder,
    surfaces: dict[int, Surface],
    normalization: Normalization,
    rng: np.random.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The encoder's surface points (1, N, 3), normalized, and their classes (1, N),
    drawn evenly per class as in training."""
    return EncoderSample.draw(model, surfaces, rng).inputs(normalization)
