"""Mappings remembered: a file whose header row an earlier job mapped on the page is mapped the same way.

Carriers send the same export again and again; choosing "Nummer" for DID Number every time is
work the page can remember. When the user saves the columns step, the column mapping they chose
(the ``--map`` pairs: only what differs from the automatic match) is kept under a hash of the
header row, normalised as headers are matched (``fields.header_key``: case, spaces and punctuation
folded), in order. A new upload whose header row hashes the same, and that came with no mapping
of its own, is read with that mapping at its first read; the columns page then says from which
job it came, and the user can change it like any other choice.

The memory is a small table beside the job records, in ``<data-dir>/jobs.sqlite``:

    mappings   key (the header row's hash), headers, column_map (JSON), job, file, saved

bounded to ``LIMIT`` rows, the least recently saved going first.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from importer import fields
from importer.web.store import DB_NAME, DamagedRecord, decode_object

__all__ = ["LIMIT", "MappingMemory", "Remembered", "header_hash"]

LIMIT = 500
"""Header rows remembered at most: a server sees a few carriers' exports, not thousands."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS mappings (key TEXT PRIMARY KEY, headers TEXT NOT NULL, column_map TEXT NOT NULL,
                                     job TEXT NOT NULL, file TEXT NOT NULL, saved REAL NOT NULL);
"""


@dataclass(frozen=True, slots=True)
class Remembered:
    """A mapping chosen on the page for a header row: the ``--map`` pairs, and the job it came from."""

    column_map: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    job: str = ""
    file: str = ""


def header_hash(headers: Sequence[str]) -> str:
    """The key of a header row: its headers normalised as they are matched, in order."""
    folded = json.dumps([fields.header_key(h) for h in headers])
    return hashlib.sha256(folded.encode("utf-8")).hexdigest()


def _pairs(text: str) -> dict[str, str] | None:
    """Stored ``--map`` pairs; None when the entry cannot be read (it is then as good as none)."""
    try:
        return {str(h): str(f) for h, f in decode_object(text, "a remembered mapping").items()}
    except DamagedRecord:
        return None


class MappingMemory:
    """The mappings remembered, in the data dir's database; safe from the event loop and threads."""

    def __init__(self, data_dir: Path, limit: int = LIMIT) -> None:
        """Open (or create) the table in ``data_dir``'s job database (``web.store`` made the folder)."""
        self.limit = limit
        self._lock = threading.Lock()
        self._first: set[str] = set()
        # A connection of its own: the store's transactions and this table's never wait on each other
        # for long (one short statement each), and SQLite's WAL lets readers go on meanwhile.
        self._db = sqlite3.connect(data_dir / DB_NAME, check_same_thread=False, isolation_level=None)
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def recall(self, headers: Sequence[str]) -> Remembered | None:
        """The mapping remembered for this header row, if any (a damaged entry counts as none)."""
        with self._lock:
            found = self._entry(header_hash(headers))
        if found is None:
            return None
        pairs = _pairs(found[0])
        return None if pairs is None else Remembered(MappingProxyType(pairs), found[1], found[2])

    def remember(self, headers: Sequence[str], column_map: Mapping[str, str], job: str, file: str) -> None:
        """Keep the mapping ``job`` chose for this header row (the same mapping keeps its first job).

        An automatic mapping (no pairs) is kept only over an earlier choice: it undoes that choice.
        """
        key = header_hash(headers)
        pairs = dict(column_map)
        with self._lock:
            found = self._entry(key)
            if found is None and not pairs:
                return
            if found is not None and _pairs(found[0]) == pairs:
                job, file = found[1], found[2]  # mapped as that job was: it stays the origin
            self._db.execute(
                "INSERT OR REPLACE INTO mappings VALUES (?, ?, ?, ?, ?, ?)",
                (key, json.dumps(list(headers)), json.dumps(pairs), job, file, time.time()),
            )
            self._db.execute(
                "DELETE FROM mappings WHERE key NOT IN "
                "(SELECT key FROM mappings ORDER BY saved DESC LIMIT ?)",
                (self.limit,),
            )

    def _entry(self, key: str) -> tuple[str, str, str] | None:
        """The row for ``key``: its pairs (JSON), job and file (the lock held)."""
        row = self._db.execute("SELECT column_map, job, file FROM mappings WHERE key = ?", (key,)).fetchone()
        return None if row is None else (str(row[0]), str(row[1]), str(row[2]))

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM mappings").fetchone()[0])

    # -- a new upload's first read ------------------------------------------------------------

    def expect(self, job_id: str) -> None:
        """A new upload came with no mapping of its own: its first read may take a remembered one."""
        with self._lock:
            self._first.add(job_id)

    def first_read(self, job_id: str) -> Callable[[Sequence[str]], Remembered | None] | None:
        """How the job's first read recalls a mapping (None: not its first read, or it has its own)."""
        with self._lock:
            if job_id not in self._first:
                return None
            self._first.discard(job_id)

        def recall(headers: Sequence[str]) -> Remembered | None:
            found = self.recall(headers)
            if found is None or not found.column_map or found.job == job_id:
                return None
            # The same headers once normalised: the pairs name this file's own header texts.
            own = {fields.header_key(h): h for h in reversed(headers)}
            pairs = {own.get(fields.header_key(h), h): f for h, f in found.column_map.items()}
            return Remembered(MappingProxyType(pairs), found.job, found.file)

        return recall
