"""The Celery app of the workers (`celery -A heartvec_worker.app:celery_app ...`).

Per worker process: its own database engine and the model, loaded once (at fork, or at the
first job). In the main process: a recovery loop re-queueing jobs whose worker died and
re-sending messages a broker restart lost.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Task
from celery.signals import (
    setup_logging,
    task_postrun,
    task_prerun,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
)
from sqlalchemy.exc import OperationalError

from heartvec.jobs.database import make_engine
from heartvec.jobs.queue import TASK_NAME, CeleryDispatcher, make_celery
from heartvec.jobs.recovery import RecoveryLoop, RecoveryPolicy
from heartvec.jobs.runner import JobLimits, resolve_device, run_job
from heartvec.jobs.storage import LocalStorage
from heartvec.jobs.store import JobStore
from heartvec.logs import configure_logging, current_job
from heartvec.reconstruction.encoding import LoadedModel, load_model
from heartvec.reconstruction.hostwork import host_pool, shutdown_host_pool
from heartvec.reconstruction.pipeline import HOST_POOL_IMPORTS
from heartvec.settings import Settings

log = logging.getLogger(__name__)

settings = Settings()
celery_app = make_celery(settings.broker_url, settings.job_time_limit_s)


class _Process:
    """What one worker process holds (rebuilt after a fork: connections are not shared)."""

    store: JobStore | None = None
    storage: LocalStorage | None = None
    model: LoadedModel | None = None
    recovery: RecoveryLoop | None = None

    def ensure(self) -> tuple[JobStore, LocalStorage, LoadedModel]:
        if self.store is None:
            self.store = JobStore(make_engine(settings.database_url, pre_ping=True))
        if self.storage is None:
            self.storage = LocalStorage(settings.storage_dir)
        if self.model is None:
            device = resolve_device(settings.device)
            self.model = load_model(settings.checkpoint, device)
            log.info("model %s loaded on %s", settings.checkpoint.name, device)
            host_pool(HOST_POOL_IMPORTS)  # on a host of many cores: its workers start now
        return self.store, self.storage, self.model


process = _Process()


@worker_process_init.connect
def _start_child(**_: Any) -> None:
    if process.store is not None:  # the parent's pool: leave its sockets to the parent
        process.store.engine.dispose(close=False)
    process.store = process.recovery = None
    process.ensure()


@worker_process_shutdown.connect
def _stop_child(**_: Any) -> None:
    shutdown_host_pool()  # its workers and semaphores, before the child's own exit


@setup_logging.connect
def _logging(**_: Any) -> None:
    """heartvec's own logging (JSON lines with the job id) instead of Celery's."""
    configure_logging(settings.log_format == "json")


@task_prerun.connect
def _tag_job(args: tuple[Any, ...] | None = None, **_: Any) -> None:
    if args:
        current_job.set(str(args[0]))


@task_postrun.connect
def _untag_job(**_: Any) -> None:
    current_job.set(None)


@worker_ready.connect
def _start_recovery(sender: Any = None, **_: Any) -> None:
    store = JobStore(make_engine(settings.database_url, pre_ping=True))
    process.recovery = RecoveryLoop(
        store,
        LocalStorage(settings.storage_dir),
        CeleryDispatcher(celery_app),
        RecoveryPolicy.from_settings(settings),
        worker_name=str(getattr(sender, "hostname", "worker")),
    )
    process.recovery.start()


@worker_shutdown.connect
def _stop_recovery(**_: Any) -> None:
    if process.recovery is not None:
        process.recovery.stopped.set()


@celery_app.task(
    name=TASK_NAME,
    bind=True,
    autoretry_for=(OperationalError,),
    retry_backoff=True,
    retry_backoff_max=60,
    max_retries=10,
)
def reconstruct_job(self: Task, job_id: str) -> str | None:
    """Run one job by id (a no-op when it is no longer queued)."""
    store, storage, model = process.ensure()
    limits = JobLimits(settings.job_time_limit_s, settings.heartbeat_s)
    status = run_job(job_id, store, storage, model, str(self.request.hostname), limits)
    return None if status is None else status.value
