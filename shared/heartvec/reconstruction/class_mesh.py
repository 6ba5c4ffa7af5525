"""One class's share of turning a decoded grid into a mesh: its stray pieces dropped, then
marching cubes. No torch here: a host-pool process takes a class (`hostwork`)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy.ndimage import label as connected_pieces
from skimage.measure import marching_cubes


class ClassMesh(NamedTuple):
    """`class_mesh`'s result for one class's box of grid values.

    Args:
        stray: flat indices (into the box) of the points of dropped pieces.
        pieces_dropped: how many pieces those were.
        vertices: (V, 3) float grid indices relative to the box's first point.
        faces: (F, 3) int32.
    """

    stray: np.ndarray
    pieces_dropped: int
    vertices: np.ndarray
    faces: np.ndarray


def class_mesh(values: np.ndarray, min_fraction: float) -> ClassMesh:
    """Drop one class's stray pieces and run marching cubes on what is left.

    Args:
        values: the class's SDF on the box of its negative grid points, widened by one point
            on each side where the grid goes on.
        min_fraction: pieces (26-connected sets of negative points) smaller than this fraction
            of the largest are dropped: their points become a small distance above zero, so
            neither marching cubes nor the label volume sees them (the caller writes that into
            its grid). 0 keeps everything.

    Marching cubes runs on the box of the negative points that are left, widened by one point
    where the given box goes on (the zero level lies between a negative point and its
    neighbours: the same box as widening within the whole grid), padded with 'outside' so a
    surface touching the grid's border still closes.
    """
    values = values.astype(np.float32)  # float16 above 256^3; a copy, written below
    negative = values < 0
    stray, dropped = np.zeros(0, dtype=np.int64), 0
    if min_fraction > 0:
        pieces, count = connected_pieces(negative, structure=np.ones((3, 3, 3), dtype=bool))
        if count >= 2:
            sizes = np.bincount(pieces.ravel())
            sizes[0] = 0  # outside
            small = sizes < min_fraction * sizes.max()
            small[0] = False
            if small.any():
                mask = small[pieces]
                stray, dropped = np.flatnonzero(mask), int(small.sum())
                values[mask] = np.abs(values[mask]) + np.float32(1e-3)
                negative &= ~mask
    axes = [tuple(a for a in range(3) if a != k) for k in range(3)]
    hits = [np.flatnonzero(negative.any(axis=other)) for other in axes]
    if any(len(h) == 0 for h in hits):  # nothing negative: no surface
        return ClassMesh(stray, dropped, np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int32))
    start = [max(int(h[0]) - 1, 0) for h in hits]
    stop = [min(int(h[-1]) + 2, n) for h, n in zip(hits, values.shape, strict=True)]
    cropped = values[tuple(map(slice, start, stop))]
    outside = max(float(cropped.max()), 1.0)
    vertices, faces, _, _ = marching_cubes(np.pad(cropped, 1, constant_values=outside), level=0.0)
    return ClassMesh(stray, dropped, vertices - 1 + np.array(start), faces.astype(np.int32))
