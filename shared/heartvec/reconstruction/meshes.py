"""From a decoded SDF grid to class meshes (world mm) and a label volume on the input's grid."""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from typing import Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import affine_transform

from heartvec.normalization import Normalization
from heartvec.reconstruction.class_mesh import class_mesh
from heartvec.reconstruction.grid import SdfGrid, negative_boxes
from heartvec.reconstruction.hostwork import run_all
from heartvec.reconstruction.supports import ClassSupports
from heartvec.surfaces import Surface
from heartvec.volume import LabelVolume, VoxelGrid

_OUTSIDE = 1e6  # SDF value beyond the decoded grid: outside every class
_SLAB_POINTS = 1 << 22  # input voxels resampled at once (their coordinates: 48 MB)


def class_meshes(
    grid: SdfGrid,
    normalization: Normalization,
    min_fraction: float = 0.0,
    pool: ProcessPoolExecutor | None = None,
) -> tuple[dict[int, Surface], dict[int, int]]:
    """One closed mesh per class whose SDF goes negative somewhere, in world millimetres, after
    dropping each class's stray pieces; returns (meshes, {class index: pieces dropped} for the
    classes that lost any). A class per process of `pool` if given (`hostwork.host_pool`;
    marching cubes and the labelling hold the GIL: `class_mesh.class_mesh`), else one by one.

    Stray pieces: those of a class's inside (26-connected negative grid points) smaller than
    `min_fraction` of its largest piece; their points are set a small distance above zero in
    `grid`, in place, so the label volume does not see them either. A dropped piece never
    touches a kept one and the kept surfaces do not move. The decoded field can dip below zero
    far from where a class lies (on the real heart: two pieces of aorta 3-5% of its size,
    80 mm away, HD95 83 mm); each whole-heart structure is one piece, the pulmonary veins a few
    of similar size. 0 keeps everything.
    """
    jobs: list[tuple[np.ndarray, float]] = []
    boxes: list[tuple[int, tuple[slice, ...]]] = []
    for channel, first, last in negative_boxes(grid):
        # the box around this class only, one point wider on each side: the zero level lies
        # between a negative point and its neighbours
        box = tuple(slice(max(int(a) - 1, 0), int(b) + 2) for a, b in zip(first, last, strict=True))
        region: tuple[slice | int, ...] = (*box, channel)
        jobs.append((grid.values[region], min_fraction))
        boxes.append((channel, box))
    meshes, dropped = {}, {}
    for (channel, box), result in zip(boxes, run_all(class_mesh, jobs, pool), strict=True):
        if result.pieces_dropped:
            region = (*box, channel)
            values = grid.values[region]  # a view: written in place
            flat = np.unravel_index(result.stray, values.shape)
            values[flat] = np.abs(values[flat]) + np.float32(1e-3)
            dropped[channel + 1] = result.pieces_dropped
        if not len(result.faces):
            continue
        origin = np.array([b.start for b in box])
        normalized = grid.low + (result.vertices + origin) * grid.spacing
        surface = Surface(normalization.to_world(normalized), result.faces)
        if surface.enclosed_volume() < 0:
            surface.faces = np.ascontiguousarray(surface.faces[:, ::-1])
        meshes[channel + 1] = surface
    if dropped:
        del grid.negative_extent  # a cached property of the old values
    return meshes, dropped


def shape_meshes(
    grid: SdfGrid,
    normalization: Normalization,
    supports: ClassSupports,
    min_piece: float,
    present: set[int],
    pool: ProcessPoolExecutor | None = None,
) -> tuple[dict[int, Surface], dict[int, int], dict[int, int]]:
    """The meshes of a decoded shape: each class held to its support, its stray pieces dropped
    (both in `grid`, in place), only the classes `present`. Returns (meshes, pieces dropped,
    grid points set outside a support), the last two by class index."""
    outside = supports.apply(grid)
    meshes, dropped = class_meshes(grid, normalization, min_piece, pool)
    return {c: m for c, m in meshes.items() if c in present}, dropped, outside


def shape_labels(
    grid: SdfGrid,
    normalization: Normalization,
    volume: LabelVolume | VoxelGrid,
    present: set[int],
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """The label volume of a decoded shape (`label_volume`) with only the classes `present`."""
    classes = label_volume(grid, normalization, volume, device)
    classes[~np.isin(classes, list(present))] = 0
    return classes


def label_volume(
    grid: SdfGrid,
    normalization: Normalization,
    volume: LabelVolume | VoxelGrid,
    device: torch.device | str = "cpu",
    resampler: Literal["auto", "scipy", "torch"] = "auto",
) -> np.ndarray:
    """Class index per voxel of the input's grid (`volume`, or its `VoxelGrid`): the class whose
    SDF is lowest where it is negative, else background (0). uint8, the input's shape.

    Input voxel -> grid index is one affine map, so each class is resampled trilinearly over
    the input voxels around its own negative grid points only (a box per class, a small part of
    the heart's); voxels beyond the grid stay 0. On a GPU `device` by `grid_sample`, elsewhere
    by scipy's `affine_transform` on threads (as fast as `grid_sample` on a CPU, without its
    coordinate arrays). `resampler` 'torch' or 'scipy' picks one ('auto': by `device`).
    """
    unit = np.vstack([np.zeros(3), np.eye(3)])  # voxel (0,0,0) and the three unit steps
    mapped = (normalization.to_normalized(volume.world_from_voxel(unit)) - grid.low) / grid.spacing
    offset, matrix = mapped[0], (mapped[1:] - mapped[0]).T  # grid = matrix @ ijk + offset
    boxes = _class_boxes(grid, matrix, offset, np.array(volume.shape))
    if resampler == "torch" or (resampler == "auto" and torch.device(device).type == "cuda"):
        return _lowest_class_torch(grid, boxes, volume.shape, device)
    return _lowest_class_scipy(grid, boxes, volume.shape)


class _ClassBox(NamedTuple):
    """One class's input voxels start..stop (exclusive), and its grid values crop..crop+n
    padded by one 'outside' point each side, `padded_index = matrix @ ijk + offset`."""

    channel: int
    start: np.ndarray
    stop: np.ndarray
    values: np.ndarray
    matrix: np.ndarray
    offset: np.ndarray


def _class_boxes(
    grid: SdfGrid, matrix: np.ndarray, offset: np.ndarray, shape: np.ndarray
) -> list[_ClassBox]:
    """The box of input voxels where each class can be negative: trilinear interpolation reads
    the 8 grid points around a voxel, so only voxels within one grid step of the class's
    negative grid points can; its grid values are cropped to the same reach."""
    size = np.array(grid.values.shape[:3])
    boxes = []
    for channel, first, last in negative_boxes(grid):
        low, high = first - 1, last + 1  # grid indices a negative voxel can map to
        corners = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)])
        voxels = np.linalg.solve(matrix, (low + corners * (high - low) - offset).T).T
        start = np.clip(np.floor(voxels.min(axis=0)).astype(int) - 1, 0, shape)
        stop = np.clip(np.ceil(voxels.max(axis=0)).astype(int) + 2, 0, shape)
        if np.any(stop <= start):
            continue
        crop = np.maximum(low, 0), np.minimum(high + 2, size)  # the 8 points' reach
        region: tuple[slice | int, ...] = (*map(slice, *crop), channel)
        values = grid.values[region]
        padded = np.pad(values.astype(np.float32), 1, constant_values=_OUTSIDE)
        boxes.append(_ClassBox(channel, start, stop, padded, matrix, offset + 1 - crop[0]))
    return boxes


def _lowest_class_scipy(
    grid: SdfGrid, boxes: list[_ClassBox], shape: tuple[int, ...]
) -> np.ndarray:
    """uint8 class (0: none negative) per input voxel, each class resampled over its box by
    `affine_transform`, a few classes at a time on threads."""
    best = np.full(shape, np.inf, dtype=np.float32)
    labels = np.zeros(shape, dtype=np.uint8)

    def resampled(box: _ClassBox) -> np.ndarray:
        return affine_transform(
            box.values,
            box.matrix,
            offset=box.matrix @ box.start + box.offset,
            output_shape=tuple(int(n) for n in box.stop - box.start),
            order=1,
            mode="constant",
            cval=_OUTSIDE,
            prefilter=False,
        )

    workers = max(1, min(torch.get_num_threads(), 4))  # scipy releases the GIL here
    with ThreadPoolExecutor(workers) as pool:
        for box, sdf in zip(boxes, pool.map(resampled, boxes), strict=True):
            where = tuple(slice(a, b) for a, b in zip(box.start, box.stop, strict=True))
            lowest, lowest_class = best[where], labels[where]
            lower = sdf < lowest
            lowest[lower] = sdf[lower]
            lowest_class[lower] = box.channel + 1
    labels[best >= 0] = 0
    return labels


def _lowest_class_torch(
    grid: SdfGrid, boxes: list[_ClassBox], shape: tuple[int, ...], device: torch.device | str
) -> np.ndarray:
    """As `_lowest_class_scipy`, by `grid_sample` on `device`, a slab of voxels at a time."""
    best = torch.full(shape, np.inf, dtype=torch.float32, device=device)
    labels = torch.zeros(shape, dtype=torch.uint8, device=device)
    for box in boxes:
        block = [int(n) for n in box.stop - box.start]
        values = torch.from_numpy(box.values).to(device)[None, None]
        # grid_sample's coordinates of voxel ijk: the padded index scaled to [-1, 1]
        # (align_corners), in its (x, y, z) = (last, middle, first axis) order
        scale = 2 / (np.array(box.values.shape) - 1)
        to_sample = np.flip((box.matrix * scale[:, None]).T, axis=1).copy()
        shift = np.flip(box.offset * scale - 1).copy()
        to_sample_t = torch.from_numpy(to_sample).float().to(device)
        shift_t = torch.from_numpy(shift).float().to(device)
        axes = [
            torch.arange(a, b, dtype=torch.float32, device=device)
            for a, b in zip(box.start, box.stop, strict=True)
        ]
        slab = max(1, _SLAB_POINTS // (block[1] * block[2]))
        for first in range(0, block[0], slab):
            ijk = torch.meshgrid(axes[0][first : first + slab], axes[1], axes[2], indexing="ij")
            where = torch.stack(ijk, -1) @ to_sample_t + shift_t  # (slab, B1, B2, 3)
            sdf = F.grid_sample(values, where[None], align_corners=True, padding_mode="border")
            i = int(box.start[0]) + first
            region = (
                slice(i, i + len(ijk[0])),
                *(slice(a, b) for a, b in zip(box.start[1:], box.stop[1:], strict=True)),
            )
            lowest, lowest_class = best[region], labels[region]
            lowest_class.masked_fill_(sdf[0, 0] < lowest, box.channel + 1)
            torch.minimum(lowest, sdf[0, 0], out=lowest)
    labels.masked_fill_(best >= 0, 0)
    return labels.cpu().numpy()
