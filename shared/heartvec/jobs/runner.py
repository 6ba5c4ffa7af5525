"""`run_job`: the one job function. The Celery task and the embedded worker both call it; it
claims the job, runs the same `reconstruct(...)` as the command line, reports each stage as
progress, honours cancellation between stages, and publishes the results.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy.exc import OperationalError

from heartvec.errors import HeartvecError
from heartvec.jobs.models import JobStatus
from heartvec.jobs.storage import Storage
from heartvec.jobs.store import JobStore, LeaseLost
from heartvec.labels import load_label_table
from heartvec.logs import current_job, job_context
from heartvec.reconstruction.encoding import LoadedModel
from heartvec.reconstruction.options import ReconstructOptions
from heartvec.reconstruction.pipeline import ReconstructSettings, reconstruct
from heartvec.reconstruction.refine import RefineSettings

log = logging.getLogger(__name__)
T = TypeVar("T")


class JobCancelled(Exception):
    """Raised between stages when the job's cancellation was requested."""


class JobTimedOut(Exception):
    """Raised between stages when the job ran past its time limit."""


@dataclass(frozen=True)
class JobLimits:
    """Args:
    time_limit_s: a job still running after this long fails (checked between stages).
    heartbeat_s: seconds between signs of life while a stage runs.
    """

    time_limit_s: float = 1800.0
    heartbeat_s: float = 5.0


class _Heartbeat(threading.Thread):
    """Keeps the job's heartbeat fresh while a long stage runs; notices cancellation and a lost
    lease so the next stage boundary can act on them."""

    def __init__(
        self, store: JobStore, job_id: str, attempt: int, worker: str, interval_s: float
    ) -> None:
        super().__init__(name=f"heartbeat-{job_id}", daemon=True)
        self.store, self.job_id, self.attempt, self.interval_s = store, job_id, attempt, interval_s
        self.worker = worker
        self.stopped = threading.Event()
        self.cancel_requested = False
        self.lease_lost = False

    def run(self) -> None:
        current_job.set(self.job_id)
        while not self.stopped.wait(self.interval_s):
            try:
                self.cancel_requested = self.store.heartbeat(self.job_id, self.attempt)
                self.store.worker_seen(self.worker, self.job_id)
            except LeaseLost:
                self.lease_lost = True
                return
            except Exception:  # a database hiccup: the next beat tries again
                log.warning("job %s: heartbeat failed", self.job_id, exc_info=True)

    def stop(self) -> None:
        """Stop beating and wait for a beat in flight, so none lands after this returns (a late
        beat would mark the worker busy again after it went idle)."""
        self.stopped.set()
        if self.is_alive() and self is not threading.current_thread():
            self.join(timeout=self.interval_s + 10.0)


def resolve_device(name: str) -> str:
    """'auto' -> 'cuda' when a GPU is visible, else 'cpu'; other names unchanged."""
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def run_job(
    job_id: str,
    store: JobStore,
    storage: Storage,
    model: LoadedModel,
    worker: str,
    limits: JobLimits = JobLimits(),
) -> JobStatus | None:
    """Run one job if it is still queued (every log line meanwhile carries its id).

    Returns:
        the job's final status, or None when this call did not run it (taken by another
        message, cancelled while queued, or re-queued from under this worker).
    """
    with job_context(job_id):
        return _run_claimed(job_id, store, storage, model, worker, limits)


def _run_claimed(
    job_id: str,
    store: JobStore,
    storage: Storage,
    model: LoadedModel,
    worker: str,
    limits: JobLimits,
) -> JobStatus | None:
    attempt = store.claim(job_id, worker)
    if attempt is None:
        log.info("job %s: not queued any more, nothing to do", job_id)
        return None
    job = store.get(job_id)
    assert job is not None
    log.info("job %s: attempt %d on %s", job_id, attempt, worker)
    work_dir = storage.work_dir(job_id, attempt)
    heartbeat = _Heartbeat(store, job_id, attempt, worker, limits.heartbeat_s)
    _best_effort(lambda: store.worker_seen(worker, job_id))
    heartbeat.start()
    deadline = time.monotonic() + limits.time_limit_s
    idle = False

    def stand_down() -> None:
        """Stop the heartbeat and mark the worker idle; called before the final status is
        written, so whoever sees the job finished also sees its worker free."""
        nonlocal idle
        heartbeat.stop()
        if not idle:
            _best_effort(lambda: store.worker_seen(worker, None))
            idle = True

    def progress(stage: str, fraction: float) -> None:
        if heartbeat.lease_lost:
            raise LeaseLost(f"job {job_id}: re-queued while attempt {attempt} ran")
        cancel = _retrying(lambda: store.set_stage(job_id, attempt, stage, fraction))
        if cancel or heartbeat.cancel_requested:
            raise JobCancelled(f"cancelled before stage {stage}")
        if time.monotonic() > deadline:
            raise JobTimedOut(
                f"time limit of {limits.time_limit_s:g} s exceeded (before stage {stage})"
            )

    try:
        options = ReconstructOptions.parse(job.options, f"job {job_id}'s options")
        report = reconstruct(
            storage.input_path(job_id, job.input["suffix"]),
            work_dir,
            load_label_table(options.labels),
            model,
            ReconstructSettings(
                resolution=options.resolution,
                refine=RefineSettings(
                    steps=options.refine_steps, points_per_step=options.refine_points
                ),
                frame_search=options.frame_search,
                device=str(model.device),
            ),
            options.ignore_unknown_labels,
            progress,
        )
        results = storage.publish_results(job_id, work_dir)
        stand_down()
        _retrying(
            lambda: store.finish(
                job_id, attempt, JobStatus.SUCCEEDED, metrics=_metrics(report), results=results
            )
        )
        log.info("job %s: succeeded (attempt %d, %d result files)", job_id, attempt, len(results))
        _record_timings(store, report["timings"])
        return JobStatus.SUCCEEDED
    except LeaseLost:
        log.warning("job %s: attempt %d lost its lease; its outputs are dropped", job_id, attempt)
        storage.discard(work_dir)
        return None
    except JobCancelled as e:
        return _end(
            store, storage, job_id, attempt, work_dir, JobStatus.CANCELLED, str(e), stand_down
        )
    except (HeartvecError, JobTimedOut) as e:
        return _end(store, storage, job_id, attempt, work_dir, JobStatus.FAILED, str(e), stand_down)
    except Exception as e:
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            log.error("job %s: storage full: %s", job_id, e)
            error = f"not enough storage space for the results ({e.strerror}); nothing was kept"
        else:
            log.exception("job %s: attempt %d failed", job_id, attempt)
            error = f"internal error: {type(e).__name__}: {e}"
        return _end(store, storage, job_id, attempt, work_dir, JobStatus.FAILED, error, stand_down)
    finally:
        stand_down()


def _end(
    store: JobStore,
    storage: Storage,
    job_id: str,
    attempt: int,
    work_dir: Path,
    status: JobStatus,
    error: str,
    stand_down: Callable[[], None],
) -> JobStatus | None:
    storage.discard(work_dir)
    stand_down()
    try:
        _retrying(lambda: store.finish(job_id, attempt, status, error=error))
    except LeaseLost:
        return None
    log.info("job %s: %s (%s)", job_id, status.value, error)
    return status


def _retrying(write: Callable[[], T], patience_s: float = 60.0) -> T:
    """A store write, tried again while the database is unreachable (a restart takes seconds);
    after `patience_s` the error propagates and recovery re-queues the job later."""
    deadline, delay = time.monotonic() + patience_s, 0.5
    while True:
        try:
            return write()
        except OperationalError:
            if time.monotonic() > deadline:
                raise
            log.warning("job store unreachable; retrying in %.1f s", delay)
            time.sleep(delay)
            delay = min(2 * delay, 5.0)


def _best_effort(write: Callable[[], object]) -> None:
    """Bookkeeping that must not fail a job (worker heartbeats for /metrics)."""
    try:
        write()
    except Exception:
        log.warning("worker bookkeeping not recorded", exc_info=True)


def _record_timings(store: JobStore, timings: dict[str, float]) -> None:
    try:
        store.record_stage_timings(
            {k.removesuffix("_s"): v for k, v in timings.items() if k != "total_s"}
        )
    except Exception:  # statistics only: the job itself succeeded
        log.warning("stage timings not recorded", exc_info=True)


def _metrics(report: dict[str, Any]) -> dict[str, Any]:
    """What the job row keeps of the report (the whole report is a result file)."""
    return {
        "summary": report["summary"],
        "classes": report["classes"],
        "timings": report["timings"],
        "peak_memory_mb": report["peak_memory_mb"],
        "device": report["device"],
        "model": report["model"],
        "refinement": None
        if report["refinement"] is None
        else {
            k: report["refinement"][k]
            for k in ("steps", "mean_held_out_iou_before", "mean_held_out_iou_after")
        },
        "frame_search": None
        if report["frame_search"] is None
        else {
            k: report["frame_search"][k]
            for k in ("shift_mm", "scale_factor", "centred_score", "score", "frames")
        },
    }
