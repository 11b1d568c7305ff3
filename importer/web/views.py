"""How a job is shown: its snapshot (the API, events, pages) and pages of its rows.

Values only, from the job and its validated table; ``JobService`` fetches the table.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping, Sequence
from typing import Any

from importer.jobs.validate import failed_outcome, reasons_by_row, skipped_outcome
from importer.model import RowIssue, RowOutcome, Status, ValidationReport
from importer.vocab import ReasonKind
from importer.web import edits as ops
from importer.web.lifecycle import JobStatus
from importer.web.records import NO_PROGRESS, Job, validated_only

__all__ = ["row_items", "rows_page", "snapshot"]


def snapshot(job: Job) -> dict[str, Any]:
    """The job as the API and every event show it (never the key or a path on the server)."""
    return {
        "id": job.id,
        "status": job.status.value,
        "file": job.file,
        "created": job.created,
        "finished": job.finished or None,
        "uploaded_by": job.uploaded_by,
        "rows": job.rows,
        "counts": job.counts,
        "problems": job.problems,
        "progress": {**NO_PROGRESS, **job.progress},
        "queue_position": job.queue_position,
        "error": job.error or None,
        "stopped": job.stopped or None,
        "plan": job.plan or None,
        "planned": {k: v for k, v in job.planned.items() if k not in ("inputs", "writes_fingerprint")}
        or None,
        "budget": job.budget or None,
        "notes": job.notes,
        "sheets": job.sheet_list,
        "candidates": [s["name"] for s in job.sheet_list if s["matches"] and s["rows"]]
        if job.status is JobStatus.NEEDS_SHEET
        else None,
        "options": {
            "sheet": job.sheet,
            "sheets": job.sheets,
            "header_row": job.header_row,
            "default_region": job.default_region,
            "map": [f"{h}={f}" for h, f in job.column_map.items()],
            "encoding": job.encoding,
            "skip_hidden_rows": job.skip_hidden_rows,
            "ignore_columns": job.ignore_columns,
            "on_existing": job.on_existing,
            "max_error_rate": job.max_error_rate,
        },
        "source": job.source,
        "columns": job.columns,
        "mapping": job.mapping,
        "mapped_from": job.mapped_from or None,
        "edits": len(job.edits),
    }


def rows_page(
    job: Job, report: ValidationReport, status: str | None, offset: int, limit: int
) -> dict[str, Any]:
    """One page of rows with their values, status and reasons (filtered by status)."""
    frame = report.table.frame
    index = frame.index.tolist()
    if job.view is None or job.view[0] != job.version:
        failed_rows = report.failed_rows
        statuses = [_status(job, report, row, row in failed_rows) for row in index]
        job.view = (job.version, statuses, reasons_by_row(report.issues))
    _, statuses, issues = job.view
    if status:
        wanted = set(status.split(","))
        valid = "valid" in wanted  # not a status: the rows without issues, whatever their status
        positions = [i for i, s in enumerate(statuses) if s in wanted or (valid and index[i] not in issues)]
    else:
        positions = list(range(len(index)))
    page = positions[offset : offset + limit]
    items = _items(job, report, [(i, index[i], statuses[i]) for i in page], issues)
    return {
        "job": job.id,
        "columns": list(report.table.headers),
        "total": len(positions),
        "offset": offset,
        "limit": limit,
        "rows": items,
    }


def _status(job: Job, report: ValidationReport, row: int, failed: bool) -> str:
    """A row's status as listed: failed (it has an issue), its outcome, skipped, or not sent."""
    if failed:
        return Status.FAILED.value
    if outcome := job.outcomes.get(row):
        return outcome.status.value
    return Status.SKIPPED.value if row in report.skipped else Status.NOT_SENT.value


def row_items(job: Job, report: ValidationReport, rows: Sequence[int]) -> list[dict[str, Any]]:
    """Some rows as ``rows_page`` pages them, without building the whole table's view."""
    index = report.table.frame.index
    wanted = set(rows)
    issues = reasons_by_row(i for i in report.issues if i.row in wanted)
    page = []
    for row in rows:
        status = _status(job, report, row, row in issues)
        page.append((int(index.get_loc(row)), row, status))  # type: ignore[arg-type]
    return _items(job, report, page, issues)


def _items(
    job: Job,
    report: ValidationReport,
    page: Sequence[tuple[int, int, str]],
    issues: Mapping[int, list[RowIssue]],
) -> list[dict[str, Any]]:
    """The rows at ``page`` (position, row, status) with their values, outcome and issues."""
    edited = collections.defaultdict(set)
    shown = {row for _, row, _ in page}
    for e in job.edits:
        if e.row in shown:
            edited[e.row].add(e.header)
    items = []
    frame = report.table.frame
    unplanned = job.status in (JobStatus.VALIDATING, JobStatus.VALIDATED, JobStatus.PLANNING)
    for i, row, status in page:
        values = [str(v) for v in frame.iloc[i].tolist()]
        row_issues = issues.get(row, [])
        # One outcome per row, as the library's results say it (``run.every_row``).
        outcome = (
            failed_outcome(row, row_issues)
            if row_issues
            else job.outcomes.get(row)
            or skipped_outcome(report, row)
            or (validated_only(row) if unplanned else None)
            or RowOutcome(row=row, status=Status.NOT_SENT, reason="not sent", reason_kind=ReasonKind.NOT_SENT)
        )
        items.append(
            {
                "row": row,
                "values": values,
                "status": status,
                "valid": not row_issues,
                "action": outcome.action.value,
                "reason": outcome.reason,
                "reason_kind": str(outcome.reason_kind),
                "issues": [
                    {"column": x.column, "value": x.value, "message": x.message, "kind": x.kind}
                    | ({"suggestion": hint} if (hint := ops.suggestion(x)) else {})
                    for x in row_issues
                ],
                "did_id": outcome.did_id,
                "routing_id": outcome.routing_id,
                "current": outcome.current,
                "proposed": outcome.proposed,
                "edited": sorted(edited.get(row, ())),
                **dict(zip(("sheet", "excel_row"), report.table.origin(row), strict=True)),
            }
        )
    return items
