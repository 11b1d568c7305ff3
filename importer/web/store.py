"""Job records in one SQLite database in the data dir, so a crash never leaves half a record.

``<data-dir>/jobs.sqlite`` (WAL, one transaction per state change) holds:

    jobs       id, record (the job's stored fields as JSON), damaged (why it cannot be used, or NULL)
    outcomes   id, the per-row outcomes of the job's last plan or send (JSON)
    rate       the recent request times of each key's limiter (see ``web.ratememory``)

A record that cannot be decoded (not UTF-8, not JSON, truncated, nested too deeply, not an
object) is reported as damaged with its reason and kept as it is: nothing here deletes a job.
Data dirs from before the database kept each job in ``jobs/<id>/job.json`` and ``outcomes.json``;
``import_folder`` takes such a folder in once (the files stay where they are).
"""

from __future__ import annotations

import errno
import json
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from importer.errors import InputError

__all__ = ["DamagedRecord", "JobStore", "StoredJob", "decode_list", "decode_object", "full_disk"]

DB_NAME = "jobs.sqlite"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, record BLOB NOT NULL, damaged TEXT);
CREATE TABLE IF NOT EXISTS outcomes (id TEXT PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS rate (key TEXT PRIMARY KEY, stamps TEXT NOT NULL, saved REAL NOT NULL,
                                 unsaved INTEGER NOT NULL);
"""


class DamagedRecord(Exception):
    """A stored record that cannot be used; the message says why, in words for the jobs list."""


@dataclass(frozen=True, slots=True)
class StoredJob:
    """One row of the jobs table: its fields, or why they cannot be read."""

    id: str
    record: dict[str, Any] | None
    damaged: str | None


def full_disk(exc: BaseException) -> bool:
    """Whether an error means the disk (or the user's quota) is full."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return isinstance(exc, sqlite3.Error) and getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL


def _decode(raw: bytes | str, what: str) -> Any:
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise DamagedRecord(f"{what} is not UTF-8 text (binary?)") from None
    if not raw.strip():
        raise DamagedRecord(f"{what} is empty")
    try:
        return json.loads(raw)
    except RecursionError:  # the C decoder stops at the interpreter's recursion limit
        raise DamagedRecord(f"{what} is nested too deeply to read") from None
    except ValueError as exc:
        detail = (
            f"{exc.msg} at line {exc.lineno} column {exc.colno}"
            if isinstance(exc, json.JSONDecodeError)
            else exc
        )
        raise DamagedRecord(f"{what} is not valid JSON ({detail}; truncated?)") from None


def decode_object(raw: bytes | str, what: str = "the job record") -> dict[str, Any]:
    """A stored JSON object.

    Raises:
        DamagedRecord: not UTF-8, not JSON, nested too deeply, or not an object.
    """
    value = _decode(raw, what)
    if not isinstance(value, dict):
        raise DamagedRecord(f"{what} is not a JSON object (it is a {type(value).__name__})")
    return value


def decode_list(raw: bytes | str, what: str) -> list[Any]:
    """A stored JSON list (outcomes, edits).

    Raises:
        DamagedRecord: not UTF-8, not JSON, nested too deeply, or not a list.
    """
    value = _decode(raw, what)
    if not isinstance(value, list):
        raise DamagedRecord(f"{what} is not a JSON list (it is a {type(value).__name__})")
    return value


class JobStore:
    """The database of job records; safe to use from the event loop and from worker threads."""

    def __init__(self, data_dir: Path) -> None:
        """Open (or create) the database in ``data_dir``.

        Raises:
            InputError: the database cannot be opened (not a database, unreadable); it is left as it is.
        """
        self.path = data_dir / DB_NAME
        self._lock = threading.Lock()
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: transactions are begun and ended here, one per change.
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(
                "PRAGMA synchronous=FULL"
            )  # a state change that was answered survives power loss
            self._db.execute("PRAGMA busy_timeout=5000")
            self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise InputError(f"cannot use the job database {self.path}: {exc}") from None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _write(self, sql: str, params: Sequence[Any], *more: tuple[str, Sequence[Any]]) -> None:
        """Run one or more statements as one transaction."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for statement, values in ((sql, params), *more):
                    self._db.execute(statement, values)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # -- jobs -----------------------------------------------------------------------------------

    def has(self, job_id: str) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM jobs WHERE id = ?", (job_id,)).fetchone() is not None

    def put(self, job_id: str, record: Mapping[str, Any], *, drop_outcomes: bool = False) -> None:
        """Store a job's fields (one transaction); a damaged mark it had is cleared.

        ``drop_outcomes``: the saved outcomes are no longer true (a send begins), in the same transaction.
        """
        text = json.dumps(record, ensure_ascii=False)
        drop = [("DELETE FROM outcomes WHERE id = ?", (job_id,))] if drop_outcomes else []
        self._write(
            "INSERT INTO jobs (id, record, damaged) VALUES (?, ?, NULL) "
            "ON CONFLICT(id) DO UPDATE SET record = excluded.record, damaged = NULL",
            (job_id, text),
            *drop,
        )

    def put_raw(self, job_id: str, raw: bytes, damaged: str | None) -> None:
        """Store a record as found (an old job.json), with why it is damaged if that is known."""
        self._write(
            "INSERT OR IGNORE INTO jobs (id, record, damaged) VALUES (?, ?, ?)", (job_id, raw, damaged)
        )

    def jobs(self) -> Iterator[StoredJob]:
        """Every stored job, decoded; a damaged one carries its reason instead of its fields."""
        with self._lock:
            rows = self._db.execute("SELECT id, record, damaged FROM jobs ORDER BY id").fetchall()
        for job_id, raw, damaged in rows:
            if damaged:
                yield StoredJob(job_id, None, damaged)
                continue
            try:
                yield StoredJob(job_id, decode_object(raw), None)
            except DamagedRecord as exc:
                yield StoredJob(job_id, None, str(exc))

    # -- outcomes -------------------------------------------------------------------------------

    def put_outcomes(self, job_id: str, outcomes: Sequence[Mapping[str, Any]]) -> None:
        self._write(
            "INSERT INTO outcomes (id, data) VALUES (?, ?) "
            "ON CONFLICT(id) DO UPDATE SET data = excluded.data",
            (job_id, json.dumps(list(outcomes), ensure_ascii=False)),
        )

    def outcomes(self, job_id: str) -> list[Any] | None:
        """The job's saved outcomes (None: none saved).

        Raises:
            DamagedRecord: they cannot be decoded.
        """
        with self._lock:
            row = self._db.execute("SELECT data FROM outcomes WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else decode_list(row[0], "the saved outcomes")

    # -- rate -----------------------------------------------------------------------------------

    def put_rate(self, key: str, stamps: Sequence[float], saved: float, unsaved: int) -> None:
        """Keep a key's recent request times (wall clock), written at ``saved``.

        ``unsaved``: the most requests that may leave after this record before the next one (0
        when written by a clean stop).
        """
        self._write(
            "INSERT INTO rate (key, stamps, saved, unsaved) VALUES (?, ?, ?, ?) ON CONFLICT(key) DO UPDATE "
            "SET stamps = excluded.stamps, saved = excluded.saved, unsaved = excluded.unsaved",
            (key, json.dumps([round(s, 3) for s in stamps]), saved, unsaved),
        )

    def rate(self, key: str) -> tuple[list[float], float, int] | None:
        """A key's kept request times, when they were saved, and how many may have left unsaved."""
        with self._lock:
            row = self._db.execute("SELECT stamps, saved, unsaved FROM rate WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        try:
            stamps = [float(s) for s in decode_list(row[0], "the kept request times")]
        except (DamagedRecord, TypeError, ValueError):
            return None
        return stamps, float(row[1]), int(row[2])
