"""Training samples of one volume: surface points with classes, per-class SDF at query points.

`prepare_sample` is the arrow LabelVolume -> sample arrays; it does no file I/O.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from heartvec.distance import SurfaceDistance, signed_distance, spatial_order
from heartvec.normalization import (
    DEFAULT_SCALE_MM,
    Normalization,
    fitted_normalization,
    fixed_normalization,
)
from heartvec.surfaces import Surface, class_surfaces, triangle_areas_and_normals
from heartvec.volume import LabelVolume

ABSENT_SDF = 2.0
"""SDF of every point for a class absent from the volume (normalized units, 'far outside')."""


@dataclass(frozen=True)
class SampleSettings:
    """How many points of each kind, and how they are drawn.

    Args:
        surface_points: S, area-uniform samples over all class surfaces.
        vol_points: V, uniform in [-1, 1]^3.
        near_points: M, surface samples plus Gaussian offsets, half at each sigma.
        near_sigmas: the two offset scales, normalized units.
        normalize: 'fixed' (physical scale `scale_mm`) or 'fit' (each volume fills the cube).
        scale_mm: mm per normalized unit for 'fixed'.
    """

    surface_points: int = 100_000
    vol_points: int = 100_000
    near_points: int = 100_000
    near_sigmas: tuple[float, float] = (0.005, 0.05)
    normalize: Literal["fixed", "fit"] = "fixed"
    scale_mm: float = DEFAULT_SCALE_MM


@dataclass
class Sample:
    """One prepared volume: the `.npz` arrays plus what the quality report needs."""

    arrays: dict[str, np.ndarray]
    surfaces: dict[int, Surface]
    normalization: Normalization
    timings: dict[str, float] = field(default_factory=dict)


def sample_surfaces(
    surfaces: dict[int, Surface], count: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Area-uniform points on the union of class surfaces.

    Returns:
        points float64 (count, 3) world mm, classes uint8 (count,), normals float64 (count, 3).
    """
    classes = list(surfaces)
    areas = [surfaces[c].face_areas_and_normals()[0] for c in classes]
    face_class = np.repeat(np.array(classes, dtype=np.uint8), [len(a) for a in areas])
    all_areas = np.concatenate(areas)
    chosen = rng.choice(len(all_areas), size=count, p=all_areas / all_areas.sum())
    # only the chosen faces' corners and normals (all of them cost a third of the time)
    first_face = np.cumsum([0] + [len(a) for a in areas])
    corners = np.empty((count, 3, 3))
    for position, class_index in enumerate(classes):
        mine = (chosen >= first_face[position]) & (chosen < first_face[position + 1])
        surface = surfaces[class_index]
        corners[mine] = surface.vertices[surface.faces[chosen[mine] - first_face[position]]]
    _, normals = triangle_areas_and_normals(corners)
    # uniform barycentric coordinates by folding the unit square onto the triangle
    u, v = rng.random((2, count))
    fold = u + v > 1
    u[fold], v[fold] = 1 - u[fold], 1 - v[fold]
    points = corners[:, 0] + u[:, None] * (corners[:, 1] - corners[:, 0])
    points += v[:, None] * (corners[:, 2] - corners[:, 0])
    return points, face_class[chosen], normals


def near_surface_points(
    surface_points: np.ndarray, count: int, sigmas: tuple[float, float], rng: np.random.Generator
) -> np.ndarray:
    """(count, 3) surface samples offset by isotropic Gaussians, half at each sigma.

    Args:
        surface_points: (S, 3) normalized surface samples.
        count: M.
        sigmas: two standard deviations, normalized units.
    """
    picked = surface_points[rng.integers(0, len(surface_points), size=count)]
    sigma = np.where(np.arange(count) < count // 2, sigmas[0], sigmas[1])
    return np.asarray(picked + rng.normal(size=(count, 3)) * sigma[:, None])


def prepare_sample(
    volume: LabelVolume, settings: SampleSettings, rng: np.random.Generator
) -> Sample:
    """Surfaces, samples and exact per-class SDF of one volume (the `.npz` contents).

    Args:
        volume: a validated label volume.
        settings: point counts and normalization.
        rng: the source of every random draw (seed it for reproducible samples).
    """
    timings: dict[str, float] = {}
    start = time.perf_counter()
    surfaces = class_surfaces(volume)
    timings["marching_cubes_s"] = time.perf_counter() - start

    start = time.perf_counter()
    if settings.normalize == "fit":
        normalization = fitted_normalization(surfaces)
    else:
        normalization = fixed_normalization(surfaces, settings.scale_mm)
    surface_world, surface_labels, surface_normals = sample_surfaces(
        surfaces, settings.surface_points, rng
    )
    surface_points = normalization.to_normalized(surface_world)
    vol_points = rng.uniform(-1.0, 1.0, size=(settings.vol_points, 3))
    near_points = near_surface_points(
        surface_points, settings.near_points, settings.near_sigmas, rng
    )
    timings["sampling_s"] = time.perf_counter() - start

    start = time.perf_counter()
    queries = normalization.to_world(np.concatenate([vol_points, near_points]))
    order = spatial_order(queries)
    queries = queries[order]
    num_classes = volume.label_table.num_classes
    class_at_queries = volume.class_at(queries)
    sdf = np.full((len(queries), num_classes), ABSENT_SDF, dtype=np.float32)
    for class_index, surface in surfaces.items():
        distance_mm = signed_distance(
            SurfaceDistance(surface),
            queries,
            inside=class_at_queries == class_index,
            band_mm=volume.half_voxel_diagonal_mm,
        )
        sdf[order, class_index - 1] = distance_mm / normalization.scale
    timings["sdf_s"] = time.perf_counter() - start

    present = np.zeros(num_classes, dtype=bool)
    present[np.array(list(surfaces)) - 1] = True
    arrays: dict[str, np.ndarray] = {
        "surface_points": surface_points.astype(np.float32),
        "surface_labels": surface_labels.astype(np.uint8),
        "surface_normals": surface_normals.astype(np.float32),
        "vol_points": vol_points.astype(np.float32),
        "vol_sdf": sdf[: settings.vol_points],
        "near_points": near_points.astype(np.float32),
        "near_sdf": sdf[settings.vol_points :],
        "class_present": present,
        "center": normalization.center.astype(np.float32),
        "scale": np.array(normalization.scale, dtype=np.float32),
        "affine": volume.affine.astype(np.float64),
        "shape": np.array(volume.shape, dtype=np.int64),
        "spacing": volume.spacing.astype(np.float32),
    }
    return Sample(arrays, surfaces, normalization, timings)
