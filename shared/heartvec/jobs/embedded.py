"""The embedded worker of `heartvec serve --embedded`: a thread in the API process running the
same `run_job` as the Celery workers, fed by an in-process queue instead of a broker."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

from heartvec.jobs.runner import JobLimits, run_job
from heartvec.jobs.storage import Storage
from heartvec.jobs.store import JobStore
from heartvec.reconstruction.encoding import LoadedModel
from heartvec.reconstruction.hostwork import host_pool
from heartvec.reconstruction.pipeline import HOST_POOL_IMPORTS

log = logging.getLogger(__name__)

_STOP = ""


class EmbeddedWorker(threading.Thread):
    """Runs jobs one at a time; also the API's dispatcher (`send`).

    Args:
        load_model: called once, in this thread, before the first job.
        limits: time limit and heartbeat interval of each job.
    """

    def __init__(
        self,
        store: JobStore,
        storage: Storage,
        load_model: Callable[[], LoadedModel],
        limits: JobLimits,
    ) -> None:
        super().__init__(name="embedded-worker", daemon=True)
        self.store, self.storage, self.limits = store, storage, limits
        self.load_model = load_model
        self.jobs: queue.Queue[str] = queue.Queue()

    def send(self, job_id: str) -> None:
        self.jobs.put(job_id)

    def resume(self, max_attempts: int) -> None:
        """After a restart: jobs left running by the previous process go back to the queue (or
        fail after `max_attempts`), and every queued job is queued here."""
        self.store.recover(stale_after_s=0.0, requeue_after_s=1e9, max_attempts=max_attempts)
        for job_id in self.store.queued_ids():
            self.send(job_id)

    def queue_length(self) -> int:
        return self.jobs.qsize()

    def raise_unless_alive(self) -> None:
        """Readiness: raise when the worker thread has stopped."""
        if not self.is_alive():
            raise RuntimeError("the embedded worker thread has stopped")

    def stop(self, timeout_s: float | None = None) -> None:
        """Finish the job in hand, then stop."""
        self.jobs.put(_STOP)
        self.join(timeout_s)

    def run(self) -> None:
        model = self.load_model()
        host_pool(HOST_POOL_IMPORTS)  # on a host of many cores: its workers start now
        while (job_id := self.jobs.get()) != _STOP:
            try:
                run_job(job_id, self.store, self.storage, model, "embedded", self.limits)
            except Exception:  # the store is unreachable: the job stays queued or running
                log.exception("job %s: could not be run", job_id)
