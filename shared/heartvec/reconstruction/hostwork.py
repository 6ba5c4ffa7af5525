"""The reconstruction's CPU work that holds the GIL, as functions of plain arrays, and a pool of
processes that runs it beside the device's work on hosts with many cores.

On a GPU machine the reconstruction's own arithmetic takes a second or two; marching cubes,
dropping stray pieces, the refinement's exact distances and the preview's drawing took as long
again on one core each (BENCHMARKS.md, "GPU"), because numpy/skimage/matplotlib hold the GIL
and threads do not spread them. A pool of spawned processes (`host_pool`) runs them a class
per process and overlaps the refinement's targets with encoding. A process that keeps its
model starts one (`host_pool`: the worker and the embedded service do, after loading it) and
the pipeline uses it (`running_host_pool`); a one-volume run does not (spawning ten workers on
the lent GPU machine slowed its loading by ~0.9 s, more than they saved), nor does a library
caller who did not start one (spawned workers import the caller's main module, which must
then be guarded by `if __name__ == "__main__"`). Without a pool (those, fewer than MIN_CORES
cores, `HEARTVEC_HOST_WORKERS=0`) the same functions run in this process with the same
results (the refinement's distances on threads: fcpw releases the GIL). This module imports
no torch, so a worker starts in a fraction of a second.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import process as mp_process
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import numpy as np
from scipy.ndimage import label as connected_pieces
from skimage.measure import marching_cubes

from heartvec.distance import SurfaceDistance, signed_distance, spatial_order
from heartvec.normalization import Normalization
from heartvec.resources import available_cpus
from heartvec.samples import ABSENT_SDF, near_surface_points, sample_surfaces
from heartvec.surfaces import Surface
from heartvec.volume import LabelVolume

log = logging.getLogger(__name__)

T = TypeVar("T")

MIN_CORES = 8
"""Hosts with fewer cores run the work inline: on 2 cores the workers would take the cores
the decoder's threads use."""
MAX_WORKERS = 10  # a class each
WORKERS_VARIABLE = "HEARTVEC_HOST_WORKERS"
PARENT_CHECK_S = 1.0  # how often a worker checks that its parent is alive

_pool: ProcessPoolExecutor | None = None
_pool_failed = False  # once: a process that may not have children stays without
_warm_ups: list[Future[None]] = []
_pool_lock = threading.Lock()


def host_workers() -> int:
    """Processes of the host pool: $HEARTVEC_HOST_WORKERS if set (0: none), else one per class
    up to MAX_WORKERS, leaving two cores, on hosts of at least MIN_CORES cores (those this
    process may run on), else 0."""
    value = os.environ.get(WORKERS_VARIABLE, "").strip()
    if value:
        try:
            return max(0, int(value))
        except ValueError:
            log.warning("%s=%r is not a whole number: no host pool", WORKERS_VARIABLE, value)
            return 0
    cores = available_cpus()
    return min(cores - 2, MAX_WORKERS) if cores >= MIN_CORES else 0


def _start_worker() -> None:
    """Each worker's start: end it when its parent ends (a killed Celery job process would
    otherwise leave it waiting for tasks: it holds its task pipe's both ends), and import what
    the jobs use (the render module's matplotlib too) while the parent loads the volume and the
    model."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK_S)
        os._exit(0)

    threading.Thread(target=watch, name="heartvec-parent-watch", daemon=True).start()
    import heartvec.reconstruction.render  # noqa: F401


def _ready() -> None:
    """A no-op task: submitting one per worker makes a spawning pool start them all."""


def host_pool() -> ProcessPoolExecutor | None:
    """The process's pool, started on first use (its workers spawn and import at once, in the
    background), or None where there is none (`host_workers` is 0, or it could not start).

    A Celery prefork child (the GPU worker's job process) runs as billiard's 'daemonic'
    process, and multiprocessing refuses children to those (a rule for processes that would be
    left behind when their daemonic parent ends) and will not pickle billiard's authentication
    key for them. The pool's workers are not left behind: each ends itself within
    PARENT_CHECK_S of its parent's end (`_start_worker`). So while the workers start, all of
    them at once, the process is not daemonic and its key is multiprocessing's own type."""
    global _pool, _pool_failed
    workers = host_workers()
    if workers == 0 or _pool_failed:
        return None
    with _pool_lock:
        if _pool is None:
            config = multiprocessing.current_process()._config  # type: ignore[attr-defined]
            saved = dict(config)
            try:
                if config.get("daemon"):  # billiard's (or another daemonic) process: see above
                    config["daemon"] = False
                    config["authkey"] = mp_process.AuthenticationString(bytes(config["authkey"]))  # type: ignore[attr-defined]
                pool = ProcessPoolExecutor(
                    workers,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=_start_worker,
                )
                # a spawning pool starts a worker per task that finds none idle
                _warm_ups[:] = [pool.submit(_ready) for _ in range(workers)]
            except Exception as error:
                log.warning("no host pool (%s): running inline", error)
                _pool_failed = True
                return None
            finally:
                config.update(saved)
            _pool = pool
            log.info("host pool: %d spawned workers", workers)
        return _pool


def running_host_pool() -> ProcessPoolExecutor | None:
    """The pool `host_pool` started in this process, if any (none is started here)."""
    return _pool


def wait_for_host_pool(timeout: float = 60.0) -> None:
    """Wait until the pool's workers have started and imported what the jobs use."""
    for future in list(_warm_ups):
        future.result(timeout=timeout)


def shutdown_host_pool() -> None:
    """Stop the pool's workers (a Celery job process's end; tests)."""
    global _pool
    with _pool_lock:
        if _pool is not None:
            _pool.shutdown(wait=True, cancel_futures=True)
            _pool = None


def _forget_broken_pool(pool: ProcessPoolExecutor) -> None:
    global _pool
    with _pool_lock:
        if _pool is pool:
            _pool = None
    pool.shutdown(wait=False, cancel_futures=True)


class Deferred:
    """A job's result: from the pool (the host pool, or threads), or computed inline when first
    asked for (no pool, or a broken one: a worker killed, say, by the out-of-memory killer)."""

    def __init__(
        self, function: Callable[..., Any], args: tuple[Any, ...], pool: Executor | None
    ) -> None:
        self.function, self.args, self.pool = function, args, pool
        self.future: Future[Any] | None = None
        if pool is not None:
            try:
                self.future = pool.submit(function, *args)
            except (BrokenProcessPool, RuntimeError) as error:  # RuntimeError: shut down
                log.warning("host pool unusable (%s): running inline", error)
                if isinstance(pool, ProcessPoolExecutor):
                    _forget_broken_pool(pool)

    def result(self) -> Any:
        if self.future is not None:
            try:
                return self.future.result()
            except BrokenProcessPool as error:
                log.warning("host pool broke (%s): running inline", error)
                assert isinstance(self.pool, ProcessPoolExecutor)
                _forget_broken_pool(self.pool)
        return self.function(*self.args)


def run_all(
    function: Callable[..., T],
    jobs: Sequence[tuple[Any, ...]],
    pool: ProcessPoolExecutor | None = None,
) -> list[T]:
    """`function(*job)` for every job: on `pool` (a `host_pool`) if given, else inline, in
    order."""
    deferred = [Deferred(function, job, pool) for job in jobs]
    return [d.result() for d in deferred]


# --- the jobs ---------------------------------------------------------------------------------


def class_signed_distance(
    surface: Surface, points: np.ndarray, inside: np.ndarray, band_mm: float
) -> np.ndarray:
    """`distance.signed_distance` of world points to one class surface (a job per class)."""
    return signed_distance(SurfaceDistance(surface), points, inside, band_mm)


class RefinementTargets:
    """The refinement's data (`heartvec.reconstruction.refine`): 2 x `points` surface points
    with classes, and `points` near-surface + `points` volume points in [low, high] with the
    exact per-class SDF, normalized; drawn from a generator seeded with `seed`.

    The points are drawn here; each class's exact distances are a job of `pool` (a class per
    worker: 0.5-0.7 s of one core for ten classes), else of threads of its own (fcpw's queries
    release the GIL, the rest of the sign test does not: 1.0 -> 0.8 s on 2 cores), started
    at once and waited for when `result` asks."""

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
    ) -> None:
        rng = np.random.default_rng(seed)
        world, self.labels, _ = sample_surfaces(surfaces, 2 * points, rng)
        self.surface = normalization.to_normalized(world)
        near = near_surface_points(self.surface, points, (0.005, 0.05), rng)
        box = rng.uniform(low, high, size=(points, 3))
        self.queries = np.concatenate([near, box])
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

    def result(self) -> dict[str, np.ndarray]:
        sdf = np.full((len(self.queries), self.num_classes), ABSENT_SDF, dtype=np.float32)
        for class_index, distance in self.distances.items():
            sdf[self.order, class_index - 1] = distance.result() / self.scale
        return {"surface": self.surface, "labels": self.labels, "queries": self.queries, "sdf": sdf}


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


Slices = dict[str, tuple[np.ndarray, np.ndarray]]
"""Title -> (input labels, reconstructed labels) on one slice."""


def preview_slices(labels: np.ndarray, reconstructed: np.ndarray) -> Slices:
    """The three orthogonal slices of both label volumes through the input heart's centre."""
    centre = np.round(np.argwhere(labels > 0).mean(axis=0)).astype(int)
    return {
        "axis 0": (labels[centre[0]], reconstructed[centre[0]]),
        "axis 1": (labels[:, centre[1]], reconstructed[:, centre[1]]),
        "axis 2": (labels[:, :, centre[2]], reconstructed[:, :, centre[2]]),
    }


def draw_preview(slices: Slices, meshes: dict[int, Surface], path: str | Path) -> None:
    """`render.draw_preview`, importing matplotlib where it runs (a worker has it already)."""
    from heartvec.reconstruction.render import draw_preview as draw

    draw(slices, meshes, Path(path))
