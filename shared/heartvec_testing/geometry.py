"""Brute-force references for tests: exact point-to-triangle distance and the winding number of
a closed mesh, no acceleration."""

from __future__ import annotations

import numpy as np

from heartvec.surfaces import Surface


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


def winding_number(surface: Surface, points: np.ndarray) -> np.ndarray:
    """(P,) generalised winding number of each point about a closed mesh (1 inside, 0 outside;
    Jacobson et al. 2013): the solid angles of every triangle, summed, no acceleration."""
    triangles = surface.triangles()[None] - points[:, None, None, :]  # (P, F, 3, 3)
    a, b, c = triangles[..., 0, :], triangles[..., 1, :], triangles[..., 2, :]
    la, lb, lc = (np.linalg.norm(x, axis=-1) for x in (a, b, c))
    numerator = np.einsum("pfi,pfi->pf", a, np.cross(b, c))
    denominator = (
        la * lb * lc
        + np.einsum("pfi,pfi->pf", a, b) * lc
        + np.einsum("pfi,pfi->pf", b, c) * la
        + np.einsum("pfi,pfi->pf", c, a) * lb
    )
    return np.asarray(np.arctan2(numerator, denominator).sum(axis=1) / (2 * np.pi))
