"""A pool of spawned processes for the reconstruction's CPU work that holds the GIL, beside the
device's work on hosts with many cores, and `Deferred`: a job's result from the pool, or
computed inline where there is none.

Marching cubes and stray pieces, the refinement's exact distances and the preview's drawing
run on numpy, scikit-image and matplotlib, which hold the GIL, so threads do not spread them; a
pool runs them a class per process and overlaps the refinement's distances with encoding. A
process that keeps its model starts one (`host_pool`: the worker and the embedded service do,
after loading it) and the pipeline uses it (`running_host_pool`). A one-volume run does not:
spawning the workers costs more than they save for one volume, and spawned workers import the
caller's main module, which a library caller would have to guard. Without a pool (those, fewer
than MIN_CORES cores, `HEARTVEC_HOST_WORKERS=0`) the same functions run in this process with
the same results. The jobs live in modules without torch (`class_mesh`, `refine_targets`,
`render`), so a worker starts in a fraction of a second.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from importlib import import_module
from multiprocessing import process as mp_process
from typing import Any, TypeVar

from heartvec.resources import available_cpus

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


def _start_worker(modules: tuple[str, ...]) -> None:
    """Each worker's start: end it when its parent ends (a killed Celery job process would
    otherwise leave it waiting for tasks: it holds its task pipe's both ends), and import
    `modules` (what the jobs use) while the parent loads the volume and the model."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK_S)
        os._exit(0)

    threading.Thread(target=watch, name="heartvec-parent-watch", daemon=True).start()
    for module in modules:
        import_module(module)


def _ready() -> None:
    """A no-op task: submitting one per worker makes a spawning pool start them all."""


def host_pool(imports: Sequence[str] = ()) -> ProcessPoolExecutor | None:
    """The process's pool, started on first use (its workers spawn and import `imports`, the
    jobs' modules, at once, in the background), or None where there is none (`host_workers` is
    0, or it could not start).

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
                    initargs=(tuple(imports),),
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
