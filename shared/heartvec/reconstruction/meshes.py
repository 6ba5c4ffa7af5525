"""From a decoded SDF grid to class meshes (world mm) and a label volume on the input's grid."""

from __future__ import annotations

import numpy as np
from scipy.ndimage import map_coordinates
from skimage.measure import marching_cubes

from heartvec.normalization import Normalization
from heartvec.reconstruction.grid import SdfGrid
from heartvec.surfaces import Surface
from heartvec.volume import LabelVolume

_SLAB = 16  # input slices labelled at a time: bounds the memory of the interpolation


def class_meshes(grid: SdfGrid, normalization: Normalization) -> dict[int, Surface]:
    """One closed mesh per class whose SDF goes negative somewhere, in world millimetres.

    The grid is padded with 'outside' so a surface touching its border still closes.
    """
    meshes = {}
    for channel in range(grid.values.shape[-1]):
        values = grid.values[..., channel].astype(np.float32)
        if values.min() >= 0:
            continue
        padded = np.pad(values, 1, constant_values=max(float(values.max()), 1.0))
        vertices, faces, _, _ = marching_cubes(padded, level=0.0)
        normalized = grid.low + (vertices - 1) * grid.spacing
        surface = Surface(normalization.to_world(normalized), faces.astype(np.int32))
        if surface.enclosed_volume() < 0:
            surface.faces = np.ascontiguousarray(surface.faces[:, ::-1])
        meshes[channel + 1] = surface
    return meshes


def label_volume(grid: SdfGrid, normalization: Normalization, volume: LabelVolume) -> np.ndarray:
    """Class index per voxel of the input grid: the class whose SDF is lowest where it is
    negative, else background (0). uint8, the input's shape."""
    shape = volume.shape
    labels = np.zeros(shape, dtype=np.uint8)
    ij = np.stack(np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij"), -1)
    ij = ij.reshape(-1, 2).astype(np.float64)
    for start in range(0, shape[2], _SLAB):
        k = np.arange(start, min(start + _SLAB, shape[2]), dtype=np.float64)
        voxels = np.concatenate(
            [np.repeat(ij, len(k), axis=0), np.tile(k, len(ij))[:, None]], axis=1
        )  # (X*Y*K, 3) in (i, j, k) order with k fastest
        position = normalization.to_normalized(volume.world_from_voxel(voxels)) - grid.low
        position /= grid.spacing  # fractional grid indices
        inside = np.all((position >= 0) & (position <= np.array(grid.values.shape[:3]) - 1), 1)
        if not inside.any():
            continue
        sdf = np.stack(
            [
                map_coordinates(grid.values[..., c].astype(np.float32), position[inside].T, order=1)
                for c in range(grid.values.shape[-1])
            ],
            axis=1,
        )  # (n, C)
        best = sdf.argmin(axis=1)
        found = np.where(sdf[np.arange(len(sdf)), best] < 0, best + 1, 0).astype(np.uint8)
        slab = np.zeros(len(voxels), dtype=np.uint8)
        slab[inside] = found
        labels[:, :, start : start + len(k)] = slab.reshape(shape[0], shape[1], len(k))
    return labels
