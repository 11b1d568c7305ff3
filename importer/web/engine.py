"""The web service's only door into the import engine: read, edit, validate, plan, send, write.

Everything the service does with a spreadsheet goes through the few functions here, and each of
them calls the same code the CLI runs (``reader``, ``validate``, ``run``, ``pipeline``); nothing in
``importer.web`` reads, validates, plans or sends by itself. The sending half is written against
today's ``run.py`` internals (``_Runner``, ``_prepare``, ``_write_and_summarise``) because the web
service needs three things ``run_import`` does not take yet: an already validated (edited) table,
a cancel event, and one rate limiter shared by every job on a key. When
``run_import_async(config, *, transport, on_progress, cancel, limiter)`` lands, ``run_job`` becomes
a call to it (plus a way to hand it the edited table), and nothing else in the package changes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import getpass
import hashlib
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from importer import run as run_module
from importer.api import VoiceLinkClient
from importer.errors import ImporterError, InputError
from importer.journal import Journal
from importer.limiter import RateLimiter
from importer.live import LiveRouting
from importer.model import Action, RawTable, RowIssue, RowOutcome, RunInfo, Status, ValidationReport
from importer.pipeline import (
    InputOptions,
    collector_paused,
    failed_outcome,
    now_text,
    reasons_by_row,
    write_outputs,
)
from importer.reader import read_table
from importer.results import write_failed_rows
from importer.validate import parse_column_map, validate_table

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
    "write_failed",
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
    with collector_paused():
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
    with collector_paused():
        return validate_table(table, column_map=column_map, default_region=default_region)


def row_outcomes(report: ValidationReport, outcomes: Mapping[int, RowOutcome]) -> list[RowOutcome]:
    """One outcome per table row in table order: validation failures, then the stage's outcomes."""
    grouped = reasons_by_row(report.issues)
    out = []
    for row in report.table.frame.index.tolist():
        issues = grouped.get(row)
        if issues:
            out.append(failed_outcome(row, issues))
        else:
            out.append(
                outcomes.get(row)
                or RowOutcome(row=row, status=Status.NOT_SENT, reason="not sent", reason_kind="not_sent")
            )
    return out


def _audit(connection: Connection, extra: Mapping[str, str]) -> dict[str, str]:
    try:
        user = getpass.getuser()
    except Exception:  # getpass raises various errors when no user name can be found
        user = "(unknown)"
    return {
        "os_user": user,
        "host": socket.gethostname(),
        "api_key": run_module.key_fingerprint(connection.api_key),
        "base_url": connection.base_url,
        **extra,
    }


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
    write_outputs(report.table, outcomes, issues, info, results, failed)


def write_failed(report: ValidationReport, rows: Sequence[int], path: Path) -> None:
    """Write the failed-rows file, in the input's own columns (blocking)."""
    write_failed_rows(path, report.table, rows)


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
    """Plan (``dry_run``) or send one job's rows with the engine and write its results workbook.

    Resume is the engine's: the same journal and the same upload (sha256) skip rows an earlier
    run confirmed and settle the ones a crash left in flight against the live state.

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
        on_progress: Called after each write with the outcomes settled since the last call.
        audit: Extra Summary lines (who uploaded it, from where, the edits).

    Raises:
        ImporterError: the run could not go on (key rejected, journal in use, API unreachable).
    """
    started = now_text()
    config = run_module.ImportConfig(
        input=input_options,
        api_key=connection.api_key,
        base_url=connection.base_url,
        output=results,
        failed_out=failed,
        connection_id=connection.connection_id,
        requests_per_minute=connection.requests_per_minute,
        concurrency=connection.concurrency,
        timeout=connection.timeout,
        dry_run=dry_run,
        journal=journal_path,
        retry_backoff=connection.retry_backoff,
        rate_window=connection.rate_window,
        command="web",
    )
    journal = None
    if not dry_run and journal_path is not None:
        journal = Journal.open(journal_path)
        try:
            journal.claim()
        except InputError:
            journal.close()
            raise
    client = VoiceLinkClient(
        connection.base_url,
        connection.api_key,
        limiter=limiter,
        transport=connection.transport,
        timeout=connection.timeout,
        connection_id=connection.connection_id,
        max_connections=max(1, min(connection.concurrency, 16)),
        backoff=connection.retry_backoff,
    )
    runner = run_module._Runner(config, report, journal, client, limiter, None)
    reported = 0

    def progress(p: run_module.Progress) -> None:
        nonlocal reported
        # Outcomes are kept in insertion order: the ones after `reported` are new.
        settled = list(runner.outcomes.values())
        fresh = tuple(settled[reported:])
        reported = len(settled)
        if on_progress is not None:
            on_progress(SendProgress(p.done, p.total, p.succeeded, p.failed, p.eta_seconds, fresh))

    runner.on_progress = progress

    async def watch_cancel() -> None:
        await cancel.wait()
        runner._stop("cancelled", 130)

    watcher = asyncio.create_task(watch_cancel())
    try:
        try:
            prepared = await run_module._prepare(runner)
            runner.audit.update({k: v for k, v in audit.items() if k != "started"})
            if journal is not None:
                _own_earlier_rows(runner, journal, report.table.source.sha256)
            if prepared is not None and not cancel.is_set():
                writes, _counts, inventory = prepared
                live = LiveRouting(client, inventory, connection.retry_backoff)
                await runner.apply(writes, live, cancel)
                if not cancel.is_set() and runner.exit_code != 3:
                    await runner.collect_routing_ids()
            elif prepared is not None:
                runner._stop("cancelled", 130)
        finally:
            watcher.cancel()
            await client.aclose()
        progress(
            run_module.Progress(
                runner.apply_done, runner.apply_total, runner.apply_succeeded, runner.apply_failed, 0.0
            )
        )
        # Writing the workbook reads the whole table: keep it off the event loop.
        await asyncio.to_thread(
            run_module._write_and_summarise,
            config,
            report,
            runner,
            journal,
            results,
            failed,
            started,
            runner.plan_text,
        )
        journal = None  # closed by _write_and_summarise
    finally:
        if journal is not None:
            journal.close()
    return JobRun(
        outcomes=dict(runner.outcomes),
        plan_text=runner.plan_text,
        stop_reason=runner.stop_reason,
        exit_code=runner.exit_code,
        requests=client.request_count,
    )


def send_budget(connection: Connection, run: JobRun) -> dict[str, float | int]:
    """What sending a plan will cost: its reads again, its writes, one read back, and the time
    the key's rate limit alone needs for them (a fresh window; other jobs on the key add to it)."""
    writes = sum(
        1
        for o in run.outcomes.values()
        if o.status is Status.NOT_SENT and o.action in (Action.CREATE, Action.UPDATE)
    )
    reads = run.requests + 1
    seconds = make_limiter(connection).eta(reads + writes)
    return {"reads": reads, "writes": writes, "seconds": round(seconds, 1)}


def _own_earlier_rows(runner: run_module._Runner, journal: Journal, sha256: str) -> None:
    """Show rows this job confirmed before a restart as what they were, not as skipped.

    A job's journal is its own, so a row "done in an earlier run" was done by this very job
    before the server stopped: the user should see it succeeded (or unchanged), with when.
    """
    confirmed = journal.confirmed(sha256)
    for row, outcome in list(runner.outcomes.items()):
        earlier = confirmed.get(row)
        if outcome.reason_kind != "done_earlier" or earlier is None:
            continue
        status = Status(earlier.status)
        runner.outcomes[row] = RowOutcome(
            row=row,
            status=status,
            action=Action(earlier.action) if earlier.action in Action._value2member_map_ else Action.NONE,
            reason=f"{status.value} at {earlier.when}, before the server restarted",
            reason_kind="done_before_restart",
            did_id=earlier.did_id,
            routing_id=earlier.routing_id,
        )


def clean_error(exc: BaseException) -> str:
    """One line for a job's ``error``: the engine's own message, never a traceback."""
    if isinstance(exc, ImporterError):
        return str(exc)
    if isinstance(exc, httpx.HTTPError):
        return f"the API could not be reached ({type(exc).__name__})"
    first = str(exc).splitlines()[0] if str(exc) else ""
    return f"unexpected {type(exc).__name__}: {first}"
