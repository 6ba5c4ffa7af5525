"""The job table (SQLAlchemy 2 typed ORM). The row is the truth: status, stage, progress,
attempts, error, metrics and result files; the broker only carries job ids."""

from __future__ import annotations

import enum
import secrets
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Dialect, Index, String, Text, TypeDecorator
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

JsonType = JSON().with_variant(JSONB(), "postgresql")


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every database (SQLite keeps no offset)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: expected a timezone-aware one")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value


class Base(DeclarativeBase):
    pass


class JobStatus(str, enum.Enum):  # noqa: UP042 (StrEnum would change str() of a status)
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINISHED = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


def new_job_id() -> str:
    """An unguessable id (128 random bits, URL-safe)."""
    return secrets.token_urlsafe(16)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Job(Base):
    """One reconstruction request.

    Args:
        options: {labels, ignore_unknown_labels, resolution, refine_steps, refine_points,
            frame_search} as submitted (a field left out takes its default).
        input: {name, bytes, sha256, suffix, shape, spacing_mm, labels} of the upload.
        metrics: the report's summary and timings once succeeded.
        results: [{name, media_type, bytes}] files under the job's result folder.
        attempts: how many times a worker claimed the job (a claim is a lease: only the
            holder of the latest attempt may write).
        heartbeat_at: last sign of life of the worker running it.
        results_expired_at: when retention removed its input and results.
        enqueued_at: when its message was last sent to the broker.
    """

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_job_id)
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED.value)
    stage: Mapped[str | None] = mapped_column(String(32))
    progress: Mapped[float] = mapped_column(default=0.0)
    attempts: Mapped[int] = mapped_column(default=0)
    error: Mapped[str | None] = mapped_column(Text)
    options: Mapped[dict[str, Any]] = mapped_column(JsonType)
    input: Mapped[dict[str, Any]] = mapped_column(JsonType)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JsonType)
    results: Mapped[list[dict[str, Any]] | None] = mapped_column(JsonType)
    idempotency_key: Mapped[str | None] = mapped_column(String(255), unique=True)
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    worker: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    enqueued_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    results_expired_at: Mapped[datetime | None] = mapped_column(UtcDateTime)

    __table_args__ = (
        Index("ix_jobs_created_id", "created_at", "id"),
        Index("ix_jobs_status_created_id", "status", "created_at", "id"),
    )


class StageStat(Base):
    """Running totals of the time succeeded jobs spent in each stage (for /metrics)."""

    __tablename__ = "stage_stats"

    stage: Mapped[str] = mapped_column(String(32), primary_key=True)
    count: Mapped[int]
    total_s: Mapped[float]


class Worker(Base):
    """The last sign of life of each worker (and the job it was running then)."""

    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    last_seen_at: Mapped[datetime] = mapped_column(UtcDateTime)
    current_job: Mapped[str | None] = mapped_column(String(32))
