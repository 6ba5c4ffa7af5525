"""Decoding a per-class SDF on a grid without wasting work: a coarse grid everywhere, then finer
and finer grids only in cells near a zero level (an octree-style narrow band), trilinear
elsewhere.

Far from every surface the fine values are interpolated from the coarse grid: their sign is
right (the cell holds no surface of that class) and marching cubes never looks at them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

SdfFunction = Callable[[np.ndarray], np.ndarray]
"""(N, 3) normalized points -> (N, C) SDF, in units where |value| is comparable to distance
divided by `units_per_distance` (see `decode_grid`)."""


@dataclass
class SdfGrid:
    """Per-class SDF sampled on a regular grid.

    Args:
        values: (R, R, R, C) float32 (float16 above 256^3 to bound memory).
        low, high: (3,) normalized coordinates of the first and last grid point.
        evaluated: how many points the SDF function was called on.
    """

    values: np.ndarray
    low: np.ndarray
    high: np.ndarray
    evaluated: int

    @property
    def spacing(self) -> np.ndarray:
        """(3,) distance between neighbouring grid points, normalized units."""
        return (self.high - self.low) / (np.array(self.values.shape[:3]) - 1)


def grid_points(low: np.ndarray, high: np.ndarray, counts: tuple[int, int, int]) -> np.ndarray:
    """(X*Y*Z, 3) points of a regular grid in C order."""
    axes = [np.linspace(low[k], high[k], counts[k]) for k in range(3)]
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)


def evaluate_chunked(sdf_at: SdfFunction, points: np.ndarray, chunk: int) -> np.ndarray:
    """sdf_at over `points` in chunks of `chunk` (bounded memory), float32 (N, C)."""
    parts = [sdf_at(points[i : i + chunk]) for i in range(0, len(points), chunk)]
    return np.concatenate(parts).astype(np.float32)


def upsample2(values: np.ndarray) -> np.ndarray:
    """(n, n, n, C) grid -> (2n-1, 2n-1, 2n-1, C): the old points kept, the new ones at the
    midpoints, trilinear (exact midpoints of each edge, face and cell)."""
    for axis in range(3):
        shape = list(values.shape)
        shape[axis] = 2 * shape[axis] - 1
        out = np.empty(shape, dtype=values.dtype)
        even = [slice(None)] * values.ndim
        odd = [slice(None)] * values.ndim
        even[axis], odd[axis] = slice(0, None, 2), slice(1, None, 2)
        head = [slice(None)] * values.ndim
        tail = [slice(None)] * values.ndim
        head[axis], tail[axis] = slice(0, -1), slice(1, None)
        out[tuple(even)] = values
        out[tuple(odd)] = (values[tuple(head)] + values[tuple(tail)]) / 2
        values = out
    return values


def active_cells(values: np.ndarray, threshold: float) -> np.ndarray:
    """(A, 3) indices of the cells of a (n, n, n, C) grid that some class's zero level may
    cross: a sign change across its 8 corners, or a corner closer than `threshold` to it."""
    n = values.shape[0]
    low = np.full(values[:-1, :-1, :-1].shape, np.inf, dtype=values.dtype)
    high = np.full_like(low, -np.inf)
    closest = np.full_like(low, np.inf)
    for i in (0, 1):
        for j in (0, 1):
            for k in (0, 1):
                corner = values[i : n - 1 + i, j : n - 1 + j, k : n - 1 + k]
                np.minimum(low, corner, out=low)
                np.maximum(high, corner, out=high)
                np.minimum(closest, np.abs(corner), out=closest)
    crossing = ((low < 0) & (high > 0)) | (closest < threshold)
    return np.argwhere(crossing.any(axis=-1))


def decode_grid(
    sdf_at: SdfFunction,
    low: np.ndarray,
    high: np.ndarray,
    resolution: int,
    units_per_distance: float = 1.0,
    margin: float = 1.25,
    coarsest: int = 16,
    chunk: int = 65_536,
    dense: bool = False,
) -> SdfGrid:
    """Sample `sdf_at` on a resolution^3 grid spanning [low, high].

    Octree-style: the SDF is evaluated on a coarse grid (cells `2^L` fine spacings wide, at
    least `coarsest` cells per axis), then level by level only the cells that a zero level may
    cross are split in eight and their new corners evaluated; every other point is trilinear
    from the level above. A cell may hold a zero of an SDF only if all its corners lie within
    its diagonal of it (distances are 1-Lipschitz), so the test "sign change, or a corner within
    `margin` diagonals" keeps every cell marching cubes needs while the band narrows with the
    cells: the points evaluated grow with the surface area (resolution^2), not the volume.

    Args:
        sdf_at: the SDF function.
        low, high: (3,) corners, normalized units.
        resolution: grid points per axis (up to 512).
        units_per_distance: value of the function per normalized unit of distance near the
            surface (1 / truncation for a model trained on truncated targets).
        margin: safety factor on the cell diagonal for a learned, not exactly 1-Lipschitz, SDF.
        coarsest: at least this many cells per axis on the first level.
        chunk: points per call of `sdf_at`.
        dense: evaluate every fine point (the reference the band is measured against).
    """
    low, high = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
    counts = (resolution,) * 3
    fine_spacing = (high - low) / (resolution - 1)
    if dense:
        values = evaluate_chunked(sdf_at, grid_points(low, high, counts), chunk)
        return SdfGrid(values.reshape(*counts, -1), low, high, resolution**3)

    levels = max(0, int(np.floor(np.log2((resolution - 1) / coarsest))))
    step = 2**levels  # fine spacings per coarse cell
    count = -(-(resolution - 1) // step) + 1  # coarse points per axis, covering the fine grid
    coarse_high = low + fine_spacing * (count - 1) * step
    values = evaluate_chunked(sdf_at, grid_points(low, coarse_high, (count,) * 3), chunk)
    values = values.reshape(count, count, count, -1)
    evaluated = count**3
    offsets = np.stack(np.meshgrid(*[np.arange(3)] * 3, indexing="ij"), -1).reshape(-1, 3)
    offsets = offsets[(offsets % 2).any(axis=1)]  # the 19 new points of a split cell
    for level in range(levels, 0, -1):
        diagonal = float(np.linalg.norm(fine_spacing)) * 2**level * units_per_distance
        active = active_cells(values, margin * diagonal)
        if level == 1 and resolution > 256:
            values = values.astype(np.float16)  # bounds memory at 512^3 x C
        values = upsample2(values)
        count = values.shape[0]
        index = (active[:, None, :] * 2 + offsets[None]).reshape(-1, 3)
        flat = np.unique(np.ravel_multi_index(index.T, (count,) * 3))  # shared points once
        spacing = fine_spacing * 2 ** (level - 1)
        for start in range(0, len(flat), chunk):
            i, j, k = np.unravel_index(flat[start : start + chunk], (count,) * 3)
            values[i, j, k] = sdf_at(low + np.stack([i, j, k], axis=1) * spacing)
        evaluated += len(flat)
    values = np.ascontiguousarray(values[:resolution, :resolution, :resolution])
    return SdfGrid(values, low, high, evaluated)
