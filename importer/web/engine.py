"""The web service's only door into the import engine: read, edit, validate, plan, send, write.

Everything the service does with a spreadsheet goes through the few functions here, and each of
them calls the same code the CLI runs (``read``, ``validate``, ``jobs``); nothing in
``importer.web`` reads, validates, plans or sends by itself. A plan or a send is one call of
``run.run_import_async`` with the job's validated (edited) table, its cancel event and the
rate limiter every job on the key shares; the engine takes no signal handlers then (the server
owns SIGTERM) and writes its results workbook in a thread.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from importer.account.limiter import RateLimiter
from importer.engine.apply import Progress
from importer.engine.plan import Plan, writes_fingerprint
from importer.engine.records import ConfirmedRow
from importer.errors import ImporterError
from importer.jobs import validate as validate_job
from importer.jobs.outputs import write_outputs
from importer.jobs.run import run_import_async
from importer.jobs.session import audit_of, now_text, open_journal
from importer.jobs.summary import input_notes as summary_input_notes
from importer.jobs.validate import VALIDATE_LABELS, CellEdit, every_row, validation_outcomes
from importer.model import MACHINE_FACTS, Action, RowOutcome, RunFacts, RunInfo, Status, ValidationReport
from importer.options import ConnectOptions, ImportConfig, InputOptions
from importer.validate.columns import parse_column_map
from importer.vocab import OnExisting, ReasonKind
from importer.words import Surface

__all__ = [
    "Connection",
    "Edit",
    "JobRun",
    "SendProgress",
    "clean_error",
    "input_notes",
    "lane_key",
    "load_and_validate",
    "make_limiter",
    "parse_column_map",
    "row_outcomes",
    "run_job",
    "send_budget",
    "write_results",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class Connection(ConnectOptions):
    """The server's key, base URL and pacing: the library's ``ConnectOptions`` (the same options
    the CLI's ``run`` takes), plus the transport every job on it sends through (tests: the sandbox)."""

    transport: httpx.AsyncBaseTransport | None = field(default=None, repr=False, compare=False)


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
    """What a plan or send did: one outcome per row it decided, the plan it made, how it ended."""

    outcomes: Mapping[int, RowOutcome]
    plan: Plan | None
    """The plan the run made against the live state (None: it stopped before planning)."""
    stop_reason: str
    exit_code: int
    requests: int = 0
    """Requests the job made (for a plan: the reads a send will make again, before its writes)."""
    notes: tuple[str, ...] = ()
    """The run's notes (``RunSummary.notes``): hidden rows, encoding, skipped API items, ..."""
    refused: bool = False
    """The plan made at send time had other writes than the plan shown: nothing was sent."""


def lane_key(connection: Connection) -> str:
    """An opaque name for the key and base URL a job sends through (the key itself never leaves)."""
    return hashlib.sha256(f"{connection.base_url}\n{connection.api_key}".encode()).hexdigest()[:16]


def make_limiter(connection: Connection) -> RateLimiter:
    """One limiter for every job on a key (create it inside the server's event loop)."""
    return RateLimiter(connection.requests_per_minute, window=connection.rate_window)


def load_and_validate(options: InputOptions, edits: Sequence[Edit] = ()) -> ValidationReport:
    """Read and validate an upload with the library's ``load_and_validate`` (blocking).

    Every option of ``InputOptions`` (sheets, encoding, ignored columns, hidden rows, the header
    row chosen on the page) counts for a web job as for the CLI; the job's corrections are passed
    as the library's ``CellEdit``s.

    Raises:
        InputError: the file or sheet cannot be used, or it has no data rows.
    """
    return validate_job.load_and_validate(options, [CellEdit(e.row, e.column, e.new) for e in edits])


def input_notes(report: ValidationReport, options: InputOptions) -> list[str]:
    """How the upload was read, where people may not expect it: the notes ``validate`` prints."""
    return [
        *summary_input_notes(report.table, options.skip_hidden_rows, Surface.WEB),
        *report.notes_for(Surface.WEB),
    ]


def row_outcomes(report: ValidationReport, outcomes: Mapping[int, RowOutcome]) -> list[RowOutcome]:
    """One outcome per table row in table order: validation failures, then the stage's outcomes."""
    return list(every_row(report, outcomes))


def _audit(connection: Connection, extra: Mapping[str, str]) -> dict[str, str]:
    return {**audit_of(connection, connection.connection_id or ""), **extra}


def write_results(
    report: ValidationReport,
    outcomes: Sequence[RowOutcome] | None,
    *,
    command: str,
    options: Mapping[str, str],
    audit: Mapping[str, str],
    connection: Connection,
    results: Path,
    failed: Path,
    facts: RunFacts = MACHINE_FACTS,
) -> None:
    """Write the results workbook (and the failed-rows file) as the CLI does (blocking).

    ``outcomes`` None: the table is only validated; its workbook is the CLI's ``validate``
    workbook (valid rows labelled "valid"). ``facts``: where the job ran, as the Summary says it.
    """
    validated_only = outcomes is None
    info = RunInfo(
        command=command,
        started=audit.get("started", ""),
        finished=now_text(),
        options=options,
        audit=_audit(connection, audit),
        status_labels=VALIDATE_LABELS if validated_only else {},
        notes=report.notes if validated_only else (),
        facts=facts,
    )
    rows = validation_outcomes(report) if outcomes is None else outcomes
    write_outputs(report.table, rows, report.issues, info, results, failed, Surface.WEB)


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
    on_existing: OnExisting = OnExisting.UPDATE,
    max_error_rate: float | None = None,
    shown_writes: str | None = None,
    on_progress: Callable[[SendProgress], None] | None = None,
    audit: Mapping[str, str] = {},
    facts: RunFacts = MACHINE_FACTS,
) -> JobRun:
    """Plan (``dry_run``) or send one job's rows with ``run_import_async`` (results written too).

    Resume is the engine's: the same journal and the same upload (sha256) plan the rows an
    earlier run confirmed against the live state and settle the ones a crash left in flight.

    Args:
        connection: The key, base URL and pacing.
        report: The validated (possibly edited) table.
        input_options: How the upload was read (for the Summary sheet and the notes).
        dry_run: Plan only: read the live state, send nothing, no journal.
        journal_path: The job's journal (ignored for a dry run).
        results: The results workbook to write.
        failed: The failed-rows file to write when rows failed.
        limiter: The key's limiter, shared by every job on the key.
        cancel: Set it to stop new writes; writes in flight settle first.
        on_existing: What a row whose DID has other routing does (the job's choice).
        max_error_rate: Stop when more than this share of writes failed (None: never).
        shown_writes: ``writes_fingerprint`` of the plan the user confirmed: the engine's
            ``confirm`` accepts only a plan with these writes (the account changed otherwise:
            nothing is sent, ``JobRun.refused``). None: no check (a resumed send).
        on_progress: Called with the plan's settled outcomes, then after each write.
        audit: Extra Summary lines (who uploaded it, from where, the edits).
        facts: Where the job ran, as the Summary sheet says it (the service's, not its machine's).

    Raises:
        ImporterError: the run could not go on (key rejected, journal in use, API unreachable).
    """
    earlier: Mapping[int, ConfirmedRow] = {}
    if not dry_run and journal_path is not None:  # a resumed job's own rows (a read: off the loop)
        earlier = await asyncio.to_thread(_confirmed, journal_path, report.table.source.sha256)
    plans: list[Plan] = []
    refused: list[Plan] = []

    def planned(plan: Plan) -> None:
        plans.append(plan)
        if on_progress is not None:
            settled = tuple(_own_earlier(o, earlier) for o in plan.outcomes)
            on_progress(SendProgress(0, len(plan.writes), 0, 0, None, settled))

    def confirm(plan: Plan) -> bool:
        if shown_writes is None or writes_fingerprint(plan) == shown_writes:
            return True
        refused.append(plan)
        return False

    def progress(p: Progress) -> None:
        if on_progress is not None:
            fresh = () if p.outcome is None else (p.outcome,)
            on_progress(SendProgress(p.done, p.total, p.succeeded, p.failed, p.eta_seconds, fresh))

    config = ImportConfig.using(
        connection,
        input=input_options,
        output=results,
        failed_out=failed,
        dry_run=dry_run,
        journal=journal_path,
        command="web",
        on_existing=on_existing,
        max_error_rate=max_error_rate,
        audit_extra={k: v for k, v in audit.items() if k != "started"},
        on_plan=planned,
        confirm=confirm,
        surface=Surface.WEB,
        facts=facts,
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
        plan=plans[0] if plans else None,
        stop_reason=summary.stopped,
        exit_code=int(summary.exit_code),
        requests=summary.requests,
        notes=tuple(summary.notes),
        refused=bool(refused),
    )


def send_budget(connection: Connection, plan: Plan, requests: int) -> dict[str, float | int]:
    """What sending a plan will cost: its reads again, its writes, one read back, and their time
    at the key's rate, worked out as the CLI's plan and Summary say it (``SendOptions.estimate``)."""
    reads = requests + 1
    writes = len(plan.writes)
    per_minute = connection.requests_per_minute * 60 / connection.rate_window
    return {"reads": reads, "writes": writes, "seconds": round(writes * 60 / per_minute, 1)}


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
    return outcome._replace(
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
