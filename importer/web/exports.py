"""Download current routing: the CLI's ``export`` run by the server, against its key.

``POST /api/exports`` starts one (202 with its id); ``GET /api/exports/{id}`` says how it is
going; ``GET /api/exports/{id}/routing.xlsx`` is the workbook, the one ``voicelink-import export``
writes (the same call, ``export_routing_async``), so importing it again plans every row as
unchanged. Its reads go through the key's one rate limiter, the one the jobs' sends use, and one
export runs at a time (the server has one key): another asked for meanwhile is refused (409),
naming the one running.

Each export is a folder ``<data-dir>/exports/<id>/`` with ``export.json`` (its record) and
``routing.xlsx``. A restart lists the finished ones as they were; one that was running is listed
as ``lost``, with why (nothing to resume: export again). Only the newest ``KEEP`` are kept.

An export only reads, so a viewer may ask for one (``people``: it is a view).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import re
import secrets
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from importer.account.limiter import RateLimiter
from importer.jobs.export import export_routing_async
from importer.jobs.session import now_text
from importer.options import ExportConfig
from importer.web import observe
from importer.web.engine import Connection, clean_error
from importer.web.records import reason_of, write_json
from importer.web.security import user_of

__all__ = ["Export", "ExportBusy", "ExportService", "api_routes"]

KEEP = 20
"""Finished exports kept (the oldest go when a new one starts): the data dir does not grow for ever."""
WORKBOOK = "routing.xlsx"
XLSX_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
_ID = re.compile(r"[0-9a-f]{24}")


class ExportBusy(Exception):
    """An export is running already (the API answers 409 with the message)."""


@dataclass(frozen=True, slots=True)
class Export:
    """One export: ``running``, ``done``, ``failed`` (``error`` says why) or ``lost`` (a restart)."""

    id: str
    created: str
    by: str = ""
    status: str = "running"
    finished: str = ""
    routed: int = 0
    requests: int = 0
    error: str = ""

    def shown(self) -> dict[str, Any]:
        """The export as the API and the page show it (never a path on the server, never the key)."""
        return {
            **dataclasses.asdict(self),
            "finished": self.finished or None,
            "error": self.error or None,
            "workbook": f"/api/exports/{self.id}/{WORKBOOK}" if self.status == "done" else None,
        }


class ExportService:
    """The server's exports: start one, follow it, keep the finished ones across restarts."""

    def __init__(self, data_dir: Path, connection: Connection, limiter: Callable[[], RateLimiter]) -> None:
        self.root = data_dir / "exports"
        self.connection = connection
        self.limiter = limiter
        """The key's limiter (``JobService.key_limiter``), asked for when an export starts."""
        self.exports: dict[str, Export] = {}
        self.task: asyncio.Task[None] | None = None

    def load(self) -> None:
        """Read the exports on disk; one found running was cut off by a stop: ``lost``."""
        self.root.mkdir(parents=True, exist_ok=True)
        for folder in sorted(self.root.iterdir()):
            if not _ID.fullmatch(folder.name):
                continue
            try:
                data = json.loads((folder / "export.json").read_text(encoding="utf-8"))
                found = Export(**{f.name: data[f.name] for f in dataclasses.fields(Export) if f.name in data})
            except (OSError, ValueError, TypeError) as exc:
                found = Export(
                    folder.name, "", status="lost", error=f"its record cannot be read: {reason_of(exc)}"
                )
            if found.status == "running":
                found = self._save(
                    dataclasses.replace(
                        found,
                        status="lost",
                        finished=now_text(),
                        error="the server stopped while it ran; download current routing again",
                    )
                )
            elif found.status == "done" and not (folder / WORKBOOK).is_file():
                found = dataclasses.replace(
                    found, status="lost", error="its workbook is no longer on the server"
                )
            self.exports[found.id] = found

    def list(self) -> list[Export]:
        """Every export, newest first."""
        return sorted(self.exports.values(), key=lambda e: e.created, reverse=True)

    def get(self, export_id: str) -> Export | None:
        return self.exports.get(export_id) if _ID.fullmatch(export_id) else None

    def workbook(self, export: Export) -> Path:
        return self.root / export.id / WORKBOOK

    def start(self, by: str) -> Export:
        """Start an export in the background.

        Raises:
            ExportBusy: one is running (one at a time on the key).
        """
        running = next((e for e in self.exports.values() if e.status == "running"), None)
        if running is not None:
            raise ExportBusy(
                f"an export is running already (export {running.id}, asked by {running.by or 'someone'}); "
                "wait for it and download that one"
            )
        self._prune()
        # To the microsecond: two exports in one second are listed in the order they were asked for.
        created = dt.datetime.now().astimezone().isoformat(timespec="microseconds")
        export = Export(secrets.token_hex(12), created, by=by)
        (self.root / export.id).mkdir(parents=True)
        self._save(export)
        self.task = asyncio.create_task(self._run(export))
        return export

    async def stop(self) -> None:
        """Stop a running export (it is listed as lost on the next start)."""
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    async def _run(self, export: Export) -> None:
        config = ExportConfig.using(self.connection, output=self.workbook(export))
        try:
            summary = await export_routing_async(
                config, transport=self.connection.transport, limiter=self.limiter()
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the API, the key, the disk: the export says why, the server goes on
            reason = clean_error(exc)
            observe.LOGGER.warning(
                f"export {export.id} failed: {reason}",
                extra={"fields": {"event": "export failed", "export": export.id, "reason": reason}},
            )
            self._save(dataclasses.replace(export, status="failed", finished=now_text(), error=reason))
            return
        self._save(
            dataclasses.replace(
                export, status="done", finished=now_text(), routed=summary.routed, requests=summary.requests
            )
        )

    def _save(self, export: Export) -> Export:
        try:
            write_json(self.root / export.id / "export.json", dataclasses.asdict(export))
        except OSError as exc:
            observe.log_storage_error("", f"export {export.id} could not be saved: {reason_of(exc)}")
        self.exports[export.id] = export
        return export

    def _prune(self) -> None:
        for old in self.list()[KEEP - 1 :]:
            shutil.rmtree(self.root / old.id, ignore_errors=True)
            del self.exports[old.id]


def api_routes(exports: ExportService, *, named_users: bool) -> list[Route]:
    """``/api/exports`` routes; ``named_users``: the server has a users file (an export names who asked)."""

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    async def start(request: Request) -> Response:
        by = user_of(request.scope).name if named_users else ""
        try:
            export = exports.start(by)
        except ExportBusy as exc:
            return error(409, str(exc))
        return JSONResponse(export.shown(), status_code=202)

    async def listed(request: Request) -> Response:
        return JSONResponse({"exports": [e.shown() for e in exports.list()]})

    async def one(request: Request) -> Response:
        export = exports.get(str(request.path_params["export_id"]))
        if export is None:
            return error(404, "no such export")
        return JSONResponse(export.shown())

    async def workbook(request: Request) -> Response:
        export = exports.get(str(request.path_params["export_id"]))
        if export is None:
            return error(404, "no such export")
        if export.status == "running":
            return error(409, "the export is still running")
        if export.status != "done":
            return error(410, f"this export has no workbook: {export.error}")
        name = f"routing-{export.created[:19].replace(':', '').replace('-', '')}.xlsx"
        return FileResponse(exports.workbook(export), media_type=XLSX_TYPE, filename=name)

    return [
        Route("/api/exports", start, methods=["POST"]),
        Route("/api/exports", listed, methods=["GET"]),
        Route("/api/exports/{export_id}", one, methods=["GET"]),
        Route("/api/exports/{export_id}/routing.xlsx", workbook, methods=["GET"]),
    ]
