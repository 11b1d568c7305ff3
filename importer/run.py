"""Import for real: read -> validate -> resolve -> plan -> (confirm) -> apply -> results, resumable.

``run_import`` (or ``await run_import_async``) is the whole job in one call; the stages are
the methods of ``_ImportJob`` in the order they run. Reads happen once (connections, every page
of DIDs, the bots, the existing routing: ``live.read_inventory``); ``plan.plan_import`` turns
every row into a write or a settled outcome; ``apply.apply_plan`` sends the writes.

Guarantees (kept by the engine in ``apply.py``): never a duplicate, never a lost row, within
the rate limit. Resume: rows an earlier run of the same file (same sha256) confirmed are
skipped; rows a crash left in flight are planned against the live state like any other, so
a write that had landed shows as done and one that had not is sent once.
"""

from __future__ import annotations

import asyncio
import collections
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from .apply import (
    Applied,
    ConnectOptions,
    Job,
    ProgressCallback,
    Session,
    apply_plan,
    drive,
    drive_async,
    merged,
    open_session,
    skipped_by_parser,
    stop_on_signals,
)
from .errors import InputError
from .journal import Journal
from .limiter import RateLimiter
from .live import DEFAULT_BASE_URL, LiveRouting
from .model import RowOutcome, RunInfo, Status, ValidationReport
from .pipeline import (
    InputOptions,
    OutcomeTally,
    RunSummary,
    as_path,
    failed_outcome,
    load_and_validate,
    now_text,
    output_paths,
    reasons_by_row,
    top_reasons,
    write_outputs,
)
from .plan import History, Plan, plan_import
from .retry import MAX_ATTEMPTS
from .vocab import ExitCode, OnExisting, ReasonKind

__all__ = [
    "DEFAULT_BASE_URL",
    "MAX_WRITE_ATTEMPTS",
    "ImportConfig",
    "default_journal_path",
    "open_journal",
    "run_import",
    "run_import_async",
]

MAX_WRITE_ATTEMPTS = MAX_ATTEMPTS


@dataclass(frozen=True, slots=True, kw_only=True)
class ImportConfig(ConnectOptions):
    """Everything a run needs; the CLI builds it from flags and the environment."""

    input: InputOptions
    output: Path | None = None
    failed_out: Path | None = None
    on_existing: OnExisting = OnExisting.UPDATE
    confirm: Callable[[Plan], bool] | None = None
    """Asked with the plan before any write; False sends nothing."""
    command: str = "run"

    def __post_init__(self) -> None:
        ConnectOptions.__post_init__(self)
        for name in ("output", "failed_out"):
            as_path(self, name)
        if self.on_existing not in OnExisting._value2member_map_:
            raise InputError(f"--on-existing must be one of {', '.join(OnExisting)}")
        object.__setattr__(self, "on_existing", OnExisting(self.on_existing))

    def describe(self) -> dict[str, str]:
        """The options as text for the Summary sheet and the journal (never the key)."""
        return {
            **self.input.describe(),
            **ConnectOptions.describe(self),
            "on_existing": self.on_existing.value,
        }


def default_journal_path(results: Path, input_path: Path) -> Path:
    """The journal sits beside the results: <stem>.journal.sqlite."""
    return results.with_name(input_path.stem + ".journal.sqlite")


def open_journal(path: Path, *, claim: bool) -> Journal:
    """Open a journal (and claim it for this process's writes).

    Raises:
        InputError: it cannot be opened, or another live run holds it.
    """
    try:
        journal = Journal.open(path)
    except (OSError, ValueError, sqlite3.Error) as exc:  # sqlite3.DatabaseError: not a journal
        raise InputError(f"cannot open the journal {path}: {exc}") from None
    if claim:
        try:
            journal.claim()
        except InputError:
            journal.close()
            raise
    return journal


def run_import(
    config: ImportConfig,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    on_progress: ProgressCallback | None = None,
) -> RunSummary:
    """Import a spreadsheet: read, validate, resolve, plan, confirm, apply, write the results.

    The confirmation (``config.confirm``) is asked while no event loop runs, so Ctrl-C at the
    prompt is a plain KeyboardInterrupt (nothing sent); during apply Ctrl-C or SIGTERM stops
    new writes and settles the ones in flight (exit 130).

    Args:
        config: the run's options.
        transport: an httpx transport instead of the network (the sandbox in-process, tests).
        on_progress: called before the first write and after each one.

    Returns:
        The summary; ``exit_code`` 0 no row failed, 1 some failed, 3 aborted, 130 interrupted.

    Raises:
        InputError: unusable file or option (exit 2); also when called inside a running event
            loop (a notebook): ``await run_import_async(...)`` there.
        AuthError: the key was rejected before anything was sent (exit 3).
    """
    return drive(_ImportJob(config, transport, on_progress, None, None), "run_import_async")


async def run_import_async(
    config: ImportConfig,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    on_progress: ProgressCallback | None = None,
    cancel: asyncio.Event | None = None,
    limiter: RateLimiter | None = None,
) -> RunSummary:
    """``run_import`` for callers inside an event loop (a notebook, a web service).

    Args:
        config: the run's options.
        transport: an httpx transport instead of the network.
        on_progress: called before the first write and after each one.
        cancel: set it from any task to stop sending; writes in flight settle (exit 130).
        limiter: a rate limiter shared with other jobs on the same API key; None: the run's own.

    Returns, Raises: as ``run_import``.
    """
    return await drive_async(_ImportJob(config, transport, on_progress, cancel, limiter))


class _ImportJob(Job[RunSummary]):
    """One run's stages, in order: prepare (read -> plan), approve, apply, report."""

    def __init__(
        self,
        config: ImportConfig,
        transport: httpx.AsyncBaseTransport | None,
        on_progress: ProgressCallback | None,
        cancel: asyncio.Event | None,
        limiter: RateLimiter | None,
    ) -> None:
        self.config, self.transport, self.on_progress = config, transport, on_progress
        self.cancel, self.limiter = cancel, limiter
        self.started = now_text()
        self.journal: Journal | None = None
        self.session: Session | None = None
        self.report_: ValidationReport | None = None
        self.plan: Plan | None = None
        self.run_id = 0
        self.applied = Applied(())

    async def prepare(self) -> None:
        """Check the options, read and validate the file, read the live state, plan."""
        config = self.config
        config.check()
        self.results, self.failed_path = output_paths(config.input.path, config.output, config.failed_out)
        report = self.report_ = load_and_validate(config.input)
        if not config.dry_run:
            path = config.journal or default_journal_path(self.results, config.input.path)
            self.journal = open_journal(path, claim=True)
        session = self.session = await open_session(config, self.transport, self.limiter)
        sha = report.table.source.sha256
        history = (
            History(self.journal.confirmed(sha), self.journal.in_flight(sha)) if self.journal else History()
        )
        self.plan = plan_import(
            report.valid, session.inventory, session.inventory.connection, history, config.on_existing
        )

    def approve(self) -> bool:
        """Ask ``config.confirm`` (when there is something to send)."""
        assert self.plan is not None
        if self.config.dry_run or not self.plan.writes or self.config.confirm is None:
            return True
        return self.config.confirm(self.plan)

    async def apply(self, approved: bool) -> None:
        """Send the plan (journalled as a new run), or record why nothing was sent."""
        plan, session, config = self.plan, self.session, self.config
        assert plan is not None and session is not None and self.report_ is not None
        if config.dry_run:
            self.applied = Applied(plan.dry_run())
            return
        if not approved:
            outcomes = plan.not_sent("not sent: not confirmed", ReasonKind.NOT_CONFIRMED)
            self.applied = Applied(plan.outcomes + outcomes, "not confirmed at the prompt", ExitCode.ABORTED)
            return
        assert self.journal is not None
        self.run_id = self.journal.start_run(
            input_sha256=self.report_.table.source.sha256,
            input_name=config.input.path.name,
            command=config.command,
            audit=session.audit,
            options=config.describe(),
        )
        cancel = self.cancel or asyncio.Event()
        with stop_on_signals(cancel):
            applied = await apply_plan(
                plan,
                client=session.client,
                live=LiveRouting(session.client, session.inventory, config.retry_backoff),
                journal=self.journal,
                run_id=self.run_id,
                options=config,
                cancel=cancel,
                on_progress=self.on_progress,
                limiter=session.limiter,
            )
        self.applied = merged(plan, applied)

    async def disconnect(self) -> None:
        if self.session is not None:
            await self.session.client.aclose()

    def report(self) -> RunSummary:
        """Write the results workbook (every input row) and close the journal's run."""
        config, report, applied = self.config, self.report_, self.applied
        assert report is not None and self.session is not None and self.plan is not None
        by_row = {o.row: o for o in applied.outcomes}
        outcomes = tuple(_every_row(report, by_row))
        parser_notes = skipped_by_parser(self.session.client)
        info = RunInfo(
            command=config.command + (" (dry run)" if config.dry_run else ""),
            started=self.started,
            finished=now_text(),
            options=config.describe(),
            audit={
                **self.session.audit,
                "plan": self.plan.text(),
                **({"stopped": applied.stop_reason} if applied.stop_reason else {}),
                **(
                    {"journal": str(self.journal.path.resolve()), "journal run": str(self.run_id)}
                    if self.journal is not None and self.run_id
                    else {}
                ),
                **parser_notes.audit,
            },
        )
        tally: OutcomeTally | None = None
        try:
            tally = write_outputs(report.table, outcomes, report.issues, info, self.results, self.failed_path)
        finally:
            if self.journal is not None and self.run_id:
                # The workbook's counts (every input row); if writing it failed, the API stage's.
                counted = (
                    tally.counts if tally is not None else collections.Counter(o.status for o in outcomes)
                )
                self.journal.finish_run(self.run_id, {s.value: counted.get(s, 0) for s in Status})
        failed_kinds = [o.reason_kind for o in applied.outcomes if o.status is Status.FAILED]
        notes = [*applied.notes, *parser_notes.notes]
        if applied.stop_reason:
            notes.insert(0, f"stopped: {applied.stop_reason}")
        if config.dry_run:
            notes.insert(0, f"dry run: nothing was sent. Plan: {self.plan.text()}")
        return RunSummary(
            rows=report.table.row_count,
            counts=dict(tally.counts),
            top_reasons=top_reasons(report.issues, failed_kinds),
            results_path=self.results,
            failed_path=self.failed_path if tally.failed_rows else None,
            exit_code=applied.exit_code or (ExitCode.ROWS_FAILED if tally.failed_rows else ExitCode.OK),
            notes=notes,
            outcomes=outcomes,
        )

    def close(self) -> None:
        if self.journal is not None:
            self.journal.close()


def _every_row(report: ValidationReport, by_row: dict[int, RowOutcome]) -> Iterator[RowOutcome]:
    """One outcome per input row, in input order: validation's, or the plan's and the engine's."""
    grouped = reasons_by_row(report.issues)
    for row in report.table.frame.index.tolist():
        issues = grouped.get(row)
        if issues:
            yield failed_outcome(row, issues)
        else:
            yield by_row.get(row) or RowOutcome(
                row=row, status=Status.NOT_SENT, reason="not sent", reason_kind=ReasonKind.NOT_SENT
            )
