"""Security properties of the API, each shown against a running service: decompression bombs and
oversized volumes refused before allocation, content sniffed, CORS off unless configured,
unguessable job ids. (Bearer tokens and result-name traversal: tests/test_service.py.)"""

from __future__ import annotations

import string
import zlib
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from heartvec.jobs.models import new_job_id
from heartvec.phantom import make_phantom
from heartvec_testing.services import Service, postgres_database
from heartvec_testing.volumes import write_nifti

pytestmark = pytest.mark.slow


@pytest.fixture
def service(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Service]:
    """An API with no worker (nothing here needs a job to run)."""
    env = getattr(request, "param", {})
    with postgres_database() as url:
        api = Service(tmp_path / "service", {"HEARTVEC_DATABASE_URL": url, **env}, False)
        api.folder.mkdir()
        api.start_api()
        yield api
        api.stop()


def _rss_mb(service: Service) -> float:
    assert service.api is not None
    status = Path(f"/proc/{service.api.handle.pid}/status").read_text()
    return int(next(ln for ln in status.splitlines() if ln.startswith("VmHWM:")).split()[1]) / 1024


def test_a_decompression_bomb_is_refused_before_it_is_inflated(
    service: Service, tmp_path: Path
) -> None:
    """1.3 GB of voxels in a 1.3 MB .nii.gz: refused by its header, memory untouched."""
    header = nib.Nifti1Header()
    header.set_data_dtype(np.uint8)
    header.set_data_shape((1100, 1100, 1100))
    header.set_sform(np.eye(4), code=1)
    bomb = tmp_path / "bomb.nii.gz"
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)  # gzip framing
    zeros = bytes(64 << 20)
    with bomb.open("wb") as f:
        f.write(compressor.compress(header.binaryblock + b"\0" * 4))
        for _ in range(1100**3 // len(zeros) + 1):
            f.write(compressor.compress(zeros))
        f.write(compressor.flush())
    assert bomb.stat().st_size < 2_000_000
    before = _rss_mb(service)
    response = service.submit(bomb)
    assert response.status_code == 422
    assert "absurd size" in response.json()["detail"]
    assert _rss_mb(service) - before < 50  # peak resident memory of the API


@pytest.mark.parametrize("service", [{"HEARTVEC_MAX_VOXELS": str(64**3)}], indirect=True)
def test_the_voxel_limit_is_configurable(service: Service, tmp_path: Path) -> None:
    labels, affine = make_phantom(5, size=72, spacing=2.8)
    response = service.submit(write_nifti(tmp_path / "big.nii.gz", labels, affine))
    assert response.status_code == 422
    assert "limit 262,144" in response.json()["detail"]


def test_content_is_sniffed_not_trusted_by_name(service: Service, tmp_path: Path) -> None:
    png = tmp_path / "heart.nii.gz"  # a PNG named like a volume
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(2000))
    assert service.submit(png).status_code == 415
    script = tmp_path / "heart.nii"
    script.write_text("#!/bin/sh\nrm -rf /\n" * 40)
    assert service.submit(script).status_code == 415
    labels, affine = make_phantom(5, size=48, spacing=4.2)
    volume = write_nifti(tmp_path / "plain.nii", labels, affine)
    accepted = service.submit(volume.rename(tmp_path / "renamed.txt"))  # a volume, odd name
    assert accepted.status_code == 202 and accepted.json()["input"]["suffix"] == ".nii"


def test_cors_is_off_by_default(service: Service) -> None:
    origin = {"Origin": "https://evil.example"}
    assert "access-control-allow-origin" not in service.client.get("/jobs", headers=origin).headers
    preflight = service.client.options(
        "/reconstruct", headers={**origin, "Access-Control-Request-Method": "POST"}
    )
    assert "access-control-allow-origin" not in preflight.headers


@pytest.mark.parametrize(
    "service", [{"HEARTVEC_CORS_ORIGINS": '["https://viewer.example"]'}], indirect=True
)
def test_cors_allows_only_the_configured_origins(service: Service) -> None:
    allowed = service.client.get("/jobs", headers={"Origin": "https://viewer.example"})
    assert allowed.headers["access-control-allow-origin"] == "https://viewer.example"
    other = service.client.get("/jobs", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers


def test_job_ids_are_unguessable() -> None:
    ids = [new_job_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    alphabet = set(string.ascii_letters + string.digits + "-_")
    assert all(len(i) == 22 and set(i) <= alphabet for i in ids)  # 128 random bits each
    first_chars = {i[0] for i in ids}
    assert len(first_chars) == 64  # no structure (counters, timestamps) to enumerate
