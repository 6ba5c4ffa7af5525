"""Finding jobs that would otherwise be stuck: a running job whose worker died (no heartbeat)
goes back to the queue, or fails after too many attempts; a queued job whose message may have
been lost (a broker restart) has its message sent again."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from heartvec.jobs.queue import Dispatcher
from heartvec.jobs.store import JobStore, Recovery

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RecoveryPolicy:
    """Args:
    stale_after_s: a running job without a heartbeat for this long lost its worker.
    requeue_after_s: a queued job whose message is this old has it sent again.
    max_attempts: a job whose worker died this many times fails.
    interval_s: seconds between passes of `RecoveryLoop`.
    """

    stale_after_s: float = 60.0
    requeue_after_s: float = 300.0
    max_attempts: int = 3
    interval_s: float = 15.0


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


class RecoveryLoop(threading.Thread):
    """Runs `recover_jobs` every `policy.interval_s` until stopped (a worker runs one; several
    workers' loops race safely, each change being one conditional update)."""

    def __init__(self, store: JobStore, dispatcher: Dispatcher, policy: RecoveryPolicy) -> None:
        super().__init__(name="job-recovery", daemon=True)
        self.store, self.dispatcher, self.policy = store, dispatcher, policy
        self.stopped = threading.Event()

    def run(self) -> None:
        while True:
            try:
                recover_jobs(self.store, self.dispatcher, self.policy)
            except Exception:  # the database or broker is away; try again next time
                log.warning("job recovery pass failed", exc_info=True)
            if self.stopped.wait(self.policy.interval_s):
                return
