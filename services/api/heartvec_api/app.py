"""`create_app`: the FastAPI application, with Celery workers behind a broker or (embedded)
with a worker thread in this process."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy.exc import OperationalError

from heartvec.errors import InputError
from heartvec.jobs.database import make_engine, migrate
from heartvec.jobs.queue import CeleryDispatcher, make_celery
from heartvec.jobs.recovery import RecoveryLoop, RecoveryPolicy
from heartvec.jobs.storage import LocalStorage
from heartvec.jobs.store import BadCursor, JobStore
from heartvec.logs import current_job
from heartvec.settings import Settings
from heartvec_api.deps import Services
from heartvec_api.routes import health, jobs

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
"""The web page, bundled from services/api/web by `make web` (not in git)."""


def embedded_database_url(settings: Settings) -> str:
    """SQLite in the storage folder (embedded mode with no HEARTVEC_DATABASE_URL)."""
    return f"sqlite:///{(settings.storage_dir / 'heartvec.db').resolve()}"


class JobIdInLogs:
    """ASGI middleware: requests about a job (`/jobs/{id}...`) log with its id."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        match = _JOB_PATH.match(scope.get("path", "")) if scope["type"] == "http" else None
        if match is None:
            await self.app(scope, receive, send)
            return
        token = current_job.set(match.group(1))
        try:
            await self.app(scope, receive, send)
        finally:
            current_job.reset(token)


_JOB_PATH = re.compile(r"^/jobs/([A-Za-z0-9_-]{1,64})")


def _embedded_worker(settings: Settings, store: JobStore, storage: LocalStorage) -> Any:
    """The in-process worker (imported here: the model code and torch load only in embedded
    mode, so the Celery-mode API starts quickly and needs no GPU libraries)."""
    from heartvec.jobs.embedded import EmbeddedWorker
    from heartvec.jobs.runner import JobLimits, resolve_device
    from heartvec.reconstruction.encoding import load_model

    device = resolve_device(settings.device)
    worker = EmbeddedWorker(
        store,
        storage,
        lambda: load_model(settings.checkpoint, device),
        JobLimits(settings.job_time_limit_s, settings.heartbeat_s),
    )
    worker.resume(settings.max_attempts)
    worker.start()
    return worker


def create_app(settings: Settings, embedded: bool = False) -> FastAPI:
    """The API. With `embedded`, jobs run in a thread of this process (SQLite unless
    `settings.database_url` was set explicitly); otherwise they go to the Celery broker."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        url = settings.database_url
        if embedded and "database_url" not in settings.model_fields_set:
            url = embedded_database_url(settings)
        settings.storage_dir.mkdir(parents=True, exist_ok=True)
        engine = make_engine(url)
        migrate(engine)
        store, storage = JobStore(engine), LocalStorage(settings.storage_dir)
        worker, housekeeping = None, None
        if embedded:
            worker = _embedded_worker(settings, store, storage)
            housekeeping = RecoveryLoop(
                store, storage, worker, RecoveryPolicy.from_settings(settings), "embedded"
            )
            housekeeping.start()
            app.state.services = Services(
                settings, store, storage, worker, True, worker.raise_unless_alive
            )
        else:
            dispatcher = CeleryDispatcher(make_celery(settings.broker_url))
            app.state.services = Services(
                settings, store, storage, dispatcher, False, dispatcher.ping
            )
        log.info(
            "heartvec API ready (%s, database %s)",
            "embedded" if embedded else "celery",
            engine.url.render_as_string(hide_password=True),
        )
        try:
            yield
        finally:
            if housekeeping is not None:
                housekeeping.stopped.set()
            if worker is not None:
                worker.stop(timeout_s=5)
            engine.dispose()

    app = FastAPI(
        title="heartvec",
        summary="Whole-heart label volumes in, labelled meshes out.",
        version="0.1.0",
        lifespan=lifespan,
    )
    if settings.cors_origins:  # off unless origins are configured
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Idempotency-Key", "Content-Type"],
        )
    app.add_middleware(JobIdInLogs)
    app.include_router(jobs.router)
    app.include_router(health.router)
    if (STATIC / "index.html").is_file():
        app.mount("/static", StaticFiles(directory=STATIC), name="static")

        @app.get("/", include_in_schema=False)
        def read_page() -> FileResponse:
            return FileResponse(STATIC / "index.html")

    else:
        log.warning("web page not built (%s missing): run `make web`", STATIC / "index.html")

    @app.exception_handler(InputError)
    async def input_error(request: Request, e: InputError) -> JSONResponse:
        return JSONResponse({"detail": e.problem}, status_code=422)

    @app.exception_handler(BadCursor)
    async def bad_cursor(request: Request, e: BadCursor) -> JSONResponse:
        return JSONResponse({"detail": str(e)}, status_code=400)

    @app.exception_handler(OperationalError)
    async def database_unavailable(request: Request, e: OperationalError) -> JSONResponse:
        log.warning("database unavailable: %s", e.orig)
        return JSONResponse(
            {"detail": "the job database is unavailable; try again shortly"},
            status_code=503,
            headers={"Retry-After": "5"},
        )

    return app
