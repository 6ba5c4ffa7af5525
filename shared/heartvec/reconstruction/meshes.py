"""From a decoded SDF grid to class meshes (world mm) and a label volume on the input's grid."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from scipy.ndimage import affine_transform
from skimage.measure import marching_cubes

from heartvec.normalization import Normalization
from heartvec.reconstruction.grid import SdfGrid
from heartvec.surfaces import Surface
from heartvec.volume import LabelVolume

_OUTSIDE = 1e6  # SDF value beyond the decoded grid: outside every class


def class_meshes(grid: SdfGrid, normalization: Normalization) -> dict[int, Surface]:
    """One closed mesh per class whose SDF goes negative somewhere, in world millimetres.

    The grid is padded with 'outside' so a surface touching its border still closes.
    """
    meshes = {}
    negative = grid.values < 0
    # per axis and class: does any grid point of that slab lie inside (one pass for all classes)
    extent = [
        np.asarray(negative.any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)
    ]
    for channel in map(int, np.flatnonzero(extent[0].any(axis=0))):
        # marching cubes on the box around this class only (one voxel wider on each side: the
        # zero level lies between a negative point and its neighbours)
        box: list[slice] = []
        for axis in range(3):
            hits = np.flatnonzero(extent[axis][:, channel])
            box.append(slice(max(int(hits[0]) - 1, 0), int(hits[-1]) + 2))
        values = grid.values[box[0], box[1], box[2], channel].astype(np.float32)
        outside = max(float(values.max()), 1.0)
        padded = np.pad(values, 1, constant_values=outside)
        vertices, faces, _, _ = marching_cubes(padded, level=0.0)
        origin = np.array([b.start for b in box])
        normalized = grid.low + (vertices - 1 + origin) * grid.spacing
        surface = Surface(normalization.to_world(normalized), faces.astype(np.int32))
        if surface.enclosed_volume() < 0:
            surface.faces = np.ascontiguousarray(surface.faces[:, ::-1])
        meshes[channel + 1] = surface
    return meshes


def label_volume(grid: SdfGrid, normalization: Normalization, volume: LabelVolume) -> np.ndarray:
    """Class index per voxel of the input grid: the class whose SDF is lowest where it is
    negative, else background (0). uint8, the input's shape.

    Input voxel -> grid index is one affine map, so each class is resampled by one trilinear
    `affine_transform` over the input voxels the grid covers; voxels outside it stay 0.
    """
    shape = np.array(volume.shape)
    unit = np.vstack([np.zeros(3), np.eye(3)])  # voxel (0,0,0) and the three unit steps

    def grid_index(ijk: np.ndarray) -> np.ndarray:
        normalized = normalization.to_normalized(volume.world_from_voxel(ijk))
        return np.asarray((normalized - grid.low) / grid.spacing)

    mapped = grid_index(unit)
    offset, matrix = mapped[0], (mapped[1:] - mapped[0]).T  # grid = matrix @ ijk + offset
    # the input voxels inside the grid: its 8 corners mapped back, a voxel of slack
    size = np.array(grid.values.shape[:3]) - 1
    corners = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)]) * size
    voxels = np.linalg.solve(matrix, (corners - offset).T).T
    start = np.clip(np.floor(voxels.min(axis=0)).astype(int) - 1, 0, shape)
    stop = np.clip(np.ceil(voxels.max(axis=0)).astype(int) + 2, 0, shape)
    labels = np.zeros(volume.shape, dtype=np.uint8)
    if np.any(stop <= start):
        return labels
    block = tuple(int(n) for n in stop - start)
    best = np.full(block, np.inf, dtype=np.float32)
    best_class = np.zeros(block, dtype=np.uint8)

    def resampled(c: int) -> np.ndarray:
        # padded with 'outside' so the interpolation reads real values up to the grid's edge
        padded = np.pad(grid.values[..., c].astype(np.float32), 1, constant_values=_OUTSIDE)
        return affine_transform(
            padded,
            matrix,
            offset=matrix @ start + offset + 1,
            output_shape=block,
            order=1,
            mode="constant",
            cval=_OUTSIDE,
            prefilter=False,
        )

    channels = [int(c) for c in np.flatnonzero((grid.values < 0).any(axis=(0, 1, 2)))]
    workers = max(1, min(torch.get_num_threads(), 4))  # scipy releases the GIL here
    with ThreadPoolExecutor(workers) as pool:
        for first in range(0, len(channels), workers):  # a few classes' volumes at a time
            batch = channels[first : first + workers]
            for c, sdf in zip(batch, pool.map(resampled, batch), strict=True):
                lower = sdf < best
                best[lower] = sdf[lower]
                best_class[lower] = c + 1
    best_class[best >= 0] = 0
    labels[tuple(slice(a, b) for a, b in zip(start, stop, strict=True))] = best_class
    return labels
