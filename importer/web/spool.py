"""A multipart upload streamed straight into the data dir, never into the system temp dir.

Starlette's form parser spools files to the system temp dir (often a small tmpfs or another
disk), then the upload is copied again into the data dir. Here the one file part is written as
it arrives into ``<data-dir>/incoming/``, so the data dir's disk is the only one that fills,
a full disk is seen at once (``write_chunk`` raises ``OSError`` ENOSPC or EDQUOT), and the
partial file is removed before the error goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from python_multipart.multipart import MultipartParser, parse_options_header

__all__ = ["FormRefused", "SpooledForm", "spool_form", "write_chunk"]

HEAD_BYTES = 8192


class FormRefused(Exception):
    """A form the service does not take; ``status`` is the HTTP answer (400 or 413)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class SpooledForm:
    """The form: its one file (on disk, in the data dir) and its text fields."""

    path: Path | None
    filename: str
    size: int
    head: bytes
    """The file's first bytes, to tell its type by."""
    fields: tuple[tuple[str, str], ...]

    def get(self, name: str) -> str | None:
        return next((v for k, v in self.fields if k == name), None)

    def getlist(self, name: str) -> list[str]:
        return [v for k, v in self.fields if k == name]


def write_chunk(fd: int, data: bytes | memoryview) -> None:
    """Write all of ``data`` to ``fd`` (the one place an upload's bytes reach the disk)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


@dataclass(slots=True)
class _Part:
    name: str = ""
    filename: str | None = None
    data: bytearray | None = None


def _sync_and_close(fd: int) -> None:
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


async def spool_form(
    chunks: AsyncIterator[bytes],
    content_type: str,
    scratch: Path,
    *,
    max_file_bytes: int,
    max_fields: int = 64,
    max_field_bytes: int = 64 * 1024,
) -> SpooledForm:
    """Read a multipart form, writing its file part (field ``file``) into ``scratch``.

    Args:
        chunks: The request body as it arrives.
        content_type: The request's Content-Type (with the boundary).
        scratch: Where the file is written (in the data dir).
        max_file_bytes: The file's cap: past it, 413.
        max_fields: Text fields allowed.
        max_field_bytes: One text field's cap.

    Returns:
        The form; the caller owns (moves or removes) ``path``.

    Raises:
        FormRefused: not a multipart form, a second file, too many or too large fields, too large a file.
        OSError: the file could not be written (the partial file is removed first).
    """
    kind, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise FormRefused(400, "send the upload as multipart/form-data")
    scratch.mkdir(parents=True, exist_ok=True)
    fields: list[tuple[str, str]] = []
    part = _Part()
    header_name = bytearray()
    header_value = bytearray()
    disposition = b""
    fd: int | None = None
    path: Path | None = None
    filename = ""
    size = 0
    head = bytearray()

    def on_part_begin() -> None:
        nonlocal part, disposition
        part, disposition = _Part(), b""

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header_name.extend(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header_value.extend(data[start:end])

    def on_header_end() -> None:
        nonlocal disposition
        if bytes(header_name).lower() == b"content-disposition":
            disposition = bytes(header_value)
        header_name.clear()
        header_value.clear()

    def on_headers_finished() -> None:
        nonlocal fd, path, filename
        _, options = parse_options_header(disposition)
        part.name = options.get(b"name", b"").decode("utf-8", "replace")
        if b"filename" in options:
            if part.name != "file" or fd is not None:
                raise FormRefused(400, "send one file, in the field 'file'")
            filename = options[b"filename"].decode("utf-8", "replace")
            part.filename = filename
            handle, name = tempfile.mkstemp(dir=scratch, prefix="upload-")
            fd, path = handle, Path(name)
        else:
            if len(fields) >= max_fields:
                raise FormRefused(400, f"too many form fields (at most {max_fields})")
            part.data = bytearray()

    def on_part_data(data: bytes, start: int, end: int) -> None:
        nonlocal size
        if part.data is not None:
            if len(part.data) + end - start > max_field_bytes:
                raise FormRefused(400, f"the form field {part.name!r} is too long")
            part.data.extend(data[start:end])
            return
        if fd is None:
            return
        size += end - start
        if size > max_file_bytes:
            raise FormRefused(413, f"the file is larger than {max_file_bytes // 2**20} MB")
        if len(head) < HEAD_BYTES:
            head.extend(data[start : min(end, start + HEAD_BYTES - len(head))])
        write_chunk(fd, memoryview(data)[start:end])

    def on_part_end() -> None:
        if part.data is not None:
            fields.append((part.name, part.data.decode("utf-8", "replace")))

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
    )
    try:
        async for chunk in chunks:
            parser.write(chunk)
        parser.finalize()
        if fd is not None:
            # The job's input must outlive a crash once the upload is answered. An fsync of a large
            # upload can take a second: in a thread, so the loop goes on serving. The thread owns the
            # descriptor from here and closes it even if this request is abandoned meanwhile.
            owned, fd = fd, None
            await asyncio.to_thread(_sync_and_close, owned)
    except BaseException:
        if fd is not None:
            os.close(fd)
            fd = None
        if path is not None:
            with contextlib.suppress(OSError):
                path.unlink()
        raise
    finally:
        if fd is not None:
            os.close(fd)
    return SpooledForm(path, filename, size, bytes(head), tuple(fields))
