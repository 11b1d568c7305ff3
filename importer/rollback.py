"""Roll back a run: put back the routing it changed, paced, settled and journalled like the run.

``rollback`` is the whole job in one call: find the journal and the run -> read the live
state -> plan one undo per change -> (confirm) -> send -> results workbook.

- A row the run **updated** gets its previous record back: the full replacement body built
  from the record the run read before writing (status included).
- A row the run **created** cannot be deleted (the API documents no delete), so its routing is
  updated to the same modes and ids with ``status`` 0 (inactive); the plan and the results say so.
- Nothing is overwritten blindly: when the live routing is no longer what the run wrote,
  someone changed it since and the row is skipped (``force`` overwrites anyway). A row already
  as the rollback wants it is unchanged and nothing is sent, so a second rollback sends nothing.
- A write the run left in flight (it crashed) is settled against the live state: if the live
  routing is what it sent, it was applied and is rolled back; otherwise there is nothing to undo.
- Writes go through the same rate limiter, client and settle rule as ``run``: an unknown
  outcome is settled by re-reading the live state, never by a blind re-send. Each write is
  journalled, as a new run with command ``rollback``, before it is sent.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import getpass
import hashlib
import json
import socket
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pandas as pd

from .api import Did, Routing, VoiceLinkClient
from .errors import ApiError, AuthError, InputError
from .fields import ROUTING_FIELDS, routing_body
from .journal import ChangeRecord, Journal
from .limiter import RateLimiter
from .live import Inventory, LiveRouting, index_routing, open_client, sending_options, stop_on_signals
from .model import Action, RawTable, RowOutcome, RunInfo, SourceInfo, Status
from .pipeline import RunSummary, now_text
from .results import write_results
from .run import (
    DEFAULT_BASE_URL,
    MAX_WRITE_ATTEMPTS,
    Progress,
    ProgressCallback,
    default_journal_path,
    key_fingerprint,
)

__all__ = [
    "ROLLBACK_COLUMNS",
    "Decision",
    "RollbackConfig",
    "RollbackPlan",
    "Undo",
    "default_rollback_path",
    "locate_run",
    "rollback",
]

COMMAND = "rollback"
ROLLBACK_COLUMNS = (
    "run_row",
    "did_id",
    "did_number",
    "routing_id",
    "action_undone",
    "run_wrote",
    "live_at_start",
    "restored_to",
)
"""The columns the rollback's own Results sheet starts with (one row per change of the run)."""
JOURNAL_SUFFIXES = (".sqlite", ".sqlite3", ".db")
NO_DELETE = "the API has no delete"
IN_FLIGHT_APPLIED = " (the run's in-flight write had been applied)"


class Decision:
    """What the plan decided for one change."""

    SEND = "send"
    UNCHANGED = "unchanged"
    SKIP = "skip"
    FAIL = "fail"


@dataclass(frozen=True, slots=True)
class Undo:
    """The planned undo of one change the run made."""

    index: int
    """This undo's row in the rollback's Results sheet (Excel numbering, first data row 2)."""
    run_row: int
    """The row of the run's input file that made the change."""
    did_id: int | None
    did_number: str
    action_undone: str
    """'create' or 'update': what the run did."""
    run_wrote: Mapping[str, int] | None
    target: Mapping[str, int] | None
    """The body the rollback sends: the record before the run, or the created one with status 0."""
    live: Mapping[str, int] | None
    """The live routing when the rollback planned, in body form (None: no routing, or incomplete)."""
    live_record: Mapping[str, int | None] | None
    routing_id: int | None
    decision: str
    reason: str
    reason_kind: str
    settled: bool = True
    """False when the run's write was still in flight (the run stopped before its outcome was known)."""

    def line(self) -> str:
        """One plan line for people."""
        did = f"DID {self.did_number or '?'} (id {self.did_id})"
        return f"row {self.run_row}, {did}, {self.action_undone}d by the run: {self.reason}"


@dataclass(frozen=True, slots=True)
class RollbackPlan:
    """The whole plan, shown before anything is sent."""

    journal: Path
    run_id: int
    input_name: str
    undos: tuple[Undo, ...]

    @property
    def sends(self) -> int:
        return sum(u.decision == Decision.SEND for u in self.undos)

    def counts(self) -> dict[str, int]:
        """Undos per kind: restore, deactivate, unchanged, skip, fail."""
        out = {"restore": 0, "deactivate": 0, "unchanged": 0, "skip": 0, "fail": 0}
        for u in self.undos:
            if u.decision == Decision.SEND:
                out["restore" if u.action_undone == "update" else "deactivate"] += 1
            else:
                out[u.decision] += 1
        return out

    def text(self) -> str:
        """The counts as one line (the same shape as ``run``'s plan line)."""
        c = self.counts()
        return (
            f"restore {c['restore']}, deactivate {c['deactivate']} (the API has no delete: status 0, "
            f"modes kept), unchanged {c['unchanged']}, skip {c['skip']}, fail {c['fail']}"
        )

    def lines(self, limit: int | None = None) -> list[str]:
        """The plan for people: a heading, one line per change (up to ``limit``), the counts."""
        out = [f"rollback of run {self.run_id} ({self.input_name}) from {self.journal}:"]
        shown = self.undos if limit is None else self.undos[:limit]
        out += ["  " + u.line() for u in shown]
        if len(shown) < len(self.undos):
            out.append(
                f"  ... and {len(self.undos) - len(shown)} more (every one is in the results workbook)"
            )
        out.append(f"plan: {self.text()}")
        return out


@dataclass(frozen=True, slots=True)
class RollbackConfig:
    """Everything a rollback needs; the CLI builds it from flags and the environment."""

    source: Path
    """A results workbook of a run, or the journal itself."""
    api_key: str = field(repr=False)
    base_url: str = DEFAULT_BASE_URL
    run_id: int | None = None
    """The run to roll back; None: the run the results workbook belongs to, else the journal's latest."""
    output: Path | None = None
    connection_id: str | None = None
    """None: the connection the run used."""
    requests_per_minute: int = 60
    concurrency: int = 4
    timeout: float = 30.0
    dry_run: bool = False
    force: bool = False
    """Overwrite rows someone changed since the run instead of skipping them."""
    on_plan: Callable[[RollbackPlan], None] | None = None
    """Shown the plan once it is made (dry runs too)."""
    confirm: Callable[[RollbackPlan], bool] | None = None
    """Asked before any write; False sends nothing."""
    retry_backoff: float = 1.0
    rate_window: float = 60.0

    def describe(self) -> dict[str, str]:
        """The options as text for the Summary sheet and the journal (never the key)."""
        return {**sending_options(self, dry_run=self.dry_run), "force": "yes" if self.force else "no"}


# -- finding the journal and the run --------------------------------------------------


def _summary_lines(workbook: Path) -> dict[str, str]:
    """Read a results workbook's Summary sheet as name -> value text."""
    import openpyxl  # only a results-workbook argument needs it

    try:
        book = openpyxl.load_workbook(workbook, read_only=True)
    except Exception as exc:  # openpyxl raises many types for a file that is not a workbook
        raise InputError(f"{workbook} cannot be read as a results workbook: {exc}") from None
    try:
        if "Summary" not in book.sheetnames:
            raise InputError(f"{workbook} has no Summary sheet: pass a results workbook or a journal")
        out: dict[str, str] = {}
        for row in book["Summary"].iter_rows(min_col=1, max_col=2, values_only=True):
            name, value = (*tuple(row), None, None)[:2]
            if name is not None and value is not None:
                out.setdefault(str(name).strip().casefold(), str(value).strip())
        return out
    finally:
        book.close()


def locate_run(source: Path, run_id: int | None = None) -> tuple[Path, int | None, str | None]:
    """Find the journal a results workbook (or journal path) points to.

    A results workbook names its journal on a ``journal`` Summary line when the writer records
    one; otherwise the journal is where ``run`` puts it by default: beside the workbook, named
    after the input (``<input stem>.journal.sqlite``).

    Args:
        source: A results workbook or a journal.
        run_id: The run asked for, if any (it wins over what the workbook says).

    Returns:
        The journal path, the run id (None: choose by ``input_sha256`` or the latest) and the
        input's sha256 from the workbook (None for a journal argument).

    Raises:
        InputError: the file is missing or says nothing usable.
    """
    if not source.exists():
        raise InputError(f"{source}: no such file")
    if source.is_dir():
        raise InputError(f"{source} is a folder; give a results workbook or a journal")
    if source.suffix.lower() in JOURNAL_SUFFIXES:
        return source, run_id, None
    lines = _summary_lines(source)
    if lines.get("command", "").startswith(COMMAND):
        raise InputError(
            f"{source.name} is a rollback's own results; to undo a rollback pass the journal and its --run-id"
        )
    named = lines.get("journal")
    if named:
        journal = Path(named)
        journal = journal if journal.is_absolute() else source.parent / journal
    elif lines.get("file"):
        journal = default_journal_path(source, Path(lines["file"]))
    else:
        raise InputError(f"{source.name}: its Summary sheet names neither the journal nor the input file")
    if run_id is None:
        for key in ("journal run", "journal_run", "run id", "run_id"):
            text = lines.get(key, "")
            if text.isdigit():
                run_id = int(text)
                break
    return journal, run_id, lines.get("sha256") or None


def _choose_run(journal: Journal, run_id: int | None, sha256: str | None) -> tuple[Mapping[str, object], int]:
    """Pick the run: the one asked for, else the latest run (of this input) that changed something.

    Rollback runs are never picked by default: a second rollback must not undo the first.
    """
    runs = {int(str(r["run_id"])): r for r in journal.runs()}
    if run_id is not None:
        if run_id not in runs:
            known = ", ".join(str(i) for i in sorted(runs)) or "none"
            raise InputError(f"the journal {journal.path} has no run {run_id} (runs: {known})")
        return runs[run_id], run_id
    changed = {c.run_id for c in journal.changes(include_unsettled=True)}
    candidates = [
        i
        for i, r in runs.items()
        if i in changed
        and not str(r["command"]).startswith(COMMAND)
        and (sha256 is None or r["input_sha256"] == sha256)
    ]
    if not candidates:
        which = "of that results workbook's input " if sha256 else ""
        raise InputError(f"the journal {journal.path} records no run {which}that changed anything")
    chosen = max(candidates)
    return runs[chosen], chosen


def default_rollback_path(journal: Path) -> Path:
    """The rollback's results sit beside the journal: ``<stem>.rollback.xlsx``."""
    stem = journal.name
    for suffix in (*JOURNAL_SUFFIXES, ".journal"):
        stem = stem.removesuffix(suffix)
    return journal.with_name(f"{stem or 'journal'}.rollback.xlsx")


# -- planning --------------------------------------------------------------------------


def _as_record(values: Mapping[str, object] | None) -> dict[str, int | None] | None:
    """The routing fields of a journalled body or record; None if any is not an integer."""
    if values is None:
        return None
    out: dict[str, int | None] = {}
    for name in ROUTING_FIELDS:
        value = values.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            return None
        out[name] = value
    return out


def _as_body(values: Mapping[str, object] | None) -> dict[str, int] | None:
    """The full replacement body for a record or body, or None when it is incomplete."""
    record = _as_record(values)
    if record is None:
        return None
    try:
        return routing_body(record)
    except (ValueError, KeyError):
        return None


def _text(values: Mapping[str, object] | None) -> str:
    return "" if values is None else json.dumps({k: v for k, v in values.items() if v is not None})


def _did_of(change: ChangeRecord, dids_by_number: Mapping[str, Did]) -> int | None:
    if change.did_id is not None:
        return change.did_id
    kind, _, value = change.did_key.partition(":")
    if kind == "id" and value.isdigit():
        return int(value)
    did = dids_by_number.get(value) if kind == "num" else None
    return did.did_id if did is not None else None


def _collapse(changes: Sequence[ChangeRecord], dids_by_number: Mapping[str, Did]) -> list[ChangeRecord]:
    """One change per DID: the first one's before and action, the last one's body."""
    by_did: dict[object, list[ChangeRecord]] = collections.defaultdict(list)
    for c in changes:
        did = _did_of(c, dids_by_number)
        by_did[did if did is not None else ("row", c.row)].append(c)
    out: list[ChangeRecord] = []
    for group in by_did.values():
        first, last = group[0], group[-1]
        out.append(
            ChangeRecord(
                run_id=first.run_id,
                row=first.row,
                when=last.when,
                action=first.action,
                did_key=first.did_key,
                did_id=first.did_id if first.did_id is not None else last.did_id,
                routing_id=last.routing_id if last.routing_id is not None else first.routing_id,
                before=first.before,
                body=last.body,
                settled=last.settled,
            )
        )
    return sorted(out, key=lambda c: c.row)


def _plan_one(
    index: int,
    change: ChangeRecord,
    did_id: int | None,
    did: Did | None,
    live_routing: Routing | None,
    force: bool,
) -> Undo:
    """Decide the undo of one change against the live state."""
    run_wrote = _as_body(change.body)
    created = change.action == "create"
    target: dict[str, int] | None
    if created:
        target = None if run_wrote is None else {**run_wrote, "status": 0}
    else:
        target = _as_body(change.before)
    live_record = None if live_routing is None else dict(live_routing.record)
    live = None if live_routing is None else _as_body(live_record)
    routing_id = live_routing.routing_id if live_routing is not None else change.routing_id

    def undo(decision: str, kind: str, reason: str) -> Undo:
        return Undo(
            index=index,
            run_row=change.row,
            did_id=did_id,
            did_number=did.did_number if did is not None else "",
            action_undone=change.action,
            run_wrote=run_wrote,
            target=target,
            live=live,
            live_record=live_record,
            routing_id=routing_id,
            decision=decision,
            reason=reason,
            reason_kind=kind,
            settled=change.settled,
        )

    if did_id is None:
        return undo(Decision.FAIL, "unknown_did", f"the journal does not say which DID ({change.did_key!r})")
    if run_wrote is None or target is None:
        what = "what the run sent" if run_wrote is None else "the record before the run"
        return undo(Decision.FAIL, "unreadable_journal", f"the journal's copy of {what} is incomplete")
    if live is not None and live == target:
        done = "already inactive with the run's modes" if created else "already as before the run"
        return undo(Decision.UNCHANGED, "unchanged", f"{done}; nothing to send")
    if not change.settled and live != run_wrote:
        return undo(
            Decision.UNCHANGED,
            "never_applied",
            f"the run's {change.action} was in flight when it stopped and the live routing is not what it "
            "sent: it was never applied, nothing to undo",
        )
    if live_routing is None:
        return undo(Decision.SKIP, "vanished", "this DID has no routing any more; nothing to restore")
    if created:
        action = f"{NO_DELETE}: routing {routing_id} will be deactivated (status 0), modes kept"
    else:
        action = f"routing {routing_id} will be restored to {_text(target)}"
    if live == run_wrote:
        settled = "" if change.settled else IN_FLIGHT_APPLIED
        return undo(Decision.SEND, "deactivate" if created else "restore", action + settled)
    now = _text(live_record)
    if force:
        return undo(
            Decision.SEND,
            "forced",
            f"changed since the run (now {now}), overwriting because of --force: {action}",
        )
    return undo(
        Decision.SKIP,
        "changed_since",
        f"changed since the run (now {now}, the run wrote {_text(run_wrote)}); skipped so as not to "
        "overwrite someone's change (--force overwrites it)",
    )


# -- the rollback run -------------------------------------------------------------------


class _Rollback:
    """One rollback's state: the client, the journal, the outcomes so far, the stop flag."""

    def __init__(
        self,
        config: RollbackConfig,
        journal: Journal,
        client: VoiceLinkClient,
        limiter: RateLimiter,
        on_progress: ProgressCallback | None,
        run_id: int,
    ) -> None:
        self.config = config
        self.run_id = run_id
        """The run being rolled back."""
        self.journal = journal
        self.client = client
        self.limiter = limiter
        self.on_progress = on_progress
        self.journal_run = 0
        self.outcomes: dict[int, RowOutcome] = {}
        self.undos: dict[int, Undo] = {}
        self.stop_reason = ""
        self.exit_code = 0
        self.audit: dict[str, str] = {}
        self.done = self.succeeded = self.failed = self.total = 0

    async def connect(self, run_connection: str | None) -> str:
        """Check the key and use the run's connection (or the one asked for, which must match)."""
        connections = await self.client.list_connections()
        asked = self.config.connection_id
        if asked and run_connection and asked.lower() != run_connection.lower():
            raise InputError(f"the run used connection {run_connection}, not {asked}")
        wanted = asked or run_connection
        if wanted:
            match = [c for c in connections if c.connection_id.lower() == wanted.lower()]
            if not match:
                raise InputError(f"connection {wanted} (the run's) is not one of this account's connections")
            chosen = match[0]
        else:
            active = [c for c in connections if c.status.upper() == "ACTIVE"]
            if len(active) != 1:
                raise InputError(
                    "the journal does not say which connection the run used: give --connection-id"
                )
            chosen = active[0]
        self.client.connection_id = chosen.connection_id
        return chosen.connection_id

    def _finish(self, undo: Undo, outcome: RowOutcome) -> None:
        self.outcomes[undo.index] = outcome
        if self.journal_run:
            self.journal.record_outcome(
                self.journal_run,
                undo.run_row,
                status=outcome.status.value,
                action=outcome.action.value,
                reason=outcome.reason,
                did_id=outcome.did_id,
                routing_id=outcome.routing_id,
                http_status=outcome.http_status,
                attempts=outcome.attempts,
            )

    def _progress(self) -> None:
        if self.on_progress is not None:
            left = self.total - self.done
            eta = self.limiter.eta(left + 1) if left else 0.0
            self.on_progress(Progress(self.done, self.total, self.succeeded, self.failed, eta))

    def _stop(self, reason: str, code: int) -> None:
        if not self.stop_reason:
            self.stop_reason, self.exit_code = reason, code

    async def send(self, u: Undo, live: LiveRouting) -> RowOutcome:
        """Send one undo until its outcome is known; re-read the live state before any re-send."""
        assert u.target is not None and u.routing_id is not None and u.did_id is not None
        expected = u.live  # what the routing must still be for a re-send to be safe
        attempts = 0
        causes: list[str] = []
        last_status: int | None = None

        def outcome(
            status: Status, kind: str, reason: str, routing_id: int | None = u.routing_id
        ) -> RowOutcome:
            return RowOutcome(
                row=u.index,
                status=status,
                action=Action.UPDATE,
                reason=reason,
                reason_kind=kind,
                did_id=u.did_id,
                routing_id=routing_id,
                http_status=last_status,
                attempts=attempts,
            )

        done = (
            f"{NO_DELETE}: routing {u.routing_id} deactivated (status 0), modes kept"
            if u.action_undone == "create"
            else f"routing {u.routing_id} restored to its record before run {self.run_id}"
        ) + ("" if u.settled else IN_FLIGHT_APPLIED)
        while True:
            self.journal.record_sending(
                self.journal_run, u.run_row, f"id:{u.did_id}", "update", u.target, u.live_record
            )
            result = await self.client.update_routing(u.routing_id, u.target)
            attempts += result.attempts
            last_status = result.http_status
            if result.ok:
                return outcome(
                    Status.SUCCEEDED,
                    u.reason_kind,
                    done + (f" (after {', '.join(causes)})" if causes else ""),
                )
            if result.known:
                return outcome(
                    Status.FAILED,
                    f"api_{result.error_code or result.http_status}",
                    result.message or "rejected",
                )
            cause = (f"HTTP {result.http_status}" if result.http_status else "no response") + (
                f": {result.message}" if result.message else ""
            )
            causes.append(cause)
            current = (await live.fresh()).get(u.did_id)
            now = None if current is None else _as_body(dict(current.record))
            if now == dict(u.target):
                return outcome(Status.SUCCEEDED, "settled", f"{done}; confirmed by re-reading after {cause}")
            if attempts >= MAX_WRITE_ATTEMPTS or self.stop_reason:
                why = "stopped" if self.stop_reason else f"after {attempts} attempts"
                return outcome(
                    Status.FAILED,
                    "unsettled",
                    f"not applied {why} ({'; '.join(causes)}); the live routing is not the rollback's target",
                )
            if current is None or now != expected:
                return outcome(
                    Status.FAILED,
                    "changed_meanwhile",
                    f"the routing changed while rolling back ({cause}; now "
                    f"{_text(current.record if current else None)}); not re-sent",
                )
            if self.config.retry_backoff > 0:
                await asyncio.sleep(min(8.0, self.config.retry_backoff * 2 ** (attempts - 1)))

    async def apply(self, undos: list[Undo], live: LiveRouting, stop: asyncio.Event) -> None:
        queue = collections.deque(undos)
        self.total = len(undos)
        self._progress()

        async def worker() -> None:
            while queue and not self.stop_reason and not stop.is_set():
                u = queue.popleft()
                try:
                    result = await self.send(u, live)
                except AuthError as exc:
                    self._stop(f"the API rejected the key ({exc})", 3)
                    self._finish(u, _not_sent(u, f"not sent: {exc}", "auth_rejected"))
                    continue
                except ApiError as exc:
                    self._stop(f"the state could not be re-read ({exc})", 3)
                    result = RowOutcome(
                        row=u.index,
                        status=Status.FAILED,
                        action=Action.UPDATE,
                        reason=f"outcome unknown and the state could not be re-read: {exc}",
                        reason_kind="unsettled",
                        did_id=u.did_id,
                        routing_id=u.routing_id,
                    )
                self._finish(u, result)
                self.done += 1
                self.succeeded += result.status is Status.SUCCEEDED
                self.failed += result.status is Status.FAILED
                self._progress()

        await asyncio.gather(*(worker() for _ in range(max(1, min(self.config.concurrency, len(undos))))))
        if stop.is_set():
            self._stop("interrupted", 130)
        for u in queue:
            self._finish(u, _not_sent(u, f"not sent: {self.stop_reason}", "stopped"))


def _not_sent(u: Undo, reason: str, kind: str, *, dry_run: bool = False) -> RowOutcome:
    return RowOutcome(
        row=u.index,
        status=Status.NOT_SENT,
        action=Action.UPDATE,
        reason=reason,
        reason_kind=kind,
        did_id=u.did_id,
        routing_id=u.routing_id,
        current=_text(u.live_record) if dry_run else "",
        proposed=_text(u.target) if dry_run else "",
    )


_DECISION_OUTCOME = {
    Decision.UNCHANGED: (Status.UNCHANGED, Action.UNCHANGED),
    Decision.SKIP: (Status.SKIPPED, Action.SKIP),
    Decision.FAIL: (Status.FAILED, Action.FAIL),
}


def _settled_outcome(u: Undo, dry_run: bool) -> RowOutcome:
    """The outcome of an undo that needs no write."""
    status, action = _DECISION_OUTCOME[u.decision]
    return RowOutcome(
        row=u.index,
        status=status,
        action=action,
        reason=u.reason,
        reason_kind=u.reason_kind,
        did_id=u.did_id,
        routing_id=u.routing_id,
        current=_text(u.live_record) if dry_run else "",
        proposed=_text(u.target) if dry_run and u.decision == Decision.SKIP else "",
    )


def _audit(config: RollbackConfig, connection: str) -> dict[str, str]:
    try:
        user = getpass.getuser()
    except Exception:  # getpass raises various errors when no user name can be found
        user = "(unknown)"
    return {
        "os_user": user,
        "host": socket.gethostname(),
        "api_key": key_fingerprint(config.api_key),
        "connection": connection,
        "base_url": config.base_url,
    }


def _rollback_phases(
    loop: asyncio.Runner,
    config: RollbackConfig,
    journal: Journal,
    run: Mapping[str, object],
    run_id: int,
    changes: Sequence[ChangeRecord],
    transport: httpx.AsyncBaseTransport | None,
    on_progress: ProgressCallback | None,
) -> tuple[_Rollback, RollbackPlan]:
    """Prepare (pre-flight, reads, plan), ask, then apply: one event loop, the prompt outside it.

    As in ``run``: the question is asked while the loop is not running, so Ctrl-C at the prompt
    is a plain KeyboardInterrupt (nothing sent); during apply, Ctrl-C settles the writes in flight.
    """

    limiter, client = loop.run(open_client(config, transport))
    job = _Rollback(config, journal, client, limiter, on_progress, run_id)
    try:
        plan, inventory = loop.run(_prepare(job, run, changes))
        if config.on_plan is not None:
            config.on_plan(plan)
        sends = [u for u in plan.undos if u.decision == Decision.SEND]
        if config.dry_run:
            for u in plan.undos:
                job.outcomes[u.index] = (
                    _not_sent(u, f"dry run: would send; {u.reason}", f"dry_run_{u.reason_kind}", dry_run=True)
                    if u.decision == Decision.SEND
                    else _settled_outcome(u, True)
                )
            return job, plan
        job.journal_run = journal.start_run(
            input_sha256=f"{COMMAND}:{run.get('input_sha256', '')}",
            input_name=f"rollback of run {run_id} ({run.get('input_name', '')})",
            command=COMMAND,
            audit={**job.audit, "rollback_of_run": str(run_id)},
            options=config.describe(),
        )
        for u in plan.undos:
            if u.decision != Decision.SEND:
                job._finish(u, _settled_outcome(u, False))
        if sends and config.confirm is not None and not config.confirm(plan):
            job._stop("not confirmed at the prompt", 3)
            for u in sends:
                job._finish(u, _not_sent(u, "not sent: not confirmed", "not_confirmed"))
            return job, plan
        loop.run(_apply(job, sends, inventory))
    finally:
        loop.run(client.aclose())
    return job, plan


async def _prepare(
    job: _Rollback, run: Mapping[str, object], changes: Sequence[ChangeRecord]
) -> tuple[RollbackPlan, Inventory]:
    """Pre-flight on the run's connection, read the live state, plan one undo per change."""
    audit = run.get("audit")
    run_connection = audit.get("connection") if isinstance(audit, Mapping) else None
    connection = await job.connect(str(run_connection) if run_connection else None)
    job.audit = _audit(job.config, connection)
    dids = await job.client.list_dids()
    by_number = {d.did_number: d for d in dids}
    by_id = {d.did_id: d for d in dids}
    inventory = Inventory(by_id, by_number, {}, index_routing(await job.client.read_routing(), by_number))
    undos: list[Undo] = []
    for index, change in enumerate(_collapse(changes, by_number), start=2):
        did_id = _did_of(change, by_number)
        live_routing = inventory.routing.get(did_id) if did_id is not None else None
        did = by_id.get(did_id) if did_id is not None else None
        undos.append(_plan_one(index, change, did_id, did, live_routing, job.config.force))
    plan = RollbackPlan(job.journal.path, job.run_id, str(run.get("input_name", "")), tuple(undos))
    job.undos = {u.index: u for u in undos}
    return plan, inventory


async def _apply(job: _Rollback, sends: list[Undo], inventory: Inventory) -> None:
    """Send the undos; Ctrl-C or SIGTERM stops new ones and lets those in flight settle."""
    stop = asyncio.Event()
    with stop_on_signals(asyncio.get_running_loop(), stop):
        await job.apply(sends, LiveRouting(job.client, inventory, job.config.retry_backoff), stop)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _table(journal_path: Path, sha256: str, undos: Sequence[Undo]) -> RawTable:
    """The rollback's own 'input': one row per change of the run, as text cells."""

    def cells(u: Undo) -> list[str]:
        return [
            str(u.run_row),
            "" if u.did_id is None else str(u.did_id),
            u.did_number,
            "" if u.routing_id is None else str(u.routing_id),
            u.action_undone,
            _text(u.run_wrote),
            _text(u.live_record),
            _text(u.target),
        ]

    frame = pd.DataFrame(
        [cells(u) for u in undos],
        index=pd.Index([u.index for u in undos], dtype="int64"),
        columns=range(len(ROLLBACK_COLUMNS)),
        dtype=object,
    )
    source = SourceInfo(path=journal_path, format="journal", sha256=sha256)
    return RawTable(source=source, headers=ROLLBACK_COLUMNS, frame=frame)


def rollback(
    config: RollbackConfig,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    on_progress: ProgressCallback | None = None,
) -> RunSummary:
    """Roll back one run: restore what it updated, deactivate what it created, write the results.

    Args:
        config: the rollback's options.
        transport: an httpx transport instead of the network (the sandbox in-process, tests).
        on_progress: called after each write with the counts and an ETA.

    Returns:
        The summary; ``exit_code`` 0 no undo failed, 1 some failed, 3 aborted, 130 interrupted.
        Skipped rows (changed since the run) do not fail the rollback; the notes count them.

    Raises:
        InputError: no journal, no such run, a run that changed nothing, a bad option (exit 2).
        AuthError: the key was rejected before anything was sent (exit 3).
    """
    started = now_text()
    if not config.api_key:
        raise InputError("no API key: set VOCOBASE_API_KEY or pass --api-key")
    if config.requests_per_minute < 1 or config.concurrency < 1 or config.timeout <= 0:
        raise InputError("--requests-per-minute, --concurrency and --timeout must be positive")
    if not config.base_url.startswith(("http://", "https://")):
        raise InputError(f"--base-url must start with http:// or https://, not {config.base_url!r}")
    journal_path, run_id, sha256 = locate_run(config.source, config.run_id)
    if not journal_path.exists():
        raise InputError(
            f"no journal at {journal_path}: a rollback needs the journal the run wrote (pass it instead)"
        )
    results = config.output or default_rollback_path(journal_path)
    if results.suffix.lower() != ".xlsx":
        raise InputError(f"the results workbook must be an .xlsx file, not {results.name}")
    journal_sha = _sha256(journal_path)
    try:
        journal = Journal.open(journal_path)
    except (OSError, ValueError, sqlite3.Error) as exc:  # sqlite3.DatabaseError: not a journal
        raise InputError(f"cannot open the journal {journal_path}: {exc}") from None
    with contextlib.closing(journal):
        if not config.dry_run:
            journal.claim()
        run, run_id = _choose_run(journal, run_id, sha256)
        changes = journal.changes(run_id, include_unsettled=True)
        if not changes:
            raise InputError(f"run {run_id} of {journal_path.name} changed nothing: nothing to roll back")
        with asyncio.Runner() as loop:
            job, plan = _rollback_phases(loop, config, journal, run, run_id, changes, transport, on_progress)
        return _write_and_summarise(config, journal, job, plan, run, journal_sha, results, started)


def _write_and_summarise(
    config: RollbackConfig,
    journal: Journal,
    job: _Rollback,
    plan: RollbackPlan,
    run: Mapping[str, object],
    journal_sha: str,
    results: Path,
    started: str,
) -> RunSummary:
    deactivated = sum(
        1
        for u in plan.undos
        if u.action_undone == "create" and job.outcomes[u.index].status is Status.SUCCEEDED
    )
    info = RunInfo(
        command=COMMAND + (" (dry run)" if config.dry_run else ""),
        started=started,
        finished=now_text(),
        options=config.describe(),
        audit={
            **job.audit,
            "journal": str(journal.path),
            "rollback of run": str(plan.run_id),
            "run input": str(run.get("input_name", "")),
            "run input sha256": str(run.get("input_sha256", "")),
            **({"journal run": str(job.journal_run)} if job.journal_run else {}),
            "plan": plan.text(),
            **({"stopped": job.stop_reason} if job.stop_reason else {}),
        },
    )
    outcomes = [job.outcomes[u.index] for u in plan.undos]
    try:
        write_results(results, _table(journal.path, journal_sha, plan.undos), outcomes, (), info)
    finally:
        if job.journal_run:
            counts = collections.Counter(o.status.value for o in outcomes)
            journal.finish_run(job.journal_run, {s.value: counts[s.value] for s in Status})
    tally = collections.Counter(o.status for o in outcomes)
    notes: list[str] = []
    if job.stop_reason:
        notes.append(f"stopped: {job.stop_reason}")
    if config.dry_run:
        notes.append(f"dry run: nothing was sent. Plan: {plan.text()}")
    if deactivated:
        notes.append(
            f"{NO_DELETE}: {deactivated} routing records the run created were deactivated "
            "(status 0), modes kept"
        )
    skipped = tally[Status.SKIPPED]
    if skipped:
        notes.append(
            f"{skipped} rows skipped: changed since the run (see the results; --force overwrites them)"
        )
    failed_kinds = [o.reason_kind for o in outcomes if o.status is Status.FAILED]
    return RunSummary(
        rows=len(outcomes),
        counts=dict(tally),
        top_reasons=collections.Counter(failed_kinds).most_common(5),
        results_path=results,
        failed_path=None,
        exit_code=job.exit_code or (1 if failed_kinds else 0),
        notes=notes,
    )
