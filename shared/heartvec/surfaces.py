"""Class surfaces: marching cubes at level 0.5 of each class mask, in world millimetres.

Each mask is cropped to its bounding box and padded with background so every surface closes,
even where a structure touches the edge of the volume. At a working spacing coarser than the
volume's, the mask is first averaged over blocks of whole voxels (the fraction of each block
inside the class), so a 0.49 mm CT scan gives the surface a 1 mm one would, with a quarter of
the triangles, and a volume already at that spacing gives exactly the surface it gave before.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from skimage.measure import marching_cubes

from heartvec.volume import LabelVolume


def triangle_areas_and_normals(corners: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(T, 3, 3) triangle corners -> (T,) areas and (T, 3) unit normals (right-hand rule)."""
    a, b, c = np.moveaxis(corners, 1, 0)
    cross = np.cross(b - a, c - a)
    double_area = np.linalg.norm(cross, axis=1)
    return double_area / 2, cross / np.maximum(double_area, 1e-30)[:, None]


@dataclass
class Surface:
    """A closed triangle mesh with outward-facing triangles.

    Args:
        vertices: float64 (N, 3) world mm.
        faces: int32 (F, 3) vertex indices, counter-clockwise seen from outside.
    """

    vertices: np.ndarray
    faces: np.ndarray

    def triangles(self) -> np.ndarray:
        """float64 (F, 3, 3) corner coordinates of every face."""
        return np.asarray(self.vertices[self.faces])

    def face_areas_and_normals(self) -> tuple[np.ndarray, np.ndarray]:
        """(F,) areas in mm^2 and (F, 3) outward unit normals."""
        return triangle_areas_and_normals(self.triangles())

    def enclosed_volume(self) -> float:
        """Signed volume in mm^3 (positive for an outward-oriented closed mesh)."""
        a, b, c = np.moveaxis(self.triangles(), 1, 0)
        return float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6)


def block_factors(spacing_mm: np.ndarray, working_mm: float | None) -> np.ndarray:
    """Per axis, how many voxels a block of the working grid spans: the most whose extent stays
    within `working_mm` (at least 1; all 1 for None)."""
    if working_mm is None:
        return np.ones(3, dtype=np.int64)
    return np.maximum(1, np.floor(working_mm / np.asarray(spacing_mm) + 1e-6)).astype(np.int64)


def _block_fractions(mask: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """float32 fraction of each block of `factors` voxels inside `mask` (the far side padded
    with background to whole blocks)."""
    whole = -(-np.array(mask.shape) // factors) * factors
    padded = np.pad(mask, [(0, int(w - n)) for w, n in zip(whole, mask.shape, strict=True)])
    blocks = padded.reshape(
        whole[0] // factors[0], factors[0], whole[1] // factors[1], factors[1],
        whole[2] // factors[2], factors[2],
    )  # fmt: skip
    return blocks.mean(axis=(1, 3, 5), dtype=np.float32)


def class_surface(
    volume: LabelVolume, class_index: int, working_mm: float | None = None
) -> Surface | None:
    """The surface of one class, or None when the class has no voxel.

    Args:
        volume: the label volume.
        class_index: 1..C.
        working_mm: extract on blocks of voxels at most this wide (`block_factors`); None:
            on the voxels themselves.
    """
    mask = volume.classes == class_index
    occupied = [np.flatnonzero(mask.any(axis=other)) for other in ((1, 2), (0, 2), (0, 1))]
    if any(len(o) == 0 for o in occupied):
        return None
    low = np.array([o[0] for o in occupied])
    high = np.array([o[-1] + 1 for o in occupied])
    crop = mask[low[0] : high[0], low[1] : high[1], low[2] : high[2]]
    factors = block_factors(volume.spacing, working_mm)
    if (factors == 1).all():
        padded = np.pad(crop, 1).astype(np.float32)
    else:
        padded = np.pad(_block_fractions(crop, factors), 1)
    vertices, faces, _, _ = marching_cubes(padded, level=0.5, allow_degenerate=False)
    # back to voxel indices of the full grid (the pad shifted them by one block; a block's
    # value sits at its centre), then to world mm
    voxels = (vertices.astype(np.float64) - 1) * factors + (factors - 1) / 2 + low
    world = volume.world_from_voxel(voxels)
    surface = Surface(world, faces.astype(np.int32))
    if surface.enclosed_volume() < 0:  # a left-handed affine mirrors the triangles
        surface.faces = np.ascontiguousarray(surface.faces[:, ::-1])
    return surface


def class_surfaces(volume: LabelVolume, working_mm: float | None = None) -> dict[int, Surface]:
    """Surfaces of every class present, keyed by class index (`working_mm`: `class_surface`)."""
    surfaces = {}
    for class_index in range(1, volume.label_table.num_classes + 1):
        surface = class_surface(volume, class_index, working_mm)
        if surface is not None:
            surfaces[class_index] = surface
    return surfaces
