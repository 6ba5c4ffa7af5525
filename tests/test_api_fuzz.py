"""Schemathesis against the running API's own /openapi.json: generated requests for every
operation (valid, invalid, stateful sequences) never get a 5xx."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from heartvec_testing.services import Service, postgres_database, redis_database

pytestmark = pytest.mark.slow

SCHEMATHESIS = str(Path(sys.executable).with_name("schemathesis"))


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Service]:
    """The Celery-mode API on Postgres and its own Redis database (no worker: the generated
    uploads that pass validation stay queued)."""
    with postgres_database() as url, redis_database() as broker:
        env = {"HEARTVEC_DATABASE_URL": url, "HEARTVEC_BROKER_URL": broker}
        service = Service(tmp_path / "service", env, embedded=False)
        service.folder.mkdir()
        service.start_api()
        yield service
        service.stop()


def test_no_generated_request_gets_a_server_error(api: Service) -> None:
    run = subprocess.run(
        [SCHEMATHESIS, "run", f"{api.client.base_url}/openapi.json",
         "--checks", "not_a_server_error", "--max-examples", "25", "--seed", "1"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "passed" in run.stdout and "failed" not in run.stdout.split("SUMMARY")[-1]
    assert api.client.get("/healthz").status_code == 200
