"""The refinement's fit data: surface points with classes, and near-surface and volume points
with the exact per-class SDF, drawn from the input. No torch here: each class's distances are
a job a host-pool process can take (`hostwork`) while the device encodes."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from heartvec.distance import SurfaceDistance, signed_distance, spatial_order
from heartvec.normalization import Normalization
from heartvec.reconstruction import defaults
from heartvec.reconstruction.hostwork import Deferred
from heartvec.resources import available_cpus
from heartvec.samples import ABSENT_SDF, near_surface_points, sample_surfaces
from heartvec.surfaces import Surface
from heartvec.volume import LabelVolume

TARGET_MARGIN = 0.05  # normalized units of room around the surfaces for the volume points
HELD_OUT_SHARE = 0.25  # more points of each kind (surface, near, volume) drawn to measure the fit


@dataclass(frozen=True)
class FitData:
    """The refinement's points in two parts: `fit` (the steps' minibatches come from it) and
    `held_out` (the fit measured on points it never saw). Each is {"surface": (S, 3), "labels":
    (S,), "queries": (Q, 3), "sdf": (Q, C)}, its queries near-surface points first and volume
    points after: `fit_near` of the fit's queries are near-surface points, `held_out_near` of the
    held-out's."""

    fit: dict[str, np.ndarray]
    held_out: dict[str, np.ndarray]
    fit_near: int
    held_out_near: int


def fit_surface_points(
    surfaces: dict[int, Surface], count: int, class_balance: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """`count` points on the class surfaces with their classes: a share `class_balance` split
    evenly among the classes, the rest area-uniform on their union, in random order (so any
    prefix holds every class in proportion). By area alone a thin vessel (a vena cava: 2-4% of
    a heart's surface) gets a few dozen of a step's points and the fit neglects it; even shares
    lifted the caval veins and pulmonary veins on unseen phantoms and real hearts
    (bench/checkpoints.py --tag class_balance). `class_balance` 0 is `sample_surfaces`'s draw.

    Returns:
        points float64 (count, 3) world mm, classes uint8 (count,).
    """
    if not 0.0 <= class_balance <= 1.0:
        raise ValueError(f"class balance {class_balance}: expected a share in [0, 1]")
    if class_balance == 0.0:
        points, classes, _ = sample_surfaces(surfaces, count, rng)
        return points, classes
    balanced = round(count * class_balance)
    share, extra = divmod(balanced, len(surfaces))
    drawn = [
        sample_surfaces({class_index: surface}, share + (position < extra), rng)
        for position, (class_index, surface) in enumerate(surfaces.items())
    ]
    if count > balanced:
        drawn.append(sample_surfaces(surfaces, count - balanced, rng))
    order = rng.permutation(count)
    points = np.concatenate([points for points, _, _ in drawn])[order]
    classes = np.concatenate([classes for _, classes, _ in drawn])[order]
    return points, classes


def class_signed_distance(
    surface: Surface, points: np.ndarray, inside: np.ndarray, band_mm: float
) -> np.ndarray:
    """`distance.signed_distance` of world points to one class surface (a job per class)."""
    return signed_distance(SurfaceDistance(surface), points, inside, band_mm)


class RefinementTargets:
    """2 x `points` surface points with classes, and `points` near-surface + `points` volume
    points in [low, high] with the exact per-class SDF, normalized, for the fit, and
    `HELD_OUT_SHARE` as many more of each kind held out to measure it; drawn from a generator
    seeded with `seed`. The surface points (and so the near-surface points around them) give
    each class an even share `class_balance` (`fit_surface_points`).

    The points are drawn here; each class's exact distances are a job of `pool` (a class per
    worker), else of threads of its own (fcpw's queries release the GIL), started at once and
    waited for when `result` asks."""

    def __init__(
        self,
        volume: LabelVolume,
        surfaces: dict[int, Surface],
        normalization: Normalization,
        low: np.ndarray,
        high: np.ndarray,
        points: int,
        seed: int | Sequence[int],
        pool: ProcessPoolExecutor | None = None,
        class_balance: float = 0.0,
    ) -> None:
        rng = np.random.default_rng(seed)
        self.held = max(1, round(points * HELD_OUT_SHARE))
        count = points + self.held  # of each kind of query; twice as many surface points
        world, self.labels = fit_surface_points(surfaces, 2 * count, class_balance, rng)
        self.surface = normalization.to_normalized(world)
        near = near_surface_points(self.surface, count, (0.005, 0.05), rng)
        # drawn half at each spread, one after the other: mixed, so each part holds both
        near = near[rng.permutation(count)]
        box = rng.uniform(low, high, size=(count, 3))
        self.queries = np.concatenate([near, box])
        self.near = count
        self.order = spatial_order(self.queries)
        world_queries = normalization.to_world(self.queries[self.order])
        nearest_class = volume.class_at(world_queries)
        self.num_classes, self.scale = volume.label_table.num_classes, normalization.scale
        band = volume.half_voxel_diagonal_mm
        threads = None
        if pool is None:
            threads = ThreadPoolExecutor(max(1, min(len(surfaces), available_cpus())))
        self.distances = {
            class_index: Deferred(
                class_signed_distance,
                (surface, world_queries, nearest_class == class_index, band),
                pool or threads,
            )
            for class_index, surface in surfaces.items()
        }
        if threads is not None:
            threads.shutdown(wait=False)  # its threads end when the jobs are done

    def result(self) -> FitData:
        """The points and their distances, the held-out ones apart."""
        sdf = np.full((len(self.queries), self.num_classes), ABSENT_SDF, dtype=np.float32)
        for class_index, distance in self.distances.items():
            sdf[self.order, class_index - 1] = distance.result() / self.scale
        near, held_near = self.near, self.held
        held_volume, held_surface = self.held, 2 * self.held
        rows = np.arange(len(self.queries))
        held_rows = np.concatenate([rows[:held_near], rows[near : near + held_volume]])
        fit_rows = np.concatenate([rows[held_near:near], rows[near + held_volume :]])
        part = {
            "held_out": (slice(None, held_surface), held_rows),
            "fit": (slice(held_surface, None), fit_rows),
        }
        data = {
            name: {
                "surface": self.surface[surface_rows],
                "labels": self.labels[surface_rows],
                "queries": self.queries[query_rows],
                "sdf": sdf[query_rows],
            }
            for name, (surface_rows, query_rows) in part.items()
        }
        return FitData(data["fit"], data["held_out"], near - held_near, held_near)


def start_targets(
    volume: LabelVolume,
    surfaces: dict[int, Surface],
    normalization: Normalization,
    seed: int | Sequence[int],
    pool: ProcessPoolExecutor | None = None,
    class_balance: float = 0.0,
    points: int = defaults.REFINE_TARGET_POINTS,
) -> RefinementTargets:
    """The refinement's targets (`points` near-surface and `points` volume points, 2 x `points`
    surface points to fit, and `HELD_OUT_SHARE` as many more of each held out) around the input's
    surfaces, each class given an even share `class_balance` of the surface points, their
    distances started at once: on `pool` (the pipeline's host pool), else on threads."""
    low, high = normalization.bounds(surfaces)
    room = TARGET_MARGIN
    return RefinementTargets(
        volume, surfaces, normalization, low - room, high + room, points, seed, pool,
        class_balance,
    )  # fmt: skip
