"""Class surfaces: marching cubes at level 0.5 of each class mask, in world millimetres.

Each mask is cropped to its bounding box and padded with background so every surface closes,
even where a structure touches the edge of the volume.
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


def class_surface(volume: LabelVolume, class_index: int) -> Surface | None:
    """The surface of one class, or None when the class has no voxel.

    Args:
        volume: the label volume.
        class_index: 1..C.
    """
    mask = volume.classes == class_index
    occupied = [np.flatnonzero(mask.any(axis=other)) for other in ((1, 2), (0, 2), (0, 1))]
    if any(len(o) == 0 for o in occupied):
        return None
    low = np.array([o[0] for o in occupied])
    high = np.array([o[-1] + 1 for o in occupied])
    crop = mask[low[0] : high[0], low[1] : high[1], low[2] : high[2]]
    padded = np.pad(crop, 1).astype(np.float32)
    vertices, faces, _, _ = marching_cubes(padded, level=0.5, allow_degenerate=False)
    # back to indices of the full grid (the pad shifted them by one), then to world mm
    world = volume.world_from_voxel(vertices.astype(np.float64) + (low - 1))
    surface = Surface(world, faces.astype(np.int32))
    if surface.enclosed_volume() < 0:  # a left-handed affine mirrors the triangles
        surface.faces = np.ascontiguousarray(surface.faces[:, ::-1])
    return surface


def class_surfaces(volume: LabelVolume) -> dict[int, Surface]:
    """Surfaces of every class present, keyed by class index."""
    surfaces = {}
    for class_index in range(1, volume.label_table.num_classes + 1):
        surface = class_surface(volume, class_index)
        if surface is not None:
            surfaces[class_index] = surface
    return surfaces
