"""A job's validated table in memory: read in turn (``web.work``), edited, kept while used, counted.

A job's table (``Job.report``), with its per-row outcomes and the plan shown, is read from its
folder when first needed, with the CLI's reader and validator, and let go again once
``RESIDENT_TABLES`` tables used more recently are kept (never a busy job's): memory does not
grow with the number of jobs waiting or finished. An edit checks again only the rows it touched
(``web.edits``); the upload is never changed.

These functions change the job in memory; ``JobService`` (``web.jobs``) moves its status and saves it.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from types import EllipsisType
from typing import Any

from importer import words
from importer.errors import ImporterError
from importer.jobs.session import now_text
from importer.jobs.validate import read_input
from importer.model import Action, RowOutcome, Status, ValidationReport
from importer.options import InputOptions
from importer.read.sheets import SheetChoiceNeeded
from importer.web import edits as ops
from importer.web import engine, keeping, observe, undo
from importer.web.engine import Edit
from importer.web.lifecycle import JobError, JobStatus, Step, next_status
from importer.web.mappings import MappingMemory, Remembered
from importer.web.records import (
    KEEPS_OUTCOMES,
    MORE_OPTIONS,
    RESIDENT_TABLES,
    Job,
    JobDamaged,
    dry_run_outcomes,
    read_plan,
    reason_of,
)
from importer.web.store import JobStore
from importer.web.work import WorkQueue, in_background


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


async def load_report(
    job: Job, work: WorkQueue, mappings: MappingMemory, store: JobStore
) -> ValidationReport:
    """Read the upload, apply the edits, validate (in a thread): the CLI's reader and validator.

    Raises:
        JobDamaged: a job read before cannot be read again (its upload or plan was changed
            or removed on the server).
        ImporterError: the upload of a job being validated cannot be used (the job fails).
    """
    if job.status is JobStatus.VALIDATING:
        return await _read_table(job, work, mappings, store)
    try:
        return await _read_table(job, work, mappings, store)
    except (ImporterError, OSError, ValueError, KeyError, TypeError) as exc:
        reason = (
            words.error_words(exc, words.Surface.WEB) if isinstance(exc, ImporterError) else reason_of(exc)
        )
        observe.LOGGER.error(
            f"job {job.id}: its files cannot be read again: {reason}",
            extra={"fields": {"event": "damaged", "job": job.id, "reason": reason}},
        )
        raise JobDamaged(f"this job's files on the server cannot be read again: {reason}") from None


async def _read_table(
    job: Job, work: WorkQueue, mappings: MappingMemory, store: JobStore
) -> ValidationReport:
    options = job.input_options()
    excluded = ops.excluded_rows(job.operations)
    if job.kind == undo.ROLLBACK:  # no upload: the rows of its plan (web.undo)
        report = await in_background(undo.read_report, job)
    else:
        recall = mappings.first_read(job.id)
        report, remembered = await work.run(job, _read_and_check, options, tuple(job.edits), excluded, recall)
        if remembered is not None:
            job.column_map = dict(remembered.column_map)
            job.mapped_from = {"job": remembered.job, "file": remembered.file}
    if not job.outcomes and job.status in KEEPS_OUTCOMES:
        job.outcomes = await in_background(keeping.saved_outcomes, store, job.id)
    shown = job.folder / "plan.json"
    if job.shown is None and job.planned and shown.is_file():
        job.shown = await in_background(read_plan, shown)
        if job.status is JobStatus.PLANNED and not job.outcomes:
            job.outcomes = await in_background(dry_run_outcomes, job.shown)
    job.report = report
    return report


def choose_options(
    job: Job,
    sheet: str | None,
    default_region: str | None,
    column_map: Mapping[str, str],
    header_row: int | EllipsisType | None,
    more: Mapping[str, Any],
) -> None:
    """Take the options the table is read with next (``JobService.set_options`` says which).

    Raises:
        JobError: ``more`` names an option a job does not have.
    """
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


def validated(job: Job, report: ValidationReport) -> None:
    """The job's table was read and checked: ``validated``, with its counts and sheets."""
    summarise(job, report)
    job.sheet_list = [dataclasses.asdict(sheet) for sheet in report.table.sheets]
    job.status = next_status(job.status, Step.VALIDATED)


def not_validated(job: Job, exc: Exception) -> None:
    """The job's table could not be read: a sheet to choose, or a failure saying why."""
    if isinstance(exc, SheetChoiceNeeded):  # not a failure: the user picks (``set_options``)
        job.error = words.error_words(exc, words.Surface.WEB)
        job.sheet_list = [dataclasses.asdict(sheet) for sheet in exc.sheets]
        job.status, job.report = next_status(job.status, Step.SHEET_NEEDED), None
        return
    job.error = (
        words.error_words(exc, words.Surface.WEB)
        if isinstance(exc, ImporterError)
        else engine.clean_error(exc)
    )
    job.status, job.report = next_status(job.status, Step.FAIL), None


def row_set(
    report: ValidationReport, row: int, changes: Mapping[str, str] | Mapping[int, str]
) -> list[dict[str, Any]]:
    """One row's changed cells as one ``set`` operation (none if nothing changes).

    Raises:
        LookupError: ``row`` is not a data row of the table.
    """
    if row not in report.table.frame.index:
        raise LookupError(f"row {row} is not a data row of this file")
    cells = [{"row": row, "column": c, "value": v} for c, v in changes.items()]
    return [{"op": "set", "cells": cells}] if cells else []


async def apply_ops(
    job: Job,
    report: ValidationReport,
    bodies: Sequence[Mapping[str, Any]],
    work: WorkQueue,
    *,
    who: str,
    quiet: bool,
) -> set[int]:
    """Apply edit operations (``web.edits``) in order, check the rows they touched, keep the edits.

    The job's table becomes the one checked, and its plan is dropped. Returns the rows changed
    (none: nothing changed). ``quiet``: a cell set to what it holds is no error.

    Raises:
        JobError: an operation cannot be applied (nothing was changed).
    """
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
        return touched
    options = job.input_options()
    excluded = ops.excluded_rows(operations)
    fresh = await work.run(job, ops.recheck_or_check, report, job.edits, edits, options, touched, excluded)
    await in_background(keeping.write_edits, job.folder, edits, operations)
    job.edits, job.operations = edits, operations
    job.report = fresh
    job.outcomes = {}
    keeping.drop_plan(job)
    job.status = next_status(job.status, Step.EDIT)
    summarise(job, fresh)
    return touched


def keep_resident(resident: collections.OrderedDict[str, None], jobs: Mapping[str, Job], job: Job) -> None:
    """Mark ``job``'s table used last; let the least recently used idle tables go beyond the few kept."""
    resident[job.id] = None
    resident.move_to_end(job.id)
    busy = {JobStatus.VALIDATING, JobStatus.PLANNING, JobStatus.SENDING}
    while len(resident) > RESIDENT_TABLES:
        for job_id in resident:
            other = jobs[job_id]
            if other is not job and other.status not in busy and not other.lock.locked() and not other.busy:
                other.report = None
                other.shown = None  # in plan.json; read again with the table
                if other.status in (*KEEPS_OUTCOMES, JobStatus.PLANNED):
                    other.outcomes = {}  # saved in the store or plan.json; read again with the table
                other.view = None
                del resident[job_id]
                break
        else:
            return


def summarise(job: Job, report: ValidationReport) -> None:
    """Take the table's shape, source, problems and notes into the job's record; count its rows."""
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
    count(job)


def count(job: Job) -> None:
    """Count the job's rows by status, from its table and its outcomes (a table let go: unchanged)."""
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


def restore_done(job: Job, done: Mapping[int, RowOutcome]) -> None:
    """In the plan of a send's rest, rows this job sent before are done, not "unchanged"."""
    for row, outcome in done.items():
        planned = job.outcomes.get(row)
        if planned is not None and planned.action is Action.UNCHANGED:
            job.outcomes[row] = outcome
    count(job)
