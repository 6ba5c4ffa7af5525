"""The job store: every state change of a job, each as one conditional UPDATE so that several
API processes, workers and recovery loops can race without a lock.

A worker's claim is a lease: it bumps `attempts`, and every later write of that worker names its
attempt; a write whose attempt is no longer the row's (the job was re-queued meanwhile) changes
nothing and raises `LeaseLost`, so a presumed-dead worker that wakes up cannot overwrite anything.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from types import EllipsisType
from typing import Any, cast

from sqlalchemy import CursorResult, Engine, func, or_, select, tuple_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from heartvec.jobs.models import FINISHED, Job, JobStatus, StageStat, Worker, utcnow


class LeaseLost(Exception):
    """The job was re-queued or finished by someone else since this worker claimed it."""


class BadCursor(ValueError):
    """A listing cursor that this store did not issue."""


@dataclass(frozen=True)
class Recovery:
    """What one recovery pass did: jobs re-queued (their worker died), failed (too many
    attempts) and re-sent (queued too long: the message may have been lost)."""

    requeued: list[str]
    failed: list[str]
    resend: list[str]


class JobStore:
    """Jobs in a SQL database (Postgres in production, SQLite in embedded mode)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._reads = engine.execution_options(isolation_level="AUTOCOMMIT")  # no BEGIN/ROLLBACK

    def session(self) -> Session:
        return self._sessions()

    # --- the API's side -----------------------------------------------------------------------

    def create(
        self,
        job_id: str,
        options: dict[str, Any],
        input_info: dict[str, Any],
        idempotency_key: str | None = None,
    ) -> tuple[Job, bool]:
        """Insert a queued job; with an idempotency key already used, the existing job.

        Returns:
            (job, created): created is False when the key was already used.
        """
        now = utcnow()
        job = Job(
            id=job_id,
            status=JobStatus.QUEUED.value,
            progress=0.0,
            attempts=0,
            cancel_requested=False,
            options=options,
            input=input_info,
            idempotency_key=idempotency_key,
            created_at=now,
            enqueued_at=now,
        )
        with self.session() as session:
            session.add(job)
            try:
                session.commit()
                return job, True
            except IntegrityError:
                session.rollback()
                if idempotency_key is None:
                    raise
        existing = self.by_idempotency_key(idempotency_key)
        assert existing is not None, "unique violation without a row holding the key"
        return existing, False

    def get(self, job_id: str) -> Job | None:
        """The job, detached (a plain query: status polling is the hottest path of the API)."""
        with self._reads.connect() as connection:
            row = connection.execute(select(*Job.__table__.columns).where(Job.id == job_id))
            found = row.mappings().first()
        return None if found is None else Job(**found)

    def by_idempotency_key(self, key: str) -> Job | None:
        with self.session() as session:
            return session.scalars(select(Job).where(Job.idempotency_key == key)).first()

    def list_jobs(
        self, status: str | None = None, limit: int = 50, cursor: str | None = None
    ) -> tuple[list[Job], str | None]:
        """Newest first; `cursor` continues after the last job of the previous page.

        Returns:
            (jobs, next cursor or None on the last page).
        """
        query = select(Job).order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)
        if status is not None:
            query = query.where(Job.status == status)
        if cursor is not None:
            created_at, job_id = _decode_cursor(cursor)
            query = query.where(tuple_(Job.created_at, Job.id) < tuple_(created_at, job_id))
        with self.session() as session:
            jobs = list(session.scalars(query))
        more = len(jobs) > limit
        jobs = jobs[:limit]
        return jobs, _encode_cursor(jobs[-1]) if more else None

    def cancel(self, job_id: str) -> Job | None:
        """A queued job is cancelled at once; a running one is asked to stop (its worker stops
        between stages); a finished one is left as it is."""
        now = utcnow()
        with self.session() as session, session.begin():
            session.execute(
                update(Job)
                .where(Job.id == job_id, Job.status == JobStatus.QUEUED.value)
                .values(status=JobStatus.CANCELLED.value, finished_at=now, cancel_requested=True)
            )
            session.execute(
                update(Job)
                .where(Job.id == job_id, Job.status == JobStatus.RUNNING.value)
                .values(cancel_requested=True)
            )
        return self.get(job_id)

    def counts(self) -> dict[str, int]:
        """Jobs per status (every status present, zeros included)."""
        with self.session() as session:
            rows = session.execute(select(Job.status, func.count()).group_by(Job.status)).all()
        counts = {s.value: 0 for s in JobStatus}
        counts.update({status: int(n) for status, n in rows})
        return counts

    # --- the worker's side --------------------------------------------------------------------

    def claim(self, job_id: str, worker: str) -> int | None:
        """Start a queued job. Returns the attempt number (the lease), or None when the job is
        not queued (already taken by another message, cancelled, finished or unknown)."""
        now = utcnow()
        with self.session() as session, session.begin():
            attempt = session.execute(
                update(Job)
                .where(
                    Job.id == job_id,
                    Job.status == JobStatus.QUEUED.value,
                    Job.cancel_requested.is_(False),
                )
                .values(
                    status=JobStatus.RUNNING.value,
                    attempts=Job.attempts + 1,
                    started_at=now,
                    heartbeat_at=now,
                    worker=worker,
                    stage=None,
                    progress=0.0,
                    error=None,
                )
                .returning(Job.attempts)
            ).scalar_one_or_none()
        return attempt

    def heartbeat(self, job_id: str, attempt: int) -> bool:
        """Record that the worker is alive. Returns whether cancellation was requested.

        Raises:
            LeaseLost: the job is no longer this attempt's.
        """
        return self._running_update(job_id, attempt, heartbeat_at=utcnow())

    def set_stage(self, job_id: str, attempt: int, stage: str, progress: float) -> bool:
        """Record the stage now running and the overall fraction done. Returns whether
        cancellation was requested.

        Raises:
            LeaseLost: the job is no longer this attempt's.
        """
        return self._running_update(
            job_id, attempt, stage=stage, progress=progress, heartbeat_at=utcnow()
        )

    def finish(
        self,
        job_id: str,
        attempt: int,
        status: JobStatus,
        error: str | None = None,
        metrics: dict[str, Any] | None = None,
        results: Sequence[dict[str, Any]] | None = None,
    ) -> None:
        """End this attempt with a final status.

        Raises:
            LeaseLost: the job is no longer this attempt's.
        """
        assert status in FINISHED
        values: dict[str, Any] = {"status": status.value, "finished_at": utcnow(), "error": error}
        if status is JobStatus.SUCCEEDED:
            values.update(progress=1.0, stage="done", metrics=metrics, results=list(results or []))
        self._running_update(job_id, attempt, **values)

    def _running_update(self, job_id: str, attempt: int, **values: Any) -> bool:
        with self.session() as session, session.begin():
            cancel = session.execute(
                update(Job)
                .where(
                    Job.id == job_id,
                    Job.attempts == attempt,
                    Job.status == JobStatus.RUNNING.value,
                )
                .values(**values)
                .returning(Job.cancel_requested)
            ).scalar_one_or_none()
        if cancel is None:
            raise LeaseLost(f"job {job_id}: attempt {attempt} no longer holds it")
        return bool(cancel)

    # --- recovery -----------------------------------------------------------------------------

    def recover(self, stale_after_s: float, requeue_after_s: float, max_attempts: int) -> Recovery:
        """Find jobs whose worker died (running, no heartbeat for `stale_after_s`): re-queue
        them, or fail them after `max_attempts`; and queued jobs whose message is older than
        `requeue_after_s` (marked as re-sent now; the caller sends their messages)."""
        now = utcnow()
        stale = now - timedelta(seconds=stale_after_s)
        requeued: list[str] = []
        failed: list[str] = []
        with self.session() as session:
            dead = session.execute(
                select(Job.id, Job.attempts, Job.stage, Job.worker).where(
                    Job.status == JobStatus.RUNNING.value,
                    or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < stale),
                )
            ).all()
        for job_id, attempts, stage, worker in dead:
            if attempts >= max_attempts:
                values: dict[str, Any] = {
                    "status": JobStatus.FAILED.value,
                    "finished_at": now,
                    "error": f"the worker died during each of {attempts} attempts (last: "
                    f"{worker}, stage {stage}); not retried after max_attempts={max_attempts}",
                }
            else:
                values = {
                    "status": JobStatus.QUEUED.value,
                    "stage": None,
                    "progress": 0.0,
                    "worker": None,
                    "enqueued_at": now,
                }
            with self.session() as session, session.begin():
                changed = session.execute(
                    update(Job)
                    .where(
                        Job.id == job_id,
                        Job.attempts == attempts,
                        Job.status == JobStatus.RUNNING.value,
                        or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < stale),
                    )
                    .values(**values)
                    .returning(Job.id)
                ).scalar_one_or_none()
            if changed is not None:
                (failed if attempts >= max_attempts else requeued).append(job_id)
        resend = self._mark_resent(now, now - timedelta(seconds=requeue_after_s))
        return Recovery(requeued=requeued, failed=failed, resend=resend)

    def _mark_resent(self, now: datetime, older_than: datetime) -> list[str]:
        with self.session() as session, session.begin():
            rows = session.execute(
                update(Job)
                .where(Job.status == JobStatus.QUEUED.value, Job.enqueued_at < older_than)
                .values(enqueued_at=now)
                .returning(Job.id)
            ).all()
        return [job_id for (job_id,) in rows]

    # --- operations ---------------------------------------------------------------------------

    def record_stage_timings(self, timings: dict[str, float]) -> None:
        """Add one succeeded job's stage durations (seconds) to the running totals."""
        for stage, seconds in timings.items():
            self._upsert(
                update(StageStat)
                .where(StageStat.stage == stage)
                .values(count=StageStat.count + 1, total_s=StageStat.total_s + seconds),
                partial(StageStat, stage=stage, count=1, total_s=seconds),
            )

    def stage_totals(self) -> dict[str, tuple[int, float]]:
        """stage -> (succeeded jobs, total seconds)."""
        with self.session() as session:
            return {s.stage: (s.count, s.total_s) for s in session.scalars(select(StageStat))}

    def worker_seen(self, name: str, current_job: str | EllipsisType | None = ...) -> None:
        """A worker's heartbeat, and the job it runs now (None: idle; `...`: unchanged)."""
        now = utcnow()
        values: dict[str, Any] = {"last_seen_at": now}
        if current_job is not ...:
            values["current_job"] = current_job
        self._upsert(
            update(Worker).where(Worker.name == name).values(**values),
            lambda: Worker(name=name, last_seen_at=now, current_job=values.get("current_job")),
        )

    def workers(self) -> list[Worker]:
        with self.session() as session:
            return list(session.scalars(select(Worker).order_by(Worker.name)))

    def _upsert(self, change: Any, make_row: Callable[[], Any]) -> None:
        """Update a row, or insert it when absent (portable: no dialect-specific upsert)."""
        for _ in range(3):
            with self.session() as session, session.begin():
                if cast(CursorResult[Any], session.execute(change)).rowcount:
                    return
            try:
                with self.session() as session, session.begin():
                    session.add(make_row())
                return
            except IntegrityError:  # inserted meanwhile by someone else: update it then
                continue
        raise RuntimeError("upsert kept colliding")

    def expire(self, older_than_s: float) -> list[tuple[str, str]]:
        """Mark finished jobs older than `older_than_s` as expired (their results and input are
        to be deleted). Returns [(job id, input suffix)] of the jobs marked now."""
        now = utcnow()
        cutoff = now - timedelta(seconds=older_than_s)
        with self.session() as session, session.begin():
            rows = session.execute(
                update(Job)
                .where(
                    Job.status.in_([s.value for s in FINISHED]),
                    Job.finished_at < cutoff,
                    Job.results_expired_at.is_(None),
                )
                .values(results_expired_at=now, results=[])
                .returning(Job.id, Job.input)
            ).all()
        return [(job_id, str(info.get("suffix", ""))) for job_id, info in rows]

    def queued_ids(self) -> list[str]:
        """Queued jobs, oldest first (the embedded worker's queue after a restart)."""
        with self.session() as session:
            query = select(Job.id).where(Job.status == JobStatus.QUEUED.value)
            return list(session.scalars(query.order_by(Job.created_at, Job.id)))


def _encode_cursor(job: Job) -> str:
    raw = json.dumps([job.created_at.isoformat(), job.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, job_id = json.loads(raw)
        return datetime.fromisoformat(created_at), str(job_id)
    except (ValueError, TypeError) as e:
        raise BadCursor(f"invalid cursor {cursor!r}") from e
