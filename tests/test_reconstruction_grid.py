"""Narrow-band grid decoding: the same surfaces as the dense grid, for far fewer evaluations."""

from __future__ import annotations

import numpy as np
from skimage.measure import marching_cubes

from heartvec.reconstruction.grid import decode_grid

CENTRES = np.array([[-0.3, 0.1, 0.0], [0.35, -0.2, 0.1]])
RADII = np.array([0.25, 0.12])


def two_spheres(points: np.ndarray) -> np.ndarray:
    """(N, 3) -> (N, 2): exact SDF of two spheres, one per class, truncated like the model's."""
    distance = np.linalg.norm(points[:, None, :] - CENTRES[None], axis=-1) - RADII
    return np.clip(distance, -0.1, 0.1) / 0.1


def test_narrow_band_matches_dense_near_the_surfaces() -> None:
    low, high = np.full(3, -0.7), np.full(3, 0.7)
    # fine enough that a coarse cell's diagonal (0.05) is under the truncation (0.1)
    dense = decode_grid(two_spheres, low, high, 193, units_per_distance=10, dense=True)
    band = decode_grid(two_spheres, low, high, 193, units_per_distance=10)
    assert band.evaluated < 0.3 * dense.evaluated
    for c in range(2):
        near = np.abs(dense.values[..., c]) < 0.5  # within half the truncation of a surface
        np.testing.assert_allclose(band.values[..., c][near], dense.values[..., c][near], atol=1e-6)
        assert np.array_equal(band.values[..., c] < 0, dense.values[..., c] < 0)
        vertices, _, _, _ = marching_cubes(band.values[..., c], 0.0, spacing=tuple(band.spacing))
        radius = np.linalg.norm(vertices + low - CENTRES[c], axis=1)
        np.testing.assert_allclose(radius, RADII[c], atol=0.2 * band.spacing[0])


def test_resolution_not_a_multiple_of_the_coarse_factor() -> None:
    low, high = np.full(3, -0.7), np.full(3, 0.7)
    band = decode_grid(two_spheres, low, high, 90, units_per_distance=10)
    dense = decode_grid(two_spheres, low, high, 90, units_per_distance=10, dense=True)
    assert band.values.shape == (90, 90, 90, 2)
    assert np.array_equal(band.values < 0, dense.values < 0)
