"""The JSON API (and a bare front page) over ``JobService``, behind ``security.Guard``.

Routes (every one but /healthz needs the token; see ``security``):

    GET    /healthz                        200 {"status": "ok"} while the data dir takes writes, else 503
    GET    /metrics                        Prometheus text: jobs, rows, requests and 429s per key, queues
    POST   /logout                         clears the session cookie
    GET    /, /jobs/...                    the page (``pages``: HTML over the same service)
    GET    /api/jobs                       every job; ?user=NAME&status=S filter the list
    GET    /api/audit                      ?since=ISO: the audit records as JSON lines (``audit``)
    POST   /api/jobs                       multipart: file, sheet, default_region, map (repeatable),
                                           uploaded_by -> 201 with the job (validation runs after)
    GET    /api/jobs/{id}                  one job (410 with the reason for a damaged one)
    PATCH  /api/jobs/{id}                  {"sheet" or "sheets": [...], "default_region", "map",
                                           "header_row", "encoding", "skip_hidden_rows",
                                           "ignore_columns", "on_existing", "max_error_rate"}:
                                           read again, the plan dropped
    GET    /api/jobs/{id}/rows             ?status=failed&offset=0&limit=100
    PATCH  /api/jobs/{id}/rows/{row}       {"Header or field": "new value", ...} before sending
    POST   /api/jobs/{id}/edits            one operation (``web.edits``): set, replace, fill, exclude,
                                           include, accept_suggestions, undo -> the job, rows changed
    GET    /api/jobs/{id}/edits            the operations: who, when, what, how many cells
    POST   /api/jobs/{id}/plan|start|cancel
                                           start with {"at": "<ISO 8601 time with zone>"}: scheduled
                                           (``windows``); again with another "at": moved
    POST   /api/jobs/{id}/approve          four eyes (``approval``): someone other than the planner
    POST   /api/jobs/{id}/resume           a cancelled or stopped job: plan the rows left -> planned
    POST   /api/jobs/{id}/rollback         a finished import: a new rollback job undoing it (``undo``)
    POST   /api/exports, GET /api/exports[/{id}[/routing.xlsx]]: current routing (``exports``)
    GET    /api/jobs/{id}/events           server-sent events, each a full snapshot of the job
    GET    /api/jobs/{id}/results.xlsx     the results workbook (a snapshot until the job ends)
    GET    /api/jobs/{id}/failed.xlsx      the failed rows, in the input's own columns
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import sqlite3
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from python_multipart.exceptions import FormParserError
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Message, Receive

from importer.errors import ImporterError
from importer.read.sniff import Format, sniff
from importer.vocab import OnExisting
from importer.web import engine, exports, observe, ratememory, windows
from importer.web.approval import ApprovalRefused
from importer.web.audit import parse_since
from importer.web.jobs import Job, JobDamaged, JobError, JobService, JobStatus, safe_name
from importer.web.notify import Notifier
from importer.web.pages import page_routes
from importer.web.people import People
from importer.web.security import Guard, user_of
from importer.web.spool import FormRefused, spool_form
from importer.web.store import full_disk

__all__ = ["UploadRefused", "WebConfig", "accept_upload", "create_app", "more_options", "sniff_upload"]

XLSX_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
FORM_OVERHEAD = 64 * 1024
"""Room for the multipart framing and the small fields around the file."""
JSON_LIMIT = 64 * 1024
EDIT_ROWS_SHOWN = 100
"""Rows an edit operation answers with in full (all changed rows are listed by number)."""
KEEPALIVE_SECONDS = 15.0
EVENT_MIN_GAP = 0.2
"""At most five snapshots a second per stream, however fast rows settle."""
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class WebConfig:
    """What the app needs besides the jobs: the token, the names it answers to, the upload cap."""

    token: str
    hosts: frozenset[str]
    max_upload_bytes: int
    scratch: Path
    """Where uploads land while they arrive (on the data dir's disk, so a move is a rename)."""
    cookie: str = "voicelink_session"
    """The session cookie's name (``security.cookie_name``: with the port)."""
    people: People | None = None
    """The users file's users (``people``); None: the token stands for one admin."""
    user_header: str = ""
    trusted_proxies: tuple[str, ...] = ()
    notify_urls: tuple[str, ...] = ()
    link_base: str = ""
    """The server's address as the team reaches it, for links in notifications."""


class _TooLarge(Exception):
    pass


class _BadBody(Exception):
    """A request body the API cannot take (400 with the message)."""


def _counting(receive: Receive, limit: int) -> Receive:
    """Pass the body through, but stop once it is over ``limit`` bytes (never held whole)."""
    seen = 0

    async def wrapped() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _TooLarge
        return message

    return wrapped


def sniff_upload(head: bytes, name: str) -> str | None:
    """The suffix to store an upload under, told by its first bytes; None for unsupported content."""
    suffix = Path(name).suffix.lower()
    # The reader's own sniffer: what it will open as a workbook is what is stored as one (the
    # name's suffix is the web's to choose, so the content is judged as if it were named .csv).
    found = sniff(head, "upload.csv") if head else None
    if found is Format.ZIP:  # xlsx, xlsm and ods are zip files; the reader checks which
        return suffix if suffix in (".xlsx", ".xlsm", ".ods") else ".xlsx"
    if found is Format.OLE:
        return ".xls"
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):  # UTF-16 text with its byte order mark
        return ".tsv" if suffix in (".tsv", ".tab") else ".csv"
    if not head or b"\x00" in head:
        return None
    controls = sum(1 for b in head if b < 9 or 13 < b < 32)
    if controls > len(head) // 100:
        return None
    return ".tsv" if suffix in (".tsv", ".tab") else ".csv"


def more_options(body: dict[str, Any]) -> dict[str, Any]:
    """The job options beyond sheet, region and mapping that ``body`` sets (the CLI's options).

    Raises:
        JobError: a value of the wrong kind (the API answers 409 with the message).
    """
    out: dict[str, Any] = {}
    if "encoding" in body:
        encoding = body["encoding"]
        if encoding is not None and not isinstance(encoding, str):
            raise JobError('"encoding" must be a text encoding name (like "cp1252"), or null to detect it')
        out["encoding"] = _clean_text(encoding, 40) or None
    if "skip_hidden_rows" in body:
        if not isinstance(body["skip_hidden_rows"], bool):
            raise JobError('"skip_hidden_rows" must be true or false')
        out["skip_hidden_rows"] = body["skip_hidden_rows"]
    if "ignore_columns" in body:
        ignored = body["ignore_columns"]
        if not isinstance(ignored, list) or not all(isinstance(c, str) for c in ignored):
            raise JobError('"ignore_columns" must be a list of header texts or column letters')
        out["ignore_columns"] = [_clean_text(c) for c in ignored if _clean_text(c)]
    if "on_existing" in body:
        if body["on_existing"] not in OnExisting._value2member_map_:
            raise JobError(f'"on_existing" must be one of {", ".join(OnExisting)}')
        out["on_existing"] = str(body["on_existing"])
    if "max_error_rate" in body:
        rate = body["max_error_rate"]
        if rate is not None and (
            isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 <= rate <= 1
        ):
            raise JobError('"max_error_rate" must be a share between 0 and 1, or null for no limit')
        out["max_error_rate"] = None if rate is None else float(rate)
    return out


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _clean_text(value: object, limit: int = 200) -> str:
    return _CONTROL.sub(" ", str(value or "")).strip()[:limit]


class UploadRefused(Exception):
    """An upload the service does not take; ``status`` is the HTTP answer (400, 413, 415, 500, 503, 507)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


async def accept_upload(request: Request, service: JobService, config: WebConfig) -> Job:
    """Take a multipart upload (``file``, ``sheet``, ``default_region``, ``map``, ``uploaded_by``).

    The body is counted as it streams into the data dir (``spool``) and refused once it passes
    the cap; the file type is told by content. The job is answered at once and validated in the
    background. The page's form handler (no JavaScript) can call this too and redirect to the job.

    Raises:
        UploadRefused: too large, not a spreadsheet, a bad ``map``, the server is stopping, or
            its disk is full (507; the partial upload is removed).
    """
    too_large = UploadRefused(413, f"the file is larger than {config.max_upload_bytes // 2**20} MB")
    if service.closing.is_set():
        raise UploadRefused(503, "the server is shutting down")
    limit = config.max_upload_bytes + FORM_OVERHEAD
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise too_large
    counted = Request(request.scope, _counting(request.receive, limit))
    try:
        form = await spool_form(
            counted.stream(),
            request.headers.get("content-type", ""),
            config.scratch,
            max_file_bytes=config.max_upload_bytes,
            max_fields=64,
            max_field_bytes=64 * 1024,
        )
    except _TooLarge:
        raise too_large from None
    except FormRefused as exc:
        raise UploadRefused(exc.status, str(exc)) from None
    except FormParserError:
        raise UploadRefused(400, "the upload is not a well-formed multipart form") from None
    except ClientDisconnect:
        observe.LOGGER.warning(
            "an upload was cut off before it ended (the client went away); nothing was kept",
            extra={"fields": {"event": "refused", "reason": "upload cut off"}},
        )
        raise UploadRefused(400, "the upload was cut off before it ended; nothing was kept") from None
    except OSError as exc:
        raise _disk_refusal(exc) from None
    scratch = form.path
    try:
        if scratch is None:
            raise UploadRefused(400, "no file in the form (field 'file')")
        name = form.filename or "upload"
        suffix = sniff_upload(form.head, name)
        if suffix is None:
            raise UploadRefused(415, "unsupported file: send a CSV, TSV, XLSX, XLSM, XLS or ODS spreadsheet")
        try:
            column_map = engine.parse_column_map([m for m in form.getlist("map") if m.strip()])
        except ImporterError as exc:
            raise UploadRefused(400, str(exc)) from None
        try:
            return service.create(
                scratch,
                file=_clean_text(name) or "upload",  # shown escaped; disk and download names are sanitised
                stored_name=safe_name(name, suffix),
                sheet=_clean_text(form.get("sheet")) or None,
                default_region=_clean_text(form.get("default_region"), 8) or None,
                column_map=column_map,
                # With users, the uploader is who signed in; the form's free-text name only without.
                uploaded_by=(
                    user_of(request.scope).name
                    if config.people is not None
                    else _clean_text(form.get("uploaded_by"), 100)
                ),
                client=request.client.host if request.client else "",
            )
        except (OSError, sqlite3.Error) as exc:
            raise _disk_refusal(exc) from None
    finally:
        if scratch is not None:
            scratch.unlink(missing_ok=True)  # moved into the job's folder unless creating it failed


def _disk_refusal(exc: BaseException) -> UploadRefused:
    """507 for a full disk, 500 for another failing write: one line, logged once."""
    if full_disk(exc):
        observe.log_storage_error("", "an upload was refused: the server's disk is full")
        return UploadRefused(507, "the server's disk is full; the upload was not kept (try again later)")
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    observe.log_storage_error("", f"an upload could not be stored: {reason}")
    return UploadRefused(500, f"the upload could not be stored: {reason}")


def data_dir_writable(data_dir: Path) -> bool:
    """Whether a file can be created, written and removed in the data dir now."""
    try:
        fd, name = tempfile.mkstemp(dir=data_dir, prefix=".healthz-")
        try:
            os.write(fd, b"ok")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(name)
    except OSError:
        return False
    return True


def create_app(service: JobService, config: WebConfig) -> Starlette:
    """Build the ASGI app: routes over ``service``, wrapped in the Guard."""

    notifier = Notifier(config.notify_urls, link_base=config.link_base, involved=service.audit_log.involved)
    service.events.listeners.append(notifier.job_event)

    def job_or_404(request: Request) -> Job | None:
        return service.get(str(request.path_params["job_id"]))

    def with_job(
        handler: Callable[[Request, Job], Awaitable[Response]],
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            job = job_or_404(request)
            if job is None:
                damaged = service.damaged.get(str(request.path_params["job_id"]))
                if damaged is not None:  # kept on disk as it is; gone from service until repaired
                    return _error(410, f"this job is damaged and cannot be used: {damaged}")
                return _error(404, "no such job")
            try:
                return await handler(request, job)
            except JobError as exc:
                return _error(409, str(exc))
            except _BadBody as exc:
                return _error(400, str(exc))
            except JobDamaged as exc:
                return _error(410, str(exc))  # logged where it was found
            except LookupError as exc:
                return _error(404, str(exc))
            except ImporterError as exc:
                return _error(400, str(exc))
            except _TooLarge:
                return _error(413, "request body too large")

        return endpoint

    async def read_json(request: Request) -> Any:
        body = b""
        async for chunk in Request(request.scope, _counting(request.receive, JSON_LIMIT)).stream():
            body += chunk
        try:
            return json.loads(body or b"{}")
        except ValueError:
            raise JobError("the body is not JSON") from None
        except RecursionError:
            observe.LOGGER.warning(
                f"{request.method} {request.url.path}: refused a JSON body nested too deeply",
                extra={"fields": {"event": "refused", "reason": "json nested too deeply"}},
            )
            raise _BadBody("the body's JSON is nested too deeply (send a flat object)") from None

    async def list_jobs(request: Request) -> Response:
        jobs = service.list()
        if status := request.query_params.get("status", ""):
            jobs = [j for j in jobs if j["status"] == status]
        if user := request.query_params.get("user", ""):
            acted = service.audit_log.jobs_of(user)
            jobs = [j for j in jobs if j["uploaded_by"] == user or j["id"] in acted]
        return JSONResponse({"jobs": jobs})

    async def audit(request: Request) -> Response:
        try:
            since = parse_since(request.query_params.get("since", ""))
        except ValueError:
            return _error(400, "since must be an ISO 8601 time, e.g. 2026-01-31T22:00:00Z")
        lines = await asyncio.to_thread(lambda: list(service.audit_log.lines(since)))
        return Response("".join(lines), media_type="application/x-ndjson")

    async def create_job(request: Request) -> Response:
        try:
            job = await accept_upload(request, service, config)
        except UploadRefused as exc:
            return _error(exc.status, str(exc))
        return JSONResponse(service.snapshot(job), status_code=201)

    async def get_job(request: Request, job: Job) -> Response:
        return JSONResponse(service.snapshot(job))

    async def set_options(request: Request, job: Job) -> Response:
        body = await read_json(request)
        if not isinstance(body, dict):
            raise JobError('send {"sheet": ..., "default_region": ..., "map": [...]}')
        maps = body.get("map", [f"{h}={f}" for h, f in job.column_map.items()])
        if not isinstance(maps, list):
            raise JobError('"map" must be a list of "Header=field"')
        header_row = body.get("header_row", ...)  # left out: unchanged
        if header_row not in (..., None) and (type(header_row) is not int or header_row < 1):
            raise JobError('"header_row" must be a row number (1 or more), or null for the one found')
        more = more_options(body)
        sheet = _clean_text(body.get("sheet", job.sheet)) or None
        if "sheets" in body:  # the picker: one sheet, or several read as one table
            chosen = body["sheets"]
            if not isinstance(chosen, list) or not chosen or not all(isinstance(n, str) for n in chosen):
                raise JobError('"sheets" must be a list of sheet names')
            names = list(dict.fromkeys(_clean_text(n) for n in chosen))
            sheet, more["sheets"] = (names[0], []) if len(names) == 1 else (None, names)
        elif "sheet" in body:
            more["sheets"] = []
        await service.set_options(
            job,
            sheet,
            _clean_text(body.get("default_region", job.default_region), 8) or None,
            engine.parse_column_map([str(m) for m in maps]),
            header_row,
            **more,
        )
        return JSONResponse(service.snapshot(job))

    async def rows(request: Request, job: Job) -> Response:
        if job.status is JobStatus.VALIDATING:
            return _error(409, "the job is still validating")
        if job.status is JobStatus.FAILED and job.report is None:
            return _error(409, job.error or "the job failed")
        q = request.query_params
        try:
            offset = max(0, int(q.get("offset", "0")))
            limit = min(1000, max(1, int(q.get("limit", "100"))))
        except ValueError:
            return _error(400, "offset and limit must be whole numbers")
        status = q.get("status") or None
        return JSONResponse(await service.rows(job, status, offset, limit))

    async def edit_row(request: Request, job: Job) -> Response:
        try:
            row = int(request.path_params["row"])
        except ValueError:
            return _error(404, "no such row")
        body = await read_json(request)
        if not isinstance(body, dict) or not body:
            raise JobError('send {"column": "new value"}')
        changes = {str(k): "" if v is None else str(v) for k, v in body.items()}
        who = user_of(request.scope).name if config.people is not None else ""
        await service.edit(job, row, changes, who=who)
        report = await service.report(job)
        position = int(report.table.frame.index.get_loc(row))  # type: ignore[arg-type]
        one = await service.rows(job, None, position, 1)
        return JSONResponse({"job": service.snapshot(job), "row": one["rows"][0], "columns": one["columns"]})

    async def apply_edit(request: Request, job: Job) -> Response:
        body = await read_json(request)
        if not isinstance(body, dict) or "op" not in body:
            raise JobError(
                'send one operation, e.g. {"op": "set", "row": 5, "column": "Status", "value": "1"}'
            )
        who = user_of(request.scope).name if config.people is not None else _clean_text(body.get("who"), 100)
        changed = await service.apply_op(job, [body], who=who)
        shown_rows = await service.row_items(job, changed[:EDIT_ROWS_SHOWN])
        return JSONResponse({"job": service.snapshot(job), "changed": changed, "rows": shown_rows})

    async def list_edits(request: Request, job: Job) -> Response:
        return JSONResponse(
            {
                "edits": [
                    {
                        "id": o.id,
                        "op": o.op,
                        "who": o.who,
                        "when": o.when,
                        "what": o.what,
                        "cells": o.cells,
                        "rows": len(o.rows),
                        "in_effect": not o.undone,
                        "undone": o.undone or None,
                    }
                    for o in job.operations
                ]
            }
        )

    async def rollback(request: Request, job: Job) -> Response:
        body = await read_json(request)
        given = body.get("uploaded_by") if isinstance(body, dict) else ""
        who = user_of(request.scope).name if config.people is not None else _clean_text(given, 100)
        made = service.rollback(job, who=who, client=request.client.host if request.client else "")
        return JSONResponse(service.snapshot(made), status_code=201)

    async def plan(request: Request, job: Job) -> Response:
        await service.plan(job)
        return JSONResponse(service.snapshot(job), status_code=202)

    async def start(request: Request, job: Job) -> Response:
        body = await read_json(request)
        if isinstance(body, dict) and "at" in body:  # a change window: send then, not now
            try:
                moment = windows.parse_at(body["at"], service.scheduler.clock())
            except ValueError as exc:
                return _error(400, str(exc))
            service.scheduler.schedule(job, moment, user_of(request.scope).name)
        else:
            await service.start(job)
        return JSONResponse(service.snapshot(job), status_code=202)

    async def approve(request: Request, job: Job) -> Response:
        try:
            await service.approve(job, user_of(request.scope))
        except ApprovalRefused as exc:
            return _error(403, str(exc))
        return JSONResponse(service.snapshot(job))

    async def resume(request: Request, job: Job) -> Response:
        left = await service.resume(job)
        return JSONResponse({**service.snapshot(job), "remaining": left}, status_code=202)

    async def cancel(request: Request, job: Job) -> Response:
        await service.cancel(job)
        return JSONResponse(service.snapshot(job), status_code=202)

    async def events(request: Request, job: Job) -> Response:
        async def stream() -> AsyncIterator[str]:
            seen = -1
            while not service.closing.is_set():
                if job.version != seen:
                    seen = job.version
                    yield f"event: job\nid: {seen}\ndata: {json.dumps(service.snapshot(job))}\n\n"
                    await asyncio.sleep(EVENT_MIN_GAP)
                    continue
                if not await job.wait_change(seen, KEEPALIVE_SECONDS):
                    yield ": keepalive\n\n"

        return StreamingResponse(
            stream(), media_type="text/event-stream", headers={"X-Accel-Buffering": "no"}
        )

    def download(kind: str) -> Callable[[Request, Job], Awaitable[Response]]:
        async def endpoint(request: Request, job: Job) -> Response:
            path = await service.workbook(job, kind)
            if path is None:
                if kind == "failed":
                    return _error(404, "no failed rows")
                return _error(409, job.error or f"the job is {job.status.value}; no workbook yet")
            stem = Path(job.file).stem or "upload"
            name = safe_name(f"{stem}.{kind}.xlsx")
            return FileResponse(path, media_type=XLSX_TYPE, filename=name)

        return endpoint

    async def healthz(request: Request) -> Response:
        ok = await asyncio.to_thread(data_dir_writable, service.store.path.parent)
        if ok:
            return JSONResponse({"status": "ok"})
        return JSONResponse(
            {"status": "unavailable", "reason": "the data dir takes no writes"}, status_code=503
        )

    async def metrics(request: Request) -> Response:
        keys = [
            observe.KeyFigures(
                fingerprint=key,
                requests=lane.limiter.requests,
                throttled=lane.limiter.throttled,
                waiting=len(lane.waiting),
                sending=int(lane.running is not None),
            )
            for key, lane in service.lanes.items()
        ]
        jobs = list(service.jobs.values())
        text = observe.render_metrics(
            [j.status.value for j in jobs] + ["damaged"] * len(service.damaged),
            [j.counts for j in jobs],
            keys,
            service.events,
        )
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    async def logout(request: Request) -> Response:
        response = PlainTextResponse("signed out")
        response.delete_cookie(config.cookie, path="/", httponly=True, samesite="strict")
        return response

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await service.load()
        notifier.start()
        try:
            yield
        finally:
            await service.stop()
            await notifier.stop()
            # A clean stop: the next start knows each key's window exactly (ratememory).
            ratememory.save_all(service.store, [(k, lane.limiter) for k, lane in service.lanes.items()])

    routes = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/logout", logout, methods=["POST"]),
        *page_routes(service, upload=create_job),
        Route("/api/jobs", list_jobs, methods=["GET"]),
        Route("/api/audit", audit, methods=["GET"]),
        Route("/api/jobs", create_job, methods=["POST"]),
        Route("/api/jobs/{job_id}", with_job(get_job), methods=["GET"]),
        Route("/api/jobs/{job_id}", with_job(set_options), methods=["PATCH"]),
        Route("/api/jobs/{job_id}/rows", with_job(rows), methods=["GET"]),
        Route("/api/jobs/{job_id}/rows/{row}", with_job(edit_row), methods=["PATCH"]),
        Route("/api/jobs/{job_id}/edits", with_job(apply_edit), methods=["POST"]),
        Route("/api/jobs/{job_id}/edits", with_job(list_edits), methods=["GET"]),
        Route("/api/jobs/{job_id}/plan", with_job(plan), methods=["POST"]),
        Route("/api/jobs/{job_id}/start", with_job(start), methods=["POST"]),
        Route("/api/jobs/{job_id}/cancel", with_job(cancel), methods=["POST"]),
        Route("/api/jobs/{job_id}/approve", with_job(approve), methods=["POST"]),
        Route("/api/jobs/{job_id}/resume", with_job(resume), methods=["POST"]),
        Route("/api/jobs/{job_id}/rollback", with_job(rollback), methods=["POST"]),
        *exports.api_routes(service.exports, named_users=config.people is not None),
        Route("/api/jobs/{job_id}/events", with_job(events), methods=["GET"]),
        Route("/api/jobs/{job_id}/results.xlsx", with_job(download("results")), methods=["GET"]),
        Route("/api/jobs/{job_id}/failed.xlsx", with_job(download("failed")), methods=["GET"]),
    ]

    async def damaged(request: Request, exc: Exception) -> Response:
        # A page (not the API, which answers in ``with_job``) reached files that went bad.
        return PlainTextResponse(str(exc), status_code=410)

    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={JobDamaged: damaged})

    def owner(job_id: str) -> str | None:
        job = service.get(job_id)
        return None if job is None else job.uploaded_by

    app.add_middleware(
        Guard,
        token=config.token,
        hosts=config.hosts,
        cookie=config.cookie,
        people=config.people,
        user_header=config.user_header,
        trusted_proxies=config.trusted_proxies,
        owner=owner,
        on_action=service.audit_log.action,
    )
    return app
