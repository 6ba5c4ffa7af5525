"""Settings read from the environment (prefix HEARTVEC_), at the edges only: the command line and
the services read them once and pass values inward."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from heartvec.volume import MAX_VOXELS

BUNDLED_CHECKPOINT = Path(__file__).parent / "checkpoints" / "heartvec-small.pt"
"""The checkpoint shipped with the package (the `small` preset trained on phantoms)."""


class Settings(BaseSettings):
    """Args:
    checkpoint: model checkpoint used when a command or job names none
        (HEARTVEC_CHECKPOINT; default: the bundled one).
    database_url: SQLAlchemy URL of the job store (Postgres in production; `heartvec serve
        --embedded` uses SQLite in the storage folder when this is unset).
    broker_url: Celery broker (Redis) carrying job messages.
    storage_dir: uploads and results (a folder shared by the API and the workers).
    api_key: bearer token the API asks for; unset: no authentication.
    device: 'auto' (CUDA when present), 'cpu', 'cuda' or 'cuda:N' for the worker.
    max_upload_bytes: larger uploads are refused with 413.
    job_time_limit_s: a job still running after this long fails.
    max_attempts: a job whose worker died this many times fails instead of running again.
    heartbeat_s: how often a running job tells the store it is alive.
    stale_after_s: a running job silent this long has lost its worker and is re-queued.
    requeue_after_s: a queued job not started this long has its message sent again (a broker
        restart loses messages; a duplicate is harmless, the first claim wins).
    recovery_interval_s: how often a worker looks for such jobs (and expires old ones).
    retention_s: finished jobs' inputs and results are removed after this long.
    max_voxels: uploads whose header declares more voxels are refused before any is read.
    cors_origins: origins allowed to call the API from a browser (none by default).
    log_format: 'json' (one object per line, with the job id) or 'text'.
    dist_backend: `heartvec train`'s process group under torchrun: 'nccl' or 'gloo' (default:
        NCCL on GPUs, gloo on CPUs); gloo lets several ranks share one GPU.
    """

    model_config = SettingsConfigDict(env_prefix="HEARTVEC_")

    checkpoint: Path = BUNDLED_CHECKPOINT
    database_url: str = "postgresql+psycopg://heartvec@localhost:5432/heartvec"
    broker_url: str = "redis://localhost:6379/0"
    storage_dir: Path = Path("heartvec-data")
    api_key: SecretStr | None = None
    device: str = "auto"
    max_upload_bytes: int = Field(default=1 << 30, gt=0)
    job_time_limit_s: float = Field(default=1800.0, gt=0)
    max_attempts: int = Field(default=3, ge=1)
    heartbeat_s: float = Field(default=5.0, gt=0)
    stale_after_s: float = Field(default=60.0, gt=0)
    requeue_after_s: float = Field(default=300.0, gt=0)
    recovery_interval_s: float = Field(default=15.0, gt=0)
    retention_s: float = Field(default=7 * 24 * 3600.0, gt=0)
    max_voxels: int = Field(default=MAX_VOXELS, gt=0)
    cors_origins: list[str] = Field(default_factory=list)
    log_format: Literal["json", "text"] = "json"
    dist_backend: Literal["nccl", "gloo"] | None = None


def default_checkpoint() -> Path:
    """$HEARTVEC_CHECKPOINT, else the bundled checkpoint."""
    return Settings().checkpoint
