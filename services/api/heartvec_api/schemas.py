"""What the API answers: the JSON shapes of jobs and job lists."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel

from heartvec.jobs.models import Job


class ResultPublic(BaseModel):
    name: str
    url: str
    media_type: str
    bytes: int


class JobPublic(BaseModel):
    id: str
    status: str
    stage: str | None
    progress: float
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    results_expired_at: datetime | None
    attempts: int
    worker: str | None
    error: str | None
    cancel_requested: bool
    options: dict[str, Any]
    input: dict[str, Any]
    metrics: dict[str, Any] | None
    results: list[ResultPublic]

    @classmethod
    def from_job(cls, job: Job) -> JobPublic:
        return cls(
            id=job.id,
            status=job.status,
            stage=job.stage,
            progress=job.progress,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            results_expired_at=job.results_expired_at,
            attempts=job.attempts,
            worker=job.worker,
            error=job.error,
            cancel_requested=job.cancel_requested,
            options=job.options,
            input=job.input,
            metrics=job.metrics,
            results=[
                ResultPublic(url=f"/jobs/{job.id}/results/{r['name']}", **r)
                for r in job.results or []
            ],
        )


class JobList(BaseModel):
    items: list[JobPublic]
    next_cursor: str | None
