"""Where each class may appear in a reconstruction: near where it lies in the input.

The decoded field can dip below zero far from a class (a piece of aorta beside the atria, a
stray vein), and stray pieces of a size with the real ones escape `min_piece`. The input is
known when it is reconstructed, so each class is held to its support: the cells of a coarse
grid (CELL_MM) over the decoding box that lie within MARGIN_MM of the class in the input, every
point of a kept cell included. Decoded points of a class outside its support are set outside
before the meshes and the label volume are made. The supports travel in the shape code (a few
kB packed), so decoding a code later draws the same shape without the input.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from heartvec.normalization import Normalization
from heartvec.reconstruction.grid import SdfGrid, negative_boxes
from heartvec.surfaces import Surface
from heartvec.volume import LabelVolume

MARGIN_MM = 10.0
"""No point of a class is kept farther than this from the class in the input."""
CELL_MM = 4.0
"""The supports' cell size: finer cells follow the class more closely, coarser ones weigh less."""


@dataclass(frozen=True)
class ClassSupports:
    """Per class, the cells of a coarse grid where it may appear.

    Args:
        low: (3,) normalized coordinates of the first cell's corner.
        cell: a cell's edge, normalized units.
        allowed: bool (C, nx, ny, nz), class index c at c - 1.
        margin_mm: how far from the class in the input the cells reach.
    """

    low: np.ndarray
    cell: float
    allowed: np.ndarray
    margin_mm: float

    @classmethod
    def of_input(
        cls,
        volume: LabelVolume,
        surfaces: dict[int, Surface],
        normalization: Normalization,
        low: np.ndarray,
        high: np.ndarray,
        margin_mm: float = MARGIN_MM,
        cell_mm: float = CELL_MM,
    ) -> ClassSupports:
        """The supports of the input's classes over the box [low, high] (normalized).

        A cell is kept when its centre lies inside the class, or within `margin_mm` less half
        the cell's diagonal of the class's surface (its mesh's vertices, about a voxel apart):
        then every point of the cell is within `margin_mm` of the class.
        """
        cell = cell_mm / normalization.scale
        counts = np.ceil((np.asarray(high) - low) / cell).astype(int) + 1
        axes = [low[k] + (np.arange(counts[k]) + 0.5) * cell for k in range(3)]
        centres = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
        world = normalization.to_world(centres)
        nearest_class = volume.class_at(world)
        reach = margin_mm - cell_mm * np.sqrt(3) / 2
        allowed = np.zeros((volume.label_table.num_classes, *counts), dtype=bool)
        for class_index, surface in surfaces.items():
            distance, _ = cKDTree(surface.vertices).query(world, distance_upper_bound=reach)
            near = (nearest_class == class_index) | np.isfinite(distance)
            allowed[class_index - 1] = near.reshape(counts)
        return cls(np.asarray(low, dtype=np.float64), float(cell), allowed, margin_mm)

    @classmethod
    def everywhere(cls, classes: int, low: np.ndarray) -> ClassSupports:
        """Supports that allow every class everywhere (no margin: nothing set outside)."""
        return cls(np.asarray(low, dtype=np.float64), 1.0, np.ones((classes, 1, 1, 1), bool), 0.0)

    def apply(self, grid: SdfGrid) -> dict[int, int]:
        """Set the negative grid points of each class outside its support a small distance
        above zero, in place; returns {class index: points set} for the classes that had any.
        """
        removed = {}
        for channel, first, last in negative_boxes(grid):
            box = tuple(slice(int(a), int(b) + 1) for a, b in zip(first, last, strict=True))
            cells = [
                np.clip(
                    np.floor((grid.low[k] + grid.spacing[k] * np.arange(box[k].start, box[k].stop)
                              - self.low[k]) / self.cell).astype(int),
                    0, self.allowed.shape[k + 1] - 1,
                )
                for k in range(3)
            ]  # fmt: skip
            allowed = self.allowed[channel][np.ix_(*cells)]
            region: tuple[slice | int, ...] = (*box, channel)
            values = grid.values[region]  # a view: written in place
            outside = (values < 0) & ~allowed
            count = int(outside.sum())
            if count:
                values[outside] = np.abs(values[outside]) + np.float16(1e-3)
                removed[channel + 1] = count
        if removed:
            del grid.negative_extent  # a cached property of the old values
        return removed

    def arrays(self) -> dict[str, np.ndarray]:
        """What a shape code stores (the cells packed eight to a byte)."""
        return {
            "support_low": self.low,
            "support_cell": np.array(self.cell),
            "support_shape": np.array(self.allowed.shape, dtype=np.int64),
            "support_bits": np.packbits(self.allowed.ravel()),
            "support_margin_mm": np.array(self.margin_mm),
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> ClassSupports:
        """The supports `arrays` stored."""
        shape = tuple(int(n) for n in arrays["support_shape"])
        allowed = np.unpackbits(arrays["support_bits"], count=int(np.prod(shape))).astype(bool)
        return cls(
            np.asarray(arrays["support_low"], dtype=np.float64),
            float(arrays["support_cell"]),
            allowed.reshape(shape),
            float(arrays["support_margin_mm"]),
        )
