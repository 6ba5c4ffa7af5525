"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, status
from fastapi.responses import PlainTextResponse
from sqlalchemy import text

from heartvec.jobs.models import utcnow
from heartvec_api.deps import ServicesDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
def read_health() -> dict[str, str]:
    """The process answers."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {}})
def read_readiness(services: ServicesDep) -> dict[str, str]:
    """The database and the broker (or the embedded worker) can be reached."""
    checks: dict[str, str] = {}
    try:
        with services.store.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as e:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, f"database: {e}") from e
    try:
        services.ping_worker()
        checks["broker" if not services.embedded else "worker"] = "ok"
    except Exception as e:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, f"broker: {e}") from e
    return {"status": "ok", **checks}


@router.get("/metrics", response_class=PlainTextResponse)
def read_metrics(services: ServicesDep) -> str:
    """Prometheus text format: jobs by status, queue depth, stage durations, workers."""
    store, now = services.store, utcnow()
    lines = _family("heartvec_jobs", "gauge", "Jobs in the store by status.")
    counts = store.counts()
    lines += [f'heartvec_jobs{{status="{status}"}} {n}' for status, n in counts.items()]
    lines += _family("heartvec_queue_depth", "gauge", "Jobs queued and not yet started.")
    lines.append(f"heartvec_queue_depth {counts['queued']}")
    try:
        waiting = services.dispatcher.queue_length()
        lines += _family("heartvec_broker_messages", "gauge", "Messages waiting in the broker.")
        lines.append(f"heartvec_broker_messages {waiting}")
    except Exception:  # the broker is away: /readyz says so; the other figures still count
        pass
    lines += _family(
        "heartvec_stage_duration_seconds", "summary", "Time succeeded jobs spent per stage."
    )
    for stage, (count, total) in sorted(store.stage_totals().items()):
        lines.append(f'heartvec_stage_duration_seconds_sum{{stage="{stage}"}} {total:.6f}')
        lines.append(f'heartvec_stage_duration_seconds_count{{stage="{stage}"}} {count}')
    lines += _family(
        "heartvec_worker_last_seen_seconds", "gauge", "Seconds since each worker's heartbeat."
    )
    workers = store.workers()
    for worker in workers:
        # a heartbeat written after `now` was taken is seen just now, not in the future
        age = max(0.0, (now - worker.last_seen_at).total_seconds())
        lines.append(
            f'heartvec_worker_last_seen_seconds{{worker="{_label(worker.name)}"}} {age:.3f}'
        )
    lines += _family("heartvec_worker_busy", "gauge", "1 while a worker runs a job.")
    for worker in workers:
        busy = int(worker.current_job is not None)
        lines.append(f'heartvec_worker_busy{{worker="{_label(worker.name)}"}} {busy}')
    return "\n".join(lines) + "\n"


def _family(name: str, kind: str, help_text: str) -> list[str]:
    return [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]


def _label(value: str) -> str:
    """A Prometheus label value, escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
