"""Brute-force references for tests: exact point-to-triangle distance, no acceleration."""

from __future__ import annotations

import numpy as np


def point_triangles_distance(point: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """Exact distance from one point (3,) to each of (F, 3, 3) triangles (Ericson, RTCD 5.1.5).

    Computed as the minimum over the triangle's plane projection (when inside) and its three
    edges, which is equivalent and easy to vectorise.
    """
    a, b, c = triangles[:, 0], triangles[:, 1], triangles[:, 2]
    normal = np.cross(b - a, c - a)
    normal /= np.linalg.norm(normal, axis=1, keepdims=True)
    height = np.einsum("ij,ij->i", point - a, normal)
    projected = point - height[:, None] * normal
    inside = np.ones(len(triangles), dtype=bool)
    for start, end in ((a, b), (b, c), (c, a)):
        edge_side = np.einsum("ij,ij->i", np.cross(end - start, projected - start), normal)
        inside &= edge_side >= 0
    distance = np.where(inside, np.abs(height), np.inf)
    for start, end in ((a, b), (b, c), (c, a)):
        edge = end - start
        t = np.clip(
            np.einsum("ij,ij->i", point - start, edge) / np.einsum("ij,ij->i", edge, edge), 0, 1
        )
        closest = start + t[:, None] * edge
        distance = np.minimum(distance, np.linalg.norm(point - closest, axis=1))
    return distance
