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
  ``asyncio.Event`` set by any task; Ctrl-C and SIGTERM just set it, see ``jobs.session.stop_on_signals``)
  stop new writes; the writes in flight are settled as usual.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import httpx

from importer.account.client import VoiceLinkClient, WriteResult
from importer.account.inventory import LiveRouting, collect_created_ids
from importer.account.limiter import RateLimiter
from importer.account.retry import MAX_ATTEMPTS, backoff_delay
from importer.engine.journal import Journal
from importer.engine.plan import Plan, Write, body_of, record_text
from importer.errors import ApiError, AuthError
from importer.model import RowOutcome
from importer.options import SendOptions
from importer.vocab import Action, ExitCode, OnExisting, ReasonKind, Status

__all__ = [
    "ERROR_RATE_MIN_WRITES",
    "Applied",
    "Progress",
    "ProgressCallback",
    "apply_plan",
]

ERROR_RATE_MIN_WRITES = 20
"""``max_error_rate`` is judged only once this many writes are done (a first failure is not 100%)."""


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


@dataclass(eq=False)
class _Engine:
    """One call of :func:`apply_plan`: its arguments, the counters, the stop flag, the outcomes so far."""

    plan: Plan
    client: VoiceLinkClient
    live: LiveRouting
    journal: Journal | None
    run_id: int
    options: SendOptions
    cancel: asyncio.Event
    abandon: asyncio.Event | None
    on_progress: ProgressCallback | None
    limiter: RateLimiter | None
    cancel_reason: str = "interrupted"
    outcomes: dict[int, RowOutcome] = field(default_factory=dict, init=False)
    stop_reason: str = field(default="", init=False)
    exit_code: ExitCode | None = field(default=None, init=False)
    done: int = field(default=0, init=False)
    succeeded: int = field(default=0, init=False)
    failed: int = field(default=0, init=False)
    workers: list[asyncio.Task[None]] = field(default_factory=list, init=False)
    sending: set[asyncio.Task[None]] = field(default_factory=set, init=False)
    """Workers inside the client's send of a write (perhaps still waiting for a rate-limit slot)."""
    busy: set[asyncio.Task[None]] = field(default_factory=set, init=False)
    """Workers with a write taken from the queue and not finished."""
    dropped: set[asyncio.Task[None]] = field(default_factory=set, init=False)
    """Workers cancelled on purpose while waiting for a slot: their write was never sent."""
    abandoning: bool = field(default=False, init=False)

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
