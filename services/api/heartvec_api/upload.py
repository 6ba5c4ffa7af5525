"""Receiving `multipart/form-data` uploads as a stream: the file part goes to a staging file
chunk by chunk (never whole in memory), its size is capped while it arrives, and the small form
fields are collected on the side."""

from __future__ import annotations

import errno
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import anyio
from python_multipart import MultipartParser
from python_multipart.multipart import parse_options_header
from starlette.requests import Request

FILE_FIELD = "file"
MAX_FIELD_BYTES = 4096
GZIP_MAGIC = b"\x1f\x8b"


class UploadRejected(Exception):
    """An upload refused while it arrived; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


@dataclass
class Upload:
    """What a request carried: the file (staged on disk) and the other form fields."""

    staged: Path
    filename: str | None = None
    size: int = 0
    sha256: str = ""
    head: bytes = b""
    fields: dict[str, str] = field(default_factory=dict)

    @property
    def suffix(self) -> str:
        """`.nii.gz` for gzip content, else `.nii` (by content, not by the client's name)."""
        return ".nii.gz" if self.head.startswith(GZIP_MAGIC) else ".nii"


class _Parts:
    """The parser's callbacks: route each part's bytes to the file or to a field."""

    def __init__(self, max_file_bytes: int) -> None:
        self.max_file_bytes = max_file_bytes
        self.pending: list[bytes] = []  # file bytes parsed but not yet written
        self.fields: dict[str, str] = {}
        self.filename: str | None = None
        self.file_parts = 0
        self.file_bytes = 0
        self.digest = hashlib.sha256()
        self.head = b""
        self._header_field = b""
        self._headers: dict[bytes, bytes] = {}
        self._name: str | None = None
        self._value = bytearray()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        key = self._header_field.lower()
        self._headers[key] = self._headers.get(key, b"") + data[start:end]

    def on_header_end(self) -> None:
        self._header_field = b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._headers = {}
        name = options.get(b"name", b"").decode("utf-8", "replace")
        self._name = name
        if name == FILE_FIELD:
            self.file_parts += 1
            if self.file_parts > 1:
                raise UploadRejected(400, f"more than one '{FILE_FIELD}' part")
            raw = options.get(b"filename")
            self.filename = None if raw is None else Path(raw.decode("utf-8", "replace")).name

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self._name == FILE_FIELD:
            self.file_bytes += len(chunk)
            if self.file_bytes > self.max_file_bytes:
                raise UploadRejected(
                    413, f"upload larger than the limit of {self.max_file_bytes:,} bytes"
                )
            if len(self.head) < 512:
                self.head += chunk[: 512 - len(self.head)]
            self.digest.update(chunk)
            self.pending.append(chunk)
        else:
            self._value += chunk
            if len(self._value) > MAX_FIELD_BYTES:
                raise UploadRejected(400, f"form field {self._name!r} is too long")

    def on_part_end(self) -> None:
        if self._name is not None and self._name != FILE_FIELD:
            self.fields[self._name] = self._value.decode("utf-8", "replace")
        self._name, self._value = None, bytearray()


async def receive_upload(request: Request, staged: Path, max_file_bytes: int) -> Upload:
    """Stream a multipart request's file part into `staged`.

    Raises:
        UploadRejected: 415 not multipart/form-data, 413 too large, 400 malformed or no file.
    """
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data" or b"boundary" not in options:
        raise UploadRejected(415, "expected a multipart/form-data upload with a 'file' part")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_file_bytes + (1 << 20):
        raise UploadRejected(413, f"upload larger than the limit of {max_file_bytes:,} bytes")
    parts = _Parts(max_file_bytes)
    callbacks = {
        name: getattr(parts, name)
        for name in (
            "on_header_field",
            "on_header_value",
            "on_header_end",
            "on_headers_finished",
            "on_part_data",
            "on_part_end",
        )
    }
    parser = MultipartParser(options[b"boundary"], callbacks)  # type: ignore[arg-type]
    try:
        with staged.open("wb") as out:
            async for chunk in request.stream():
                parser.write(chunk)
                if parts.pending:
                    data, parts.pending = b"".join(parts.pending), []
                    await anyio.to_thread.run_sync(out.write, data)
            parser.finalize()
    except UploadRejected:
        staged.unlink(missing_ok=True)
        raise
    except OSError as e:
        staged.unlink(missing_ok=True)
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise UploadRejected(507, "not enough storage space for the upload") from e
        raise
    except Exception as e:  # the parser's own errors for a malformed body
        staged.unlink(missing_ok=True)
        raise UploadRejected(400, f"malformed multipart body ({e})") from e
    if parts.file_parts == 0:
        staged.unlink(missing_ok=True)
        raise UploadRejected(422, f"no '{FILE_FIELD}' part in the upload")
    return Upload(
        staged=staged,
        filename=parts.filename,
        size=parts.file_bytes,
        sha256=parts.digest.hexdigest(),
        head=parts.head,
        fields=parts.fields,
    )
