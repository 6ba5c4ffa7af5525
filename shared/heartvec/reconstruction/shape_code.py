"""`shape_code.npz`: what the decoder needs to draw a reconstruction again, without its input.

The latent set the meshes came from (the processed set the decoder attends to when refinement
changed that), the encoded latent set, the normalization, the decoding box and resolution, the
classes' supports, the input's grid (affine, shape) and label table, and the sha256 of the
checkpoint that can decode it.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from heartvec.errors import InputError
from heartvec.labels import LabelTable
from heartvec.normalization import Normalization
from heartvec.reconstruction.supports import ClassSupports
from heartvec.volume import VoxelGrid

FORMAT = "heartvec-shape-code-1"
REQUIRED = {
    "checkpoint_sha256", "latents", "encoded", "center", "scale", "low", "high", "resolution",
    "min_piece", "affine", "shape", "label_table", "label_values", "label_classes",
    "class_names", "classes", "support_low", "support_cell", "support_shape", "support_bits",
    "support_margin_mm",
}  # fmt: skip


@dataclass(frozen=True)
class ShapeCode:
    """A reconstruction's shape, as the decoder draws it.

    Args:
        checkpoint_sha256: the checkpoint whose decoder draws it.
        latents: (M, D) the latent set the shape came from (refined if refinement changed it).
        encoded: (M, D) the latent set as the encoder gave it.
        context: (M, W) the processed latent set the decoder attends to, when refinement
            changed it directly (else it is `model.process(latents)`).
        normalization: `world_mm = center + scale * p`.
        low, high: (3,) normalized corners of the decoding box.
        resolution: grid points along each side of the box.
        min_piece: stray pieces below this fraction of a class's largest were dropped.
        supports: where each class may appear.
        grid: the input's voxel grid, which the label volume is written on.
        label_table: the input's label values of the classes.
        classes: the class indices present in the input (the others are never drawn).
    """

    checkpoint_sha256: str
    latents: np.ndarray
    encoded: np.ndarray
    context: np.ndarray | None
    normalization: Normalization
    low: np.ndarray
    high: np.ndarray
    resolution: int
    min_piece: float
    supports: ClassSupports
    grid: VoxelGrid
    label_table: LabelTable
    classes: tuple[int, ...]

    def save(self, path: Path) -> None:
        """Write the code to `path` (compressed; a partial file never takes its name)."""
        values = sorted(self.label_table.class_of_value)
        arrays: dict[str, Any] = {
            "format": np.array(FORMAT),
            "checkpoint_sha256": np.array(self.checkpoint_sha256),
            "latents": self.latents.astype(np.float32),
            "encoded": self.encoded.astype(np.float32),
            "center": self.normalization.center.astype(np.float64),
            "scale": np.float64(self.normalization.scale),
            "low": np.asarray(self.low, dtype=np.float64),
            "high": np.asarray(self.high, dtype=np.float64),
            "resolution": np.int64(self.resolution),
            "min_piece": np.float64(self.min_piece),
            "affine": np.asarray(self.grid.affine, dtype=np.float64),
            "shape": np.array(self.grid.shape, dtype=np.int64),
            "label_table": np.array(self.label_table.name),
            "label_values": np.array(values, dtype=np.int64),
            "label_classes": np.array([self.label_table.class_of_value[v] for v in values]),
            "class_names": np.array(self.label_table.class_names),
            "classes": np.array(self.classes, dtype=np.int64),
            **self.supports.arrays(),
        }
        if self.context is not None:
            arrays["context"] = self.context.astype(np.float32)
        partial = path.with_name(path.name + ".part")
        with partial.open("wb") as file:
            np.savez_compressed(file, **arrays)
        os.replace(partial, path)


def load_shape_code(path: str | Path) -> ShapeCode:
    """Read a code written by `ShapeCode.save`.

    Raises:
        InputError: not a readable .npz, or not a heartvec shape code.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such shape code file")
    if not zipfile.is_zipfile(path):
        raise InputError(path, "not a shape code: expected the .npz a reconstruction wrote")
    try:
        with np.load(path, allow_pickle=False) as stored:
            arrays = {key: stored[key] for key in stored.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise InputError(path, f"not a readable shape code ({e})") from e
    if "format" not in arrays or str(arrays["format"]) != FORMAT:
        raise InputError(path, f"not a heartvec shape code (expected format {FORMAT})")
    missing = sorted(REQUIRED - set(arrays))
    if missing:
        raise InputError(path, f"shape code lacks {missing}")
    values, classes = arrays["label_values"].tolist(), arrays["label_classes"].tolist()
    names = tuple(str(n) for n in arrays["class_names"])
    table = LabelTable(str(arrays["label_table"]), dict(zip(values, classes, strict=True)), names)
    return ShapeCode(
        checkpoint_sha256=str(arrays["checkpoint_sha256"]),
        latents=arrays["latents"],
        encoded=arrays["encoded"],
        context=arrays.get("context"),
        normalization=Normalization(arrays["center"], float(arrays["scale"])),
        low=arrays["low"],
        high=arrays["high"],
        resolution=int(arrays["resolution"]),
        min_piece=float(arrays["min_piece"]),
        supports=ClassSupports.from_arrays(arrays),
        grid=VoxelGrid(arrays["affine"], tuple(int(n) for n in arrays["shape"])),  # type: ignore[arg-type]
        label_table=table,
        classes=tuple(int(c) for c in arrays["classes"]),
    )
