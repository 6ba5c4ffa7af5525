"""Where uploads and results live. `LocalStorage` is a folder shared by the API and the workers
(a compose volume); another backend (S3-compatible) implements the same `Storage` protocol:
the API hands it a finished upload, a worker asks for a local copy of the input and hands back a
folder of results.

Layout of `LocalStorage(root)`:
    root/incoming/<random>.part   uploads being received (deleted when refused)
    root/inputs/<job id><suffix>  accepted uploads
    root/work/<job id>.<attempt>  a worker's outputs while it runs
    root/results/<job id>/        published results (one rename: never half there)
"""

from __future__ import annotations

import mimetypes
import os
import secrets
import shutil
import time
from pathlib import Path
from typing import Any, Protocol

MEDIA_TYPES = {
    ".nii.gz": "application/gzip",
    ".nii": "application/octet-stream",
    ".ply": "application/octet-stream",
    ".glb": "model/gltf-binary",
    ".npy": "application/octet-stream",
    ".npz": "application/octet-stream",
    ".json": "application/json",
    ".png": "image/png",
}


def media_type(name: str) -> str:
    """The media type of a result file by its name."""
    for suffix, kind in MEDIA_TYPES.items():
        if name.endswith(suffix):
            return kind
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


class Storage(Protocol):
    def staging_path(self) -> Path:
        """A fresh local path to receive an upload into."""
        ...

    def accept_input(self, job_id: str, staged: Path, suffix: str) -> None:
        """Keep a validated upload as the job's input (consumes `staged`)."""
        ...

    def input_path(self, job_id: str, suffix: str) -> Path:
        """A local file holding the job's input (a worker reads it)."""
        ...

    def work_dir(self, job_id: str, attempt: int) -> Path:
        """An empty local folder for one attempt's outputs."""
        ...

    def publish_results(self, job_id: str, work_dir: Path) -> list[dict[str, Any]]:
        """Make an attempt's outputs the job's results. Returns [{name, media_type, bytes}]."""
        ...

    def discard(self, work_dir: Path) -> None:
        """Drop an attempt's outputs (cancelled, failed or superseded)."""
        ...

    def result_path(self, job_id: str, name: str) -> Path | None:
        """A published result as a local file, or None if there is no such result."""
        ...

    def delete_job_files(self, job_id: str, suffix: str) -> None:
        """Remove a job's input and results (retention)."""
        ...

    def clean_incoming(self, older_than_s: float) -> int:
        """Remove uploads abandoned while arriving; returns how many."""
        ...


class LocalStorage:
    """Storage in a local (or shared network) folder."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        for folder in ("incoming", "inputs", "work", "results"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)

    def staging_path(self) -> Path:
        return self.root / "incoming" / f"{secrets.token_hex(16)}.part"

    def accept_input(self, job_id: str, staged: Path, suffix: str) -> None:
        os.replace(staged, self.input_path(job_id, suffix))

    def input_path(self, job_id: str, suffix: str) -> Path:
        return self.root / "inputs" / f"{job_id}{suffix}"

    def work_dir(self, job_id: str, attempt: int) -> Path:
        path = self.root / "work" / f"{job_id}.{attempt}"
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path

    def publish_results(self, job_id: str, work_dir: Path) -> list[dict[str, Any]]:
        final = self.root / "results" / job_id
        if final.exists():  # an earlier attempt's results that its job row never recorded
            shutil.rmtree(final)
        os.replace(work_dir, final)
        for stale in (self.root / "work").glob(f"{job_id}.*"):  # attempts of dead workers
            shutil.rmtree(stale, ignore_errors=True)
        return [
            {"name": name, "media_type": media_type(name), "bytes": (final / name).stat().st_size}
            for name in sorted(p.relative_to(final).as_posix() for p in final.rglob("*"))
            if (final / name).is_file()
        ]

    def discard(self, work_dir: Path) -> None:
        shutil.rmtree(work_dir, ignore_errors=True)

    def result_path(self, job_id: str, name: str) -> Path | None:
        folder = (self.root / "results" / job_id).resolve()
        path = (folder / name).resolve()
        if not path.is_relative_to(folder) or not path.is_file():
            return None
        return path

    def delete_job_files(self, job_id: str, suffix: str) -> None:
        shutil.rmtree(self.root / "results" / job_id, ignore_errors=True)
        if suffix in (".nii", ".nii.gz"):
            self.input_path(job_id, suffix).unlink(missing_ok=True)

    def clean_incoming(self, older_than_s: float) -> int:
        cutoff = time.time() - older_than_s
        removed = 0
        for path in (self.root / "incoming").iterdir():
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:  # accepted or refused meanwhile
                continue
        return removed
