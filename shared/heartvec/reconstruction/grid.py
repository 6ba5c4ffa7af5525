"""Decoding a per-class SDF on a grid without wasting work: a coarse grid everywhere, then finer
and finer grids only in cells near a zero level (an octree-style narrow band), trilinear
elsewhere.

Far from every surface the fine values are interpolated from the coarse grid: their sign is
right (the cell holds no surface of that class) and marching cubes never looks at them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

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

    @functools.cached_property
    def negative_extent(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per axis, (points along it, C) bool: does any grid point of that slab lie inside the
        class (`negative_extent` of the values, unless set)."""
        return negative_extent(torch.from_numpy(self.values))

    def set_negative_extent(self, extent: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
        """`negative_extent` computed elsewhere (where the values were made: on a GPU)."""
        self.__dict__["negative_extent"] = extent


def negative_boxes(grid: SdfGrid) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """(channel, first, last) per class with negative grid points: (3,) grid indices of the
    first and last slab along each axis that holds one."""
    extent = grid.negative_extent
    boxes = []
    for channel in map(int, np.flatnonzero(extent[0].any(axis=0))):
        hits = [np.flatnonzero(extent[axis][:, channel]) for axis in range(3)]
        boxes.append((channel, np.array([h[0] for h in hits]), np.array([h[-1] for h in hits])))
    return boxes


def negative_extent(values: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per axis of (X, Y, Z, C) values, (points along it, C) bool: is any value of that slab
    negative. Two reductions along the fast axes: several times faster than numpy's `any` over
    the grid."""
    across_0 = values.amin(dim=0)  # (Y, Z, C)
    across_1 = values.amin(dim=1)  # (X, Z, C)
    minima = (across_1.amin(dim=1), across_0.amin(dim=1), across_0.amin(dim=0))
    return tuple(np.asarray((m < 0).cpu().numpy()) for m in minima)  # type: ignore[return-value]


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
    midpoints, trilinear (exact midpoints of each edge, face and cell). In torch, whose
    element-wise kernels use every core (the last level writes resolution^3 x C values)."""
    for axis in range(3):
        source = torch.from_numpy(values)
        shape = list(values.shape)
        shape[axis] = 2 * shape[axis] - 1
        out = torch.empty(shape, dtype=source.dtype)
        out.narrow(axis, 0, shape[axis]).unfold(axis, 1, 2).squeeze(-1).copy_(source)
        odd = out.narrow(axis, 1, shape[axis] - 2).unfold(axis, 1, 2).squeeze(-1)
        n = values.shape[axis]
        torch.add(source.narrow(axis, 0, n - 1), source.narrow(axis, 1, n - 1), out=odd)
        odd.mul_(0.5)
        values = out.numpy()
    return values


def active_cells(values: np.ndarray, threshold: float | None) -> np.ndarray:
    """(A, 3) indices of the cells of a (n, n, n, C) grid that some class's zero level may
    cross: a sign change across its 8 corners or, when `threshold` is given, a corner closer
    than `threshold` to it."""
    n = values.shape[0]
    low = np.full(values[:-1, :-1, :-1].shape, np.inf, dtype=values.dtype)
    high = np.full_like(low, -np.inf)
    closest = np.full_like(low, np.inf) if threshold is not None else None
    for i in (0, 1):
        for j in (0, 1):
            for k in (0, 1):
                corner = values[i : n - 1 + i, j : n - 1 + j, k : n - 1 + k]
                np.minimum(low, corner, out=low)
                np.maximum(high, corner, out=high)
                if closest is not None:
                    np.minimum(closest, np.abs(corner), out=closest)
    crossing = (low < 0) & (high > 0)
    if closest is not None:
        crossing |= closest < threshold
    return np.argwhere(crossing.any(axis=-1))


_CELL_POINTS = np.stack(np.meshgrid(*[np.arange(3)] * 3, indexing="ij"), -1).reshape(-1, 3)
"""The 27 points of a split cell, as offsets on the finer level's grid from its first corner."""
_NEW_POINTS = _CELL_POINTS[(_CELL_POINTS % 2).any(axis=1)]  # the 19 a split adds to its corners
_NEIGHBOURS = np.concatenate([np.eye(3, dtype=int), -np.eye(3, dtype=int)])


def _unique(flat: np.ndarray) -> np.ndarray:
    """Sorted distinct values of an integer array: sort and compare neighbours, which is far
    faster here than numpy 2's hash-based `np.unique`."""
    ordered = np.sort(flat)
    keep = np.empty(len(ordered), dtype=bool)
    keep[:1] = True
    np.not_equal(ordered[1:], ordered[:-1], out=keep[1:])
    return ordered[keep]


class _Splitter:
    """Splits cells of one level: evaluates the new points of each cell once (a point shared
    by neighbouring cells too), writing them into `values`, the level's upsampled grid."""

    def __init__(
        self,
        values: np.ndarray,
        sdf_at: SdfFunction,
        low: np.ndarray,
        spacing: np.ndarray,
        chunk: int,
    ) -> None:
        self.values, self.sdf_at, self.low, self.spacing, self.chunk = (
            values, sdf_at, low, spacing, chunk
        )  # fmt: skip
        self.count = values.shape[0]
        self.cells = self.count // 2  # cells per axis at this level
        self.done = np.zeros((self.cells,) * 3, dtype=bool)
        self.known = np.zeros(values.shape[:3], dtype=bool)  # the points evaluated so far
        self.evaluated = 0

    def __call__(self, cells: np.ndarray) -> None:
        if not len(cells):
            return
        self.done[tuple(cells.T)] = True
        index = (cells[:, None, :] * 2 + _NEW_POINTS[None]).reshape(-1, 3)
        flat = _unique(np.asarray(np.ravel_multi_index(index.T, (self.count,) * 3)))
        flat = flat[~self.known.reshape(-1)[flat]]
        for start in range(0, len(flat), self.chunk):
            i, j, k = np.unravel_index(flat[start : start + self.chunk], (self.count,) * 3)
            self.values[i, j, k] = self.sdf_at(
                self.low + np.stack([i, j, k], axis=1) * self.spacing
            )
        self.known.reshape(-1)[flat] = True
        self.evaluated += len(flat)

    def crossed_neighbours(self, cells: np.ndarray) -> np.ndarray:
        """The unsplit 6-neighbours of `cells` whose 27 points (exact where a split neighbour
        evaluated them, trilinear elsewhere) change sign: a surface found by a split cell
        continues into them."""
        around = (cells[:, None, :] + _NEIGHBOURS[None]).reshape(-1, 3)
        around = around[np.all((around >= 0) & (around < self.cells), axis=1)]
        flat = _unique(np.asarray(np.ravel_multi_index(around.T, (self.cells,) * 3)))
        candidates = np.stack(np.unravel_index(flat, (self.cells,) * 3), axis=1)
        candidates = candidates[~self.done[tuple(candidates.T)]]
        crossed = np.zeros(len(candidates), dtype=bool)
        for start in range(0, len(candidates), self.chunk):
            part = candidates[start : start + self.chunk]
            points = part[:, None, :] * 2 + _CELL_POINTS[None]  # (K, 27, 3)
            corner = self.values[points[..., 0], points[..., 1], points[..., 2]]  # (K, 27, C)
            crossed[start : start + len(part)] = (
                (corner.min(axis=1) < 0) & (corner.max(axis=1) > 0)
            ).any(axis=1)
        return candidates[crossed]


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
    sign_levels: int = 2,
) -> SdfGrid:
    """Sample `sdf_at` on a resolution^3 grid spanning [low, high].

    Octree-style: the SDF is evaluated on a coarse grid (cells `2^L` fine spacings wide, at
    least `coarsest` cells per axis), then level by level only the cells that a zero level may
    cross are split in eight and their new corners evaluated; every other point is trilinear
    from the level above. A cell may hold a zero of an SDF only if all its corners lie within
    its diagonal of it (distances are 1-Lipschitz), so the test "sign change, or a corner within
    `margin` diagonals" keeps every cell marching cubes needs while the band narrows with the
    cells: the points evaluated grow with the surface area (resolution^2), not the volume.

    On the finest `sign_levels` levels the band follows the surfaces instead: a cell is split
    when its corners change sign, and then, until nothing is added, every unsplit neighbour
    whose points (exact where a split neighbour evaluated them) change sign, since the surface
    found in a split cell continues into it. The distance test is what finds a thin structure
    inside a large cell, but in small cells it costs the most and buys the least: a learned
    SDF is flatter than a distance, and with ten classes a band of diagonals around every
    surface covers most of the box (86% of the points at resolution 128 with the bundled
    checkpoint). What tracking misses is a surface component that no corner of its level sees
    and that touches no split cell: one under two cells across (BENCHMARKS.md gives the
    measured difference to the dense grid).

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
        sign_levels: finest levels that follow sign changes (0: the distance test everywhere;
            `heartvec reconstruct` chooses by the cells' width in mm, `tracked_levels`).
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
    for level in range(levels, 0, -1):
        diagonal = float(np.linalg.norm(fine_spacing)) * 2**level * units_per_distance
        tracking = level <= sign_levels
        active = active_cells(values, None if tracking else margin * diagonal)
        if level == 1 and resolution > 256:
            values = values.astype(np.float16)  # bounds memory at 512^3 x C
        values = upsample2(values)
        split = _Splitter(values, sdf_at, low, fine_spacing * 2 ** (level - 1), chunk)
        split(active)
        while tracking and len(active):
            active = split.crossed_neighbours(active)
            split(active)
        evaluated += split.evaluated
    values = values[:resolution, :resolution, :resolution]  # a view: a copy of 256^3 is slow
    return SdfGrid(values, low, high, evaluated)
