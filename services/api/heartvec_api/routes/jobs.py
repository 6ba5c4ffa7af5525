"""Jobs: submit a reconstruction, follow it, list, cancel, download its results."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, Response

from heartvec.jobs.models import FINISHED, JobStatus, new_job_id
from heartvec.labels import load_label_table
from heartvec.logs import current_job
from heartvec.reconstruction.options import ReconstructOptions
from heartvec.volume import scan_label_file
from heartvec_api.deps import ServicesDep, require_api_key
from heartvec_api.schemas import JobList, JobPublic
from heartvec_api.upload import GZIP_MAGIC, Upload, UploadRejected, receive_upload

log = logging.getLogger(__name__)

router = APIRouter(tags=["jobs"], dependencies=[Depends(require_api_key)])

# the upload is parsed as it streams (`receive_upload`), so its schema is written here: the
# file, and the options' own schema
_UPLOAD_SCHEMA = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["file"],
                "properties": {
                    "file": {"type": "string", "format": "binary"},
                    **ReconstructOptions.model_json_schema()["properties"],
                },
            }
        }
    },
}


@router.post(
    "/reconstruct",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobPublic,
    openapi_extra={"requestBody": _UPLOAD_SCHEMA},
    responses={400: {}, 413: {}, 415: {}, 422: {}, 507: {}},
)
async def create_reconstruction(
    request: Request,
    services: ServicesDep,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> JSONResponse:
    """Upload a label volume (multipart field `file`); answers 202 with the queued job."""
    store, storage = services.store, services.storage
    if idempotency_key:
        existing = await run_in_threadpool(store.by_idempotency_key, idempotency_key)
        if existing is not None:
            return _accepted(JobPublic.from_job(existing), replayed=True)
    try:
        upload = await receive_upload(
            request, storage.staging_path(), services.settings.max_upload_bytes
        )
    except UploadRejected as e:
        raise HTTPException(e.status, e.detail) from e
    try:
        options = ReconstructOptions.parse(upload.fields, "form")
        named = upload.staged.with_name(upload.staged.name + upload.suffix)
        upload.staged = upload.staged.rename(named)
        input_info = await run_in_threadpool(
            _check_volume, upload, options, services.settings.max_voxels
        )
    except BaseException:
        upload.staged.unlink(missing_ok=True)
        raise
    job_id = new_job_id()
    storage.accept_input(job_id, upload.staged, upload.suffix)
    job, created = await run_in_threadpool(
        store.create, job_id, options.model_dump(), input_info, idempotency_key
    )
    if not created:
        storage.input_path(job_id, upload.suffix).unlink(missing_ok=True)
        return _accepted(JobPublic.from_job(job), replayed=True)
    current_job.set(job.id)  # this request's remaining log lines name the new job
    try:
        await run_in_threadpool(services.dispatcher.send, job.id)
    except Exception:  # the job is committed; recovery sends its message again later
        log.warning("job %s: broker unreachable, message not sent yet", job.id, exc_info=True)
    return _accepted(JobPublic.from_job(job))


@router.get("/jobs", response_model=JobList)
def list_jobs(
    services: ServicesDep,
    status_filter: Annotated[JobStatus | None, Query(alias="status")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> JobList:
    """Jobs, newest first; pass `next_cursor` back as `cursor` for the next page."""
    jobs, next_cursor = services.store.list_jobs(
        None if status_filter is None else status_filter.value, limit, cursor
    )
    return JobList(items=[JobPublic.from_job(j) for j in jobs], next_cursor=next_cursor)


@router.get("/jobs/{job_id}", response_model=JobPublic, responses={404: {}})
def read_job(job_id: str, services: ServicesDep) -> Response:
    """A job's status, stage, progress, metrics and result files."""
    job = services.store.get(job_id)
    if job is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no job {job_id!r}")
    # serialized here: the hottest route (clients poll it) skips re-validating its own answer
    return Response(JobPublic.from_job(job).model_dump_json(), media_type="application/json")


@router.delete("/jobs/{job_id}", response_model=JobPublic, responses={404: {}, 409: {}})
def cancel_job(job_id: str, services: ServicesDep) -> JSONResponse:
    """Cancel a queued job at once, or ask a running one to stop after its current stage."""
    before = services.store.get(job_id)
    if before is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no job {job_id!r}")
    if before.status in (JobStatus.SUCCEEDED.value, JobStatus.FAILED.value):
        raise HTTPException(status.HTTP_409_CONFLICT, f"job {job_id} already {before.status}")
    job = services.store.cancel(job_id)
    assert job is not None
    finished = job.status in {s.value for s in FINISHED}
    return JSONResponse(
        JobPublic.from_job(job).model_dump(mode="json"),
        status_code=status.HTTP_200_OK if finished else status.HTTP_202_ACCEPTED,
    )


@router.get("/jobs/{job_id}/results/{name:path}", responses={404: {}})
def read_result(job_id: str, name: str, services: ServicesDep) -> FileResponse:
    """One result file of a succeeded job."""
    job = services.store.get(job_id)
    if job is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no job {job_id!r}")
    listed = {r["name"]: r for r in job.results or []}
    path = services.storage.result_path(job_id, name) if name in listed else None
    if path is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"job {job_id} has no result {name!r}")
    return FileResponse(path, media_type=listed[name]["media_type"], filename=Path(name).name)


def _accepted(job: JobPublic, replayed: bool = False) -> JSONResponse:
    headers = {"Location": f"/jobs/{job.id}"}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return JSONResponse(job.model_dump(mode="json"), status_code=202, headers=headers)


def _check_volume(upload: Upload, options: ReconstructOptions, max_voxels: int) -> dict[str, Any]:
    """Validate the staged upload (content, header, labels) without loading it whole.

    Raises:
        HTTPException: 415 when it is not NIfTI at all.
        InputError: every other problem (answered 422 by the app).
    """
    if not (upload.head.startswith(GZIP_MAGIC) or _nifti_magic(upload.head)):
        raise HTTPException(415, "not a NIfTI file (.nii or .nii.gz)")
    image, counts = scan_label_file(
        upload.staged,
        load_label_table(options.labels),
        options.ignore_unknown_labels,
        max_voxels,
    )
    zooms = image.header.get_zooms()[:3]
    return {
        "name": upload.filename,
        "bytes": upload.size,
        "sha256": upload.sha256,
        "suffix": upload.suffix,
        "shape": [int(s) for s in image.shape[:3]],
        "spacing_mm": [round(float(z), 6) for z in zooms],
        "labels": {str(v): n for v, n in sorted(counts.items())},
    }


def _nifti_magic(head: bytes) -> bool:
    """NIfTI-1 ('n+1' at byte 344) or NIfTI-2 ('n+2' at byte 4)."""
    return head[344:347] == b"n+1" or head[4:7] == b"n+2"
