"""From a decoded SDF grid to class meshes (world mm) and a label volume on the input's grid."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import affine_transform
from skimage.measure import marching_cubes

from heartvec.normalization import Normalization
from heartvec.reconstruction.grid import SdfGrid
from heartvec.surfaces import Surface
from heartvec.volume import LabelVolume

_OUTSIDE = 1e6  # SDF value beyond the decoded grid: outside every class
_SLAB_POINTS = 1 << 22  # input voxels resampled at once (their coordinates: 48 MB)


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


def label_volume(
    grid: SdfGrid,
    normalization: Normalization,
    volume: LabelVolume,
    device: torch.device | str = "cpu",
    resampler: Literal["auto", "scipy", "torch"] = "auto",
) -> np.ndarray:
    """Class index per voxel of the input grid: the class whose SDF is lowest where it is
    negative, else background (0). uint8, the input's shape.

    Input voxel -> grid index is one affine map, so each class is resampled trilinearly over
    the input voxels the grid covers; voxels outside it stay 0. On a GPU `device` by
    `grid_sample` (milliseconds), elsewhere by scipy's `affine_transform` on threads (as fast
    as `grid_sample` on a CPU, without its coordinate arrays). `resampler` 'torch' or 'scipy'
    picks one ('auto': by `device`).
    """
    shape = np.array(volume.shape)
    unit = np.vstack([np.zeros(3), np.eye(3)])  # voxel (0,0,0) and the three unit steps
    mapped = (normalization.to_normalized(volume.world_from_voxel(unit)) - grid.low) / grid.spacing
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
    minimum = torch.from_numpy(grid.values).amin(dim=(0, 1, 2))  # (C,), on every core
    channels = [int(c) for c in torch.nonzero(minimum < 0).flatten()]
    block = _Block(matrix, offset, start, stop)
    if resampler == "torch" or (resampler == "auto" and torch.device(device).type == "cuda"):
        best_class = _lowest_class_torch(grid, channels, block, device)
    else:
        best_class = _lowest_class_scipy(grid, channels, block)
    labels[tuple(slice(a, b) for a, b in zip(start, stop, strict=True))] = best_class
    return labels


class _Block(NamedTuple):
    """Input voxels start..stop (exclusive) and their map to grid indices: matrix @ ijk + offset."""

    matrix: np.ndarray
    offset: np.ndarray
    start: np.ndarray
    stop: np.ndarray


def _padded(values: np.ndarray) -> np.ndarray:
    """One class's grid padded with 'outside', so the interpolation reads real values up to
    the grid's edge and 'outside' beyond it."""
    return np.pad(values.astype(np.float32), 1, constant_values=_OUTSIDE)


def _lowest_class_scipy(grid: SdfGrid, channels: list[int], voxels: _Block) -> np.ndarray:
    """uint8 class (0: none negative) of the block's input voxels, classes resampled by
    `affine_transform` a few at a time on threads."""
    matrix, offset, start, stop = voxels
    block = tuple(int(n) for n in stop - start)
    best = np.full(block, np.inf, dtype=np.float32)
    best_class = np.zeros(block, dtype=np.uint8)

    def resampled(c: int) -> np.ndarray:
        return affine_transform(
            _padded(grid.values[..., c]),
            matrix,
            offset=matrix @ start + offset + 1,
            output_shape=block,
            order=1,
            mode="constant",
            cval=_OUTSIDE,
            prefilter=False,
        )

    workers = max(1, min(torch.get_num_threads(), 4))  # scipy releases the GIL here
    with ThreadPoolExecutor(workers) as pool:
        for first in range(0, len(channels), workers):  # a few classes' volumes at a time
            batch = channels[first : first + workers]
            for c, sdf in zip(batch, pool.map(resampled, batch), strict=True):
                lower = sdf < best
                best[lower] = sdf[lower]
                best_class[lower] = c + 1
    best_class[best >= 0] = 0
    return best_class


def _lowest_class_torch(
    grid: SdfGrid, channels: list[int], voxels: _Block, device: torch.device | str
) -> np.ndarray:
    """As `_lowest_class_scipy`, by `grid_sample` on `device`, a slab of voxels at a time."""
    matrix, offset, start, stop = voxels
    block = [int(n) for n in stop - start]
    # grid_sample's coordinates of voxel ijk: the grid index (+1: the padding) scaled to
    # [-1, 1] (align_corners), in its (x, y, z) = (last, middle, first axis) order
    scale = 2 / (np.array(grid.values.shape[:3]) + 1)
    to_sample = torch.from_numpy(np.flip((matrix * scale[:, None]).T, axis=1).copy()).float()
    shift = torch.from_numpy(np.flip((offset + 1) * scale - 1).copy()).float()
    to_sample, shift = to_sample.to(device), shift.to(device)
    axes = [
        torch.arange(a, b, dtype=torch.float32, device=device)
        for a, b in zip(start, stop, strict=True)
    ]
    slab = max(1, _SLAB_POINTS // (block[1] * block[2]))
    best = torch.full(block, np.inf, dtype=torch.float32, device=device)
    best_class = torch.zeros(block, dtype=torch.uint8, device=device)
    for channel in channels:
        values = torch.from_numpy(_padded(grid.values[..., channel])).to(device)[None, None]
        for first in range(0, block[0], slab):
            ijk = torch.meshgrid(axes[0][first : first + slab], axes[1], axes[2], indexing="ij")
            where = torch.stack(ijk, -1) @ to_sample + shift  # (slab, B1, B2, 3)
            sdf = F.grid_sample(values, where[None], align_corners=True, padding_mode="border")
            lowest, lowest_class = best[first : first + slab], best_class[first : first + slab]
            lowest_class.masked_fill_(sdf[0, 0] < lowest, channel + 1)
            torch.minimum(lowest, sdf[0, 0], out=lowest)
    best_class.masked_fill_(best >= 0, 0)
    return best_class.cpu().numpy()
