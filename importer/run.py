"""Import for real: pre-flight -> resolve -> plan -> apply -> results, resumable.

``run_import`` is the whole job in one call. Reads happen once per run (connections, every
page of DIDs, the bots, the existing routing); each row then gets a plan (create, update,
unchanged, skip or fail) and the writes go out through one shared rate limiter.

Guarantees, and where they come from:
- Never a duplicate: creates are planned only for DIDs with no routing in the live state read
  at the start, and a write whose outcome is unknown (timeout, dropped connection, 5xx) or a
  409 on create is settled by re-reading the live state before anything is re-sent.
- Never a lost row: every input row ends with exactly one outcome in the workbook; every
  write is journalled before it is sent and its outcome the moment it is known.
- Resume: rows an earlier run of the same file (same sha256) confirmed are skipped; rows a
  crash left in flight are planned against the live state like any other, so a write that
  had landed shows as done and one that had not is sent once.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import getpass
import json
import socket
import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from .api import Routing, VoiceLinkClient, WriteResult
from .errors import ApiError, AuthError, InputError
from .fields import routing_body
from .journal import ConfirmedRow, InFlightRow, Journal
from .limiter import RateLimiter
from .live import Inventory, LiveRouting, open_client, sending_options, stop_on_signals
from .model import Action, RoutingRow, RowOutcome, RunInfo, Status, ValidationReport
from .pipeline import (
    InputOptions,
    OutcomeTally,
    RunSummary,
    failed_outcome,
    load_and_validate,
    now_text,
    output_paths,
    reasons_by_row,
    top_reasons,
    write_outputs,
)
from .state import collect_created_ids, cost_text, read_state

__all__ = [
    "DEFAULT_BASE_URL",
    "ImportConfig",
    "OnExisting",
    "PlanCounts",
    "Progress",
    "key_fingerprint",
    "run_import",
]

DEFAULT_BASE_URL = "https://api.vocobase.com/api/v2"
MAX_WRITE_ATTEMPTS = 3
ERROR_RATE_MIN_ROWS = 20


class OnExisting:
    """What to do with a row whose DID already has a different routing."""

    UPDATE = "update"
    SKIP = "skip"
    FAIL = "fail"
    CHOICES = (UPDATE, SKIP, FAIL)


@dataclass(frozen=True, slots=True)
class ImportConfig:
    """Everything a run needs; the CLI builds it from flags and the environment."""

    input: InputOptions
    api_key: str = field(repr=False)
    base_url: str = DEFAULT_BASE_URL
    output: Path | None = None
    failed_out: Path | None = None
    connection_id: str | None = None
    requests_per_minute: int = 60
    concurrency: int = 4
    timeout: float = 30.0
    on_existing: str = OnExisting.UPDATE
    dry_run: bool = False
    journal: Path | None = None
    max_error_rate: float | None = None
    confirm: Callable[[PlanCounts], bool] | None = None
    """Asked with the plan's counts before any write; False sends nothing."""
    retry_backoff: float = 1.0
    """Base delay in seconds between re-sends after a settled unknown outcome (tests use 0)."""
    rate_window: float = 60.0
    """The rate limit's window in seconds (the API's is a minute; tests may shrink it)."""
    command: str = "run"

    def describe(self) -> dict[str, str]:
        """The options as text for the Summary sheet and the journal (never the key)."""
        return {
            **self.input.describe(),
            **sending_options(self, dry_run=self.dry_run),
            "on_existing": self.on_existing,
            "max_error_rate": "off" if self.max_error_rate is None else f"{self.max_error_rate:g}",
        }


@dataclass(frozen=True, slots=True)
class PlanCounts:
    """How many rows each action got, shown before sending."""

    create: int
    update: int
    unchanged: int
    skipped: int
    failed: int
    done_before: int
    cost: str = ""
    """Reads done, writes planned and their time at the rate (``state.cost_text``)."""

    def text(self) -> str:
        return (
            f"create {self.create}, update {self.update}, unchanged {self.unchanged}, "
            f"skip {self.skipped}, fail {self.failed}, done in an earlier run {self.done_before}"
        ) + (f" ({self.cost})" if self.cost else "")


@dataclass(frozen=True, slots=True)
class Progress:
    """A progress report for a UI: writes done of writes planned."""

    done: int
    total: int
    succeeded: int
    failed: int
    eta_seconds: float | None


ProgressCallback = Callable[[Progress], None]


@dataclass(frozen=True, slots=True)
class _Write:
    """One planned write."""

    row: int
    did_id: int
    action: Action
    body: Mapping[str, int | str]
    desired: Mapping[str, int]
    routing_id: int | None
    before: Mapping[str, int | None] | None
    resumed: InFlightRow | None = None


def _audit(config: ImportConfig, connection: str) -> dict[str, str]:
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


def _did_key(row: RoutingRow) -> str:
    return f"id:{row.did_id}" if row.did_id is not None else f"num:{row.did_number}"


def _current_body(routing: Routing) -> dict[str, int] | None:
    """The existing record in the form an update would send, or None if it is incomplete."""
    try:
        return routing_body(dict(routing.record))
    except (ValueError, KeyError):
        return None


def _record_text(record: Mapping[str, object] | None) -> str:
    if record is None:
        return ""
    return json.dumps({k: v for k, v in record.items() if v is not None}, sort_keys=False)


class _Runner:
    """One run's state: the client, the journal, the outcomes so far, stop flags."""

    def __init__(
        self,
        config: ImportConfig,
        report: ValidationReport,
        journal: Journal | None,
        client: VoiceLinkClient,
        limiter: RateLimiter,
        on_progress: ProgressCallback | None,
    ) -> None:
        self.config = config
        self.report = report
        self.journal = journal
        self.client = client
        self.limiter = limiter
        self.on_progress = on_progress
        self.run_id = 0
        self.outcomes: dict[int, RowOutcome] = {}
        self.stop_reason = ""
        self.exit_code = 0
        self.notes: list[str] = []
        self.audit: dict[str, str] = {}
        self.plan_text = ""
        self.apply_done = 0
        self.apply_failed = 0
        self.apply_succeeded = 0
        self.apply_total = 0

    # -- pre-flight and reads ------------------------------------------------------

    async def preflight(self) -> str:
        """Check the key and choose the connection; return its id."""
        connections = await self.client.list_connections()
        active = [c for c in connections if c.status.upper() == "ACTIVE"]
        listing = "; ".join(
            f"{c.name} ({c.connection_id}{', default' if c.is_default else ''})" for c in connections
        )
        wanted = self.config.connection_id
        if wanted:
            match = [c for c in connections if c.connection_id.lower() == wanted.lower()]
            if not match:
                raise InputError(f"connection {wanted} is not one of this account's connections: {listing}")
            chosen = match[0]
        elif len(active) == 1:
            chosen = active[0]
        elif not active:
            raise ApiError("this account has no active VoiceLink connection")
        else:
            raise InputError(
                "several VoiceLink connections are active; choose one with --connection-id or "
                f"VOCOBASE_CONNECTION_ID: {listing}"
            )
        self.client.connection_id = chosen.connection_id
        return chosen.connection_id

    async def read_inventory(self) -> Inventory:
        inventory, reads = await read_state(self.client, self.report.valid)
        self.audit["reads"] = reads.text()
        return inventory

    # -- resolve and plan ----------------------------------------------------------

    def _fail(self, row: int, kind: str, reason: str, did_id: int | None = None) -> None:
        self.outcomes[row] = RowOutcome(
            row=row, status=Status.FAILED, action=Action.FAIL, reason=reason, reason_kind=kind, did_id=did_id
        )

    def _near_match(self, number: str, inventory: Inventory) -> str:
        tail = number[-9:]
        near = [d for n, d in inventory.dids_by_number.items() if n.endswith(tail) or number.endswith(n)]
        if not near:
            return ""
        d = near[0]
        return f" (did you mean {d.did_number}, id {d.did_id}? check the country code)"

    def resolve(self, row: RoutingRow, inventory: Inventory, connection: str) -> int | None:
        """Find the row's DID id and check its bots; record a failure and return None if it cannot go."""
        problems: list[tuple[str, str]] = []
        did_id: int | None = None
        by_number = inventory.dids_by_number.get(row.did_number) if row.did_number else None
        if row.did_number and by_number is None:
            problems.append(
                (
                    "did_not_found",
                    f"DID {row.did_number} is not in this account's purchased DIDs"
                    + self._near_match(row.did_number, inventory),
                )
            )
        if row.did_id is not None:
            if row.did_id not in inventory.dids_by_id:
                problems.append(
                    ("did_not_found", f"DID id {row.did_id} is not in this account's purchased DIDs")
                )
            elif by_number is not None and by_number.did_id != row.did_id:
                problems.append(
                    (
                        "did_mismatch",
                        f"did_id {row.did_id} and did_number {row.did_number} are different DIDs "
                        f"({row.did_number} has id {by_number.did_id})",
                    )
                )
            did_id = row.did_id
        elif by_number is not None:
            did_id = by_number.did_id
        for name in ("inbound_websocket_bot_id", "outbound_websocket_bot_id"):
            bot_id = getattr(row, name)
            if bot_id is None:
                continue
            bot = inventory.bots.get(bot_id)
            if bot is None:
                problems.append(("bot_not_found", f"{name} {bot_id}: no such bot in this account"))
            elif not bot.active:
                problems.append(("bot_inactive", f"{name} {bot_id} ({bot.name}) is inactive"))
        if row.connection_id and row.connection_id.lower() != connection.lower():
            problems.append(
                (
                    "other_connection",
                    f"connection_id {row.connection_id} differs from this run's connection {connection}; "
                    "import each connection's rows in a run of their own",
                )
            )
        if problems:
            self._fail(row.row, problems[0][0], "; ".join(p[1] for p in problems), did_id)
            return None
        return did_id

    def plan(
        self,
        inventory: Inventory,
        connection: str,
        confirmed: Mapping[int, ConfirmedRow],
        in_flight: Mapping[int, InFlightRow],
    ) -> tuple[list[_Write], PlanCounts]:
        writes: list[_Write] = []
        seen: dict[int, int] = {}
        counts: collections.Counter[str] = collections.Counter()
        for row in self.report.valid:
            earlier = confirmed.get(row.row)
            if earlier is not None:
                self.outcomes[row.row] = RowOutcome(
                    row=row.row,
                    status=Status.SKIPPED,
                    action=Action.SKIP,
                    reason=f"done in an earlier run at {earlier.when} ({earlier.status})",
                    reason_kind="done_earlier",
                    did_id=earlier.did_id,
                    routing_id=earlier.routing_id,
                )
                counts["done_before"] += 1
                continue
            did_id = self.resolve(row, inventory, connection)
            if did_id is None:
                counts["failed"] += 1
                continue
            if did_id in seen:
                self._fail(
                    row.row, "duplicate", f"DID id {did_id} is a duplicate of row {seen[did_id]}", did_id
                )
                counts["failed"] += 1
                continue
            seen[did_id] = row.row
            desired = routing_body(row.record())
            existing = inventory.routing.get(did_id)
            resumed = in_flight.get(row.row)
            if existing is None:
                writes.append(
                    _Write(
                        row.row,
                        did_id,
                        Action.CREATE,
                        {"did_id": did_id, **desired},
                        desired,
                        None,
                        None,
                        resumed,
                    )
                )
                counts["create"] += 1
                continue
            current = _current_body(existing)
            if current == desired:
                if resumed is not None:
                    reason = f"the write sent by an interrupted run at {resumed.when} had been applied"
                    status = Status.SUCCEEDED
                else:
                    reason, status = "routing already as requested; nothing sent", Status.UNCHANGED
                self.outcomes[row.row] = RowOutcome(
                    row=row.row,
                    status=status,
                    action=Action.UNCHANGED if resumed is None else Action(resumed.action),
                    reason=reason,
                    reason_kind="unchanged" if resumed is None else "settled_on_resume",
                    did_id=did_id,
                    routing_id=existing.routing_id,
                )
                counts["unchanged"] += 1
                continue
            if self.config.on_existing != OnExisting.UPDATE:
                skip = self.config.on_existing == OnExisting.SKIP
                self.outcomes[row.row] = RowOutcome(
                    row=row.row,
                    status=Status.SKIPPED if skip else Status.FAILED,
                    action=Action.SKIP if skip else Action.FAIL,
                    reason=f"routing {existing.routing_id} exists and differs; "
                    f"--on-existing {self.config.on_existing}",
                    reason_kind="exists_skipped" if skip else "exists_failed",
                    did_id=did_id,
                    routing_id=existing.routing_id,
                    current=_record_text(existing.record),
                    proposed=_record_text(desired),
                )
                counts["skipped" if skip else "failed"] += 1
                continue
            writes.append(
                _Write(
                    row.row,
                    did_id,
                    Action.UPDATE,
                    dict(desired),
                    desired,
                    existing.routing_id,
                    dict(existing.record),
                    resumed,
                )
            )
            counts["update"] += 1
        return writes, PlanCounts(
            create=counts["create"],
            update=counts["update"],
            unchanged=counts["unchanged"],
            skipped=counts["skipped"],
            failed=counts["failed"],
            done_before=counts["done_before"],
        )

    # -- apply -----------------------------------------------------------------------

    def _progress(self) -> None:
        if self.on_progress is None:
            return
        remaining = self.apply_total - self.apply_done
        eta = self.limiter.eta(remaining + 1) if remaining else 0.0
        self.on_progress(
            Progress(self.apply_done, self.apply_total, self.apply_succeeded, self.apply_failed, eta)
        )

    def _finish(self, outcome: RowOutcome) -> None:
        self.outcomes[outcome.row] = outcome
        if self.journal is not None:
            self.journal.record_outcome(
                self.run_id,
                outcome.row,
                status=outcome.status.value,
                action=outcome.action.value,
                reason=outcome.reason,
                did_id=outcome.did_id,
                routing_id=outcome.routing_id,
                http_status=outcome.http_status,
                attempts=outcome.attempts,
            )

    async def _send(
        self,
        w: _Write,
        action: Action,
        body: Mapping[str, int | str],
        routing_id: int | None,
        before: Mapping[str, int | None] | None,
    ) -> WriteResult:
        if self.journal is not None:
            self.journal.record_sending(self.run_id, w.row, f"id:{w.did_id}", action.value, body, before)
        if action is Action.CREATE:
            return await self.client.create_routing(body)
        assert routing_id is not None
        return await self.client.update_routing(routing_id, body)

    async def write_one(self, w: _Write, live: LiveRouting) -> RowOutcome:
        """Send one planned write until its outcome is known; never create twice."""
        action, body, routing_id, before = w.action, w.body, w.routing_id, w.before
        attempts = 0
        causes: list[str] = []
        last_status: int | None = None
        while True:
            result = await self._send(w, action, body, routing_id, before)
            attempts += result.attempts
            last_status = result.http_status
            if result.ok:
                return RowOutcome(
                    row=w.row,
                    status=Status.SUCCEEDED,
                    action=action,
                    reason=f"{'created' if action is Action.CREATE else 'updated'}"
                    + (f" (after {', '.join(causes)})" if causes else ""),
                    reason_kind="created" if action is Action.CREATE else "updated",
                    did_id=w.did_id,
                    routing_id=result.routing_id or routing_id,
                    http_status=result.http_status,
                    attempts=attempts,
                )
            conflict = action is Action.CREATE and result.http_status == 409
            if result.known and not conflict:
                return RowOutcome(
                    row=w.row,
                    status=Status.FAILED,
                    action=action,
                    reason=result.message or "rejected",
                    reason_kind=f"api_{result.error_code or result.http_status}",
                    did_id=w.did_id,
                    routing_id=routing_id,
                    http_status=result.http_status,
                    attempts=attempts,
                )
            cause = (
                "409 conflict"
                if conflict
                else (f"HTTP {result.http_status}" if result.http_status else "no response")
                + (f": {result.message}" if result.message else "")
            )
            causes.append(cause)
            state = await live.fresh()
            current = state.get(w.did_id)
            if current is not None and _current_body(current) == w.desired:
                return RowOutcome(
                    row=w.row,
                    status=Status.SUCCEEDED,
                    action=action,
                    reason=f"applied; confirmed by re-reading the live state after {cause}",
                    reason_kind="settled",
                    did_id=w.did_id,
                    routing_id=current.routing_id,
                    http_status=last_status,
                    attempts=attempts,
                )
            # Only unknown outcomes use up the budget: a 429 re-send (counted in `attempts`)
            # was never applied, so it must not make the row give up early.
            if len(causes) >= MAX_WRITE_ATTEMPTS or self.stop_reason:
                why = "stopped" if self.stop_reason else f"after {attempts} attempts"
                return RowOutcome(
                    row=w.row,
                    status=Status.FAILED,
                    action=action,
                    reason=f"not applied {why} ({'; '.join(causes)}); the live state does not match the row",
                    reason_kind="unsettled",
                    did_id=w.did_id,
                    routing_id=routing_id,
                    http_status=last_status,
                    attempts=attempts,
                )
            if current is None and action is Action.UPDATE:
                return RowOutcome(
                    row=w.row,
                    status=Status.FAILED,
                    action=action,
                    reason=f"routing {routing_id} no longer exists ({cause}); run again to create it",
                    reason_kind="vanished",
                    did_id=w.did_id,
                    http_status=last_status,
                    attempts=attempts,
                )
            if current is not None and action is Action.CREATE:
                # Someone else routed this DID meanwhile: treat it as existing routing.
                if self.config.on_existing != OnExisting.UPDATE:
                    status = Status.SKIPPED if self.config.on_existing == OnExisting.SKIP else Status.FAILED
                    return RowOutcome(
                        row=w.row,
                        status=status,
                        action=action,
                        reason=f"routing {current.routing_id} appeared meanwhile and differs ({cause}); "
                        f"--on-existing {self.config.on_existing}",
                        reason_kind="exists_" + status.value,
                        did_id=w.did_id,
                        routing_id=current.routing_id,
                        http_status=last_status,
                        attempts=attempts,
                    )
                action, routing_id = Action.UPDATE, current.routing_id
                body, before = dict(w.desired), dict(current.record)
            if self.config.retry_backoff > 0:
                await asyncio.sleep(min(8.0, self.config.retry_backoff * 2 ** (attempts - 1)))

    async def apply(self, writes: list[_Write], live: LiveRouting, stop: asyncio.Event) -> None:
        queue: collections.deque[_Write] = collections.deque(writes)
        self.apply_total = len(writes)
        self._progress()

        async def worker() -> None:
            while queue and not self.stop_reason and not stop.is_set():
                w = queue.popleft()
                try:
                    outcome = await self.write_one(w, live)
                except AuthError as exc:
                    self._stop(f"the API rejected the key ({exc})", 3)
                    self._finish(
                        RowOutcome(
                            row=w.row,
                            status=Status.NOT_SENT,
                            action=w.action,
                            reason=f"not applied: {exc}",
                            reason_kind="auth_rejected",
                            did_id=w.did_id,
                        )
                    )
                    continue
                except ApiError as exc:
                    self._stop(f"the state could not be re-read ({exc})", 3)
                    outcome = RowOutcome(
                        row=w.row,
                        status=Status.FAILED,
                        action=w.action,
                        reason=f"outcome unknown and the state could not be re-read: {exc}",
                        reason_kind="unsettled",
                        did_id=w.did_id,
                    )
                self._finish(outcome)
                self.apply_done += 1
                if outcome.status is Status.FAILED:
                    self.apply_failed += 1
                elif outcome.status is Status.SUCCEEDED:
                    self.apply_succeeded += 1
                self._check_error_rate()
                self._progress()

        workers = max(1, min(self.config.concurrency, len(writes)))
        await asyncio.gather(*(worker() for _ in range(workers)))
        if stop.is_set() and not self.stop_reason:
            self._stop("interrupted", 130)
        reason = f"not sent: {self.stop_reason}" if self.stop_reason else "not sent"
        for w in queue:
            self.outcomes[w.row] = RowOutcome(
                row=w.row,
                status=Status.NOT_SENT,
                action=w.action,
                reason=reason,
                reason_kind="stopped",
                did_id=w.did_id,
                routing_id=w.routing_id,
            )

    def _stop(self, reason: str, code: int) -> None:
        if not self.stop_reason:
            self.stop_reason = reason
            self.exit_code = code

    def _check_error_rate(self) -> None:
        rate = self.config.max_error_rate
        if rate is None or self.apply_done < ERROR_RATE_MIN_ROWS:
            return
        if self.apply_failed / self.apply_done > rate:
            self._stop(
                f"{self.apply_failed} of {self.apply_done} writes failed, above --max-error-rate {rate:g}", 3
            )

    async def collect_routing_ids(self) -> None:
        """Read the routing once more, only if a create left a row without its routing id."""
        try:
            self.outcomes.update(await collect_created_ids(self.client, self.outcomes))
        except (ApiError, httpx.HTTPError) as exc:
            self.notes.append(f"note: routing ids could not be read back ({exc})")


def _replace(outcome: RowOutcome, **changes: object) -> RowOutcome:
    values = {name: getattr(outcome, name) for name in RowOutcome.__slots__}
    values.update(changes)
    return RowOutcome(**values)


def _dry_run_outcomes(writes: Sequence[_Write]) -> Iterator[RowOutcome]:
    for w in writes:
        yield RowOutcome(
            row=w.row,
            status=Status.NOT_SENT,
            action=w.action,
            reason=f"dry run: would {w.action.value}",
            reason_kind=f"dry_run_{w.action.value}",
            did_id=w.did_id,
            routing_id=w.routing_id,
            current=_record_text(w.before),
            proposed=_record_text(w.body),
        )


def default_journal_path(results: Path, input_path: Path) -> Path:
    """The journal sits beside the results: <stem>.journal.sqlite."""
    return results.with_name(input_path.stem + ".journal.sqlite")


def run_import(
    config: ImportConfig,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    on_progress: ProgressCallback | None = None,
) -> RunSummary:
    """Import a spreadsheet: read, validate, resolve, plan, apply, write the results.

    Args:
        config: the run's options.
        transport: an httpx transport instead of the network (the sandbox in-process, tests).
        on_progress: called after each write with the counts and an ETA.

    Returns:
        The summary; ``exit_code`` 0 no row failed, 1 some failed, 3 aborted, 130 interrupted.

    Raises:
        InputError: unusable file or option (exit 2).
        AuthError: the key was rejected before anything was sent (exit 3).
    """
    started = now_text()
    if not config.api_key:
        raise InputError("no API key: set VOCOBASE_API_KEY or pass --api-key")
    if config.on_existing not in OnExisting.CHOICES:
        raise InputError(f"--on-existing must be one of {', '.join(OnExisting.CHOICES)}")
    if config.requests_per_minute < 1 or config.concurrency < 1 or config.timeout <= 0:
        raise InputError("--requests-per-minute, --concurrency and --timeout must be positive")
    if not config.base_url.startswith(("http://", "https://")):
        raise InputError(f"--base-url must start with http:// or https://, not {config.base_url!r}")
    results, failed_path = output_paths(config.input.path, config.output, config.failed_out)
    report = load_and_validate(config.input)
    journal = None
    if not config.dry_run:
        journal_path = config.journal or default_journal_path(results, config.input.path)
        try:
            journal = Journal.open(journal_path)
        except (OSError, ValueError, sqlite3.Error) as exc:
            raise InputError(f"cannot open the journal {journal_path}: {exc}") from None
        try:
            journal.claim()
        except InputError:
            journal.close()
            raise
    runner: _Runner | None = None
    try:
        with asyncio.Runner() as loop:
            runner, counts_text = _run_phases(loop, config, report, journal, transport, on_progress)
    finally:
        if journal is not None and runner is None:
            journal.close()
    return _write_and_summarise(config, report, runner, journal, results, failed_path, started, counts_text)


def _run_phases(
    loop: asyncio.Runner,
    config: ImportConfig,
    report: ValidationReport,
    journal: Journal | None,
    transport: httpx.AsyncBaseTransport | None,
    on_progress: ProgressCallback | None,
) -> tuple[_Runner, str]:
    """Prepare (pre-flight, reads, plan), ask, then apply: one event loop, the prompt outside it.

    The question is asked while the loop is not running, so Ctrl-C at the prompt is a plain
    KeyboardInterrupt (nothing has been sent); during apply, Ctrl-C settles the writes in flight.
    """

    limiter, client = loop.run(open_client(config, transport))
    runner = _Runner(config, report, journal, client, limiter, on_progress)
    try:
        prepared = loop.run(_prepare(runner))
        if prepared is None:
            return runner, runner.plan_text
        writes, counts, inventory = prepared
        if writes and config.confirm is not None and not config.confirm(counts):
            runner._stop("not confirmed at the prompt", 3)
            for outcome in _dry_run_outcomes(writes):
                runner.outcomes[outcome.row] = _replace(
                    outcome, reason="not sent: not confirmed", reason_kind="not_confirmed"
                )
            return runner, runner.plan_text
        loop.run(_apply(runner, writes, inventory))
    finally:
        loop.run(client.aclose())
    return runner, runner.plan_text


async def _prepare(runner: _Runner) -> tuple[list[_Write], PlanCounts, Inventory] | None:
    """Pre-flight, the reads and the plan; None for a dry run (its outcomes are recorded)."""
    config, report, journal = runner.config, runner.report, runner.journal
    connection = await runner.preflight()
    runner.audit = _audit(config, connection)
    inventory = await runner.read_inventory()
    sha = report.table.source.sha256
    confirmed = journal.confirmed(sha) if journal is not None else {}
    in_flight = journal.in_flight(sha) if journal is not None else {}
    writes, counts = runner.plan(inventory, connection, confirmed, in_flight)
    cost = cost_text(runner.client.request_count, len(writes), config.requests_per_minute)
    counts = dataclasses.replace(counts, cost=cost)
    runner.plan_text = counts.text()
    if journal is not None:
        runner.run_id = journal.start_run(
            input_sha256=sha,
            input_name=config.input.path.name,
            command=config.command,
            audit=runner.audit,
            options=config.describe(),
        )
        for outcome in list(runner.outcomes.values()):
            if outcome.reason_kind != "done_earlier":
                runner._finish(outcome)
    if config.dry_run:
        for outcome in _dry_run_outcomes(writes):
            runner.outcomes[outcome.row] = outcome
        return None
    return writes, counts, inventory


async def _apply(runner: _Runner, writes: list[_Write], inventory: Inventory) -> None:
    """Send the writes; Ctrl-C or SIGTERM stops new ones and lets those in flight settle."""
    stop = asyncio.Event()
    with stop_on_signals(asyncio.get_running_loop(), stop):
        await runner.apply(writes, LiveRouting(runner.client, inventory, runner.config.retry_backoff), stop)
    if not stop.is_set() and runner.exit_code != 3:
        await runner.collect_routing_ids()


def _write_and_summarise(
    config: ImportConfig,
    report: ValidationReport,
    runner: _Runner,
    journal: Journal | None,
    results: Path,
    failed_path: Path,
    started: str,
    counts_text: str,
) -> RunSummary:
    grouped = reasons_by_row(report.issues)

    def outcomes() -> Iterator[RowOutcome]:
        for row in report.table.frame.index.tolist():
            issues = grouped.get(row)
            if issues:
                yield failed_outcome(row, issues)
            else:
                yield runner.outcomes.get(row) or RowOutcome(
                    row=row, status=Status.NOT_SENT, reason="not sent", reason_kind="not_sent"
                )

    info = RunInfo(
        command=config.command + (" (dry run)" if config.dry_run else ""),
        started=started,
        finished=now_text(),
        options=config.describe(),
        audit={
            **runner.audit,
            "plan": counts_text,
            **({"stopped": runner.stop_reason} if runner.stop_reason else {}),
            **(
                {"journal": str(journal.path.resolve()), "journal run": str(runner.run_id)}
                if journal is not None and runner.run_id
                else {}
            ),
        },
    )
    tally: OutcomeTally | None = None
    try:
        tally = write_outputs(report.table, outcomes(), report.issues, info, results, failed_path)
    finally:
        if journal is not None:
            if runner.run_id:
                # The workbook's counts (every input row); if writing it failed, the API stage's.
                counted = (
                    tally.counts
                    if tally is not None
                    else collections.Counter(o.status for o in runner.outcomes.values())
                )
                journal.finish_run(runner.run_id, {s.value: counted.get(s, 0) for s in Status})
            journal.close()
    extra = [o.reason_kind for o in runner.outcomes.values() if o.status is Status.FAILED]
    exit_code = runner.exit_code or (1 if tally.failed_rows else 0)
    notes = list(runner.notes)
    if runner.stop_reason:
        notes.insert(0, f"stopped: {runner.stop_reason}")
    if config.dry_run:
        notes.insert(0, f"dry run: nothing was sent. Plan: {counts_text}")
    return RunSummary(
        rows=report.table.row_count,
        counts=dict(tally.counts),
        top_reasons=top_reasons(report.issues, extra),
        results_path=results,
        failed_path=failed_path if tally.failed_rows else None,
        exit_code=exit_code,
        notes=notes,
    )


def key_fingerprint(key: str) -> str:
    """The only part of a key that may be shown: its last four characters."""
    return "..." + key[-4:] if len(key) > 8 else "(hidden)"
