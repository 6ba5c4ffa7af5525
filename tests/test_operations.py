"""What operators rely on: Prometheus metrics, JSON logs with job ids, retention, a full disk and
a restarted Postgres, on real servers (this machine's Postgres and Redis, a private Postgres
for the restart, a small tmpfs for the full disk)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from heartvec.phantom import make_phantom
from heartvec_testing.services import FAST_RECOVERY, Service, free_port, redis_database, wait_for
from heartvec_testing.volumes import write_nifti

pytestmark = pytest.mark.slow

QUICK = {"resolution": 40, "refine_steps": 0}
PG_BIN = Path("/usr/lib/postgresql") / (
    sorted(os.listdir("/usr/lib/postgresql"))[-1] if Path("/usr/lib/postgresql").is_dir() else "0"
)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    labels, affine = make_phantom(12, size=72, spacing=2.8)
    return write_nifti(tmp_path_factory.mktemp("upload") / "heart.nii.gz", labels, affine)


@pytest.fixture
def services(tmp_path: Path) -> Iterator[list[Service]]:
    started: list[Service] = []
    yield started
    for service in started:
        service.stop()


def _embedded(services: list[Service], folder: Path, **env: str) -> Service:
    service = Service(folder, {**FAST_RECOVERY, **env}, embedded=True)
    folder.mkdir(exist_ok=True)
    services.append(service)
    service.start_api()
    return service


def test_metrics_and_json_logs_describe_a_job(
    services: list[Service], phantom: Path, tmp_path: Path
) -> None:
    service = _embedded(services, tmp_path / "service")
    job_id = service.submit(phantom, **QUICK).json()["id"]
    assert service.wait_status(job_id, {"succeeded", "failed"})["status"] == "succeeded"

    # the stage totals are written just after the job's final status: allow them a moment
    deadline = time.monotonic() + 10
    while True:
        text = service.client.get("/metrics").text
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }
        if ("heartvec_stage_duration_seconds_count", (("stage", "write"),)) in samples:
            break
        assert time.monotonic() < deadline, "stage timings never appeared in /metrics"
        time.sleep(0.1)
    assert samples[("heartvec_jobs", (("status", "succeeded"),))] == 1
    assert samples[("heartvec_queue_depth", ())] == 0
    for stage in ("load", "encode", "decode", "meshes", "write"):
        assert samples[("heartvec_stage_duration_seconds_count", (("stage", stage),))] == 1
    decode = samples[("heartvec_stage_duration_seconds_sum", (("stage", "decode"),))]
    assert 0 < decode < 120
    assert 0 <= samples[("heartvec_worker_last_seen_seconds", (("worker", "embedded"),))] < 30
    assert samples[("heartvec_worker_busy", (("worker", "embedded"),))] == 0

    assert service.api is not None
    lines = [json.loads(line) for line in service.api.output().splitlines() if line.strip()]
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    about_job = [line for line in lines if job_id in line["message"]]
    assert len(about_job) >= 2  # attempt started, succeeded
    assert all(line.get("job_id") == job_id for line in about_job)


def test_retention_removes_old_results_and_keeps_the_record(
    services: list[Service], phantom: Path, tmp_path: Path
) -> None:
    service = _embedded(services, tmp_path / "service", HEARTVEC_RETENTION_S="3")
    job_id = service.submit(phantom, **QUICK).json()["id"]
    job = service.wait_status(job_id, {"succeeded", "failed"})
    assert job["status"] == "succeeded" and job["results"]
    storage = service.folder / "storage"
    assert (storage / "results" / job_id).is_dir()

    expired = wait_for(
        lambda: (j := service.job(job_id))["results_expired_at"] and j, 30, "retention"
    )
    assert expired["status"] == "succeeded" and expired["results"] == []
    assert expired["metrics"]["summary"] == job["metrics"]["summary"]  # the record stays
    # the row is marked first, then the files go (a failure between leaves files, not a row
    # listing results that are gone)
    wait_for(lambda: not (storage / "results" / job_id).exists(), 10, "results removed")
    assert list((storage / "inputs").iterdir()) == []
    assert service.client.get(f"/jobs/{job_id}/results/report.json").status_code == 404


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_a_full_disk_fails_the_job_cleanly_and_the_service_stays_up(
    services: list[Service], phantom: Path, tmp_path: Path
) -> None:
    storage = tmp_path / "small-disk"
    storage.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160k", "tmpfs", str(storage)], check=True)
    try:
        service = _embedded(
            services,
            tmp_path / "service",
            HEARTVEC_STORAGE_DIR=str(storage),
            HEARTVEC_DATABASE_URL=f"sqlite:///{tmp_path / 'jobs.db'}",
        )
        job_id = service.submit(phantom, **QUICK).json()["id"]
        job = service.wait_status(job_id, {"succeeded", "failed"})
        assert job["status"] == "failed"
        assert "not enough storage space" in job["error"]
        assert list((storage / "work").iterdir()) == []  # the partial outputs are gone
        assert service.client.get("/readyz").status_code == 200
        _fill(storage / "filler")
        refused = service.submit(phantom, **QUICK)
        assert refused.status_code == 507, refused.text
        assert list((storage / "incoming").iterdir()) == []
        assert service.client.get("/healthz").status_code == 200
    finally:
        for service in services:
            service.stop()
        services.clear()
        subprocess.run(["umount", str(storage)], check=False)


def _fill(path: Path) -> None:
    """Write zeros until the file system is full."""
    with path.open("wb", buffering=0) as f:  # unbuffered: close() has nothing left to write
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass


class PrivatePostgres:
    """A Postgres server of our own (the machine's binaries), so that a test may restart it."""

    def __init__(self) -> None:
        # outside pytest's folders, which only root may enter
        self.folder, self.port = Path(tempfile.mkdtemp(prefix="heartvec-pg-")), free_port()
        self.data = self.folder / "data"
        shutil.chown(self.folder, "postgres", "postgres")
        self._as_postgres([str(PG_BIN / "bin" / "initdb"), "-D", str(self.data), "-A", "trust",
                           "-U", "postgres", "--no-sync"])  # fmt: skip

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _as_postgres(self, command: list[str]) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", *command], check=True,
                       capture_output=True)  # fmt: skip

    def _ctl(self, *args: str) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._as_postgres([str(PG_BIN / "bin" / "pg_ctl"), "-D", str(self.data), "-w", "-o",
                           options, "-l", str(self.folder / "log"), *args])  # fmt: skip

    def start(self) -> None:
        self._ctl("start")

    def restart(self) -> None:
        self._ctl("restart", "-m", "fast")

    def stop(self) -> None:
        self._ctl("stop", "-m", "immediate")
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.mark.skipif(
    os.geteuid() != 0 or not (PG_BIN / "bin" / "initdb").exists(),
    reason="a private Postgres needs root (to run as user postgres) and the server binaries",
)
def test_postgres_restarted_mid_job_answers_503_briefly_and_loses_nothing(
    services: list[Service], phantom: Path, tmp_path: Path
) -> None:
    postgres = PrivatePostgres()
    postgres.start()
    try:
        with redis_database() as broker:
            service = Service(
                tmp_path / "service",
                {**FAST_RECOVERY, "HEARTVEC_DATABASE_URL": postgres.url,
                 "HEARTVEC_BROKER_URL": broker},
                embedded=False,
            )  # fmt: skip
            service.folder.mkdir()
            services.append(service)
            service.start_api()
            service.start_worker()
            job_id = service.submit(phantom, resolution=64, refine_steps=0).json()["id"]
            wait_for(lambda: service.job(job_id)["stage"] == "decode", 60, "the decode stage")
            postgres.restart()
            answers = [service.client.get(f"/jobs/{job_id}").status_code for _ in range(5)]
            # pooled connections died with the server: the first request finds out (503), the pool
            # is refilled, and the next ones are answered
            assert answers[0] == 503 and answers[-1] == 200, answers
            job = service.wait_status(job_id, {"succeeded", "failed"}, 120)
            assert job["status"] == "succeeded", job["error"]
            late = service.submit(phantom, **QUICK)
            assert late.status_code == 202
            assert service.wait_status(late.json()["id"], {"succeeded", "failed"})["status"] == (
                "succeeded"
            )
    finally:
        for service in services:
            service.stop()
        services.clear()
        postgres.stop()
