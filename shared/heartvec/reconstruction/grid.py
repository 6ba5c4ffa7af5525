"""Decoding a per-class SDF on a grid without wasting work: a coarse grid everywhere, the fine
grid only in coarse cells near a zero level (a narrow band), trilinear elsewhere.

Far from every surface the fine values are interpolated from the coarse grid: their sign is
right (the cell holds no surface of that class) and marching cubes never looks at them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import zoom

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


def decode_grid(
    sdf_at: SdfFunction,
    low: np.ndarray,
    high: np.ndarray,
    resolution: int,
    units_per_distance: float = 1.0,
    coarse_factor: int = 4,
    chunk: int = 65_536,
    dense: bool = False,
) -> SdfGrid:
    """Sample `sdf_at` on a resolution^3 grid spanning [low, high].

    Args:
        sdf_at: the SDF function.
        low, high: (3,) corners, normalized units.
        resolution: grid points per axis (up to 512).
        units_per_distance: value of the function per normalized unit of distance near the
            surface (1 / truncation for a model trained on truncated targets).
        coarse_factor: fine points per coarse cell edge.
        chunk: points per call of `sdf_at`.
        dense: evaluate every fine point (the reference the narrow band is measured against).
    """
    low, high = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
    counts = (resolution,) * 3
    if dense:
        values = evaluate_chunked(sdf_at, grid_points(low, high, counts), chunk)
        return SdfGrid(values.reshape(*counts, -1), low, high, resolution**3)

    coarse_count = -(-(resolution - 1) // coarse_factor) + 1  # covers the fine grid, maybe past it
    coarse_high = low + (high - low) * (coarse_count - 1) * coarse_factor / (resolution - 1)
    coarse = evaluate_chunked(sdf_at, grid_points(low, coarse_high, (coarse_count,) * 3), chunk)
    coarse = coarse.reshape(coarse_count, coarse_count, coarse_count, -1)
    classes = coarse.shape[-1]
    dtype = np.float32 if resolution <= 256 else np.float16
    values = np.empty((*counts, classes), dtype=dtype)
    upsampled_count = (coarse_count - 1) * coarse_factor + 1
    for c in range(classes):  # trilinear upsampling of the coarse grid, cropped to the fine one
        up = zoom(coarse[..., c], upsampled_count / coarse_count, order=1, grid_mode=False)
        values[..., c] = up[:resolution, :resolution, :resolution]

    # a coarse cell is refined if some class's zero level may pass through it: a sign change
    # across its corners, or a corner closer to the surface than the cell's diagonal
    fine_spacing = (high - low) / (resolution - 1)
    diagonal = float(np.linalg.norm(fine_spacing * coarse_factor)) * units_per_distance
    corners = np.stack(
        [
            coarse[i : coarse_count - 1 + i, j : coarse_count - 1 + j, k : coarse_count - 1 + k]
            for i in (0, 1)
            for j in (0, 1)
            for k in (0, 1)
        ]
    )  # (8, n, n, n, C)
    changes = (corners.min(axis=0) < 0) & (corners.max(axis=0) > 0)
    close = np.abs(corners).min(axis=0) < 1.5 * diagonal
    active = np.argwhere((changes | close).any(axis=-1))  # (A, 3) coarse cell indices

    offsets = np.stack(np.meshgrid(*[np.arange(coarse_factor + 1)] * 3, indexing="ij"), -1)
    offsets = offsets.reshape(-1, 3)  # fine points of one cell, borders included
    index = (active[:, None, :] * coarse_factor + offsets[None]).reshape(-1, 3)
    index = index[np.all(index < resolution, axis=1)]
    flat = np.unique(np.ravel_multi_index(index.T, counts))  # shared borders evaluated once
    for start in range(0, len(flat), chunk):
        i, j, k = np.unravel_index(flat[start : start + chunk], counts)
        values[i, j, k] = sdf_at(low + np.stack([i, j, k], axis=1) * fine_spacing)
    evaluated = coarse_count**3 + len(flat)
    return SdfGrid(values, low, high, evaluated)
