"""Sending through a key: its ``Lane`` (one job at a time, the others in line) and the engine's runs.

Jobs that send through one key run one at a time in that key's lane and share its rate limiter;
the others wait and report their place. A plan is a dry run on the same limiter. Each run is one
call of the engine (``engine.run_job``, or ``undo.run_rollback`` for a rollback job) with the
job's validated table; what the job's status becomes is ``JobService``'s (``web.jobs``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable

from importer.account.limiter import RateLimiter
from importer.engine.plan import Plan
from importer.errors import ImporterError
from importer.model import ValidationReport
from importer.vocab import OnExisting
from importer.web import approval, downloads, engine, keeping, tables, undo
from importer.web.audit import AuditLog
from importer.web.engine import Connection, JobRun, SendProgress
from importer.web.lifecycle import JobError, JobStatus, Step, next_status
from importer.web.records import PLAN_AGAIN, Job, journal_has_runs
from importer.web.store import JobStore
from importer.web.work import WorkQueue, in_background

PLAN_CHANGED = (
    "the account changed since the plan was shown, so nothing was sent: this is the plan "
    "against the account as it is now; review it and start again"
)


class Lane:
    """The jobs sending through one key: one limiter, one job at a time, the others queued."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.limiter: RateLimiter = engine.make_limiter(connection)
        self.waiting: collections.deque[Job] = collections.deque()
        self.running: Job | None = None
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def positions(self) -> None:
        for n, job in enumerate(self.waiting, start=1):
            if job.queue_position != n:
                job.queue_position = n
                job.touch()


def enqueue(lane: Lane, job: Job) -> None:
    """Put ``job`` last in its lane's line and wake the lane."""
    lane.waiting.append(job)
    lane.positions()
    lane.wake.set()


def withdraw(lanes: Iterable[Lane], job: Job) -> bool:
    """Take ``job`` out of its lane's line (those after it move up); False: it was not in a line."""
    for lane in lanes:
        if job in lane.waiting:
            lane.waiting.remove(job)
            lane.positions()
            job.queue_position = None
            return True
    return False


def stop_send(lanes: Iterable[Lane], job: Job) -> bool:
    """Tell ``job``'s send to stop once its writes in flight settle; False: it is not sending."""
    # Sending, or between its lane and its send: whatever else happens to the job, its send
    # is told to stop (it sees the flag).
    if any(lane.running is job for lane in lanes) or job.status is JobStatus.SENDING:
        job.cancel.set()
        job.touch()
        return True
    return False


async def lane_worker(
    lane: Lane, closing: asyncio.Event, send: Callable[[Job, Lane], Awaitable[None]]
) -> None:
    """Send the lane's jobs one at a time, in turn, until the server closes."""
    while not closing.is_set():
        if not lane.waiting:
            lane.wake.clear()
            await lane.wake.wait()
            continue
        job = lane.waiting.popleft()
        job.queue_position = None
        lane.positions()
        lane.running = job
        try:
            await send(job, lane)
        finally:
            lane.running = None


def interrupt(lanes: Iterable[Lane]) -> None:
    """The server stops: every send stops the way Ctrl-C stops the CLI (writes in flight settle),
    and its job stays ``sending`` for the next start to resume."""
    for lane in lanes:
        for job in (*lane.waiting, *([lane.running] if lane.running else [])):
            job.interrupted = True
            job.cancel.set()


async def settle(lanes: Iterable[Lane], timeout: float) -> list[asyncio.Task[None]]:
    """Wake every lane and wait, at most ``timeout`` seconds, for its send to settle; its tasks."""
    tasks = [lane.task for lane in lanes if lane.task is not None]
    for lane in lanes:
        lane.wake.set()
    if tasks:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await asyncio.gather(*tasks, return_exceptions=True)
    return tasks


def check_plannable(job: Job) -> None:
    """A failed job plans again only if it was validated and sent nothing (e.g. a scheduled send
    whose plan changed): one that stopped while sending retries or sends the rest instead.

    Raises:
        JobError: the job failed before its rows were checked, or while sending.
    """
    if job.status is JobStatus.FAILED:
        if "valid" not in job.counts:
            raise JobError("the job failed before its rows were checked: change its options to read it again")
        if job.sent_something():
            raise JobError("the job stopped while sending: start it again or send the rest")


def start_step(job: Job) -> Step:
    """The step a start takes: a send of the plan shown, or a retry of a send that failed.

    Raises:
        JobError: the job is busy, or has no plan to send.
    """
    # A job that failed while sending (key rejected, API unreachable) may start again: the
    # engine resumes it from its journal, so nothing confirmed is sent twice.
    # Only the plan shown is sent: from ``planned``, while its inputs are what they were.
    retry = job.status is JobStatus.FAILED and job.sent_something()
    to = Step.RETRY if retry else Step.START
    if job.busy:
        next_status(job.status, to, job.busy)  # refused, saying what the job is busy with
    if job.status not in (JobStatus.PLANNED, JobStatus.SCHEDULED) and not retry:
        raise JobError(f"the job is {job.status.value} and has no plan to send: {PLAN_AGAIN}")
    return to


def check_plan_shown(job: Job, require_approval: bool, closing: asyncio.Event) -> None:
    """Refuse to send (now or at a scheduled time) anything but the plan shown, as it was approved.

    Raises:
        JobError: no plan, a plan of other inputs, no approval yet, or the server is shutting down.
    """
    if not job.planned:
        raise JobError(f"the job has no plan to send: {PLAN_AGAIN}")
    if job.planned.get("inputs") != job.inputs_fingerprint():
        raise JobError(f"the file, its corrections or its options changed since the plan: {PLAN_AGAIN}")
    if why := approval.refusal(job, require_approval):
        raise JobError(why)
    if closing.is_set():
        raise JobError("the server is shutting down")


async def plan(
    job: Job,
    report: ValidationReport,
    work: WorkQueue,
    connection: Connection,
    limiter: RateLimiter,
    audit_log: AuditLog,
) -> tuple[JobRun, Plan]:
    """Plan the job against the live state: a dry run (reads only, no journal), its workbooks beside it.

    Raises:
        ImporterError: the run stopped before it made a plan (the reason says why).
    """
    async with work.turn(job):  # a dry run holds the table and a core like a validation
        run = await _dry_run(job, report, connection, limiter, audit_log)
    if run.plan is None:
        raise ImporterError(run.stop_reason or "no plan was made")
    return run, run.plan


async def _dry_run(
    job: Job, report: ValidationReport, connection: Connection, limiter: RateLimiter, audit_log: AuditLog
) -> JobRun:
    return await undo.runner(job)(
        connection,
        report,
        job.input_options(),
        dry_run=True,
        journal_path=None,
        results=job.folder / "plan.results.xlsx",
        failed=job.folder / "plan.failed.xlsx",
        limiter=limiter,
        cancel=asyncio.Event(),
        on_existing=OnExisting(job.on_existing),
        max_error_rate=job.max_error_rate,
        audit=downloads.audit_lines(job, audit_log),
        facts=downloads.facts(job),
    )


def planned(job: Job, run: JobRun) -> None:
    """The plan (kept) is the one shown: ``planned``, with its notes and counts."""
    job.notes = list(run.notes)
    job.status = next_status(job.status, Step.PLANNED)
    tables.count(job)


def plan_failed(job: Job, exc: Exception) -> None:
    """A plan is only reads: the job stays usable and says why the plan did not happen."""
    keeping.drop_plan(job)
    job.status, job.error = (
        next_status(job.status, Step.PLAN_FAILED),
        "plan failed: " + engine.clean_error(exc),
    )


async def send(
    job: Job, report: ValidationReport, connection: Connection, limiter: RateLimiter, audit_log: AuditLog
) -> JobRun:
    """Send the plan shown (its journal says what is left); the job's outcomes and progress follow it."""
    last_touch = 0.0

    def progress(p: SendProgress) -> None:
        nonlocal last_touch
        for outcome in p.outcomes:
            job.outcomes[outcome.row] = outcome
        job.progress = {
            "done": p.done,
            "total": p.total,
            "succeeded": p.succeeded,
            "failed": p.failed,
            "eta_seconds": None if p.eta_seconds is None else round(p.eta_seconds, 1),
            "paused_seconds": round(limiter.paused_for, 1),
        }
        # Counting every row costs a pass over the outcomes: at most a few times a second.
        now = time.monotonic()
        if now - last_touch >= 0.2 or p.done == p.total:
            last_touch = now
            tables.count(job)
            job.touch()

    return await undo.runner(job)(
        connection,
        report,
        job.input_options(),
        dry_run=False,
        journal_path=job.journal_path,
        results=job.folder / "results.xlsx",
        failed=job.folder / "failed.xlsx",
        limiter=limiter,
        cancel=job.cancel,
        on_existing=OnExisting(job.on_existing),
        max_error_rate=job.max_error_rate,
        # A send the server resumes was confirmed before it stopped: its journal, not
        # the plan's writes, says what is left (some of them landed already).
        shown_writes=None if job.resuming else job.planned.get("writes_fingerprint"),
        on_progress=progress,
        audit=downloads.audit_lines(job, audit_log),
        facts=downloads.facts(job),
    )


async def keep_run(job: Job, run: JobRun, store: JobStore) -> None:
    """Take what a send that ran did into the job: its notes and outcomes (kept in the store)."""
    job.notes = list(run.notes)
    job.outcomes = dict(run.outcomes)
    await keeping.save_outcomes(store, job)


def ending(job: Job, run: JobRun) -> tuple[Step, str, str]:
    """How a send that ran to its end (not stopped by the server) left the job: the step, what
    stopped it, the error."""
    if job.cancel.is_set():
        return Step.CANCEL, "cancelled", ""
    if run.exit_code == 3:
        return Step.FAIL, run.stop_reason, run.stop_reason
    return Step.SENT, run.stop_reason, ""


async def forget_refused(job: Job) -> None:
    """A send refused because the plan changed: remove what it wrote (it sent nothing) and the plan."""
    for name in ("results.xlsx", "failed.xlsx"):  # they say "not confirmed": not this job's result
        (job.folder / name).unlink(missing_ok=True)
    journal = job.journal_path
    if not await in_background(journal_has_runs, journal):  # nothing was ever sent: still editable
        for suffix in ("", "-wal", "-shm"):
            journal.with_name(journal.name + suffix).unlink(missing_ok=True)
    keeping.drop_plan(job)


def plan_changed(job: Job, report: ValidationReport) -> None:
    """The new plan (kept) is the one shown now: the job says nothing was sent, and why."""
    job.notes = engine.input_notes(report, job.input_options())
    job.progress = {}
    job.status = next_status(job.status, Step.PLAN_CHANGED)
    job.error = PLAN_CHANGED
    tables.count(job)
