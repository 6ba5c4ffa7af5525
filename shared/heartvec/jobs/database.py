"""Engine creation and migrations (applied at start-up by the API and the workers)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, text

MIGRATIONS = Path(__file__).parent / "migrations"
_MIGRATION_LOCK = 0x68657274  # Postgres advisory lock id: one migrating process at a time


def make_engine(url: str, pre_ping: bool = False) -> Engine:
    """An engine for the job store; SQLite gets WAL and a busy timeout so the embedded API and
    its worker thread can write concurrently.

    Args:
        pre_ping: test each pooled connection before use (workers: a database restart then
            costs nothing; the API skips it, a round trip per request, and answers 503 once).
    """
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        return engine
    return create_engine(
        url, pool_size=10, max_overflow=10, pool_recycle=1800, pool_pre_ping=pre_ping
    )


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision (idempotent; safe with several processes)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _MIGRATION_LOCK})
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
