"""The reconstruction service end to end: the API and Celery workers as users start them, on this
machine's Postgres and Redis (no mocks); the embedded mode through the same test."""

from __future__ import annotations

import gzip
import os
import secrets
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from heartvec.phantom import make_phantom
from heartvec_testing.bad_inputs import BAD_INPUTS
from heartvec_testing.services import (
    FAST_RECOVERY,
    RedisServer,
    Service,
    postgres_database,
    redis_database,
    wait_for,
)
from heartvec_testing.volumes import write_nifti

pytestmark = pytest.mark.slow

QUICK = {"resolution": 40, "refine_steps": 0}  # a few seconds per job on this CPU
CONTRACT_RESULTS = {
    "reconstruction.nii.gz",
    "report.json",
    "heart.glb",
    "latent.npy",
    "shape_code.npz",
}


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 72^3 phantom at 2.8 mm: every class present, small enough for quick jobs."""
    labels, affine = make_phantom(11, size=72, spacing=2.8)
    return write_nifti(tmp_path_factory.mktemp("upload") / "heart.nii.gz", labels, affine)


@pytest.fixture
def database_url() -> Iterator[str]:
    with postgres_database() as url:
        yield url


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A database of this machine's Redis of its own, emptied afterwards."""
    with redis_database() as url:
        yield url


@pytest.fixture
def make_service(
    tmp_path: Path, database_url: str, redis_url: str
) -> Iterator[Callable[..., Service]]:
    started: list[Service] = []

    def make(embedded: bool = False, **env: str) -> Service:
        settings = {"HEARTVEC_DATABASE_URL": database_url, "HEARTVEC_BROKER_URL": redis_url}
        settings.update(FAST_RECOVERY)
        settings.update(env)
        if embedded:
            settings.pop("HEARTVEC_DATABASE_URL")  # SQLite in the storage folder
        service = Service(tmp_path / f"service{len(started)}", settings, embedded)
        service.folder.mkdir()
        started.append(service)
        return service

    yield make
    for service in started:
        service.stop()


@pytest.mark.parametrize("mode", ["celery", "embedded"])
def test_upload_becomes_a_succeeded_job_with_downloadable_results(
    mode: str, make_service: Callable[..., Service], phantom: Path, tmp_path: Path
) -> None:
    service = make_service(embedded=mode == "embedded")
    service.start_api()
    if mode == "celery":
        service.start_worker()
    response = service.submit(phantom, **QUICK)
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    assert response.headers["location"] == f"/jobs/{job_id}"
    assert response.json()["input"]["shape"] == [72, 72, 72]

    job = service.wait_status(job_id, {"succeeded", "failed"})
    assert job["status"] == "succeeded", job["error"]
    assert job["attempts"] == 1 and job["progress"] == 1.0
    assert job["metrics"]["summary"]["mean_dice_large"] > 0.4
    names = {r["name"] for r in job["results"]}
    assert names >= CONTRACT_RESULTS
    assert sum(n.startswith("meshes/") and n.endswith(".ply") for n in names) == 10

    downloaded = tmp_path / "reconstruction.nii.gz"
    result = service.client.get(f"/jobs/{job_id}/results/reconstruction.nii.gz")
    assert result.status_code == 200
    downloaded.write_bytes(result.content)
    original, rebuilt = nib.load(phantom), nib.load(downloaded)
    assert rebuilt.shape == original.shape
    np.testing.assert_allclose(rebuilt.affine, original.affine, atol=1e-4)
    truth, guess = np.asarray(original.dataobj) == 1, np.asarray(rebuilt.dataobj) == 1
    assert 2 * (truth & guess).sum() / (truth.sum() + guess.sum()) > 0.5  # left ventricle
    glb = service.client.get(f"/jobs/{job_id}/results/heart.glb")
    assert glb.content[:4] == b"glTF" and glb.headers["content-type"] == "model/gltf-binary"
    report = service.client.get(f"/jobs/{job_id}/results/report.json").json()
    assert report["summary"] == job["metrics"]["summary"]


def test_a_celery_job_process_runs_its_jobs_on_a_host_pool(
    make_service: Callable[..., Service], phantom: Path
) -> None:
    """On a GPU machine's many cores the worker's job process (billiard's 'daemonic' process,
    which multiprocessing refuses children) starts its host pool after loading the model and
    the job runs on it (two workers here, where the default on 2 cores is none); a job process
    killed mid-life takes its pool's workers with it."""
    service = make_service(HEARTVEC_HOST_WORKERS="2", HEARTVEC_LOG_FORMAT="text")
    service.start_api()
    worker = service.start_worker()
    wait_for(lambda: "host pool: 2 spawned workers" in worker.output(), 60, "the host pool")
    options = {**QUICK, "refine_steps": 5, "refine_points": 192, "frame_search": 3}
    response = service.submit(phantom, **options)
    job = service.wait_status(response.json()["id"], {"succeeded", "failed"})
    assert job["status"] == "succeeded", job["error"]
    assert job["metrics"]["summary"]["mean_dice_large"] > 0.4
    assert job["options"]["refine_points"] == 192  # the options reach the worker's refinement
    report = service.client.get(f"/jobs/{job['id']}/results/report.json").json()
    assert report["refinement"]["steps"] == 5 and report["refinement"]["points_per_step"] == 192
    assert report["frame_search"]["frames"] == 3  # and its frame search
    assert job["metrics"]["frame_search"]["frames"] == 3  # which the job's metrics keep
    assert "running inline" not in worker.output() and "no host pool" not in worker.output()

    (job_process,) = _children(worker.handle.pid)
    pool = [p for p in _children(job_process) if b"spawn_main" in _cmdline(p)]
    assert len(pool) == 2, pool
    os.kill(job_process, signal.SIGKILL)
    wait_for(lambda: not any(map(_running, pool)), 15, "the pool's workers to end")


def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:  # ended meanwhile
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's zombie waits for a reaper that may not come)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_listing_paging_and_cancelling_queued_jobs(
    make_service: Callable[..., Service], phantom: Path
) -> None:
    service = make_service()
    service.start_api()  # no worker yet: jobs stay queued
    ids = [service.submit(phantom, **QUICK).json()["id"] for _ in range(5)]

    first = service.client.get("/jobs", params={"limit": 2}).json()
    assert [j["id"] for j in first["items"]] == ids[::-1][:2]  # newest first
    seen = [j["id"] for j in first["items"]]
    cursor = first["next_cursor"]
    while cursor is not None:
        page = service.client.get("/jobs", params={"limit": 2, "cursor": cursor}).json()
        seen += [j["id"] for j in page["items"]]
        cursor = page["next_cursor"]
    assert seen == ids[::-1]
    assert service.client.get("/jobs", params={"cursor": "not-a-cursor"}).status_code == 400

    for job_id in ids[:3]:
        cancelled = service.client.delete(f"/jobs/{job_id}")
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    listed = service.client.get("/jobs", params={"status": "cancelled"}).json()["items"]
    assert {j["id"] for j in listed} == set(ids[:3])
    assert service.client.get("/jobs", params={"status": "nonsense"}).status_code == 422

    service.start_worker()
    for job_id in ids[3:]:
        assert service.wait_status(job_id, {"succeeded", "failed"})["status"] == "succeeded"
    for job_id in ids[:3]:  # their messages arrived, and were dropped
        job = service.job(job_id)
        assert job["status"] == "cancelled" and job["attempts"] == 0 and job["results"] == []
    assert service.client.delete(f"/jobs/{ids[3]}").status_code == 409
    assert service.client.delete("/jobs/no-such-job").status_code == 404


def test_cancel_a_running_job(make_service: Callable[..., Service], phantom: Path) -> None:
    service = make_service()
    service.start_api()
    service.start_worker()
    job_id = service.submit(phantom, resolution=64, refine_steps=0).json()["id"]
    wait_for(lambda: service.job(job_id)["stage"] == "decode", 60, "the decode stage")
    response = service.client.delete(f"/jobs/{job_id}")
    assert response.status_code == 202 and response.json()["cancel_requested"]
    job = service.wait_status(job_id, {"cancelled", "succeeded", "failed"}, 120)
    assert job["status"] == "cancelled", job
    assert job["results"] == [] and "cancelled before stage" in job["error"]
    assert list((service.folder / "storage" / "work").iterdir()) == []  # nothing half-written


def test_idempotency_key_returns_the_same_job(
    make_service: Callable[..., Service], phantom: Path
) -> None:
    service = make_service()
    service.start_api()
    key = {"Idempotency-Key": secrets.token_hex(8)}
    first = service.submit(phantom, headers=key, **QUICK)
    again = service.submit(phantom, headers=key, **QUICK)
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    other = service.submit(phantom, **QUICK)
    assert other.json()["id"] != first.json()["id"]
    assert len(service.client.get("/jobs").json()["items"]) == 2
    assert len(list((service.folder / "storage" / "inputs").iterdir())) == 2


def test_a_worker_killed_mid_job_does_not_lose_it(
    make_service: Callable[..., Service], phantom: Path
) -> None:
    service = make_service()
    service.start_api()
    doomed = service.start_worker()
    job_id = service.submit(phantom, resolution=64, refine_steps=0).json()["id"]
    wait_for(lambda: service.job(job_id)["stage"] == "decode", 60, "the decode stage")
    doomed.kill()
    service.start_worker()
    job = service.wait_status(job_id, {"succeeded", "failed"}, 180)
    assert job["status"] == "succeeded", job["error"]
    assert job["attempts"] == 2
    storage = service.folder / "storage"
    assert [p.name for p in (storage / "results").iterdir()] == [job_id]
    assert list((storage / "work").iterdir()) == []  # the dead attempt's outputs are gone
    assert "queued again" in service.workers[1].output()


def test_a_job_that_keeps_killing_workers_fails_after_max_attempts(
    make_service: Callable[..., Service], phantom: Path
) -> None:
    service = make_service(HEARTVEC_MAX_ATTEMPTS="2")
    service.start_api()
    job_id = service.submit(phantom, resolution=96, refine_steps=0).json()["id"]
    for attempt in (1, 2):
        worker = service.start_worker()
        wait_for(lambda a=attempt: service.job(job_id)["attempts"] == a, 60, f"attempt {attempt}")
        worker.kill()
    service.start_worker()
    job = service.wait_status(job_id, {"failed", "succeeded"}, 60)
    assert job["status"] == "failed"
    assert "the worker died during each of 2 attempts" in job["error"]


def test_redis_restarted_with_jobs_queued_loses_none(
    make_service: Callable[..., Service], phantom: Path, tmp_path: Path
) -> None:
    redis = RedisServer(tmp_path)
    redis.start()
    try:
        service = make_service(HEARTVEC_BROKER_URL=redis.url)
        service.start_api()
        ids = [service.submit(phantom, **QUICK).json()["id"] for _ in range(3)]
        redis.restart()  # the messages were only in memory: all gone
        service.start_worker()
        for job_id in ids:
            job = service.wait_status(job_id, {"succeeded", "failed"}, 120)
            assert job["status"] == "succeeded" and job["attempts"] == 1
    finally:
        redis.stop()


def test_bad_inputs_get_4xx_and_the_service_stays_healthy(
    make_service: Callable[..., Service], phantom: Path, tmp_path: Path
) -> None:
    service = make_service(HEARTVEC_MAX_UPLOAD_BYTES=str(200_000))
    service.start_api()
    for name, (make, words) in BAD_INPUTS.items():
        if name == "missing_file":
            continue
        response = service.submit(make(tmp_path))
        expected = 415 if name == "plain_text_nii" else 422
        assert response.status_code == expected, (name, response.text)
        if expected == 422:
            assert words in response.json()["detail"], name
    assert service.client.post("/reconstruct", content=b"x" * 100).status_code == 415
    no_file = service.client.post("/reconstruct", data={"labels": "default"}, files={"x": b"1"})
    assert no_file.status_code == 422
    bad_fields = (("resolution", "9999"), ("labels", "/etc/passwd"), ("colour", "red"),
                  ("refine_points", "10"), ("frame_search", "65"))  # fmt: skip
    for field, value in bad_fields:
        response = service.submit(phantom, **{field: value})
        assert response.status_code == 422 and field in response.json()["detail"]
    big = tmp_path / "big.nii.gz"
    big.write_bytes(gzip.compress(b"") + secrets.token_bytes(300_000))
    assert service.submit(big).status_code == 413
    assert service.client.get("/jobs/unknown").status_code == 404

    good = service.submit(phantom, **QUICK)
    assert good.status_code == 202
    job_id = good.json()["id"]
    escape = "%2E%2E%2F%2E%2E%2Finputs%2F"  # ../../inputs/, encoded
    traversal = service.client.get(f"/jobs/{job_id}/results/{escape}{job_id}.nii.gz")
    assert traversal.status_code == 404
    assert service.client.get("/healthz").json() == {"status": "ok"}
    assert len(list((service.folder / "storage" / "incoming").iterdir())) == 0
    assert len(service.client.get("/jobs").json()["items"]) == 1


def test_api_key_is_required_when_configured(
    make_service: Callable[..., Service], phantom: Path
) -> None:
    key = secrets.token_urlsafe(16)
    service = make_service(HEARTVEC_API_KEY=key)
    service.start_api()
    assert service.client.get("/jobs").status_code == 401
    wrong = {"Authorization": "Bearer " + key[:-1] + "x"}
    assert service.client.get("/jobs", headers=wrong).status_code == 401
    assert service.submit(phantom, **QUICK).status_code == 401
    right = {"Authorization": f"Bearer {key}"}
    assert service.client.get("/jobs", headers=right).status_code == 200
    assert service.submit(phantom, headers=right, **QUICK).status_code == 202
    assert service.client.get("/healthz").status_code == 200
