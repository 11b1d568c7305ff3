"""Undo a web import: a rollback job that puts back what an import job changed.

``POST /api/jobs/{id}/rollback`` makes a new job of kind ``rollback`` (``undoes`` names the
import; the import's ``undone_by`` names it back). It has no upload: it is planned, started,
followed and downloaded like an import job, through the same ``JobService`` steps and lane,
and each plan or send is one call of the CLI's ``rollback_run_async`` over the import job's
own journal: the same rules (updated rows get their record back, created ones are deactivated,
a row someone changed since is held back with that reason, never overwritten), the same plan,
the same results workbook. Nothing here reads or writes the API by itself.

Its rows are the rollback's own table (``rollback_table``: one row per change of the import),
rebuilt from the plan kept with the job (plan.json), so a restart shows them again.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from importer.account.limiter import RateLimiter
from importer.engine.apply import Progress
from importer.engine.plan import Plan, writes_fingerprint
from importer.jobs.rollback import ROLLBACK_COLUMNS, rollback_run_async, rollback_table
from importer.jobs.session import now_text
from importer.model import MACHINE_FACTS, RunFacts, ValidationReport
from importer.options import InputOptions, RollbackConfig
from importer.vocab import OnExisting
from importer.web import engine
from importer.web.engine import Connection, JobRun, SendProgress
from importer.web.lifecycle import JobError, JobStatus
from importer.web.records import Job, journal_has_runs, read_plan

__all__ = [
    "ROLLBACK",
    "check_unchanged",
    "fields",
    "journal_of",
    "new_rollback",
    "read_report",
    "report_of",
    "run_rollback",
    "runner",
    "why_not",
]

ROLLBACK = "rollback"
ENDED_FOR_GOOD = frozenset({JobStatus.CANCELLED, JobStatus.FAILED})
"""A rollback ended so: its import may be rolled back again (the CLI's second rollback rules)."""
_MAPPING = {"did_id": ROLLBACK_COLUMNS.index("did_id"), "did_number": ROLLBACK_COLUMNS.index("did_number")}


def fields(job: Job) -> dict[str, Any]:
    """What a snapshot says about a job's kind: ``kind``, ``undoes`` and ``undone_by`` (or None)."""
    return {"kind": job.kind, "undoes": job.undoes or None, "undone_by": job.undone_by or None}


def journal_of(job: Job) -> Path:
    """The journal a rollback job works on: its import job's own (jobs are sibling folders)."""
    return job.folder.parent / job.undoes / "journal.sqlite"


def _sent_something(job: Job) -> bool:
    return journal_has_runs(job.journal_path)


def why_not(original: Job, jobs: Mapping[str, Job]) -> str:
    """Why ``original`` cannot be undone now ("" when it can): the API's 409 and the page's hint."""
    if original.kind == ROLLBACK:
        return (
            "this job is itself a rollback and cannot be rolled back; "
            "to put its rows back as the import left them, import that file again"
        )
    if original.busy:
        return f"the job is busy: {original.busy}; try again once that is done"
    if original.status is not JobStatus.DONE and not (
        original.status in ENDED_FOR_GOOD and original.finished and _sent_something(original)
    ):
        return f"the job is {original.status.value}; only a finished job that sent something can be undone"
    earlier = jobs.get(original.undone_by)
    if earlier is not None and earlier.status not in ENDED_FOR_GOOD:
        return (
            f"this job has a rollback already (job {earlier.id}, {earlier.status.value}); "
            "cancel it before making another"
        )
    return ""


def new_rollback(original: Job, jobs: Mapping[str, Job], root: Path, *, who: str, client: str) -> Job:
    """A rollback job for ``original`` (its folder made); ``JobService.rollback`` stores and lists it.

    Raises:
        JobError: ``original`` is a rollback, not finished, sent nothing, or has a rollback
            already that is not cancelled or failed (409 with the reason, ``why_not``).
    """
    if reason := why_not(original, jobs):
        raise JobError(reason)
    job_id = secrets.token_hex(12)
    folder = root / job_id
    folder.mkdir(parents=True)
    return Job(
        id=job_id,
        folder=folder,
        file=f"undo of {original.file}",
        upload="",
        created=now_text(),
        status=JobStatus.VALIDATED,  # nothing to read or check: it is planned next
        uploaded_by=who,
        client=client,
        kind=ROLLBACK,
        undoes=original.id,
        # What its table's source says (``report_of``), so the plan's inputs fingerprint holds.
        source={
            "format": "journal",
            "sheet": None,
            "header_row": None,
            "encoding": None,
            "sha256": original.id,
        },
    )


def check_unchanged(job: Job, jobs: Mapping[str, Job]) -> None:
    """Refuse to change or resume a rollback job, or to resume an import a rollback undoes.

    Raises:
        JobError: the job is a rollback (it has no file, options or rows to change; a cancelled one
            is followed by a new rollback of its import), or an import with a live rollback.
    """
    if job.kind == ROLLBACK:
        raise JobError(
            "a rollback job has no file, options or rows to change, and is not resumed; "
            f"once it is cancelled, undo job {job.undoes} again for what is left"
        )
    rollback = jobs.get(job.undone_by)
    if rollback is not None and rollback.status not in ENDED_FOR_GOOD:
        raise JobError(f"this job is being undone (job {rollback.id}); it can no longer send")


def report_of(job: Job, plan: Plan | None) -> ValidationReport:
    """The rollback job's rows as a table: one per change of the import (none before a plan)."""
    table = rollback_table(journal_of(job), job.undoes, plan.undos if plan is not None else ())
    return ValidationReport(table=table, valid=(), issues=(), mapping=_MAPPING)


def read_report(job: Job) -> ValidationReport:
    """``report_of`` the plan kept with the job (blocking: read in a thread)."""
    shown = job.folder / "plan.json"
    return report_of(job, read_plan(shown) if shown.is_file() else None)


async def run_rollback(
    connection: Connection,
    job: Job,
    *,
    dry_run: bool,
    results: Path,
    limiter: RateLimiter,
    cancel: asyncio.Event,
    shown_writes: str | None = None,
    on_progress: Callable[[SendProgress], None] | None = None,
    audit: Mapping[str, str] = {},
    facts: RunFacts = MACHINE_FACTS,
) -> JobRun:
    """Plan (``dry_run``) or send a rollback job with the CLI's ``rollback_run_async``.

    The import job's journal is the rollback's source; every run of its upload that changed
    something is covered (an interrupted send and its resume are one import), as the CLI's
    ``voicelink-import rollback JOURNAL`` does. ``shown_writes`` as in ``engine.run_job``: only
    the plan the user saw is sent (the account changed otherwise: ``refused``, nothing sent).

    Raises:
        ImporterError: nothing to roll back, the journal is in use, the key was rejected.
    """
    plans: list[Plan] = []
    refused: list[Plan] = []

    def planned(plan: Plan) -> None:
        plans.append(plan)
        if on_progress is not None:
            on_progress(SendProgress(0, len(plan.writes), 0, 0, None, tuple(plan.outcomes)))

    def confirm(plan: Plan) -> bool:
        if shown_writes is None or writes_fingerprint(plan) == shown_writes:
            return True
        refused.append(plan)
        return False

    def progress(p: Progress) -> None:
        if on_progress is not None:
            fresh = () if p.outcome is None else (p.outcome,)
            on_progress(SendProgress(p.done, p.total, p.succeeded, p.failed, p.eta_seconds, fresh))

    config = RollbackConfig.using(
        connection,
        source=journal_of(job),
        output=results,
        dry_run=dry_run,
        on_plan=planned,
        confirm=confirm,
        audit_extra={**{k: v for k, v in audit.items() if k != "started"}, "undoes web job": job.undoes},
        facts=facts,
    )
    summary = await rollback_run_async(
        config, transport=connection.transport, on_progress=progress, cancel=cancel, limiter=limiter
    )
    return JobRun(
        outcomes={o.row: o for o in summary.outcomes},
        plan=plans[0] if plans else None,
        stop_reason=summary.stopped,
        exit_code=int(summary.exit_code),
        requests=summary.requests,
        notes=tuple(summary.notes),
        refused=bool(refused),
    )


class Runner(Protocol):
    """``engine.run_job``'s call: how ``JobService`` plans and sends a job of any kind."""

    def __call__(
        self,
        connection: Connection,
        report: ValidationReport,
        input_options: InputOptions,
        *,
        dry_run: bool,
        journal_path: Path | None,
        results: Path,
        failed: Path,
        limiter: RateLimiter,
        cancel: asyncio.Event,
        on_existing: OnExisting = OnExisting.UPDATE,
        max_error_rate: float | None = None,
        shown_writes: str | None = None,
        on_progress: Callable[[SendProgress], None] | None = None,
        audit: Mapping[str, str] = {},
        facts: RunFacts = MACHINE_FACTS,
    ) -> Awaitable[JobRun]: ...


_ROLLBACK_TAKES = ("dry_run", "results", "limiter", "cancel", "shown_writes", "on_progress", "audit", "facts")
"""The arguments of ``Runner`` that ``run_rollback`` takes."""


def runner(job: Job) -> Runner:
    """What plans and sends ``job``: ``engine.run_job`` for an import, ``run_rollback`` for a rollback.

    A rollback takes the same call: it has no upload, journal or failed-rows file of its own and
    no import options, so those arguments do not apply to it.
    """
    if job.kind != ROLLBACK:
        return engine.run_job

    async def run(
        connection: Connection, report: ValidationReport, input_options: InputOptions, **given: Any
    ) -> JobRun:
        # The import's own arguments (its table, options, journal, failed-rows file) do not apply.
        del report, input_options
        return await run_rollback(connection, job, **{k: given[k] for k in _ROLLBACK_TAKES if k in given})

    return run
