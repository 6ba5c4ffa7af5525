"""The message side: the Celery app both the API (producer) and the workers (consumers) build
from the same settings, and the dispatchers the API hands job ids to.

Messages carry only a job id; the worker re-reads the job from the store. A message may be
delivered twice (a re-send after a broker restart, a redelivery after a worker died): the
store's claim lets exactly one of them run the job.
"""

from __future__ import annotations

from typing import Protocol

from celery import Celery
from kombu import Queue

TASK_NAME = "heartvec.reconstruct"
QUEUE = "reconstruct"


class Dispatcher(Protocol):
    def send(self, job_id: str) -> None:
        """Ask a worker to run the job (after its row is committed)."""
        ...

    def queue_length(self) -> int:
        """Messages waiting to be taken by a worker."""
        ...


def make_celery(broker_url: str, job_time_limit_s: float = 1800.0) -> Celery:
    """The Celery app: one durable queue, late acknowledgement (a message is acked only after
    its job ran, so a killed worker's message is delivered again), one message at a time per
    worker process, and a time limit."""
    app = Celery("heartvec", broker=broker_url)
    app.conf.update(
        task_queues=[Queue(QUEUE, routing_key=QUEUE, durable=True)],
        task_default_queue=QUEUE,
        task_routes={TASK_NAME: {"queue": QUEUE}},
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_ignore_result=True,
        worker_prefetch_multiplier=1,
        worker_concurrency=1,
        worker_hijack_root_logger=False,
        task_soft_time_limit=job_time_limit_s + 30,
        task_time_limit=job_time_limit_s + 90,
        broker_connection_retry_on_startup=True,
        broker_transport_options={"visibility_timeout": 4 * 3600},
        task_serializer="json",
        accept_content=["json"],
    )
    return app


class CeleryDispatcher:
    """Sends job ids to the Celery queue."""

    def __init__(self, app: Celery) -> None:
        self.app = app

    def send(self, job_id: str) -> None:
        self.app.send_task(TASK_NAME, args=[job_id], queue=QUEUE)

    def queue_length(self) -> int:
        """Messages waiting in the broker's queue."""
        with self.app.connection_for_read() as connection:
            declared = connection.default_channel.queue_declare(queue=QUEUE, passive=True)
            return int(declared.message_count)

    def ping(self, timeout_s: float = 2.0) -> None:
        """Raise if the broker cannot be reached within `timeout_s`."""
        with self.app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=timeout_s)
