"""The records the journal returns: rows an earlier run confirmed, writes left in flight, the
changes a rollback undoes, and runs as ``history`` lists them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["ChangeRecord", "ConfirmedRow", "InFlightRow", "RunHistory", "RunRecord"]


@dataclass(frozen=True, slots=True)
class ConfirmedRow:
    """A row an earlier run of the same input finished as succeeded or unchanged."""

    run_id: int
    when: str
    status: str
    action: str
    did_id: int | None
    routing_id: int | None


@dataclass(frozen=True, slots=True)
class InFlightRow:
    """A write that was sent but whose outcome was never recorded (the run crashed)."""

    run_id: int
    did_key: str
    action: str
    body: Mapping[str, object]
    before: Mapping[str, object] | None
    when: str


@dataclass(frozen=True, slots=True)
class ChangeRecord:
    """One write that changed (or, if unsettled, may have changed) the API's state."""

    run_id: int
    row: int
    when: str
    action: str
    did_key: str
    did_id: int | None
    routing_id: int | None
    before: Mapping[str, object] | None
    body: Mapping[str, object]
    settled: bool
    """False for a write still in flight: it may or may not have been applied."""


@dataclass(frozen=True, slots=True)
class RunRecord:
    """One run (an import, a demo, a rollback) as the journal recorded it."""

    run_id: int
    input_sha256: str
    input_name: str
    command: str
    audit: Mapping[str, str]
    """Who and where: OS user, host, the key's last 4 characters, connection, base URL."""
    options: Mapping[str, str]
    started: str
    finished: str | None
    """None while the run is going on, or when it was killed."""
    counts: Mapping[str, int] | None
    """Rows per status, once finished."""


@dataclass(frozen=True, slots=True)
class RunHistory:
    """One run as ``history`` lists it: the run, what it did, and what undid it."""

    run: RunRecord
    counts: Mapping[str, int]
    """Rows per status: as recorded at the finish, else (a killed run) its outcomes so far."""
    no_outcome: int
    """Writes sent whose outcome this run never recorded (it was killed while they were in flight)."""
    changed: int
    """Rows whose routing it changed: creates and updates that succeeded."""
    rolled_back_by: tuple[int, ...]
    """The rollback runs that covered it, oldest first."""
    rollback_of: tuple[int, ...]
    """For a rollback run: the runs it undid."""

    @property
    def is_rollback(self) -> bool:
        return self.run.command == "rollback"
