"""The audit records: who asked what of which job, when, from where, and every status a job reached.

One table in the data dir's ``jobs.sqlite`` (its own connection; WAL lets it share the file)::

    audit  seq, at (UTC ISO 8601), job, kind ("action" or "event"), name, user, client, answer, detail

An *action* is a state-changing request, written by the Guard as its answer leaves (refusals
too, with their reason): ``upload``, ``fix``, ``plan``, ``start``, ``cancel``, ``approve``. An
*event* is a status the job reached (``created``, ``validated``, ``planned``, ``started``,
``done``, ``failed``, ``cancelled``), told by ``observe.JobEvents``; work the server does in the
background is the server's (``user`` empty), a job's creation is its uploader's.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from importer.errors import InputError
from importer.web.store import DB_NAME

if TYPE_CHECKING:
    from importer.web.jobs import Job

__all__ = ["AuditLog", "parse_since"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL, job TEXT NOT NULL, kind TEXT NOT NULL,
    name TEXT NOT NULL, user TEXT NOT NULL, client TEXT NOT NULL, answer INTEGER, detail TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_job ON audit (job);
CREATE INDEX IF NOT EXISTS audit_at ON audit (at);
"""
_SUMMARY = {"plan": "planned by", "approve": "approved by", "start": "started by"}
"""The actions the results workbook's Summary names, and how."""


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def parse_since(text: str) -> str:
    """``?since=`` as the records' own form (UTC, seconds); empty: from the beginning.

    Raises:
        ValueError: not an ISO 8601 time.
    """
    if not text:
        return ""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    # A time without a zone is taken as UTC, the zone the records are kept in.
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


class AuditLog:
    """The audit table; safe from the event loop and worker threads (one lock, short writes)."""

    def __init__(self, data_dir: Path) -> None:
        """Open (or create) the audit table in the data dir's database.

        Raises:
            InputError: the database cannot be opened or the table made (left as it is).
        """
        self._lock = threading.Lock()
        path = data_dir / DB_NAME
        try:
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA busy_timeout=5000")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise InputError(f"cannot keep the audit records in {path}: {exc}") from None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _put(
        self, job: str, kind: str, name: str, user: str, client: str, answer: int | None, detail: str
    ) -> None:
        try:
            with self._lock:
                self._db.execute(
                    "INSERT INTO audit (at, job, kind, name, user, client, answer, detail) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (_now(), job, kind, name, user, client, answer, detail),
                )
        except sqlite3.Error:
            # A full or failing disk must not stop the request or the job; the log line says it.
            from importer.web import observe

            observe.log_storage_error(job, f"an audit record could not be written ({kind} {name})")

    def action(self, record: Mapping[str, object]) -> None:
        """A state-changing request and its answer (the Guard's ``on_action``)."""
        answer = record.get("answer")
        self._put(
            str(record.get("job", "")),
            "action",
            str(record.get("action", "")),
            str(record.get("user", "")),
            str(record.get("client", "")),
            answer if isinstance(answer, int) else None,
            str(record.get("reason", "")),
        )

    def job_event(self, name: str, job: Job) -> None:
        """A status the job reached (a ``JobEvents`` listener)."""
        created = name == "created"
        who = job.uploaded_by if created else ""
        self._put(job.id, "event", name, who, job.client if created else "", None, job.error or "")

    def records(self, since: str = "", job: str = "") -> Iterator[dict[str, Any]]:
        """The records at or after ``since`` (``parse_since``), oldest first; of one job if given."""
        sql = "SELECT seq, at, job, kind, name, user, client, answer, detail FROM audit WHERE at >= ?"
        params: list[str] = [since]
        if job:
            sql += " AND job = ?"
            params.append(job)
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY seq", params).fetchall()
        for seq, at, job_id, kind, name, user, client, answer, detail in rows:
            yield {
                "seq": seq,
                "at": at,
                "job": job_id,
                "kind": kind,
                "name": name,
                "user": user or "(server)",
                "client": client,
                "answer": answer,
                "detail": detail,
            }

    def lines(self, since: str = "") -> Iterator[str]:
        """The records as JSON lines (``GET /api/audit``)."""
        for record in self.records(since):
            yield json.dumps(record, ensure_ascii=False) + "\n"

    def summary(self, job: str) -> dict[str, str]:
        """The Summary lines naming who uploaded, planned, approved and started the job."""
        out: dict[str, str] = {}
        for r in self.records(job=job):
            if r["kind"] == "event" and r["name"] == "created":  # the upload's own request has no job id yet
                label: str | None = "uploaded by"
            else:
                label = _SUMMARY.get(r["name"]) if r["kind"] == "action" else None
            if label and (r["answer"] is None or r["answer"] < 400):
                out[label] = f"{r['user']} at {r['at']} from {r['client'] or '(unknown)'}"
        return out

    def involved(self, job: str) -> dict[str, str]:
        """Who did what to the job so far (for notifications): "uploaded by" -> name, ..."""
        return {label: text.split(" at ", 1)[0] for label, text in self.summary(job).items()}

    def jobs_of(self, user: str) -> set[str]:
        """The jobs ``user`` acted on (an answered request: upload, plan, start, ...)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT DISTINCT job FROM audit WHERE user = ? AND kind = 'action' AND answer < 400", (user,)
            ).fetchall()
        return {job for (job,) in rows if job}
