"""Housekeeping that keeps jobs moving and storage bounded, run by every worker (and the
embedded service) in a loop: a running job whose worker died (no heartbeat) goes back to the
queue, or fails after too many attempts; a queued job whose message may have been lost (a broker
restart) has its message sent again; results and inputs older than the retention age are
removed; the worker's own heartbeat is recorded."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from heartvec.jobs.queue import Dispatcher
from heartvec.jobs.storage import Storage
from heartvec.jobs.store import JobStore, Recovery
from heartvec.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RecoveryPolicy:
    """Args:
    stale_after_s: a running job without a heartbeat for this long lost its worker.
    requeue_after_s: a queued job whose message is this old has it sent again.
    max_attempts: a job whose worker died this many times fails.
    interval_s: seconds between passes of `RecoveryLoop`.
    retention_s: finished jobs' inputs and results are removed after this long (the job row
        stays, with `results_expired_at` set).
    """

    stale_after_s: float = 60.0
    requeue_after_s: float = 300.0
    max_attempts: int = 3
    interval_s: float = 15.0
    retention_s: float = 7 * 24 * 3600.0

    @classmethod
    def from_settings(cls, settings: Settings) -> RecoveryPolicy:
        return cls(
            stale_after_s=settings.stale_after_s,
            requeue_after_s=settings.requeue_after_s,
            max_attempts=settings.max_attempts,
            interval_s=settings.recovery_interval_s,
            retention_s=settings.retention_s,
        )


def recover_jobs(store: JobStore, dispatcher: Dispatcher, policy: RecoveryPolicy) -> Recovery:
    """One pass: fix the store, then send the messages of the jobs put back in the queue."""
    recovery = store.recover(policy.stale_after_s, policy.requeue_after_s, policy.max_attempts)
    for job_id in recovery.requeued:
        log.warning("job %s: its worker died; queued again", job_id)
    for job_id in recovery.failed:
        log.error("job %s: failed after %d attempts", job_id, policy.max_attempts)
    for job_id in recovery.requeued + recovery.resend:
        dispatcher.send(job_id)
    return recovery


def expire_results(store: JobStore, storage: Storage, retention_s: float) -> list[str]:
    """Remove the inputs and results of jobs finished more than `retention_s` ago, and uploads
    abandoned for that long. Returns the expired job ids."""
    expired = store.expire(retention_s)
    for job_id, suffix in expired:
        storage.delete_job_files(job_id, suffix)
        log.info("job %s: input and results removed (older than %g s)", job_id, retention_s)
    storage.clean_incoming(min(retention_s, 24 * 3600.0))
    return [job_id for job_id, _ in expired]


class RecoveryLoop(threading.Thread):
    """Runs `recover_jobs` and `expire_results` every `policy.interval_s` until stopped, and
    records `worker_name`'s heartbeat. Several workers' loops race safely: each change is one
    conditional update."""

    def __init__(
        self,
        store: JobStore,
        storage: Storage,
        dispatcher: Dispatcher,
        policy: RecoveryPolicy,
        worker_name: str,
    ) -> None:
        super().__init__(name="job-recovery", daemon=True)
        self.store, self.storage, self.dispatcher = store, storage, dispatcher
        self.policy, self.worker_name = policy, worker_name
        self.stopped = threading.Event()

    def run(self) -> None:
        while True:
            try:
                self.store.worker_seen(self.worker_name)
                recover_jobs(self.store, self.dispatcher, self.policy)
                expire_results(self.store, self.storage, self.policy.retention_s)
            except Exception:  # the database or broker is away; try again next time
                log.warning("housekeeping pass failed", exc_info=True)
            if self.stopped.wait(self.policy.interval_s):
                return
