"""The web service's only door into the import engine: read, edit, validate, plan, send, write.

Everything the service does with a spreadsheet goes through the few functions here, and each of
them calls the same code the CLI runs (``reader``, ``validate``, ``run``, ``jobs``); nothing in
``importer.web`` reads, validates, plans or sends by itself. A plan or a send is one call of
``run.run_import_async`` with the job's validated (edited) table, its cancel event and the
rate limiter every job on the key shares; the engine takes no signal handlers then (the server
owns SIGTERM) and writes its results workbook in a thread.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from importer.account.limiter import RateLimiter
from importer.engine.apply import Progress
from importer.engine.journal import ConfirmedRow
from importer.engine.plan import Plan
from importer.errors import ImporterError, InputError
from importer.jobs.outputs import write_outputs
from importer.jobs.run import run_import_async
from importer.jobs.session import audit_of, now_text, open_journal
from importer.jobs.validate import every_row
from importer.model import Action, RawTable, RowIssue, RowOutcome, RunInfo, Status, ValidationReport
from importer.options import ImportConfig, InputOptions
from importer.read.reader import read_table
from importer.validate.columns import parse_column_map
from importer.validate.rules import validate_table
from importer.vocab import ReasonKind
from importer.words import Surface

__all__ = [
    "Connection",
    "Edit",
    "JobRun",
    "SendProgress",
    "apply_edits",
    "clean_error",
    "lane_key",
    "load_table",
    "make_limiter",
    "move_header",
    "parse_column_map",
    "row_outcomes",
    "run_job",
    "send_budget",
    "validate",
    "write_results",
]


@dataclass(frozen=True, slots=True)
class Connection:
    """Where and how one key sends: the server's key and base URL (never shown), pacing, transport."""

    api_key: str = field(repr=False)
    base_url: str
    transport: httpx.AsyncBaseTransport | None = field(default=None, repr=False, compare=False)
    requests_per_minute: int = 60
    rate_window: float = 60.0
    concurrency: int = 4
    timeout: float = 30.0
    retry_backoff: float = 1.0
    connection_id: str | None = None


@dataclass(frozen=True, slots=True)
class Edit:
    """One cell corrected through the web service; the uploaded file itself is never changed."""

    row: int
    column: int
    """The input column's position (headers can repeat or be blank)."""
    header: str
    old: str
    new: str
    when: str

    def text(self) -> str:
        """One line for the Summary sheet."""
        return f"row {self.row}, column {self.header!r}: {self.old!r} -> {self.new!r} at {self.when}"


@dataclass(frozen=True, slots=True)
class SendProgress:
    """Progress of a send: writes done of planned, and the outcomes settled since the last report."""

    done: int
    total: int
    succeeded: int
    failed: int
    eta_seconds: float | None
    outcomes: tuple[RowOutcome, ...]


@dataclass(frozen=True, slots=True)
class JobRun:
    """What a plan or send did: one outcome per row it decided, and how it ended."""

    outcomes: Mapping[int, RowOutcome]
    plan_text: str
    stop_reason: str
    exit_code: int
    requests: int = 0
    """Requests the job made (for a plan: the reads a send will make again, before its writes)."""
    writes: int = 0
    """Writes the plan holds."""


def lane_key(connection: Connection) -> str:
    """An opaque name for the key and base URL a job sends through (the key itself never leaves)."""
    return hashlib.sha256(f"{connection.base_url}\n{connection.api_key}".encode()).hexdigest()[:16]


def make_limiter(connection: Connection) -> RateLimiter:
    """One limiter for every job on a key (create it inside the server's event loop)."""
    return RateLimiter(connection.requests_per_minute, window=connection.rate_window)


def load_table(
    path: Path, sheet: str | None, column_map: Mapping[str, str], header_row: int | None = None
) -> RawTable:
    """Read an uploaded file with the CLI's reader (blocking: call it in a thread).

    Args:
        path: The upload.
        sheet: The sheet, or None for the reader's choice.
        column_map: Header text -> field, as ``--map`` gives it.
        header_row: The Excel row of the header when the user chose it (see ``move_header``).

    Raises:
        InputError: the file or sheet cannot be used, or it has no data rows.
    """
    table = read_table(path, sheet=sheet, extra_headers=column_map)
    if header_row is not None and header_row != table.source.header_row:
        table = move_header(table, header_row)
    if table.row_count == 0:
        raise InputError(f"the header is on row {table.source.header_row} but no data rows follow it")
    return table


def move_header(table: RawTable, row: int) -> RawTable:
    """Take a later row of the table as its header: the reader took a title row for it.

    The reader takes the first row when no row names the fields (headers in another language,
    say); then the user points at the real one. Rows above the reader's header are not part of
    the table, so the header can only move down.

    Raises:
        InputError: the row is above the reader's header, blank, or past the end.
    """
    found = table.source.header_row
    if row < found:
        raise InputError(
            f"the header row can only move down from row {found}, where it was found; "
            "rows above it are not read as part of the table"
        )
    if row not in table.frame.index:
        raise InputError(f"row {row} is blank or past the end; choose the row that holds the column names")
    frame = table.frame
    headers = tuple(str(v).strip() for v in frame.loc[row, :])
    return RawTable(
        source=dataclasses.replace(table.source, header_row=row),
        headers=headers,
        frame=frame.loc[frame.index > row],
        row_problems={r: text for r, text in table.row_problems.items() if r > row},
    )


def apply_edits(table: RawTable, edits: Sequence[Edit]) -> RawTable:
    """Return a table with the edited cells (in order, so a later edit of a cell wins)."""
    if not edits:
        return table
    frame = table.frame.copy(deep=False)
    touched = {e.column for e in edits}
    for column in touched:
        frame[column] = frame[column].copy()  # only the edited columns are copied
    for edit in edits:
        frame.at[edit.row, edit.column] = edit.new
    return RawTable(source=table.source, headers=table.headers, frame=frame, row_problems=table.row_problems)


def validate(table: RawTable, column_map: Mapping[str, str], default_region: str | None) -> ValidationReport:
    """Validate every row with the CLI's validator (blocking: call it in a thread).

    Raises:
        InputError: the columns cannot be mapped or the region is unknown.
    """
    return validate_table(table, column_map=column_map, default_region=default_region)


def row_outcomes(report: ValidationReport, outcomes: Mapping[int, RowOutcome]) -> list[RowOutcome]:
    """One outcome per table row in table order: validation failures, then the stage's outcomes."""
    return list(every_row(report, outcomes))


def _audit(connection: Connection, extra: Mapping[str, str]) -> dict[str, str]:
    return {**audit_of(connection, connection.connection_id or ""), **extra}


def write_results(
    report: ValidationReport,
    outcomes: Sequence[RowOutcome],
    issues: Sequence[RowIssue],
    *,
    command: str,
    options: Mapping[str, str],
    audit: Mapping[str, str],
    connection: Connection,
    results: Path,
    failed: Path,
) -> None:
    """Write the results workbook (and the failed-rows file) as the CLI does (blocking)."""
    info = RunInfo(
        command=command,
        started=audit.get("started", ""),
        finished=now_text(),
        options=options,
        audit=_audit(connection, audit),
    )
    write_outputs(report.table, outcomes, issues, info, results, failed, Surface.WEB)


async def run_job(
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
    on_progress: Callable[[SendProgress], None] | None = None,
    audit: Mapping[str, str] = {},
) -> JobRun:
    """Plan (``dry_run``) or send one job's rows with ``run_import_async`` (results written too).

    Resume is the engine's: the same journal and the same upload (sha256) plan the rows an
    earlier run confirmed against the live state and settle the ones a crash left in flight.

    Args:
        connection: The key, base URL and pacing.
        report: The validated (possibly edited) table.
        input_options: How the upload was read (for the Summary sheet).
        dry_run: Plan only: read the live state, send nothing, no journal.
        journal_path: The job's journal (ignored for a dry run).
        results: The results workbook to write.
        failed: The failed-rows file to write when rows failed.
        limiter: The key's limiter, shared by every job on the key.
        cancel: Set it to stop new writes; writes in flight settle first.
        on_progress: Called with the plan's settled outcomes, then after each write.
        audit: Extra Summary lines (who uploaded it, from where, the edits).

    Raises:
        ImporterError: the run could not go on (key rejected, journal in use, API unreachable).
    """
    earlier: Mapping[int, ConfirmedRow] = {}
    if not dry_run and journal_path is not None:  # a resumed job's own rows (a read: off the loop)
        earlier = await asyncio.to_thread(_confirmed, journal_path, report.table.source.sha256)
    plans: list[Plan] = []

    def planned(plan: Plan) -> None:
        plans.append(plan)
        if on_progress is not None:
            settled = tuple(_own_earlier(o, earlier) for o in plan.outcomes)
            on_progress(SendProgress(0, len(plan.writes), 0, 0, None, settled))

    def progress(p: Progress) -> None:
        if on_progress is not None:
            fresh = () if p.outcome is None else (p.outcome,)
            on_progress(SendProgress(p.done, p.total, p.succeeded, p.failed, p.eta_seconds, fresh))

    # Every field of a Connection but its transport is an ImportConfig option of the same name.
    sending = {f.name: getattr(connection, f.name) for f in dataclasses.fields(connection)}
    del sending["transport"]
    config = ImportConfig(
        input=input_options,
        output=results,
        failed_out=failed,
        dry_run=dry_run,
        journal=journal_path,
        command="web",
        **sending,
        audit_extra={k: v for k, v in audit.items() if k != "started"},
        on_plan=planned,
    )
    summary = await run_import_async(
        config,
        transport=connection.transport,
        on_progress=progress,
        cancel=cancel,
        limiter=limiter,
        validated=report,
    )
    invalid = set(report.failed_rows)  # the job shows validation's own outcomes for these
    return JobRun(
        outcomes={o.row: _own_earlier(o, earlier) for o in summary.outcomes if o.row not in invalid},
        plan_text=plans[0].text() if plans else "",
        stop_reason=summary.stopped,
        exit_code=int(summary.exit_code),
        requests=summary.requests,
        writes=len(plans[0].writes) if plans else 0,
    )


def send_budget(connection: Connection, run: JobRun) -> dict[str, float | int]:
    """What sending a plan will cost: its reads again, its writes, one read back, and the time
    the key's rate limit alone needs for them (a fresh window; other jobs on the key add to it)."""
    reads = run.requests + 1
    seconds = make_limiter(connection).eta(reads + run.writes)
    return {"reads": reads, "writes": run.writes, "seconds": round(seconds, 1)}


def _confirmed(journal_path: Path, sha256: str) -> Mapping[int, ConfirmedRow]:
    """The rows this job's journal confirmed before this send (none for a new job)."""
    if not journal_path.exists():
        return {}
    journal = open_journal(journal_path, claim=False)
    try:
        return journal.confirmed(sha256)
    finally:
        journal.close()


def _own_earlier(outcome: RowOutcome, earlier: Mapping[int, ConfirmedRow]) -> RowOutcome:
    """Show a row this job confirmed before a restart as what it was, not as unchanged.

    A job's journal is its own, so a row "done in an earlier run" was done by this very job
    before the server stopped (the engine checked it is still as asked): the user should see
    it succeeded (or unchanged), with when.
    """
    done = earlier.get(outcome.row)
    if outcome.reason_kind != ReasonKind.DONE_EARLIER or done is None:
        return outcome
    status = Status(done.status)
    return dataclasses.replace(
        outcome,
        status=status,
        action=Action(done.action) if done.action in Action._value2member_map_ else Action.NONE,
        reason=f"{status.value} at {done.when}, before the server restarted",
        reason_kind="done_before_restart",
    )


def clean_error(exc: BaseException) -> str:
    """One line for a job's ``error``: the engine's own message, never a traceback."""
    if isinstance(exc, ImporterError):
        return str(exc)
    if isinstance(exc, httpx.HTTPError):
        return f"the API could not be reached ({type(exc).__name__})"
    first = str(exc).splitlines()[0] if str(exc) else ""
    return f"unexpected {type(exc).__name__}: {first}"
