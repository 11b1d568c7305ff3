"""Durable import jobs: one folder each under ``<data-dir>/jobs/<random id>/``, a queue per key.

A job's folder holds everything it needs to carry on after a restart::

    input/<name>      the upload as received (never changed)
    edits.json        cell corrections, applied to the table after reading
    operations.json   the edit operations (``web.edits``) that made them, with their undos
    journal.sqlite    the engine's journal (what was sent, what came back)
    plan.json         the plan shown (its writes, settled rows, counts, cost) and its inputs' fingerprint
    results.xlsx      the results workbook (plan.results.xlsx for a plan), failed.xlsx

Its record (status, options, who uploaded it, counts) and the per-row outcomes of its last plan
or send live in ``<data-dir>/jobs.sqlite`` (``web.store``); a record that cannot be read is
listed as damaged, with its reason, and every other job is served.

Jobs that send through one key run one at a time in that key's ``Lane`` and share its rate
limiter; the others wait and report their place. A job found ``sending`` at start goes back
into its lane and the engine resumes it from its journal. A server shutting down stops its
sends the way Ctrl-C stops the CLI (writes in flight settle) but leaves them ``sending``, so
the next start resumes them; only the user's cancel makes a job ``cancelled``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import functools
import json
import os
import secrets
import shutil
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import EllipsisType
from typing import Any

from importer import words
from importer.account.limiter import RateLimiter
from importer.engine.plan import Plan
from importer.errors import ImporterError
from importer.jobs.session import now_text
from importer.jobs.validate import read_input
from importer.model import Action, RowOutcome, RunFacts, Status, ValidationReport
from importer.options import InputOptions
from importer.output.failed import write_failed_rows
from importer.read.sheets import SheetChoiceNeeded
from importer.vocab import OnExisting
from importer.web import approval, engine, observe, people, ratememory, undo, views, windows
from importer.web import edits as ops
from importer.web.audit import AuditLog
from importer.web.engine import Connection, Edit, SendProgress
from importer.web.exports import ExportService
from importer.web.lifecycle import JobError, JobStatus, Step, next_status
from importer.web.mappings import MappingMemory, Remembered
from importer.web.records import (
    JOB_ID,
    KEEPS_OUTCOMES,
    MORE_OPTIONS,
    PLAN_AGAIN,
    RESIDENT_TABLES,
    Job,
    JobDamaged,
    damaged_entry,
    dry_run_outcomes,
    import_folder,
    journal_has_runs,
    keep_plan_file,
    outcome_dict,
    outcome_from,
    read_plan,
    reason_of,
    safe_name,
)
from importer.web.store import DamagedRecord, JobStore, decode_list, full_disk
from importer.web.work import DEFAULT_WORKERS, WorkQueue, in_background

__all__ = ["Job", "JobDamaged", "JobError", "JobService", "JobStatus", "in_background", "safe_name"]


def _write_edits(folder: Path, edits: Sequence[Edit], operations: Sequence[ops.Operation]) -> None:
    """Keep a job's cell edits and operations (a bulk one can hold 100,000 edits: no ``asdict``)."""
    names = Edit.__slots__
    for name, data in (
        ("edits.json", [{n: getattr(e, n) for n in names} for e in edits]),
        ("operations.json", [dataclasses.asdict(o) for o in operations]),
    ):
        tmp = folder / (name + ".tmp")
        tmp.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
        with tmp.open("rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, folder / name)


def _read_and_check(
    options: InputOptions,
    edits: Sequence[Edit],
    excluded: frozenset[int],
    recall: Callable[[Sequence[str]], Remembered | None] | None = None,
) -> tuple[ValidationReport, Remembered | None]:
    table = read_input(options)
    # A new upload whose header row an earlier job mapped on the page is mapped the same way.
    found = None if recall is None else recall(table.headers)
    if found is not None:
        options = dataclasses.replace(options, column_map=dict(found.column_map))
    return ops.check(table, options, edits, excluded), found


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

    # -- lifecycle --------------------------------------------------------------------------

    async def load(self) -> None:
        """Load the jobs on disk; resume what a stop interrupted."""
        self.root.mkdir(parents=True, exist_ok=True)
        for folder in sorted(self.root.iterdir()):
            if (
                JOB_ID.fullmatch(folder.name)
                and (folder / "job.json").is_file()
                and not self.store.has(folder.name)
            ):
                try:
                    import_folder(self.store, folder)  # a job from before the database: taken in once
                except (OSError, sqlite3.Error) as exc:  # e.g. a full disk: tried again on the next start
                    self.damaged[folder.name] = (
                        f"could not be taken into {self.store.path.name}: {reason_of(exc)}"
                    )
        for stored in self.store.jobs():
            try:
                if stored.record is None:
                    raise DamagedRecord(stored.damaged or "unreadable")
                job = self._load(self.root / stored.id, stored.record)
            except DamagedRecord as exc:
                self.damaged[stored.id] = str(exc)
                continue
            except (OSError, ValueError, KeyError, TypeError) as exc:
                self.damaged[stored.id] = f"the job record has a missing or wrong field ({reason_of(exc)})"
                continue
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
                self._drop_plan(job)
                self._save(job)
            elif job.status is JobStatus.SENDING:
                job.stopped = ""
                job.resuming = True
                self._enqueue(job)
        self._spawn(self.scheduler.run())

    def begin_shutdown(self) -> None:
        """Stop taking work: close event streams, stop sends (writes in flight settle)."""
        if self.closing.is_set():
            return
        self.closing.set()
        for lane in self.lanes.values():
            for job in (*lane.waiting, *([lane.running] if lane.running else [])):
                job.interrupted = True
                job.cancel.set()
        for job in self.jobs.values():
            job.touch()

    async def stop(self, timeout: float = 4.0) -> None:
        """Wait for sends to settle (at most ``timeout`` seconds), then stop every task."""
        self.begin_shutdown()
        lanes = [lane.task for lane in self.lanes.values() if lane.task is not None]
        for lane in self.lanes.values():
            lane.wake.set()
        if lanes:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await asyncio.gather(*lanes, return_exceptions=True)
        await self.exports.stop()
        for task in [*lanes, *self._tasks]:
            task.cancel()
        await asyncio.gather(*lanes, *self._tasks, return_exceptions=True)

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- storage ----------------------------------------------------------------------------

    def _load(self, folder: Path, data: Mapping[str, Any]) -> Job:
        if data.get("id") != folder.name:
            raise DamagedRecord("the job record names another job")
        values = {k: data[k] for k in Job.STORED if k in data}
        values["status"] = JobStatus(values["status"])
        job = Job(folder=folder, **values)
        edits = folder / "edits.json"
        if edits.is_file():
            try:
                job.edits = [Edit(**e) for e in decode_list(edits.read_bytes(), "edits.json")]
            except TypeError as exc:
                raise DamagedRecord(f"edits.json has a wrong entry ({reason_of(exc)})") from None
        operations = folder / "operations.json"
        if operations.is_file():
            try:
                listed = decode_list(operations.read_bytes(), "operations.json")
                job.operations = [ops.operation_from(o) for o in listed]
            except (TypeError, ValueError) as exc:
                raise DamagedRecord(f"operations.json has a wrong entry ({reason_of(exc)})") from None
        return job  # its outcomes are read with its table, when first needed

    def _save(self, job: Job) -> None:
        """Store the job's record (one transaction) and tell whoever watches (streams, log, metrics)."""
        # A send begins: the plan's outcomes are no longer true (a job cancelled while queued has none).
        begins = job.status is JobStatus.SENDING and self.events.last.get(job.id) != JobStatus.SENDING.value
        try:
            self.store.put(job.id, job.stored(), drop_outcomes=begins)
        except Exception as exc:  # full disk, failing disk, or a bug: never a job stuck where it was
            # The disk is full (or failing): the job cannot go on, and says why; the server goes on.
            reason = ("the server's disk is full" if full_disk(exc) else "the job could not be saved") + (
                f": {reason_of(exc)}"
            )
            observe.log_storage_error(job.id, reason)
            # A sending job goes on: its journal, not this record, is what a resume trusts.
            if job.status not in (JobStatus.FAILED, JobStatus.SENDING):
                job.status, job.error = JobStatus.FAILED, reason
                job.finished = job.finished or now_text()
        self.events.saved(job)
        job.touch()

    async def _save_outcomes(self, job: Job) -> None:
        outcomes = list(
            job.outcomes.values()
        )  # taken on the loop (the send adds to it); turned into rows in a thread
        try:
            await in_background(lambda: self.store.put_outcomes(job.id, [outcome_dict(o) for o in outcomes]))
        except (OSError, sqlite3.Error) as exc:
            observe.log_storage_error(job.id, f"the outcomes could not be saved: {reason_of(exc)}")

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
        try:
            os.replace(upload, job.input_path)
            self.store.put(job.id, job.stored())
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)  # this request's own folder, never answered
            raise
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
        try:
            self.store.put(job.id, job.stored())
        except BaseException:
            shutil.rmtree(job.folder, ignore_errors=True)  # this request's own folder, never answered
            raise
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

    async def _load_report(self, job: Job) -> ValidationReport:
        """Read the upload, apply the edits, validate (in a thread): the CLI's reader and validator.

        Raises:
            JobDamaged: a job read before cannot be read again (its upload or plan was changed
                or removed on the server).
            ImporterError: the upload of a job being validated cannot be used (the job fails).
        """
        if job.status is JobStatus.VALIDATING:
            return await self._read_table(job)
        try:
            return await self._read_table(job)
        except (ImporterError, OSError, ValueError, KeyError, TypeError) as exc:
            reason = (
                words.error_words(exc, words.Surface.WEB)
                if isinstance(exc, ImporterError)
                else reason_of(exc)
            )
            observe.LOGGER.error(
                f"job {job.id}: its files cannot be read again: {reason}",
                extra={"fields": {"event": "damaged", "job": job.id, "reason": reason}},
            )
            raise JobDamaged(f"this job's files on the server cannot be read again: {reason}") from None

    async def _read_table(self, job: Job) -> ValidationReport:
        options = job.input_options()
        excluded = ops.excluded_rows(job.operations)
        if job.kind == undo.ROLLBACK:  # no upload: the rows of its plan (web.undo)
            report = await in_background(undo.read_report, job)
        else:
            recall = self.mappings.first_read(job.id)
            report, remembered = await self.work.run(
                job, _read_and_check, options, tuple(job.edits), excluded, recall
            )
            if remembered is not None:
                job.column_map = dict(remembered.column_map)
                job.mapped_from = {"job": remembered.job, "file": remembered.file}
        if not job.outcomes and job.status in KEEPS_OUTCOMES:
            job.outcomes = await in_background(self._saved_outcomes, job.id)
        shown = job.folder / "plan.json"
        if job.shown is None and job.planned and shown.is_file():
            job.shown = await in_background(read_plan, shown)
            if job.status is JobStatus.PLANNED and not job.outcomes:
                job.outcomes = await in_background(dry_run_outcomes, job.shown)
        job.report = report
        self._keep_resident(job)
        return report

    def _keep_resident(self, job: Job) -> None:
        self._resident[job.id] = None
        self._resident.move_to_end(job.id)
        busy = {JobStatus.VALIDATING, JobStatus.PLANNING, JobStatus.SENDING}
        while len(self._resident) > RESIDENT_TABLES:
            for job_id in self._resident:
                other = self.jobs[job_id]
                if (
                    other is not job
                    and other.status not in busy
                    and not other.lock.locked()
                    and not other.busy
                ):
                    other.report = None
                    other.shown = None  # in plan.json; read again with the table
                    if other.status in (*KEEPS_OUTCOMES, JobStatus.PLANNED):
                        other.outcomes = {}  # saved in the store or plan.json; read again with the table
                    other.view = None
                    del self._resident[job_id]
                    break
            else:
                return

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

    def _summarise(self, job: Job, report: ValidationReport) -> None:
        table = report.table
        job.rows = table.row_count
        job.columns = list(table.headers)
        job.mapping = {f: table.headers[i] for f, i in report.mapping.items()}
        src = table.source
        job.source = {
            "format": src.format,
            "sheet": src.sheet,
            "header_row": src.header_row,
            "encoding": src.encoding,
            "sha256": src.sha256,
        }
        job.problems = dict(collections.Counter(i.kind for i in report.issues))
        job.notes = engine.input_notes(report, job.input_options())
        self._count(job)

    def _count(self, job: Job) -> None:
        report = job.report
        if report is None:
            return
        invalid = len(report.failed_rows)
        counts = collections.Counter(o.status.value for o in job.outcomes.values())
        counts[Status.FAILED.value] += invalid
        # Rows left out on purpose (excluded on the page, hidden, footers) are skipped from the start.
        counts[Status.SKIPPED.value] += sum(1 for row in report.skipped if row not in job.outcomes)
        counts[Status.NOT_SENT.value] += max(0, job.rows - sum(counts.values()))
        job.counts = {s.value: counts.get(s.value, 0) for s in Status}
        job.counts["valid"] = job.rows - invalid

    def _drop_plan(self, job: Job) -> None:
        """Forget the plan shown: its inputs changed (or it was never finished)."""
        job.plan, job.budget, job.planned, job.shown = "", {}, {}, None
        job.approval = {}  # an approval is for one plan (``web.approval``)
        for name in ("plan.json", "plan.results.xlsx", "plan.failed.xlsx"):
            (job.folder / name).unlink(missing_ok=True)

    async def _keep_plan(self, job: Job, plan: Plan, requests: int) -> None:
        """Keep the plan shown with the job (plan.json), with the fingerprint of its inputs."""
        inputs = job.inputs_fingerprint()
        # A plan of a big file is a pass over every row: in a thread, never on the event loop.
        summary, text, outcomes = await in_background(keep_plan_file, plan, inputs, job.folder / "plan.json")
        job.shown = plan
        job.outcomes = outcomes
        job.planned = {**summary, "inputs": inputs}
        job.plan = text
        job.budget = engine.send_budget(self.connection, plan, requests)
        if job.kind == undo.ROLLBACK:  # its rows are the plan's: one per change it undoes
            job.report = undo.report_of(job, plan)
            self._keep_resident(job)
            self._summarise(job, job.report)

    async def _validate(self, job: Job) -> None:
        """Validate in turn (``work``): the job is ``validating`` (new, restarted or options changed)."""
        job.error = ""
        job.outcomes = {}
        self._drop_plan(job)
        self._save(job)
        try:
            async with job.lock:
                report = await self._load_report(job)
        except SheetChoiceNeeded as exc:  # not a failure: the user picks (``set_options``)
            if job.status is not JobStatus.VALIDATING:
                return
            job.error = words.error_words(exc, words.Surface.WEB)
            job.sheet_list = [dataclasses.asdict(sheet) for sheet in exc.sheets]
            job.status, job.report = next_status(job.status, Step.SHEET_NEEDED), None
        except Exception as exc:  # a bug must not leave the job validating for ever
            if job.status is not JobStatus.VALIDATING:
                return  # its record could not be saved: it failed already, with that reason
            job.error = (
                words.error_words(exc, words.Surface.WEB)
                if isinstance(exc, ImporterError)
                else engine.clean_error(exc)
            )
            job.status, job.report = next_status(job.status, Step.FAIL), None
        else:
            if job.status is not JobStatus.VALIDATING:
                return
            self._summarise(job, report)
            job.sheet_list = [dataclasses.asdict(sheet) for sheet in report.table.sheets]
            job.status = next_status(job.status, Step.VALIDATED)
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
        if not isinstance(header_row, EllipsisType):
            job.header_row = header_row
        elif sheet != job.sheet or more.get("sheets", job.sheets) != job.sheets:
            job.header_row = None
        if dict(column_map) != job.column_map:
            job.mapped_from = {}  # the user's own mapping from now on
        job.sheet, job.default_region, job.column_map = sheet, default_region, dict(column_map)
        for name, value in more.items():
            if name not in MORE_OPTIONS:
                raise JobError(f"no option {name!r}")
            setattr(job, name, value)
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
        report = await self.report(job)
        if row not in report.table.frame.index:
            raise LookupError(f"row {row} is not a data row of this file")
        cells = [{"row": row, "column": c, "value": v} for c, v in changes.items()]
        await self.apply_op(job, [{"op": "set", "cells": cells}] if cells else [], who=who, quiet=True)

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
                edits, operations, touched = list(job.edits), list(job.operations), set[int]()
                for body in bodies:
                    try:
                        # In a thread: a bulk operation builds an edit per cell (100,000 cost ~0.5 s).
                        change = await in_background(
                            ops.apply_op, body, report, edits, operations, who=who, when=now_text()
                        )
                    except ops.EditRefused as exc:
                        if quiet and str(exc).startswith("nothing to change"):
                            continue
                        raise JobError(str(exc)) from None
                    edits, operations = list(change.edits), list(change.operations)
                    touched |= change.touched
                if not touched:
                    return []
                options = job.input_options()
                excluded = ops.excluded_rows(operations)
                fresh = await self.work.run(
                    job, ops.recheck_or_check, report, job.edits, edits, options, touched, excluded
                )
                await in_background(_write_edits, job.folder, edits, operations)
                job.edits, job.operations = edits, operations
                job.report = fresh
                job.outcomes = {}
                self._drop_plan(job)
                job.status = next_status(job.status, Step.EDIT)
                self._summarise(job, fresh)
                self._save(job)
            finally:
                job.busy = ""
            return sorted(touched)

    # -- plan and send ----------------------------------------------------------------------

    def _lane(self) -> Lane:
        key = engine.lane_key(self.connection)
        lane = self.lanes.get(key)
        if lane is None:
            lane = self.lanes[key] = Lane(self.connection)
            lane.task = asyncio.create_task(self._lane_worker(lane))
        return lane

    def audit(self, job: Job) -> dict[str, str]:
        """Summary lines about the job: who uploaded it, from where, and every edit."""
        out = {"uploaded_by": job.uploaded_by or "(not given)", "client": job.client, "web job": job.id}
        for n, edit in enumerate(job.edits, start=1):
            out[f"edit {n}"] = edit.text()
        if job.header_row is not None:
            out["header row"] = f"{job.header_row} (chosen on the web page)"
        out.update(self.audit_log.summary(job.id))  # uploaded, planned, approved, started by
        return out

    def facts(self, job: Job) -> RunFacts:
        """Where the job ran, for its workbooks: the file as uploaded, none of the server's paths,
        user or host (the job's id and uploader are ``audit`` lines)."""
        return RunFacts(file=job.file, machine=False)

    async def plan(self, job: Job) -> None:
        """Run the dry run against the live state (in the background).

        A failed job plans again only if it was validated and sent nothing (e.g. a scheduled send
        whose plan changed): one that stopped while sending retries or sends the rest instead.
        """
        if job.status is JobStatus.FAILED:
            if "valid" not in job.counts:
                raise JobError(
                    "the job failed before its rows were checked: change its options to read it again"
                )
            if job.sent_something():
                raise JobError("the job stopped while sending: start it again or send the rest")
        job.status, job.error = next_status(job.status, Step.PLAN, job.busy), ""
        job.finished = ""
        job.planned_by = approval.asker()
        self._save(job)
        self._spawn(self._plan(job))

    async def _plan(self, job: Job) -> None:
        try:
            report = await self.report(job)
            async with self.work.turn(job):  # a dry run holds the table and a core like a validation
                run = await self._dry_run(job, report)
            if run.plan is None:
                raise ImporterError(run.stop_reason or "no plan was made")
            await self._keep_plan(job, run.plan, run.requests)
        except Exception as exc:
            # A plan is only reads: the job stays usable and says why the plan did not happen.
            if job.status is not JobStatus.PLANNING:
                return
            self._drop_plan(job)
            job.status, job.error = (
                next_status(job.status, Step.PLAN_FAILED),
                "plan failed: " + engine.clean_error(exc),
            )
            self._save(job)
            return
        if job.status is not JobStatus.PLANNING:
            return
        job.notes = list(run.notes)
        job.status = next_status(job.status, Step.PLANNED)
        self._count(job)
        self._save(job)

    async def _dry_run(self, job: Job, report: ValidationReport) -> engine.JobRun:
        return await undo.runner(job)(
            self.connection,
            report,
            job.input_options(),
            dry_run=True,
            journal_path=None,
            results=job.folder / "plan.results.xlsx",
            failed=job.folder / "plan.failed.xlsx",
            limiter=self._lane().limiter,
            cancel=asyncio.Event(),
            on_existing=OnExisting(job.on_existing),
            max_error_rate=job.max_error_rate,
            audit=self.audit(job),
            facts=self.facts(job),
        )

    async def start(self, job: Job) -> None:
        """Queue the job for sending on its key's lane."""
        # A job that failed while sending (key rejected, API unreachable) may start again: the
        # engine resumes it from its journal, so nothing confirmed is sent twice.
        # Only the plan shown is sent: from ``planned``, while its inputs are what they were.
        retry = job.status is JobStatus.FAILED and job.sent_something()
        to = Step.RETRY if retry else Step.START
        if job.busy:
            next_status(job.status, to, job.busy)  # refused, saying what the job is busy with
        if job.status not in (JobStatus.PLANNED, JobStatus.SCHEDULED) and not retry:
            raise JobError(f"the job is {job.status.value} and has no plan to send: {PLAN_AGAIN}")
        if not job.planned:
            raise JobError(f"the job has no plan to send: {PLAN_AGAIN}")
        if job.planned.get("inputs") != job.inputs_fingerprint():
            raise JobError(f"the file, its corrections or its options changed since the plan: {PLAN_AGAIN}")
        if why := approval.refusal(job, self.require_approval):
            raise JobError(why)
        if self.closing.is_set():
            raise JobError("the server is shutting down")
        job.status, job.error = next_status(job.status, to, job.busy), ""
        job.resuming = False
        job.outcomes = {}
        job.progress = {}
        self._save(job)
        self._enqueue(job)

    def _enqueue(self, job: Job) -> None:
        lane = self._lane()
        lane.waiting.append(job)
        lane.positions()
        lane.wake.set()

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
        if job.status is JobStatus.PLANNED:  # sent by this job before: done, not "unchanged"
            for row, outcome in done.items():
                planned = job.outcomes.get(row)
                if planned is not None and planned.action is Action.UNCHANGED:
                    job.outcomes[row] = outcome
            self._count(job)
            job.touch()

    async def cancel(self, job: Job) -> None:
        """Cancel: a queued or idle job at once, a sending one once its writes in flight settle."""
        next_status(job.status, Step.CANCEL)  # finished jobs, and work that cannot stop midway, say so
        for lane in self.lanes.values():
            if job in lane.waiting:
                lane.waiting.remove(job)
                lane.positions()
                job.queue_position = None
                self._finish(job, Step.CANCEL, "cancelled before sending started")
                return
            if lane.running is job:  # whatever else happens to the job, its send is told to stop
                job.cancel.set()
                job.touch()
                return
        if job.status is JobStatus.SENDING:  # between its lane and its send: the send sees the flag
            job.cancel.set()
            job.touch()
            return
        next_status(job.status, Step.CANCEL, job.busy)
        self._finish(job, Step.CANCEL, "cancelled before sending")

    def _finish(self, job: Job, to_do: Step, stopped: str = "", error: str = "") -> None:
        job.status, job.stopped, job.error = next_status(job.status, to_do), stopped, error
        job.finished = now_text()
        self._count(job)
        self._save(job)

    async def _lane_worker(self, lane: Lane) -> None:
        while not self.closing.is_set():
            if not lane.waiting:
                lane.wake.clear()
                await lane.wake.wait()
                continue
            job = lane.waiting.popleft()
            job.queue_position = None
            lane.positions()
            lane.running = job
            try:
                await self._send(job, lane)
            finally:
                lane.running = None

    async def _send(self, job: Job, lane: Lane) -> None:
        job.cancel = asyncio.Event()
        if self.closing.is_set():
            return
        job.touch()
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
                "paused_seconds": round(lane.limiter.paused_for, 1),
            }
            # Counting every row costs a pass over the outcomes: at most a few times a second.
            now = time.monotonic()
            if now - last_touch >= 0.2 or p.done == p.total:
                last_touch = now
                self._count(job)
                job.touch()

        try:
            report = await self.report(job)
            if job.status is not JobStatus.SENDING:
                return
            self._summarise(job, report)
            run = await undo.runner(job)(
                self.connection,
                report,
                job.input_options(),
                dry_run=False,
                journal_path=job.journal_path,
                results=job.folder / "results.xlsx",
                failed=job.folder / "failed.xlsx",
                limiter=lane.limiter,
                cancel=job.cancel,
                on_existing=OnExisting(job.on_existing),
                max_error_rate=job.max_error_rate,
                # A send the server resumes was confirmed before it stopped: its journal, not
                # the plan's writes, says what is left (some of them landed already).
                shown_writes=None if job.resuming else job.planned.get("writes_fingerprint"),
                on_progress=progress,
                audit=self.audit(job),
                facts=self.facts(job),
            )
            if run.refused and run.plan is not None:
                await self._plan_changed(job, report, run.plan, run.requests)
                return
        except Exception as exc:
            if job.interrupted:
                return  # the next start resumes it from its journal
            self._finish(job, Step.FAIL, error=engine.clean_error(exc))
            return
        job.notes = list(run.notes)
        job.outcomes = dict(run.outcomes)
        await self._save_outcomes(job)
        if job.interrupted:
            self._count(job)
            job.stopped = "server stopped; resumes on the next start"
            self._save(job)
            return
        if job.cancel.is_set():
            self._finish(job, Step.CANCEL, "cancelled")
        elif run.exit_code == 3:
            self._finish(job, Step.FAIL, run.stop_reason, error=run.stop_reason)
        else:
            self._finish(job, Step.SENT, run.stop_reason)

    async def _plan_changed(self, job: Job, report: ValidationReport, plan: Plan, requests: int) -> None:
        """The account changed since the plan was shown: nothing was sent; show the new plan."""
        for name in ("results.xlsx", "failed.xlsx"):  # they say "not confirmed": not this job's result
            (job.folder / name).unlink(missing_ok=True)
        journal = job.journal_path
        if not await in_background(journal_has_runs, journal):  # nothing was ever sent: still editable
            for suffix in ("", "-wal", "-shm"):
                journal.with_name(journal.name + suffix).unlink(missing_ok=True)
        self._drop_plan(job)
        await self._keep_plan(job, plan, requests)
        job.notes = engine.input_notes(report, job.input_options())
        job.progress = {}
        job.status = next_status(job.status, Step.PLAN_CHANGED)
        job.error = (
            "the account changed since the plan was shown, so nothing was sent: this is the plan "
            "against the account as it is now; review it and start again"
        )
        self._count(job)
        self._save(job)

    # -- views ------------------------------------------------------------------------------

    def snapshot(self, job: Job) -> dict[str, Any]:
        """The job as the API and every event show it (never the key or a path on the server)."""
        return {
            **views.snapshot(job),
            **approval.fields(job, self.require_approval),
            "scheduled_at": windows.scheduled_at(job),
            **undo.fields(job),
        }

    async def approve(self, job: Job, user: people.User) -> None:
        """Approve the plan shown (four eyes, ``web.approval``); recorded in the audit."""
        approval.approve(job, user, now_text())
        self._save(job)
        self.events.emit("approved", job)

    async def rows(self, job: Job, status: str | None, offset: int, limit: int) -> dict[str, Any]:
        """One page of rows with their values, status and reasons (filtered by status)."""
        return views.rows_page(job, await self.report(job), status, offset, limit)

    async def row_items(self, job: Job, rows: Sequence[int]) -> list[dict[str, Any]]:
        """Some rows as ``rows`` pages them, without building the whole table's view."""
        return views.row_items(job, await self.report(job), rows)

    async def workbook(self, job: Job, kind: str) -> Path | None:
        """The results (``kind`` "results") or failed-rows workbook: final, or a snapshot now."""
        name = "results.xlsx" if kind == "results" else "failed.xlsx"
        if kind == "failed" and job.stopped and (job.status in (JobStatus.CANCELLED, JobStatus.FAILED)):
            return await self._failed_and_unsent(job)
        if job.status in (JobStatus.DONE, JobStatus.CANCELLED) and (job.folder / "results.xlsx").is_file():
            path = job.folder / name
            return path if path.is_file() else None
        if job.status is JobStatus.PLANNED and (job.folder / "plan.results.xlsx").is_file():
            path = job.folder / ("plan." + name)
            return path if path.is_file() else None
        if job.status in (JobStatus.VALIDATING, JobStatus.FAILED) and job.report is None:
            return None
        report = await self.report(job)
        results = job.folder / "snapshot.results.xlsx"
        failed = job.folder / "snapshot.failed.xlsx"
        path = results if kind == "results" else failed
        # Built once per state of the job: what it is, what it was read with, where its rows are.
        state = json.dumps(
            [job.status.value, job.inputs_fingerprint(), job.counts, job.progress.get("done"), job.stopped],
            sort_keys=True,
        )
        if job.snapshot_of == state and results.is_file():
            return path if path.is_file() else None
        unplanned = job.status in (JobStatus.VALIDATED, JobStatus.FAILED) and not job.outcomes
        outcomes = None if unplanned else engine.row_outcomes(report, job.outcomes)
        command = {
            JobStatus.SENDING: "web (snapshot while sending)",
            JobStatus.PLANNED: "web (dry run)",
        }.get(job.status, "web (validate)")
        audit = {"started": job.created, **self.audit(job)}
        # One snapshot at a time per job: two downloads must not write one file together.
        async with job.lock:
            if job.snapshot_of == state and results.is_file():  # built by a download just before
                return path if path.is_file() else None
            await self.work.run(
                job,
                engine.write_results,
                report,
                outcomes,
                command=command,
                options=job.input_options().describe(),
                audit=audit,
                facts=self.facts(job),
                connection=self.connection,
                results=results,
                failed=failed,
            )
            job.snapshot_of = state
        return path if path.is_file() else None

    async def _failed_and_unsent(self, job: Job) -> Path | None:
        """A cancelled or stopped job's failed rows and the rows it did not send, with their reasons."""
        report = await self.report(job)
        rows, reasons = [], {}
        for outcome in engine.row_outcomes(report, job.outcomes):
            if outcome.status in (Status.FAILED, Status.NOT_SENT):
                rows.append(outcome.row)
                reasons[outcome.row] = outcome.reason
        if not rows:
            return None
        path = job.folder / "snapshot.unsent.xlsx"
        async with job.lock:
            await self.work.run(job, write_failed_rows, path, report.table, rows, reasons)
        return path

    def list(self) -> list[dict[str, Any]]:
        """Every job, newest first, then the damaged ones (status ``damaged``, ``error`` says why)."""
        jobs = [self.snapshot(j) for j in sorted(self.jobs.values(), key=lambda j: j.created, reverse=True)]
        return jobs + [damaged_entry(job_id, reason) for job_id, reason in sorted(self.damaged.items())]

    def _saved_outcomes(self, job_id: str) -> dict[int, RowOutcome]:
        try:
            return {o.row: o for o in map(outcome_from, self.store.outcomes(job_id) or [])}
        except (DamagedRecord, KeyError, ValueError, TypeError) as exc:
            raise ImporterError(f"the saved outcomes of this job cannot be read: {reason_of(exc)}") from None
