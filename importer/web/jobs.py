"""The server's jobs (``JobService``): one per upload or rollback, moved through the lifecycle.

Each method is a step of the job's state machine (``web.lifecycle``): create, validate, edit,
plan, approve, start, cancel, resume, roll back. The work behind the steps has its own modules:
``keeping`` (the store and the job's folder), ``tables`` (the table in memory, its edits and
counts), ``sending`` (the key's lane and the engine's runs), ``downloads`` (the workbooks).

Jobs that send through one key run one at a time in that key's ``Lane`` and share its rate
limiter; the others wait and report their place. A job found ``sending`` at start goes back
into its lane and the engine resumes it from its journal. A server shutting down stops its
sends the way Ctrl-C stops the CLI (writes in flight settle) but leaves them ``sending``, so
the next start resumes them; only the user's cancel makes a job ``cancelled``.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import secrets
from collections.abc import Coroutine, Mapping, Sequence
from pathlib import Path
from types import EllipsisType
from typing import Any

from importer.account.limiter import RateLimiter
from importer.engine.plan import Plan
from importer.jobs.session import now_text
from importer.model import RowOutcome, Status, ValidationReport
from importer.web import (
    approval,
    downloads,
    engine,
    keeping,
    observe,
    people,
    ratememory,
    sending,
    tables,
    undo,
    views,
    windows,
)
from importer.web.audit import AuditLog
from importer.web.engine import Connection
from importer.web.exports import ExportService
from importer.web.lifecycle import JobError, JobStatus, Step, next_status
from importer.web.mappings import MappingMemory
from importer.web.records import JOB_ID, Job, JobDamaged, damaged_entry, safe_name
from importer.web.sending import Lane
from importer.web.store import JobStore
from importer.web.work import DEFAULT_WORKERS, WorkQueue, in_background

__all__ = ["Job", "JobDamaged", "JobError", "JobService", "JobStatus", "in_background", "safe_name"]


class JobService:
    """Every job of the server: create, validate, edit, plan, send, cancel, resume."""

    def __init__(
        self,
        data_dir: Path,
        connection: Connection,
        workers: int = DEFAULT_WORKERS,
        require_approval: bool = False,
    ) -> None:
        self.work = WorkQueue(workers)
        """Validation, revalidation, plans and workbooks: ``workers`` at a time, the rest in line."""
        self.root = data_dir / "jobs"
        self.root.mkdir(parents=True, exist_ok=True)
        self.store = JobStore(data_dir)
        self.damaged: dict[str, str] = {}
        """Jobs whose record cannot be read: id -> why. Listed, never served, never deleted."""
        self.events = observe.JobEvents()
        self.audit_log = AuditLog(data_dir)  # who did what, when, from where (web.audit)
        self.mappings = MappingMemory(data_dir)  # column mappings chosen on the page (web.mappings)
        self.events.listeners.append(self.audit_log.job_event)
        self.require_approval = require_approval
        """Four eyes (``web.approval``): a plan starts only once someone else approved it."""
        if require_approval:
            self.events.listeners.append(functools.partial(approval.needs_approval_event, self.events))
        self.scheduler = windows.Scheduler(self)  # change windows: scheduled sends start when due
        self.connection = connection
        self.jobs: dict[str, Job] = {}
        self.lanes: dict[str, Lane] = {}
        self.closing = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._resident: collections.OrderedDict[str, None] = collections.OrderedDict()
        self.exports = ExportService(data_dir, connection, self.key_limiter)  # "Download current routing"

    # -- the server starts and stops ------------------------------------------------------------

    async def load(self) -> None:
        """Load the jobs on disk; resume what a stop interrupted."""
        self.root.mkdir(parents=True, exist_ok=True)
        jobs, damaged = keeping.load_jobs(self.root, self.store)
        self.damaged.update(damaged)
        for job in jobs:
            self.jobs[job.id] = job
            self.events.seen(job)
        for job_id, reason in self.damaged.items():
            observe.log_damaged(job_id, reason)
        self.exports.load()
        # The key's window as the last run left it, before anything here sends (ratememory).
        ratememory.remember(self.store, engine.lane_key(self.connection), self._lane().limiter)
        for job in self.jobs.values():
            if job.status is JobStatus.VALIDATING:
                self._spawn(self._validate(job))
            elif job.status is JobStatus.PLANNING:
                job.status = next_status(job.status, Step.PLAN_FAILED)  # only reads: plan again when asked
                keeping.drop_plan(job)
                self._save(job)
            elif job.status is JobStatus.SENDING:
                job.stopped = ""
                job.resuming = True
                sending.enqueue(self._lane(), job)
        self._spawn(self.scheduler.run())

    def begin_shutdown(self) -> None:
        """Stop taking work: close event streams, stop sends (writes in flight settle)."""
        if self.closing.is_set():
            return
        self.closing.set()
        sending.interrupt(self.lanes.values())
        for job in self.jobs.values():
            job.touch()

    async def stop(self, timeout: float = 4.0) -> None:
        """Wait for sends to settle (at most ``timeout`` seconds), then stop every task."""
        self.begin_shutdown()
        lanes = await sending.settle(self.lanes.values(), timeout)
        await self.exports.stop()
        for task in [*lanes, *self._tasks]:
            task.cancel()
        await asyncio.gather(*lanes, *self._tasks, return_exceptions=True)

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _save(self, job: Job) -> None:
        """Store the job's record and tell whoever watches (``keeping.save``)."""
        keeping.save(self.store, self.events, job)

    def _finish(self, job: Job, to_do: Step, stopped: str = "", error: str = "") -> None:
        job.status, job.stopped, job.error = next_status(job.status, to_do), stopped, error
        job.finished = now_text()
        tables.count(job)
        self._save(job)

    # -- jobs in, jobs out --------------------------------------------------------------------

    def create(
        self,
        upload: Path,
        *,
        file: str,
        stored_name: str,
        sheet: str | None,
        default_region: str | None,
        column_map: Mapping[str, str],
        uploaded_by: str,
        client: str,
    ) -> Job:
        """Take an upload (moved into the job's folder) and start validating it in the background."""
        job_id = secrets.token_hex(12)
        folder = self.root / job_id
        (folder / "input").mkdir(parents=True)
        job = Job(
            id=job_id,
            folder=folder,
            file=file,
            upload=stored_name,
            created=now_text(),
            sheet=sheet,
            default_region=default_region,
            column_map=dict(column_map),
            uploaded_by=uploaded_by,
            client=client,
        )
        keeping.put_new(self.store, job, upload)
        self.jobs[job_id] = job
        if not column_map:
            self.mappings.expect(job_id)
        self.events.saved(job)
        self._spawn(self._validate(job))
        return job

    def rollback(self, original: Job, *, who: str, client: str) -> Job:
        """Make a rollback job for ``original`` (``web.undo``); it is planned and started like an import.

        Raises:
            JobError: ``original`` cannot be undone now (the reason says why).
        """
        job = undo.new_rollback(original, self.jobs, self.root, who=who, client=client)
        keeping.put_new(self.store, job)
        self.jobs[job.id] = job
        self.events.saved(job)
        original.undone_by = job.id
        self._save(original)
        return job

    def key_limiter(self) -> RateLimiter:
        """The server key's one limiter: every job and export on the key reads and writes through it."""
        return self._lane().limiter

    def get(self, job_id: str) -> Job | None:
        return self.jobs.get(job_id) if JOB_ID.fullmatch(job_id) else None

    # -- validation and the table in memory -------------------------------------------------

    async def report(self, job: Job) -> ValidationReport:
        """The job's validated table, read again from its folder if it was let go."""
        if job.report is not None:
            if job.id in self._resident:
                self._resident.move_to_end(job.id)
            return job.report
        async with job.lock:
            if job.report is None:
                await self._load_report(job)
        assert job.report is not None
        return job.report

    async def _load_report(self, job: Job) -> ValidationReport:
        """Read the job's table (``tables.load_report``) and keep it among the tables in memory."""
        report = await tables.load_report(job, self.work, self.mappings, self.store)
        tables.keep_resident(self._resident, self.jobs, job)
        return report

    async def _validate(self, job: Job) -> None:
        """Validate in turn (``work``): the job is ``validating`` (new, restarted or options changed)."""
        job.error = ""
        job.outcomes = {}
        keeping.drop_plan(job)
        self._save(job)
        try:
            async with job.lock:
                report = await self._load_report(job)
        except Exception as exc:  # a bug must not leave the job validating for ever
            if job.status is not JobStatus.VALIDATING:
                return  # its record could not be saved: it failed already, with that reason
            tables.not_validated(job, exc)  # a sheet to choose, or why it failed
        else:
            if job.status is not JobStatus.VALIDATING:
                return
            tables.validated(job, report)
        self._save(job)

    async def set_options(
        self,
        job: Job,
        sheet: str | None,
        default_region: str | None,
        column_map: Mapping[str, str],
        header_row: int | EllipsisType | None = ...,
        **more: Any,
    ) -> None:
        """Read the upload again with other options (edits are kept); any plan is dropped.

        ``header_row`` is the header's Excel row (None: where the reader finds it); left out, it
        stays as it was, unless the sheet changes (another sheet starts from the reader's choice).
        ``more``: any of ``sheets``, ``encoding``, ``skip_hidden_rows``, ``ignore_columns``, ``on_existing``,
        ``max_error_rate`` (left out: unchanged).
        """
        undo.check_unchanged(job, self.jobs)
        sent = job.sent_something()
        to = next_status(job.status, Step.VALIDATE, job.busy)
        if sent or job.lock.locked():
            raise JobError(f"the job is {job.status.value}; options can change only before sending")
        tables.choose_options(job, sheet, default_region, column_map, header_row, more)
        job.status = to
        await self._validate(job)

    # -- edits ------------------------------------------------------------------------------

    async def edit(
        self, job: Job, row: int, changes: Mapping[str, str] | Mapping[int, str], *, who: str = ""
    ) -> None:
        """Correct cells of one row and validate again; the upload is never changed.

        A cell is named by its header text, the field it maps to, or its column's position (the
        page's form: headers can repeat or be blank). The row's changed cells are one ``set``
        operation (``apply_op``), undone as a whole.

        Raises:
            JobError: the job is not editable now, or a column or row is unknown.
        """
        next_status(job.status, Step.EDIT, job.busy)
        bodies = tables.row_set(await self.report(job), row, changes)
        await self.apply_op(job, bodies, who=who, quiet=True)

    async def apply_op(
        self, job: Job, bodies: Sequence[Mapping[str, Any]], *, who: str, quiet: bool = False
    ) -> list[int]:
        """Apply edit operations (``web.edits``) in order, check the rows they touched, save.

        Returns the rows changed. ``quiet``: a cell set to what it holds is no error.

        Raises:
            JobError: the job is not editable now (or busy), or an operation cannot be applied.
        """
        undo.check_unchanged(job, self.jobs)
        next_status(job.status, Step.EDIT, job.busy)
        report = await self.report(job)
        async with job.lock:
            next_status(job.status, Step.EDIT, job.busy)  # a start or another edit came meanwhile
            report = job.report or report  # another operation may have ended while this one waited
            # The plan and the send wait for this check (``busy``): a start now would send the
            # table from before the edit, and the edit ending would undo the send's status.
            job.busy = "an edit is being checked"
            try:
                touched = await tables.apply_ops(job, report, bodies, self.work, who=who, quiet=quiet)
                if touched:
                    self._save(job)
            finally:
                job.busy = ""
            return sorted(touched)

    # -- plan ---------------------------------------------------------------------------------

    async def plan(self, job: Job) -> None:
        """Run the dry run against the live state (in the background).

        Raises:
            JobError: the job cannot plan now (``sending.check_plannable`` says why).
        """
        sending.check_plannable(job)
        job.status, job.error = next_status(job.status, Step.PLAN, job.busy), ""
        job.finished = ""
        job.planned_by = approval.asker()
        self._save(job)
        self._spawn(self._plan(job))

    async def _plan(self, job: Job) -> None:
        try:
            report = await self.report(job)
            limiter = self._lane().limiter
            run, plan = await sending.plan(job, report, self.work, self.connection, limiter, self.audit_log)
            await self._keep_plan(job, plan, run.requests)
        except Exception as exc:
            if job.status is not JobStatus.PLANNING:
                return
            sending.plan_failed(job, exc)  # only reads: the job stays usable, saying why
            self._save(job)
            return
        if job.status is not JobStatus.PLANNING:
            return
        sending.planned(job, run)
        self._save(job)

    async def _keep_plan(self, job: Job, plan: Plan, requests: int) -> None:
        """Keep the plan shown (``keeping.keep_plan``); a rollback's rows are its plan's."""
        await keeping.keep_plan(job, plan, requests, self.connection)
        if job.kind == undo.ROLLBACK:  # its rows are the plan's: one per change it undoes
            job.report = undo.report_of(job, plan)
            tables.keep_resident(self._resident, self.jobs, job)
            tables.summarise(job, job.report)

    async def approve(self, job: Job, user: people.User) -> None:
        """Approve the plan shown (four eyes, ``web.approval``); recorded in the audit."""
        approval.approve(job, user, now_text())
        self._save(job)
        self.events.emit("approved", job)

    # -- send -------------------------------------------------------------------------------

    def _lane(self) -> Lane:
        key = engine.lane_key(self.connection)
        lane = self.lanes.get(key)
        if lane is None:
            lane = self.lanes[key] = Lane(self.connection)
            lane.task = asyncio.create_task(sending.lane_worker(lane, self.closing, self._send))
        return lane

    async def start(self, job: Job) -> None:
        """Queue the job for sending on its key's lane: the plan shown, or a retry of a failed send."""
        to = sending.start_step(job)
        sending.check_plan_shown(job, self.require_approval, self.closing)
        job.status, job.error = next_status(job.status, to, job.busy), ""
        job.resuming = False
        job.outcomes = {}
        job.progress = {}
        self._save(job)
        sending.enqueue(self._lane(), job)

    async def _send(self, job: Job, lane: Lane) -> None:
        job.cancel = asyncio.Event()
        if self.closing.is_set():
            return
        job.touch()
        try:
            report = await self.report(job)
            if job.status is not JobStatus.SENDING:
                return
            tables.summarise(job, report)
            run = await sending.send(job, report, self.connection, lane.limiter, self.audit_log)
            if run.refused and run.plan is not None:
                # The account changed since the plan was shown: nothing was sent; show the new plan.
                await sending.forget_refused(job)
                await self._keep_plan(job, run.plan, run.requests)
                sending.plan_changed(job, report)
                self._save(job)
                return
        except Exception as exc:
            if job.interrupted:
                return  # the next start resumes it from its journal
            self._finish(job, Step.FAIL, error=engine.clean_error(exc))
            return
        await sending.keep_run(job, run, self.store)
        if not job.interrupted:
            self._finish(job, *sending.ending(job, run))
            return
        tables.count(job)
        job.stopped = "server stopped; resumes on the next start"
        self._save(job)

    async def cancel(self, job: Job) -> None:
        """Cancel: a queued or idle job at once, a sending one once its writes in flight settle."""
        next_status(job.status, Step.CANCEL)  # finished jobs, and work that cannot stop midway, say so
        if sending.withdraw(self.lanes.values(), job):
            self._finish(job, Step.CANCEL, "cancelled before sending started")
        elif not sending.stop_send(self.lanes.values(), job):
            next_status(job.status, Step.CANCEL, job.busy)
            self._finish(job, Step.CANCEL, "cancelled before sending")

    async def resume(self, job: Job) -> int:
        """Plan the rows a cancelled or stopped send left, against the live state; ``planned`` next.

        The job's journal stays: the rows it confirmed are found as asked and show as done; the
        user reviews the plan and starts it (``start``), which sends only what is still needed.
        Returns the rows not sent yet.

        Raises:
            JobError: the job is not cancelled or stopped.
        """
        undo.check_unchanged(job, self.jobs)
        if not job.resumable():
            raise JobError(
                f"the job is {job.status.value}; only a cancelled or stopped job can send the rest"
            )
        next_status(job.status, Step.RESUME, job.busy)
        await self.report(job)  # its saved outcomes too
        to = next_status(job.status, Step.RESUME, job.busy)  # another resume may have come meanwhile
        done = {r: o for r, o in job.outcomes.items() if o.status is Status.SUCCEEDED}
        left = job.remaining()  # the number the page offered ("Send the remaining N rows")
        job.status, job.error, job.stopped, job.finished = to, "", "", ""
        job.planned_by = approval.asker()
        self._save(job)
        self._spawn(self._plan_rest(job, done))
        return left

    async def _plan_rest(self, job: Job, done: Mapping[int, RowOutcome]) -> None:
        await self._plan(job)
        if job.status is JobStatus.PLANNED:
            tables.restore_done(job, done)
            job.touch()

    # -- views ------------------------------------------------------------------------------

    def snapshot(self, job: Job) -> dict[str, Any]:
        """The job as the API and every event show it (never the key or a path on the server)."""
        return {
            **views.snapshot(job),
            **approval.fields(job, self.require_approval),
            "scheduled_at": windows.scheduled_at(job),
            **undo.fields(job),
        }

    async def rows(self, job: Job, status: str | None, offset: int, limit: int) -> dict[str, Any]:
        """One page of rows with their values, status and reasons (filtered by status)."""
        return views.rows_page(job, await self.report(job), status, offset, limit)

    async def row_items(self, job: Job, rows: Sequence[int]) -> list[dict[str, Any]]:
        """Some rows as ``rows`` pages them, without building the whole table's view."""
        return views.row_items(job, await self.report(job), rows)

    async def workbook(self, job: Job, kind: str) -> Path | None:
        """The results (``kind`` "results") or failed-rows workbook: final, or a snapshot now."""
        return await downloads.workbook(job, kind, self.report, self.work, self.connection, self.audit_log)

    def list(self) -> list[dict[str, Any]]:
        """Every job, newest first, then the damaged ones (status ``damaged``, ``error`` says why)."""
        jobs = [self.snapshot(j) for j in sorted(self.jobs.values(), key=lambda j: j.created, reverse=True)]
        return jobs + [damaged_entry(job_id, reason) for job_id, reason in sorted(self.damaged.items())]
