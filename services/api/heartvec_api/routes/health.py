"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, status
from fastapi.responses import PlainTextResponse
from sqlalchemy import text

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
    """Prometheus text format: jobs by status."""
    lines = [
        "# HELP heartvec_jobs Jobs in the store by status.",
        "# TYPE heartvec_jobs gauge",
    ]
    for job_status, count in services.store.counts().items():
        lines.append(f'heartvec_jobs{{status="{job_status}"}} {count}')
    return "\n".join(lines) + "\n"
