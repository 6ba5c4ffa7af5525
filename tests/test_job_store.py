"""The job store's state changes on both databases it runs on (Postgres for the service, SQLite
for the embedded mode): claims are leases, recovery re-queues dead workers' jobs, paging."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from types import EllipsisType

import pytest
from sqlalchemy import update

from heartvec.jobs.database import make_engine, migrate
from heartvec.jobs.models import Job, JobStatus, new_job_id, utcnow
from heartvec.jobs.runner import _Heartbeat
from heartvec.jobs.store import JobStore, LeaseLost
from heartvec_testing.services import postgres_database

OPTIONS = {"labels": "default", "ignore_unknown_labels": False, "resolution": 64,
           "refine_steps": 0}  # fmt: skip


@pytest.fixture(params=["postgres", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[JobStore]:
    if request.param == "postgres":
        with postgres_database() as url:
            engine = make_engine(url)
            migrate(engine)
            migrate(engine)  # start-up runs it every time: a no-op the second time
            yield JobStore(engine)
            engine.dispose()
    else:
        engine = make_engine(f"sqlite:///{tmp_path / 'jobs.db'}")
        migrate(engine)
        yield JobStore(engine)
        engine.dispose()


def _queued(store: JobStore, key: str | None = None) -> str:
    job, _ = store.create(new_job_id(), OPTIONS, {"suffix": ".nii.gz"}, key)
    return job.id


def test_only_one_of_many_concurrent_claims_wins(store: JobStore) -> None:
    job_id = _queued(store)
    attempts: list[int | None] = []
    threads = [
        threading.Thread(target=lambda i=i: attempts.append(store.claim(job_id, f"w{i}")))
        for i in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(attempts, key=lambda a: a or 0) == [None] * 7 + [1]
    job = store.get(job_id)
    assert job is not None and job.status == "running" and job.attempts == 1


def test_a_requeued_job_is_no_longer_the_old_attempts(store: JobStore) -> None:
    job_id = _queued(store)
    first = store.claim(job_id, "old")
    assert first == 1
    _silence(store, job_id, seconds=120)
    recovery = store.recover(stale_after_s=60, requeue_after_s=3600, max_attempts=3)
    assert recovery.requeued == [job_id] and recovery.failed == []
    second = store.claim(job_id, "new")
    assert second == 2
    with pytest.raises(LeaseLost):
        store.set_stage(job_id, first, "decode", 0.5)  # the old worker woke up: refused
    with pytest.raises(LeaseLost):
        store.finish(job_id, first, JobStatus.SUCCEEDED, results=[])
    store.finish(job_id, second, JobStatus.SUCCEEDED, metrics={"m": 1}, results=[])
    job = store.get(job_id)
    assert job is not None and job.status == "succeeded" and job.worker == "new"


def test_recovery_fails_a_job_after_max_attempts_and_spares_live_ones(store: JobStore) -> None:
    dead, alive = _queued(store), _queued(store)
    for attempt in (1, 2):
        assert store.claim(dead, "w") == attempt
        _silence(store, dead, seconds=120)
        store.recover(stale_after_s=60, requeue_after_s=3600, max_attempts=2)
    store.claim(alive, "w")
    store.heartbeat(alive, 1)
    store.recover(stale_after_s=60, requeue_after_s=3600, max_attempts=2)
    failed, running = store.get(dead), store.get(alive)
    assert failed is not None and failed.status == "failed" and "2 attempts" in str(failed.error)
    assert running is not None and running.status == "running"


def test_queued_jobs_with_old_messages_are_resent_once_per_period(store: JobStore) -> None:
    old, fresh = _queued(store), _queued(store)
    with store.session() as session, session.begin():
        session.execute(
            update(Job).where(Job.id == old).values(enqueued_at=utcnow() - timedelta(hours=1))
        )
    assert store.recover(60, requeue_after_s=300, max_attempts=3).resend == [old]
    assert store.recover(60, requeue_after_s=300, max_attempts=3).resend == []
    assert fresh in store.queued_ids()


def test_cancel_stops_queued_at_once_and_flags_running(store: JobStore) -> None:
    queued, running = _queued(store), _queued(store)
    attempt = store.claim(running, "w")
    assert attempt is not None
    assert store.cancel(queued).status == "cancelled"  # type: ignore[union-attr]
    assert store.claim(queued, "w") is None
    assert store.cancel(running).status == "running"  # type: ignore[union-attr]
    assert store.set_stage(running, attempt, "decode", 0.4) is True


def test_paging_is_newest_first_without_gaps_or_repeats(store: JobStore) -> None:
    ids = [_queued(store) for _ in range(7)]
    with store.session() as session, session.begin():  # ties on created_at break by id
        session.execute(update(Job).where(Job.id.in_(ids[2:5])).values(created_at=utcnow()))
    seen, cursor = [], None
    while True:
        page, cursor = store.list_jobs(limit=3, cursor=cursor)
        seen += [j.id for j in page]
        if cursor is None:
            break
    assert sorted(seen) == sorted(ids) and len(seen) == len(set(seen))
    everything, _ = store.list_jobs(limit=100)
    assert [j.id for j in everything] == seen


def test_an_idempotency_key_maps_to_one_job(store: JobStore) -> None:
    first = _queued(store, key="k1")
    again, created = store.create(new_job_id(), OPTIONS, {"suffix": ".nii"}, "k1")
    assert not created and again.id == first
    assert store.counts()["queued"] == 1


def _silence(store: JobStore, job_id: str, seconds: float) -> None:
    """Make a running job's last heartbeat `seconds` old (its worker went quiet)."""
    with store.session() as session, session.begin():
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(heartbeat_at=utcnow() - timedelta(seconds=seconds))
        )


class _SlowBeats(JobStore):
    """A store whose busy-worker writes take a while, so a heartbeat is in flight when the job
    ends (the race that left a finished worker showing busy in /metrics)."""

    def worker_seen(self, name: str, current_job: str | EllipsisType | None = ...) -> None:
        if isinstance(current_job, str):
            time.sleep(0.2)
        super().worker_seen(name, current_job)


def test_a_stopped_heartbeat_never_marks_the_worker_busy_again(store: JobStore) -> None:
    slow = _SlowBeats(store.engine)
    job_id = _queued(slow)
    attempt = slow.claim(job_id, "w1")
    assert attempt == 1
    heartbeat = _Heartbeat(slow, job_id, attempt, "w1", interval_s=0.01)
    heartbeat.start()
    time.sleep(0.05)  # a beat is now inside its slow write
    heartbeat.stop()
    slow.worker_seen("w1", None)
    time.sleep(0.3)  # long enough for a beat that was not waited for to land
    assert not heartbeat.is_alive()
    assert [(w.name, w.current_job) for w in slow.workers()] == [("w1", None)]
