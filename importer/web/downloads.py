"""A job's workbooks: what they state about the job, and the ones built for a download.

A finished send's and a plan's workbooks are the engine's own; at any other time a download is a
snapshot of the job as it is, built in turn (``web.work``) once per state of the job.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path

from importer.model import RunFacts, Status, ValidationReport
from importer.output.failed import write_failed_rows
from importer.web import engine
from importer.web.audit import AuditLog
from importer.web.engine import Connection
from importer.web.lifecycle import JobStatus
from importer.web.records import Job
from importer.web.work import WorkQueue


def audit_lines(job: Job, audit_log: AuditLog) -> dict[str, str]:
    """Summary lines about the job: who uploaded it, from where, and every edit."""
    out = {"uploaded_by": job.uploaded_by or "(not given)", "client": job.client, "web job": job.id}
    for n, edit in enumerate(job.edits, start=1):
        out[f"edit {n}"] = edit.text()
    if job.header_row is not None:
        out["header row"] = f"{job.header_row} (chosen on the web page)"
    out.update(audit_log.summary(job.id))  # uploaded, planned, approved, started by
    return out


def facts(job: Job) -> RunFacts:
    """Where the job ran, for its workbooks: the file as uploaded, none of the server's paths,
    user or host (the job's id and uploader are ``audit_lines``)."""
    return RunFacts(file=job.file, machine=False)


async def workbook(
    job: Job,
    kind: str,
    report_of: Callable[[Job], Awaitable[ValidationReport]],
    work: WorkQueue,
    connection: Connection,
    audit_log: AuditLog,
) -> Path | None:
    """The results (``kind`` "results") or failed-rows workbook: final, or a snapshot now.

    ``report_of`` gives the job's table (read again if it was let go), only when one is built.
    """
    name = "results.xlsx" if kind == "results" else "failed.xlsx"
    if kind == "failed" and job.stopped and (job.status in (JobStatus.CANCELLED, JobStatus.FAILED)):
        return await _failed_and_unsent(job, await report_of(job), work)
    if job.status in (JobStatus.DONE, JobStatus.CANCELLED) and (job.folder / "results.xlsx").is_file():
        path = job.folder / name
        return path if path.is_file() else None
    if job.status is JobStatus.PLANNED and (job.folder / "plan.results.xlsx").is_file():
        path = job.folder / ("plan." + name)
        return path if path.is_file() else None
    if job.status in (JobStatus.VALIDATING, JobStatus.FAILED) and job.report is None:
        return None
    report = await report_of(job)
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
    audit = {"started": job.created, **audit_lines(job, audit_log)}
    # One snapshot at a time per job: two downloads must not write one file together.
    async with job.lock:
        if job.snapshot_of == state and results.is_file():  # built by a download just before
            return path if path.is_file() else None
        await work.run(
            job,
            engine.write_results,
            report,
            outcomes,
            command=command,
            options=job.input_options().describe(),
            audit=audit,
            facts=facts(job),
            connection=connection,
            results=results,
            failed=failed,
        )
        job.snapshot_of = state
    return path if path.is_file() else None


async def _failed_and_unsent(job: Job, report: ValidationReport, work: WorkQueue) -> Path | None:
    """A cancelled or stopped job's failed rows and the rows it did not send, with their reasons."""
    rows, reasons = [], {}
    for outcome in engine.row_outcomes(report, job.outcomes):
        if outcome.status in (Status.FAILED, Status.NOT_SENT):
            rows.append(outcome.row)
            reasons[outcome.row] = outcome.reason
    if not rows:
        return None
    path = job.folder / "snapshot.unsent.xlsx"
    async with job.lock:
        await work.run(job, write_failed_rows, path, report.table, rows, reasons)
    return path
