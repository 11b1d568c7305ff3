"""A durable record of every write the importer sends and of every row's outcome.

The journal is what makes a re-run safe. Before a write is sent, :meth:`Journal.record_sending`
commits it as *in flight*; the moment its outcome is known, :meth:`Journal.record_outcome`
commits that. Each call is its own SQLite transaction in WAL mode with
``synchronous=FULL``, so it is on disk before the call returns, and a crash (kill -9,
power loss) leaves at most the writes that were in flight without an outcome: exactly
what :meth:`Journal.in_flight` reports on the next run.

Which entry of a row decides: the latest one that is either still in flight or ended
``succeeded``, ``unchanged`` or ``failed``. Other statuses (``skipped``, ``not_sent``)
say a run did not touch the row and never hide an earlier in-flight write or success.

The API key is never stored: any text that looks like a key is masked before writing.
"""

from __future__ import annotations

import collections
import fcntl
import json
import os
import re
import sqlite3
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Any

from importer.engine.records import ChangeRecord, ConfirmedRow, InFlightRow, RunHistory, RunRecord
from importer.engine.timeline import Timeline
from importer.errors import InputError

__all__ = ["Journal", "rollback_of"]

IN_FLIGHT = "in_flight"
DONE = "done"
SUPERSEDED = "superseded"
"""An in-flight write the caller moved past by sending another write for the same row."""

DECISIVE = ("succeeded", "unchanged", "failed")
CONFIRMED = ("succeeded", "unchanged")
WRITE_ACTIONS = ("create", "update")

# Vocobase keys look like rg_live_<random>; a Bearer header value is masked too.
_KEY_LIKE = re.compile(r"\b(rg_[A-Za-z]+_)[A-Za-z0-9_\-]{6,}|(?i:bearer)\s+[A-Za-z0-9_\-.~+/]{6,}=*")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id        INTEGER PRIMARY KEY AUTOINCREMENT,
    input_sha256  TEXT NOT NULL,
    input_name    TEXT NOT NULL,
    command       TEXT NOT NULL,
    audit         TEXT NOT NULL,
    options       TEXT NOT NULL,
    started       TEXT NOT NULL,
    finished      TEXT,
    counts        TEXT
);
CREATE INDEX IF NOT EXISTS runs_by_input ON runs (input_sha256);
CREATE TABLE IF NOT EXISTS entries (
    entry_id      INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id        INTEGER NOT NULL REFERENCES runs (run_id),
    row           INTEGER NOT NULL,
    state         TEXT NOT NULL,
    did_key       TEXT,
    action        TEXT NOT NULL,
    body          TEXT,
    before        TEXT,
    sent_at       TEXT,
    status        TEXT,
    reason        TEXT,
    did_id        INTEGER,
    routing_id    INTEGER,
    http_status   INTEGER,
    attempts      INTEGER,
    done_at       TEXT
);
CREATE INDEX IF NOT EXISTS entries_by_row ON entries (run_id, row);
"""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _mask(value: object) -> object:
    """Mask key-like text anywhere inside a JSON-able value."""
    if isinstance(value, str):
        return _KEY_LIKE.sub(lambda m: (m.group(1) or "Bearer ") + "[masked]", value)
    if isinstance(value, Mapping):
        return {str(_mask(k)): _mask(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_mask(v) for v in value]
    return value


def _dump(value: Mapping[str, object] | None) -> str | None:
    return None if value is None else json.dumps(_mask(value), sort_keys=True, default=str)


def _load(text: str | None) -> Mapping[str, object] | None:
    if text is None:
        return None
    loaded = json.loads(text)
    return MappingProxyType(loaded) if isinstance(loaded, dict) else None


class Journal:
    """The importer's SQLite journal: runs, writes sent and row outcomes."""

    def __init__(self, connection: sqlite3.Connection, path: Path) -> None:
        """Wrap an open connection; use :meth:`open`."""
        self.path = path
        self._db = connection
        self._lock = threading.RLock()
        self._claim: int | None = None

    @classmethod
    def open(cls, path: Path) -> Journal:
        """Open (creating if needed) the journal at ``path``.

        Args:
            path: The SQLite file.

        Returns:
            The journal, its tables created, in WAL mode with ``synchronous=FULL``.
        """
        path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we issue BEGIN/COMMIT ourselves so each record is one transaction.
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA foreign_keys=ON")
        db.executescript(_SCHEMA)
        return cls(db, path)

    def __repr__(self) -> str:
        return f"Journal({str(self.path)!r})"

    def __enter__(self) -> Journal:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def claim(self) -> None:
        """Take the journal for this process's writes; refuse while another live process holds it.

        Two imports writing one journal at once could each take the other's in-flight rows for a
        crash. The claim is an OS lock (flock) on ``<journal>-lock``, so a killed run frees it at
        once and a resume is never blocked by a stale file.

        Raises:
            InputError: another process is running with this journal.
        """
        if self._claim is not None:
            return
        fd = os.open(self.path.with_name(self.path.name + "-lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise InputError(
                f"another run is using the journal {self.path.name}; wait for it to finish, "
                "or give this run its own --journal"
            ) from None
        self._claim = fd

    def close(self) -> None:
        """Close the database (and release the claim, if any)."""
        with self._lock:
            self._db.close()
            if self._claim is not None:
                os.close(self._claim)  # closing the descriptor releases the flock
                self._claim = None

    def _write(self, sql: str, params: tuple[Any, ...]) -> int:
        """Run one statement as its own committed transaction; return the last row id."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                cursor = self._db.execute(sql, params)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            return cursor.lastrowid or 0

    def _query(self, sql: str, params: tuple[Any, ...]) -> list[sqlite3.Row]:
        with self._lock:
            cursor = self._db.execute(sql, params)
            cursor.row_factory = sqlite3.Row
            return cursor.fetchall()

    def start_run(
        self,
        *,
        input_sha256: str,
        input_name: str,
        command: str,
        audit: Mapping[str, str],
        options: Mapping[str, str],
    ) -> int:
        """Record the start of a run.

        Args:
            input_sha256: The input file's content hash; re-runs of the same content find each other by it.
            input_name: The input file's name, for people.
            command: The command that was run ('run', 'demo', 'rollback').
            audit: Who and where (OS user, host, key's last 4 characters, connection, base URL).
            options: The run's options as text.

        Returns:
            The new run's id.
        """
        return self._write(
            "INSERT INTO runs (input_sha256, input_name, command, audit, options, started) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (
                input_sha256,
                str(_mask(input_name)),
                str(_mask(command)),
                _dump(audit),
                _dump(options),
                _now(),
            ),
        )

    def record_sending(
        self,
        run_id: int,
        row: int,
        did_key: str,
        action: str,
        body: Mapping[str, object],
        before: Mapping[str, object] | None,
    ) -> None:
        """Commit a write as in flight; call this BEFORE sending it.

        Args:
            run_id: The run sending it.
            row: The Excel row number.
            did_key: The DID it targets, e.g. 'id:812' or 'num:918011223344'.
            action: 'create' or 'update'.
            body: The exact body being sent.
            before: The routing record as read before the write (None for a create).
        """
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                # Sending again for the same row means the caller settled the earlier write.
                self._db.execute(
                    "UPDATE entries SET state = ? WHERE run_id = ? AND row = ? AND state = ?",
                    (SUPERSEDED, run_id, row, IN_FLIGHT),
                )
                self._db.execute(
                    "INSERT INTO entries (run_id, row, state, did_key, action, body, before, sent_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (run_id, row, IN_FLIGHT, did_key, action, _dump(body), _dump(before), _now()),
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def record_outcome(
        self,
        run_id: int,
        row: int,
        *,
        status: str,
        action: str,
        reason: str,
        did_id: int | None,
        routing_id: int | None,
        http_status: int | None,
        attempts: int,
    ) -> None:
        """Commit a row's outcome; it is on disk when this returns.

        Settles the row's in-flight write of this run if there is one; otherwise (rows that
        needed no write) records the outcome on its own.

        Args:
            run_id: The run.
            row: The Excel row number.
            status: The row's status ('succeeded', 'unchanged', 'skipped', 'failed', 'not_sent').
            action: What was done ('create', 'update', 'unchanged', ...).
            reason: The explanation shown to the user (the API's message for failures).
            did_id: The DID's id, when known.
            routing_id: The routing record's id, when known.
            http_status: The last HTTP status, None if no response or no request.
            attempts: How many times the write was sent.
        """
        values = (status, action, str(_mask(reason)), did_id, routing_id, http_status, attempts, _now())
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                found = self._db.execute(
                    "SELECT MAX(entry_id) FROM entries WHERE run_id = ? AND row = ? AND state = ?",
                    (run_id, row, IN_FLIGHT),
                ).fetchone()[0]
                if found is None:
                    self._db.execute(
                        "INSERT INTO entries (run_id, row, state, status, action, reason, did_id, "
                        "routing_id, http_status, attempts, done_at) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (run_id, row, DONE, *values),
                    )
                else:
                    self._db.execute(
                        "UPDATE entries SET state = ?, status = ?, action = ?, reason = ?, did_id = ?, "
                        "routing_id = ?, http_status = ?, attempts = ?, done_at = ? WHERE entry_id = ?",
                        (DONE, *values, found),
                    )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def finish_run(self, run_id: int, counts: Mapping[str, int]) -> None:
        """Record the end of a run and its counts per status."""
        self._write(
            "UPDATE runs SET finished = ?, counts = ? WHERE run_id = ?",
            (_now(), json.dumps(dict(counts), sort_keys=True), run_id),
        )

    def _decisive(self, input_sha256: str) -> dict[int, sqlite3.Row]:
        """The deciding entry of each row over every run of this input (see the module docstring)."""
        rows = self._query(
            "SELECT e.* FROM entries e JOIN runs r ON r.run_id = e.run_id "
            "WHERE r.input_sha256 = ? AND (e.state = ? OR (e.state = ? AND e.status IN (?, ?, ?))) "
            "ORDER BY e.entry_id",
            (input_sha256, IN_FLIGHT, DONE, *DECISIVE),
        )
        undone = self.undone_by()
        # A row a later rollback put back no longer counts as done: re-running the file after a
        # rollback plans it afresh against the live state.
        return {r["row"]: r for r in rows if (r["run_id"], r["row"]) not in undone}

    def undone_by(self, *, first: bool = False) -> dict[tuple[int, int], int]:
        """Which rollback last (or ``first``) put back each row a run changed.

        Returns:
            (run id, row) -> the latest (``first``: the earliest) rollback run that restored that
            row of that run (succeeded) or found it already restored (unchanged).
        """
        out: dict[tuple[int, int], int] = {}
        for run in self._query(
            "SELECT run_id, audit FROM runs WHERE command = 'rollback' ORDER BY run_id", ()
        ):
            covered = rollback_of(_text_map(run["audit"]))
            for e in self._query(
                "SELECT row FROM entries WHERE run_id = ? AND state = ? AND status IN (?, ?)",
                (run["run_id"], DONE, *CONFIRMED),
            ):
                # A rollback of several runs of one input undoes the row in each of them: the
                # deciding entry may be any of theirs (e.g. a resume that settled a write in flight).
                for of in covered:
                    if not first or (of, int(e["row"])) not in out:
                        out[(of, int(e["row"]))] = run["run_id"]
        return out

    def confirmed(self, input_sha256: str) -> dict[int, ConfirmedRow]:
        """Rows that runs of this input content finished as succeeded or unchanged.

        Args:
            input_sha256: The input's content hash.

        Returns:
            Excel row number -> what was confirmed for it, from the deciding entry.
        """
        out: dict[int, ConfirmedRow] = {}
        for row, e in self._decisive(input_sha256).items():
            if e["state"] == DONE and e["status"] in CONFIRMED:
                out[row] = ConfirmedRow(
                    e["run_id"], e["done_at"], e["status"], e["action"], e["did_id"], e["routing_id"]
                )
        return out

    def in_flight(self, input_sha256: str) -> dict[int, InFlightRow]:
        """Writes of runs of this input content that were sent but never got an outcome.

        Args:
            input_sha256: The input's content hash.

        Returns:
            Excel row number -> the write, to be settled by re-reading the API's state.
        """
        out: dict[int, InFlightRow] = {}
        for row, e in self._decisive(input_sha256).items():
            if e["state"] == IN_FLIGHT:
                out[row] = InFlightRow(
                    e["run_id"], e["did_key"], e["action"], _load(e["body"]) or MappingProxyType({}),
                    _load(e["before"]), e["sent_at"],
                )  # fmt: skip
        return out

    def changes(self, run_id: int | None = None, *, include_unsettled: bool = False) -> list[ChangeRecord]:
        """List the writes that changed the API's state, oldest first, for a rollback.

        Args:
            run_id: Only this run's writes; None for every run.
            include_unsettled: Also list writes still in flight (they may have been applied).

        Returns:
            One record per succeeded create/update (and unsettled write if asked).
        """
        sql = (
            "SELECT * FROM entries WHERE body IS NOT NULL AND action IN (?, ?) "
            "AND ((state = ? AND status = 'succeeded') OR (? AND state = ?))"
        )
        params: tuple[Any, ...] = (*WRITE_ACTIONS, DONE, include_unsettled, IN_FLIGHT)
        if run_id is not None:
            sql += " AND run_id = ?"
            params += (run_id,)
        return [
            ChangeRecord(
                run_id=e["run_id"],
                row=e["row"],
                when=e["done_at"] or e["sent_at"],
                action=e["action"],
                did_key=e["did_key"] or "",
                did_id=e["did_id"],
                routing_id=e["routing_id"],
                before=_load(e["before"]),
                body=_load(e["body"]) or MappingProxyType({}),
                settled=e["state"] == DONE,
            )
            for e in self._query(sql + " ORDER BY entry_id", params)
        ]

    def timeline(self) -> Timeline:
        """Every run's writes and rollbacks, to tell what of a run is left to roll back (``Timeline``)."""
        rollbacks = {r.run_id: rollback_of(r.audit) for r in self.runs() if r.command == "rollback"}
        changes = tuple(
            c
            for c in self.changes(include_unsettled=True)
            # A rollback's write still in flight may not have been applied: it overwrites nothing yet.
            if c.settled or c.run_id not in rollbacks
        )
        # The first rollback that put a row back is the one to name: later ones only found it so.
        return Timeline(changes, MappingProxyType(rollbacks), MappingProxyType(self.undone_by(first=True)))

    def runs(self) -> list[RunRecord]:
        """Every run, oldest first (for ``history``-style listings and choosing a run to roll back)."""
        return [
            RunRecord(
                run_id=r["run_id"],
                input_sha256=r["input_sha256"],
                input_name=r["input_name"],
                command=r["command"],
                audit=_text_map(r["audit"]),
                options=_text_map(r["options"]),
                started=r["started"],
                finished=r["finished"],
                counts=None if r["counts"] is None else _count_map(r["counts"]),
            )
            for r in self._query("SELECT * FROM runs ORDER BY run_id", ())
        ]

    def history(self) -> list[RunHistory]:
        """Every run, oldest first, with its counts, the rows it changed and the rollbacks of it.

        Returns:
            One record per run; a rollback run lists the runs it undid, and each of those
            lists the rollback runs that covered it.
        """
        runs = self.runs()
        outcomes: dict[int, dict[str, int]] = collections.defaultdict(dict)
        for e in self._query(
            "SELECT run_id, status, COUNT(*) AS n FROM entries WHERE state = ? GROUP BY run_id, status",
            (DONE,),
        ):
            outcomes[e["run_id"]][e["status"]] = e["n"]
        no_outcome = {
            e["run_id"]: e["n"]
            for e in self._query(
                "SELECT run_id, COUNT(*) AS n FROM entries WHERE state = ? GROUP BY run_id", (IN_FLIGHT,)
            )
        }
        changed: dict[int, set[int]] = collections.defaultdict(set)
        for c in self.changes():
            changed[c.run_id].add(c.row)
        undid = {r.run_id: rollback_of(r.audit) for r in runs if r.command == "rollback"}
        return [
            RunHistory(
                run=r,
                counts=r.counts if r.counts is not None else MappingProxyType(outcomes[r.run_id]),
                no_outcome=no_outcome.get(r.run_id, 0),
                changed=len(changed[r.run_id]),
                rolled_back_by=tuple(by for by, of in undid.items() if r.run_id in of),
                rollback_of=undid.get(r.run_id, ()),
            )
            for r in runs
        ]


def rollback_of(audit: Mapping[str, str]) -> tuple[int, ...]:
    """The runs a rollback run undid, from its audit's ``rollback_of_run`` ("3" or "1,2")."""
    parts = audit.get("rollback_of_run", "").split(",")
    return tuple(int(p) for p in (part.strip() for part in parts) if p.isdigit())


def _text_map(text: str | None) -> Mapping[str, str]:
    loaded = _load(text) or {}
    return MappingProxyType({str(k): str(v) for k, v in loaded.items()})


def _count_map(text: str) -> Mapping[str, int]:
    loaded = _load(text) or {}
    return MappingProxyType({str(k): int(str(v)) for k, v in loaded.items()})
