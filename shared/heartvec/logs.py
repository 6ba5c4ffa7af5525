"""Logging for the services: one JSON object per line, with the id of the job being worked on
(a context variable that the job code sets) on every line logged while it runs."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime

current_job: ContextVar[str | None] = ContextVar("current_job", default=None)
"""The job id the current thread or task works on (None outside jobs)."""


@contextmanager
def job_context(job_id: str) -> Iterator[None]:
    """Tag every log line inside the block with `job_id` (set it again in each new thread)."""
    token = current_job.set(job_id)
    try:
        yield
    finally:
        current_job.reset(token)


class JsonFormatter(logging.Formatter):
    """`{"time", "level", "logger", "message", "job_id"?, "exception"?}` per record."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        job_id = getattr(record, "job_id", None) or current_job.get()
        if job_id is not None:
            line["job_id"] = job_id
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure_logging(json_lines: bool = True, level: int = logging.INFO) -> None:
    """Route the root logger (and uvicorn's and Celery's, which propagate to it) to stderr,
    as JSON lines or as plain text."""
    handler = logging.StreamHandler()
    handler.setFormatter(
        JsonFormatter()
        if json_lines
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "celery", "celery.task"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
