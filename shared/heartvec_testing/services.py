"""Real servers for the service tests: a fresh Postgres database per test session on this
machine's server, Redis (this machine's, or a private `redis-server` a test may restart), and the
API and workers started as the `heartvec serve` / `heartvec worker` commands users run."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg

POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"
HEARTVEC = str(Path(sys.executable).with_name("heartvec"))
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"

# quick recovery so that the tests see it within seconds
FAST_RECOVERY = {
    "HEARTVEC_HEARTBEAT_S": "0.5",
    "HEARTVEC_STALE_AFTER_S": "4",
    "HEARTVEC_REQUEUE_AFTER_S": "3",
    "HEARTVEC_RECOVERY_INTERVAL_S": "1",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def postgres_database() -> Iterator[str]:
    """A new, empty database; dropped afterwards. Yields its SQLAlchemy URL."""
    name = f"heartvec_test_{secrets.token_hex(4)}"
    with psycopg.connect(POSTGRES, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(POSTGRES, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def redis_database() -> Iterator[str]:
    """A database of this machine's Redis (6379) of its own, emptied afterwards. Yields its URL.

    Under pytest-xdist each worker draws from its own share of the databases 1-15 (beyond 15
    workers, two share one), so tests running at the same time never share a broker queue."""
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
    workers = min(15, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    own = range(1 + worker % workers, 16, workers)
    index = own[secrets.randbelow(len(own))]
    try:
        yield f"redis://127.0.0.1:6379/{index}"
    finally:
        with socket.create_connection(("127.0.0.1", 6379), timeout=5) as s:
            s.sendall(f"SELECT {index}\r\nFLUSHDB\r\n".encode())
            s.recv(64)


class RedisServer:
    """A private `redis-server` (no persistence, like this machine's) that a test can restart."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.folder = folder
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.folder)],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        wait_for(lambda: _redis_answers(self.port), 10, "redis-server to start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()


def _redis_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def wait_for(condition: Callable[[], Any], timeout_s: float, what: str, every_s: float = 0.2):
    """Poll until `condition()` is truthy; returns its value. Fails naming `what`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(every_s)


class Process:
    """A `heartvec` command running in its own process group, logging to a file."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self.handle = subprocess.Popen(
            [HEARTVEC, *args],
            env=env,
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL the whole group (a Celery worker and its pool process die together)."""
        if self.handle.poll() is None:
            os.killpg(self.handle.pid, signal.SIGKILL)
            self.handle.wait(10)

    def stop(self) -> None:
        if self.handle.poll() is None:
            os.killpg(self.handle.pid, signal.SIGTERM)
            try:
                self.handle.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


class Service:
    """The API (and, in Celery mode, its workers) on real servers, driven over HTTP."""

    def __init__(self, folder: Path, env: dict[str, str], embedded: bool) -> None:
        self.folder, self.embedded = folder, embedded
        self.env = {**os.environ, "MPLBACKEND": "Agg", **env}
        self.env.setdefault("HEARTVEC_STORAGE_DIR", str(folder / "storage"))
        self.port = free_port()
        self.api: Process | None = None
        self.workers: list[Process] = []
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=30)

    def start_api(self) -> None:
        args = ["serve", "--port", str(self.port)] + (["--embedded"] if self.embedded else [])
        self.api = Process(args, self.env, self.folder / "api.log")
        wait_for(self._ready, 60, f"the API to be ready:\n{self.api.output()}")

    def _ready(self) -> bool:
        assert self.api is not None
        if self.api.handle.poll() is not None:
            raise AssertionError(f"the API exited:\n{self.api.output()}")
        try:
            return self.client.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    def start_worker(self) -> Process:
        index = len(self.workers)
        log = self.folder / f"worker{index}.log"
        worker = Process(["worker", "--hostname", f"test{index}@%h"], self.env, log)
        wait_for(lambda: " ready." in worker.output() or worker.handle.poll() is not None,
                 90, "the worker to be ready")  # fmt: skip
        assert worker.handle.poll() is None, worker.output()
        self.workers.append(worker)
        return worker

    def stop(self) -> None:
        self.client.close()
        for process in [*self.workers, self.api]:
            if process is not None:
                process.stop()

    def submit(self, path: Path, **fields: Any) -> httpx.Response:
        headers = fields.pop("headers", {})
        data = {k: str(v) for k, v in fields.items()}
        with path.open("rb") as f:
            return self.client.post(
                "/reconstruct", files={"file": (path.name, f)}, data=data, headers=headers
            )

    def job(self, job_id: str) -> dict[str, Any]:
        response = self.client.get(f"/jobs/{job_id}")
        assert response.status_code == 200, response.text
        return dict(response.json())

    def wait_status(self, job_id: str, statuses: set[str], timeout_s: float = 120) -> dict:
        def reached() -> dict[str, Any] | None:
            job = self.job(job_id)
            return job if job["status"] in statuses else None

        return dict(wait_for(reached, timeout_s, f"job {job_id} to reach {statuses}"))
