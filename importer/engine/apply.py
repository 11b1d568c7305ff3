"""The one write engine: send a plan's writes, settle every unknown outcome, journal, stop, report.

Every job that changes routing (``run``, ``rollback``, the web service) plans first
(``plan.py``) and then hands the plan to :func:`apply_plan`, which guarantees:

- **Never a duplicate.** A write whose outcome is unknown (timeout, dropped connection, 5xx)
  or a create answered 409 is settled by re-reading the live state (``LiveRouting.fresh``)
  before anything is re-sent: applied means done; a create that meets routing created
  meanwhile follows the plan's ``OnExisting``; an update whose record changed from what the
  plan saw (its ``guard``) is not re-sent.
- **Never a lost row.** Each write is journalled (``Journal.record_sending``) before it is
  sent and its outcome the moment it is known; every write of the plan ends with exactly one
  outcome, ``not_sent`` for the ones a stop kept back.
- **Within the rate limit.** Writes go through the client's shared ``RateLimiter`` with at most
  ``concurrency`` in flight.
- **One retry budget.** Only unknown outcomes count against it (``retry.MAX_ATTEMPTS``): a 429
  was not applied, so its re-sends (done by the client) never make a row give up early. The
  wait between re-sends is ``retry.backoff_delay``.
- **Stopping.** A 401/403 (the key), ``max_error_rate`` or a cancel request (an
  ``asyncio.Event`` set by any task; Ctrl-C and SIGTERM just set it, see :func:`stop_on_signals`)
  stop new writes; the writes in flight are settled as usual.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import getpass
import math
import signal
import socket
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Generic, TypeVar

import httpx

from importer.account.client import VoiceLinkClient, WriteResult
from importer.account.inventory import NamesADid, ReadCallback, collect_created_ids
from importer.account.limiter import RateLimiter
from importer.account.live import (
    DEFAULT_BASE_URL,
    ClientSettings,
    Inventory,
    LiveRouting,
    open_client,
    read_inventory,
)
from importer.account.retry import MAX_ATTEMPTS, backoff_delay
from importer.engine.journal import Journal
from importer.engine.plan import Plan, Write, body_of, record_text
from importer.errors import ApiError, AuthError, InputError
from importer.jobs.pipeline import now_text
from importer.model import RowOutcome, RunInfo
from importer.vocab import Action, ExitCode, OnExisting, ReasonKind, Status

__all__ = [
    "ERROR_RATE_MIN_WRITES",
    "Applied",
    "ConnectOptions",
    "Job",
    "Progress",
    "ProgressCallback",
    "SendOptions",
    "Session",
    "apply_plan",
    "drive",
    "drive_async",
    "human_duration",
    "key_fingerprint",
    "open_session",
    "skipped_by_parser",
    "stop_on_signals",
]

ERROR_RATE_MIN_WRITES = 20
"""``max_error_rate`` is judged only once this many writes are done (a first failure is not 100%)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SendOptions:
    """How a job sends: pace, parallelism, patience, journal, when to give up.

    One definition for ``ImportConfig``, ``RollbackConfig`` (both extend it) and the CLI's
    options, which take their defaults from here.
    """

    requests_per_minute: int = 60
    """Requests per ``rate_window`` for the API key (the API allows 60 a minute)."""
    concurrency: int = 4
    """Writes in flight at most."""
    timeout: float = 30.0
    """Seconds to wait for an answer before the outcome counts as unknown."""
    journal: Path | None = None
    """The journal; None: the job's default place (beside the results, or the run's journal)."""
    max_error_rate: float | None = None
    """Stop when more than this share of writes failed (judged from the 20th write on)."""
    retry_backoff: float = 1.0
    """Base delay in seconds between tries (``retry.backoff_delay``); 0 turns waits off (tests)."""
    rate_window: float = 60.0
    """The rate limit's window in seconds (the API's is a minute; tests may shrink it)."""

    def __post_init__(self) -> None:
        if isinstance(self.journal, str):
            object.__setattr__(self, "journal", Path(self.journal))

    def check(self) -> None:
        """Refuse options no job can use.

        Raises:
            InputError: a non-positive rate, concurrency or timeout, or an error rate outside [0, 1].
        """
        if self.requests_per_minute < 1 or self.concurrency < 1 or self.timeout <= 0:
            raise InputError("--requests-per-minute, --concurrency and --timeout must be positive")
        if self.max_error_rate is not None and not 0 <= self.max_error_rate <= 1:
            raise InputError("--max-error-rate must be between 0 and 1")

    def estimate(self, writes: int) -> str:
        """How long ``writes`` writes take at this rate: "9,690 writes, about 2 h 42 min at 60/min"."""
        if not writes:
            return "no writes"
        per_minute = self.requests_per_minute * 60 / self.rate_window
        took = human_duration(writes * 60 / per_minute)
        return f"{writes:,} write{'' if writes == 1 else 's'}, about {took} at {per_minute:g}/min"

    def cost(self, reads_done: int, writes: int) -> str:
        """The plan's cost line: "3 reads done; 10 writes, about 10 s at 60/min".

        Args:
            reads_done: Requests already sent (the pre-flight and the reads of the live state).
            writes: Writes the plan would send.
        """
        return f"{reads_done:,} read{'' if reads_done == 1 else 's'} done; {self.estimate(writes)}"

    def describe(self) -> dict[str, str]:
        """The options as text for the Summary sheet and the journal."""
        return {
            "requests_per_minute": str(self.requests_per_minute),
            "concurrency": str(self.concurrency),
            "timeout": f"{self.timeout:g}s",
            "max_error_rate": "off" if self.max_error_rate is None else f"{self.max_error_rate:g}",
        }


def human_duration(seconds: float) -> str:
    """A duration as people say it: '10 s', '4 min 10 s', '2 h 42 min'."""
    total = max(0, math.ceil(seconds))
    if total < 60:
        return f"{total} s"
    minutes, secs = divmod(total, 60)
    if minutes < 60:
        return f"{minutes} min {secs} s" if secs else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectOptions(SendOptions):
    """Where and as whom a job sends, on top of how: the part ``run`` and ``rollback`` share."""

    api_key: str = field(repr=False)
    base_url: str = DEFAULT_BASE_URL
    connection_id: str | None = None
    """The VoiceLink connection; None: the only active one (a rollback: the run's)."""
    dry_run: bool = False
    """Plan only: read the live state, send nothing, journal nothing."""
    confirm: Callable[[Plan], bool] | None = None
    """Asked with the plan before any write (not for a dry run); False sends nothing."""
    on_plan: Callable[[Plan], None] | None = None
    """Shown the plan once it is made (dry runs too)."""
    on_read: ReadCallback | None = None
    """Told what is being read before the plan ("reading DIDs: page 3 of 50"), for a progress line."""

    def check(self) -> None:
        """Refuse options no job can use (InputError), the key and base URL included."""
        SendOptions.check(self)
        if not self.api_key:
            raise InputError("no API key: set VOCOBASE_API_KEY or pass --api-key")
        if not self.base_url.startswith(("http://", "https://")):
            raise InputError(f"--base-url must start with http:// or https://, not {self.base_url!r}")

    def describe(self) -> dict[str, str]:
        """The options as text for the Summary sheet and the journal (never the key)."""
        out = {
            "base_url": self.base_url,
            **SendOptions.describe(self),
            "dry_run": "yes" if self.dry_run else "no",
        }
        if self.connection_id:
            out["connection_id"] = self.connection_id
        return out


@dataclass(frozen=True, slots=True)
class Progress:
    """A progress report for a UI: writes done of writes planned."""

    done: int
    total: int
    succeeded: int
    failed: int
    eta_seconds: float | None
    """The rate limit's estimate of the time the remaining writes need."""
    paused_seconds: float = 0.0
    """How much longer the limiter holds every request after a 429 (0 when not paused)."""
    outcome: RowOutcome | None = None
    """The outcome just finished (None for the report before the first write)."""
    note: str = ""
    """A message for people, e.g. "stopping: 3 writes in flight, settling" the moment a stop begins."""


ProgressCallback = Callable[[Progress], None]


@dataclass(frozen=True, slots=True)
class Applied:
    """What :func:`apply_plan` did: one outcome per write of the plan, and why it stopped."""

    outcomes: tuple[RowOutcome, ...]
    stop_reason: str = ""
    exit_code: ExitCode | None = None
    """ABORTED or INTERRUPTED when the job stopped itself; None when every write was tried."""
    notes: tuple[str, ...] = ()


def key_fingerprint(key: str) -> str:
    """The only part of a key that may be shown: its last four characters."""
    return "..." + key[-4:] if len(key) > 8 else "(hidden)"


def audit_of(settings: ClientSettings, connection: str) -> dict[str, str]:
    """Who and where, for the Summary sheet and the journal (never the key itself)."""
    try:
        user = getpass.getuser()
    except Exception:  # getpass raises various errors when no user name can be found
        user = "(unknown)"
    return {
        "os_user": user,
        "host": socket.gethostname(),
        "api_key": key_fingerprint(settings.api_key),
        "connection": connection,
        "base_url": settings.base_url,
    }


@dataclass(frozen=True, slots=True)
class Session:
    """A job's connection to the account: the client, its limiter, the state read at the start."""

    client: VoiceLinkClient
    limiter: RateLimiter
    inventory: Inventory
    audit: Mapping[str, str]


async def open_session(
    settings: ClientSettings,
    transport: httpx.AsyncBaseTransport | None,
    limiter: RateLimiter | None = None,
    *,
    used_before: str | None = None,
    rows: Sequence[NamesADid] = (),
    on_read: ReadCallback | None = None,
) -> Session:
    """Open the client and read the account's state the rows need (see ``live.read_inventory``).

    The caller closes ``session.client`` (``await session.client.aclose()``).
    """
    limiter, client = await open_client(settings, transport, limiter)
    try:
        inventory = await read_inventory(
            client, settings.connection_id, used_before=used_before, rows=rows, on_read=on_read
        )
    except BaseException:
        await client.aclose()
        raise
    audit = {**audit_of(settings, inventory.connection), "reads": inventory.reads.text()}
    return Session(client, limiter, inventory, audit)


@contextlib.contextmanager
def stop_on_signals(cancel: asyncio.Event, abandon: asyncio.Event | None = None) -> Iterator[None]:
    """Ctrl-C or SIGTERM set ``cancel`` (no new writes; those sent settle); a second one ``abandon``."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    loop = asyncio.get_running_loop()

    def stop() -> None:
        if cancel.is_set() and abandon is not None:
            abandon.set()
        cancel.set()

    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop)
            installed.append(sig)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - non-Unix loops
            pass
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


@dataclass(slots=True)
class _Attempt:
    """The state of one write while it is being settled (it may turn from create into update)."""

    w: Write
    action: Action
    routing_id: int | None
    body: Mapping[str, int | str]
    before: Mapping[str, int | None] | None
    done: str
    done_kind: ReasonKind
    attempts: int = 0
    last_status: int | None = None
    causes: list[str] = field(default_factory=list)

    def outcome(
        self,
        status: Status,
        kind: str,
        reason: str,
        routing_id: int | None = None,
        *,
        action: Action | None = None,
    ) -> RowOutcome:
        return RowOutcome(
            row=self.w.row,
            status=status,
            action=action or self.action,
            reason=reason,
            reason_kind=kind,
            did_id=self.w.did_id,
            routing_id=self.routing_id if routing_id is None else routing_id,
            http_status=self.last_status,
            attempts=self.attempts,
        )


class _Engine:
    """One call of :func:`apply_plan`: the counters, the stop flag, the outcomes so far."""

    def __init__(
        self,
        plan: Plan,
        client: VoiceLinkClient,
        live: LiveRouting,
        journal: Journal | None,
        run_id: int,
        options: SendOptions,
        cancel: asyncio.Event,
        abandon: asyncio.Event | None,
        on_progress: ProgressCallback | None,
        limiter: RateLimiter | None,
        cancel_reason: str = "interrupted",
    ) -> None:
        self.cancel_reason = cancel_reason
        self.plan, self.client, self.live, self.journal, self.run_id = plan, client, live, journal, run_id
        self.options, self.cancel, self.on_progress, self.limiter = options, cancel, on_progress, limiter
        self.abandon = abandon
        self.outcomes: dict[int, RowOutcome] = {}
        self.stop_reason = ""
        self.exit_code: ExitCode | None = None
        self.done = self.succeeded = self.failed = 0
        self.workers: list[asyncio.Task[None]] = []
        self.sending: set[asyncio.Task[None]] = set()
        """Workers inside the client's send of a write (perhaps still waiting for a rate-limit slot)."""
        self.busy: set[asyncio.Task[None]] = set()
        """Workers with a write taken from the queue and not finished."""
        self.dropped: set[asyncio.Task[None]] = set()
        """Workers cancelled on purpose while waiting for a slot: their write was never sent."""
        self.abandoning = False

    def stop(self, reason: str, code: ExitCode) -> None:
        if not self.stop_reason:
            self.stop_reason, self.exit_code = reason, code

    def record(self, outcome: RowOutcome) -> None:
        """Keep an outcome and commit it to the journal."""
        self.outcomes[outcome.row] = outcome
        self.journal_outcome(outcome)

    def journal_outcome(self, outcome: RowOutcome) -> None:
        """Commit an outcome to the journal (when there is one) without keeping it."""
        if self.journal is not None:
            self.journal.record_outcome(
                self.run_id,
                self.plan.journal_row(outcome.row),
                status=outcome.status.value,
                action=outcome.action.value,
                reason=outcome.reason,
                did_id=outcome.did_id,
                routing_id=outcome.routing_id,
                http_status=outcome.http_status,
                attempts=outcome.attempts,
            )

    def progress(self, outcome: RowOutcome | None, note: str = "") -> None:
        if self.on_progress is None:
            return
        total = len(self.plan.writes)
        left = total - self.done
        eta = paused = 0.0
        if self.limiter is not None:
            eta = self.limiter.eta(left + 1) if left else 0.0
            paused = self.limiter.paused_for
        self.on_progress(Progress(self.done, total, self.succeeded, self.failed, eta, paused, outcome, note))

    async def watch(self) -> None:
        """On cancel: drop the writes waiting for a rate-limit slot, say what is left to settle.

        A write waiting in the limiter has not been sent, so cancelling it is safe and immediate;
        writes already sent are left to finish and settle. A write that comes to wait later (the
        client re-sending after a 429) is dropped as well. On ``abandon`` (a second Ctrl-C) the
        writes in flight stop too: they stay in flight in the journal, for the next run to settle.
        """
        await self.cancel.wait()
        self.drop_waiting()
        self.progress(None, f"stopping: {len(self.busy - self.dropped)} writes in flight, settling")
        abandon = self.abandon or asyncio.Event()
        while not abandon.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.05):
                    await abandon.wait()
            self.drop_waiting()
        self.abandoning = True
        left = [t for t in self.busy - self.dropped if not t.done()]
        for task in left:
            task.cancel()
        self.progress(
            None, f"stopping now: {len(left)} writes left unsettled; running the same file again settles them"
        )

    def drop_waiting(self) -> None:
        """Cancel the workers whose write waits for a rate-limit slot (it has not been sent)."""
        if self.limiter is None:
            return
        for task in self.sending - self.dropped:
            if self.limiter.is_waiting(task):
                self.dropped.add(task)
                task.cancel()

    async def send(self, a: _Attempt) -> WriteResult:
        if self.journal is not None:
            self.journal.record_sending(
                self.run_id,
                self.plan.journal_row(a.w.row),
                f"id:{a.w.did_id}",
                a.action.value,
                a.body,
                a.before,
            )
        if a.action is Action.CREATE:
            return await self.client.create_routing(a.body)
        assert a.routing_id is not None
        return await self.client.update_routing(a.routing_id, a.body)

    async def write(self, w: Write) -> RowOutcome:
        """Send one write until its outcome is known; never re-send without re-reading first."""
        a = _Attempt(w, w.action, w.routing_id, w.body, w.before, w.done or w.done_kind.label, w.done_kind)
        while True:
            if a.causes and self.cancel.is_set():
                return self.not_resent(a)
            task = asyncio.current_task()
            assert task is not None
            self.sending.add(task)
            try:
                result = await self.send(a)
            except asyncio.CancelledError:
                if task not in self.dropped or self.abandoning:
                    raise
                task.uncancel()
                # Cancelled while waiting for a rate-limit slot: this attempt never left.
                if a.causes:
                    return self.not_resent(a)
                return w.outcome(
                    Status.NOT_SENT,
                    f"not sent: {self.cancel_reason} while waiting for a rate-limit slot",
                    ReasonKind.STOPPED,
                )
            finally:
                self.sending.discard(task)
            a.attempts += result.attempts
            a.last_status = result.http_status
            if result.ok:
                after = f" (after {', '.join(a.causes)})" if a.causes else ""
                return a.outcome(Status.SUCCEEDED, a.done_kind, a.done + after, result.routing_id)
            conflict = a.action is Action.CREATE and result.http_status == 409
            if result.known and not conflict:
                kind = ReasonKind.api(result.error_code or result.http_status)
                return a.outcome(Status.FAILED, kind, result.message or "rejected")
            cause = (
                "409 conflict"
                if conflict
                else (f"HTTP {result.http_status}" if result.http_status else "no response")
                + (f": {result.message}" if result.message else "")
            )
            a.causes.append(cause)
            settled = await self.settle(a, cause)
            if settled is not None:
                return settled
            await asyncio.sleep(backoff_delay(len(a.causes), self.options.retry_backoff))

    def not_resent(self, a: _Attempt) -> RowOutcome:
        """A write whose unknown outcomes all proved not applied, and that a stop keeps from re-sending."""
        reason = f"not applied: stopped ({'; '.join(a.causes)}); the live state does not match what was sent"
        return a.outcome(Status.FAILED, ReasonKind.NOT_APPLIED, reason)

    async def settle(self, a: _Attempt, cause: str) -> RowOutcome | None:
        """Re-read the live state after an unknown outcome; return the outcome, or None to re-send."""
        current = (await self.live.fresh()).get(a.w.did_id)
        now = None if current is None else body_of(current.record)
        if now == dict(a.w.expect):
            assert current is not None
            reason = f"{a.done}; confirmed by re-reading the live state after {cause}"
            return a.outcome(Status.SUCCEEDED, ReasonKind.SETTLED, reason, current.routing_id)
        # Only unknown outcomes use up the budget: a 429 re-send (counted in `attempts`)
        # was never applied, so it must not make the row give up early.
        if len(a.causes) >= MAX_ATTEMPTS or self.stop_reason:
            why = "stopped" if self.stop_reason else f"after {a.attempts} attempts"
            reason = f"not applied {why} ({'; '.join(a.causes)}); the live state does not match what was sent"
            return a.outcome(Status.FAILED, ReasonKind.NOT_APPLIED, reason)
        if a.action is Action.UPDATE:
            if current is None:
                reason = f"routing {a.routing_id} no longer exists ({cause}); not re-sent"
                return a.outcome(Status.FAILED, ReasonKind.VANISHED, reason)
            if a.w.guard is not None and now != dict(a.w.guard):
                reason = (
                    f"the routing changed meanwhile ({cause}; now {record_text(current.record)}); not re-sent"
                )
                return a.outcome(Status.FAILED, ReasonKind.CHANGED_MEANWHILE, reason)
            return None
        if current is not None:
            # Someone else routed this DID meanwhile: treat it as existing routing.
            on_existing = self.plan.on_existing
            if on_existing is not OnExisting.UPDATE:
                skip = on_existing is OnExisting.SKIP
                reason = (
                    f"routing {current.routing_id} appeared meanwhile and differs ({cause}); "
                    f"--on-existing {on_existing}"
                )
                kind = ReasonKind.EXISTS_SKIPPED if skip else ReasonKind.EXISTS_FAILED
                return a.outcome(Status.SKIPPED if skip else Status.FAILED, kind, reason, current.routing_id)
            a.action, a.routing_id = Action.UPDATE, current.routing_id
            a.body, a.before = dict(a.w.expect), dict(current.record)
            a.done, a.done_kind = ReasonKind.UPDATED.label, ReasonKind.UPDATED
        return None

    def check_error_rate(self) -> None:
        rate = self.options.max_error_rate
        if rate is None or self.done < ERROR_RATE_MIN_WRITES:
            return
        if self.failed / self.done > rate:
            self.stop(
                f"{self.failed} of {self.done} writes failed, above --max-error-rate {rate:g}",
                ExitCode.ABORTED,
            )

    async def worker(self, queue: collections.deque[Write]) -> None:
        task = asyncio.current_task()
        assert task is not None
        while queue and not self.stop_reason and not self.cancel.is_set():
            w = queue.popleft()
            self.busy.add(task)
            try:
                outcome = await self.write(w)
            except asyncio.CancelledError:
                if not self.abandoning:
                    raise
                # A second stop: leave the write in flight in the journal for the next run to settle.
                # The server may well have applied it (the answer is what we stopped waiting for).
                reason = (
                    "outcome unknown (may have been applied): stopped before it was settled; "
                    "running the same file again settles it against the live state"
                )
                self.outcomes[w.row] = w.outcome(Status.FAILED, reason, ReasonKind.UNSETTLED)
                return
            except AuthError as exc:
                self.stop(f"the API rejected the key ({exc})", ExitCode.ABORTED)
                self.record(w.outcome(Status.NOT_SENT, f"not applied: {exc}", ReasonKind.AUTH_REJECTED))
                continue
            except ApiError as exc:
                self.stop(f"the state could not be re-read ({exc})", ExitCode.ABORTED)
                reason = f"outcome unknown (may have been applied) and the state could not be re-read: {exc}"
                outcome = w.outcome(Status.FAILED, reason, ReasonKind.UNSETTLED)
            finally:
                self.busy.discard(task)
            self.record(outcome)
            self.done += 1
            self.failed += outcome.status is Status.FAILED
            self.succeeded += outcome.status is Status.SUCCEEDED
            self.check_error_rate()
            self.progress(outcome)

    async def read_back_routing_ids(self) -> tuple[str, ...]:
        """Creates are answered without an id: one sync reads them back, only if one is missing."""
        try:
            self.outcomes.update(await collect_created_ids(self.client, self.outcomes))
        except (ApiError, httpx.HTTPError) as exc:
            return (f"note: routing ids could not be read back ({exc})",)
        return ()


async def apply_plan(
    plan: Plan,
    *,
    client: VoiceLinkClient,
    live: LiveRouting,
    journal: Journal | None,
    run_id: int,
    options: SendOptions,
    cancel: asyncio.Event | None = None,
    abandon: asyncio.Event | None = None,
    on_progress: ProgressCallback | None = None,
    limiter: RateLimiter | None = None,
    cancel_reason: str = "interrupted",
) -> Applied:
    """Send a plan's writes; settle, journal and report each one.

    Args:
        plan: The plan; its settled outcomes are journalled too (a row done in an earlier run aside).
        client: The job's client (its connection chosen).
        live: The live state, for settling unknown outcomes by re-reading.
        journal: Where each write is recorded before it is sent; None: unjournalled (tests).
        run_id: The journal's run these writes belong to.
        options: Concurrency, error rate and re-send backoff.
        cancel: Set it (from any task, or a signal handler) to stop: writes waiting for a
            rate-limit slot are dropped at once (never sent), the writes in flight settle.
        abandon: Set it after ``cancel`` (a second Ctrl-C) to stop settling too: the writes in
            flight stay in flight in the journal, and the next run of the same input settles them.
        on_progress: Called before the first write and after each one.
        limiter: The client's rate limiter, for the ETA and the pause in the progress reports.
        cancel_reason: The stop reason ``cancel`` gives (the writes it kept back say "not sent: ...").

    Returns:
        One outcome per write (``not_sent`` for those a stop kept back), the stop reason and exit code.

    Raises:
        Nothing for a row: a rejected key or an unreadable state stops the job (``Applied.exit_code``).
    """
    engine = _Engine(
        plan,
        client,
        live,
        journal,
        run_id,
        options,
        cancel or asyncio.Event(),
        abandon,
        on_progress,
        limiter,
        cancel_reason,
    )
    # The plan's settled outcomes are journalled but not kept: the caller adds them to ours.
    for outcome in plan.outcomes:
        if outcome.reason_kind != ReasonKind.DONE_EARLIER:
            engine.journal_outcome(outcome)
    queue = collections.deque(plan.writes)
    engine.progress(None)
    count = max(1, min(options.concurrency, len(queue)))
    engine.workers = [asyncio.create_task(engine.worker(queue)) for _ in range(count)]
    watcher = asyncio.create_task(engine.watch())
    try:
        await asyncio.gather(*engine.workers)
    finally:
        watcher.cancel()
        for task in engine.workers:
            task.cancel()  # only matters when this call itself is cancelled
    if engine.cancel.is_set():
        engine.stop(engine.cancel_reason, ExitCode.INTERRUPTED)
    notes: tuple[str, ...] = ()
    if engine.exit_code is None:
        notes = await engine.read_back_routing_ids()
    reason = f"not sent: {engine.stop_reason}" if engine.stop_reason else "not sent"
    for w in queue:
        engine.record(w.outcome(Status.NOT_SENT, reason, ReasonKind.STOPPED))
    return Applied(tuple(engine.outcomes.values()), engine.stop_reason, engine.exit_code, notes)


@dataclass(frozen=True, slots=True)
class ParserNotes:
    """What the client's parsers skipped, for the summary's notes and the Summary sheet."""

    notes: tuple[str, ...] = ()
    audit: Mapping[str, str] = field(default_factory=dict)


def skipped_by_parser(client: VoiceLinkClient, shown: int = 3) -> ParserNotes:
    """Report the DIDs, bots and routing records the client could not use (``client.warnings``)."""
    warnings = client.warnings
    if not warnings:
        return ParserNotes()
    note = f"note: {len(warnings)} item(s) the API listed could not be used and were skipped: " + "; ".join(
        warnings[:shown]
    )
    if len(warnings) > shown:
        note += f" (and {len(warnings) - shown} more: see the Summary sheet)"
    return ParserNotes((note,), {"skipped from the API's lists": "; ".join(warnings)})


# -- driving a job ---------------------------------------------------------------------

R = TypeVar("R")
C = TypeVar("C", bound="ConnectOptions")


class Job(Generic[C, R]):
    """A job that sends a plan, its stages in the order they run (:func:`drive` runs them).

    ``prepare`` reads and plans; ``approve`` asks ``config.confirm`` (synchronously, outside the
    event loop when driven from sync code); ``apply`` sends through :func:`apply_plan`;
    ``disconnect`` closes the client; ``report`` writes the results; ``close`` the journal.
    Subclasses (``run``, ``rollback``) write ``prepare``, ``start_run`` and ``report``: what
    differs; the rest is here once (as httpx keeps its clients thin over one base).
    """

    def __init__(
        self,
        config: C,
        transport: httpx.AsyncBaseTransport | None,
        on_progress: ProgressCallback | None,
        cancel: asyncio.Event | None,
        limiter: RateLimiter | None,
    ) -> None:
        self.config, self.transport, self.on_progress = config, transport, on_progress
        self.cancel, self.limiter = cancel, limiter
        self.started = now_text()
        self.journal: Journal | None = None
        self.session: Session | None = None
        self.plan: Plan | None = None
        self.run_id = 0
        """The journal's run of this job (0: none started: a dry run, or nothing confirmed)."""
        self.applied = Applied(())

    async def prepare(self) -> None:
        raise NotImplementedError

    async def open_session(self, rows: Sequence[NamesADid], used_before: str | None = None) -> Session:
        """The pre-flight and the live state the rows need; ``session`` is set."""
        self.session = await open_session(
            self.config,
            self.transport,
            self.limiter,
            used_before=used_before,
            rows=rows,
            on_read=self.config.on_read,
        )
        return self.session

    def priced(self, plan: Plan) -> Plan:
        """The plan with its cost: the reads done so far, the writes and their time at the rate."""
        assert self.session is not None
        return replace(plan, cost=self.config.cost(self.session.client.request_count, len(plan.writes)))

    def start_run(self, journal: Journal, session: Session) -> int:
        """Record the job's start in the journal; return its run id."""
        raise NotImplementedError

    def report(self) -> R:
        raise NotImplementedError

    def approve(self) -> bool:
        """Ask ``config.confirm`` when there is something to send."""
        assert self.plan is not None
        if self.config.dry_run or not self.plan.writes or self.config.confirm is None:
            return True
        return self.config.confirm(self.plan)

    async def apply(self, approved: bool) -> None:
        """Send the plan (journalled as a new run), or record why nothing was sent."""
        plan, session, config, journal = self.plan, self.session, self.config, self.journal
        assert plan is not None and session is not None
        if config.dry_run:
            self.applied = Applied(plan.dry_run())
            return
        if not approved:
            # Declining is a choice, not a failure: exit 0, and the summary says nothing was sent.
            outcomes = plan.not_sent("not sent: not confirmed", ReasonKind.NOT_CONFIRMED)
            self.applied = Applied(
                plan.outcomes + outcomes, notes=("nothing sent: not confirmed at the prompt",)
            )
            return
        assert journal is not None
        self.run_id = self.start_run(journal, session)
        cancel, abandon = self.cancel or asyncio.Event(), asyncio.Event()
        # A caller with its own cancel event (a web service) owns the process's signals: taking
        # SIGTERM from its server, then removing the handler, would leave it deaf to SIGTERM.
        signals = stop_on_signals(cancel, abandon) if self.cancel is None else contextlib.nullcontext()
        with signals:
            applied = await apply_plan(
                plan,
                client=session.client,
                live=LiveRouting(session.client, session.inventory, config.retry_backoff),
                journal=journal,
                run_id=self.run_id,
                options=config,
                cancel=cancel,
                abandon=abandon,
                on_progress=self.on_progress,
                limiter=session.limiter,
                cancel_reason="interrupted" if self.cancel is None else "cancelled",
            )
        self.applied = replace(applied, outcomes=plan.outcomes + applied.outcomes)

    def notes(self) -> list[str]:
        """The summary's notes every job has: why it stopped, a dry run, what the parsers skipped."""
        assert self.plan is not None and self.session is not None
        out = [*self.applied.notes, *skipped_by_parser(self.session.client).notes]
        if self.applied.stop_reason:
            out.insert(0, f"stopped: {self.applied.stop_reason}")
        if self.config.dry_run:
            out.insert(0, f"dry run: nothing was sent. Plan: {self.plan.text()}")
        return out

    def audit(self) -> dict[str, str]:
        """The Summary sheet's audit lines every job has: who, where, the plan, the journal's run."""
        assert self.plan is not None and self.session is not None
        return {
            **self.session.audit,
            "plan": self.plan.text(),
            **({"stopped": self.applied.stop_reason} if self.applied.stop_reason else {}),
            **(
                {"journal": str(self.journal.path.resolve()), "journal run": str(self.run_id)}
                if self.journal is not None and self.run_id
                else {}
            ),
            **skipped_by_parser(self.session.client).audit,
        }

    def run_info(self, command: str, audit: Mapping[str, str]) -> RunInfo:
        """The Summary sheet's run lines: the command (marked for a dry run), times, options, audit."""
        return RunInfo(
            command=command + (" (dry run)" if self.config.dry_run else ""),
            started=self.started,
            finished=now_text(),
            options=self.config.describe(),
            audit=audit,
        )

    def finish_run(self, counts: Mapping[Status, int]) -> None:
        """Record the end of the job's journal run with its counts per status."""
        if self.journal is not None and self.run_id:
            self.journal.finish_run(self.run_id, {s.value: counts.get(s, 0) for s in Status})

    async def disconnect(self) -> None:
        if self.session is not None:
            await self.session.client.aclose()

    def close(self) -> None:
        if self.journal is not None:
            self.journal.close()


def drive(job: Job[C, R], async_name: str) -> R:
    """Run a job from synchronous code, asking ``approve`` while no event loop runs.

    Prepare and apply are separate turns of one event loop, so Ctrl-C at a confirmation prompt
    is a plain KeyboardInterrupt (nothing sent), while during apply it only sets the cancel event.

    Raises:
        InputError: an event loop is already running in this thread (use ``async_name``).
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise InputError(
            f"an event loop is already running here (a notebook?): use `await {async_name}(...)` instead"
        )
    try:
        with asyncio.Runner() as loop:
            try:
                loop.run(job.prepare())
                approved = job.approve()
                loop.run(job.apply(approved))
            finally:
                loop.run(job.disconnect())
        return job.report()
    finally:
        job.close()


async def drive_async(job: Job[C, R]) -> R:
    """Run a job inside a running event loop (``approve`` is called in it).

    The report (a results workbook of every row) is written in a thread: for a large input
    it takes seconds, and the loop may be serving others (a web service's other jobs).
    """
    try:
        try:
            await job.prepare()
            await job.apply(job.approve())
        finally:
            await job.disconnect()
        return await asyncio.to_thread(job.report)
    finally:
        job.close()
