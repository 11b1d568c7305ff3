"""Import for real: read -> validate -> resolve -> plan -> (confirm) -> apply -> results, resumable.

``run_import`` (or ``await run_import_async``) is the whole job in one call; the stages are
the methods of ``_ImportJob`` in the order they run. The live state is read once, in as few
reads as the rows allow (connections and one sync, and only what sync leaves unresolved:
``live.read_inventory``); ``plan.plan_import`` turns every row into a write or a settled
outcome, its cost (reads done, writes, time) shown before asking; ``apply.apply_plan`` sends
the writes, and one more sync reads the ids of created routing back, only if there are some.

Guarantees (kept by the engine in ``apply.py``): never a duplicate, never a lost row, within
the rate limit. Resume: every row is planned against the live state, whatever earlier runs of
the same file (same sha256) did: a row they confirmed is unchanged if still as asked and updated
back ("changed since run N") if not; a write a crash left in flight shows as done if it had
landed and is sent once if not.
"""

from __future__ import annotations

import asyncio
import collections
import sqlite3
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from importer.account.limiter import RateLimiter
from importer.account.live import DEFAULT_BASE_URL
from importer.account.retry import MAX_ATTEMPTS
from importer.engine.apply import (
    ConnectOptions,
    Job,
    ProgressCallback,
    Session,
    drive,
    drive_async,
)
from importer.engine.journal import Journal
from importer.engine.plan import History, plan_import
from importer.errors import InputError
from importer.jobs.pipeline import (
    InputOptions,
    OutcomeTally,
    RunSummary,
    as_path,
    check_writable,
    failed_outcome,
    input_notes,
    load_and_validate,
    output_paths,
    reasons_by_row,
    save_with_fallback,
    skipped_outcome,
    top_reasons,
    write_outputs,
)
from importer.model import RowOutcome, Status, ValidationReport
from importer.output.results import failed_path_for
from importer.vocab import ExitCode, OnExisting, ReasonKind

__all__ = [
    "DEFAULT_BASE_URL",
    "MAX_WRITE_ATTEMPTS",
    "ImportConfig",
    "default_journal_path",
    "every_row",
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
    overwrite: bool = False
    """Overwrite the default output files of an earlier run instead of writing timestamped ones."""
    on_existing: OnExisting = OnExisting.UPDATE
    command: str = "run"
    audit_extra: Mapping[str, str] = field(default_factory=dict)
    """More lines for the Summary sheet's audit (a web service: who uploaded it, from where)."""

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
    validated: ValidationReport | None = None,
) -> RunSummary:
    """Import a spreadsheet: read, validate, resolve, plan, confirm, apply, write the results.

    The confirmation (``config.confirm``) is asked while no event loop runs, so Ctrl-C at the
    prompt is a plain KeyboardInterrupt (nothing sent); during apply Ctrl-C or SIGTERM stops
    new writes and settles the ones in flight (exit 130).

    Args:
        config: the run's options.
        transport: an httpx transport instead of the network (the sandbox in-process, tests).
        on_progress: called before the first write and after each one.
        validated: ``config.input`` already read and validated (with cells corrected, say);
            None: read and validate it here. The journal keys earlier runs by the file's own
            sha256 (``table.source``), so corrections do not stop a resume.

    Returns:
        The summary; ``exit_code`` 0 no row failed, 1 some failed, 3 aborted, 130 interrupted.

    Raises:
        InputError: unusable file or option (exit 2); also when called inside a running event
            loop (a notebook): ``await run_import_async(...)`` there.
        AuthError: the key was rejected before anything was sent (exit 3).
    """
    return drive(_ImportJob(config, transport, on_progress, None, None, validated), "run_import_async")


async def run_import_async(
    config: ImportConfig,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    on_progress: ProgressCallback | None = None,
    cancel: asyncio.Event | None = None,
    limiter: RateLimiter | None = None,
    validated: ValidationReport | None = None,
) -> RunSummary:
    """``run_import`` for callers inside an event loop (a notebook, a web service).

    Args:
        config: the run's options.
        transport: an httpx transport instead of the network.
        on_progress: called before the first write and after each one.
        cancel: set it from any task to stop sending; writes in flight settle (exit 130). A
            caller that passes one owns the process's signals: none are caught here.
        limiter: a rate limiter shared with other jobs on the same API key; None: the run's own.
        validated: as ``run_import``.

    Returns, Raises: as ``run_import``.
    """
    return await drive_async(_ImportJob(config, transport, on_progress, cancel, limiter, validated))


class _ImportJob(Job[ImportConfig, RunSummary]):
    """One run's stages, in order: prepare (read -> validate -> live state -> plan), then the
    engine's approve and apply (``apply.Job``), then report (the results workbook)."""

    def __init__(
        self,
        config: ImportConfig,
        transport: httpx.AsyncBaseTransport | None,
        on_progress: ProgressCallback | None,
        cancel: asyncio.Event | None,
        limiter: RateLimiter | None,
        validated: ValidationReport | None,
    ) -> None:
        super().__init__(config, transport, on_progress, cancel, limiter)
        self.validated = validated

    async def prepare(self) -> None:
        """Check the options, read and validate the file, open the journal, read the live state, plan."""
        config = self.config
        config.check()
        self.results, self.failed_path = output_paths(
            config.input.path, config.output, config.failed_out, overwrite=config.overwrite
        )
        check_writable(self.results, self.failed_path)
        self.validation = self.validated or load_and_validate(config.input)
        if not config.dry_run:
            path = config.journal or default_journal_path(self.results, config.input.path)
            self.journal = open_journal(path, claim=True)
        session = await self.open_session(self.validation.valid)
        plan = plan_import(
            self.validation.valid,
            session.inventory,
            session.inventory.connection,
            self.history(self.validation.table.source.sha256),
            config.on_existing,
        )
        self.plan = self.priced(plan)
        if config.on_plan is not None:
            config.on_plan(self.plan)

    def history(self, sha256: str) -> History:
        """What earlier runs of this input did (nothing for a dry run: it opens no journal)."""
        if self.journal is None:
            return History()
        return History(self.journal.confirmed(sha256), self.journal.in_flight(sha256))

    def start_run(self, journal: Journal, session: Session) -> int:
        return journal.start_run(
            input_sha256=self.validation.table.source.sha256,
            input_name=self.config.input.path.name,
            command=self.config.command,
            audit=session.audit,
            options=self.config.describe(),
        )

    def report(self) -> RunSummary:
        """Write the results workbook (every input row) and close the journal's run."""
        config, report, applied = self.config, self.validation, self.applied
        by_row = {o.row: o for o in applied.outcomes}
        outcomes = tuple(every_row(report, by_row))
        info = self.run_info(config.command, {**self.audit(), **config.audit_extra})

        def save(results: Path) -> OutcomeTally:
            if results != self.results:  # a fallback: its failed-rows file goes beside it
                self.failed_path = failed_path_for(results)
            return write_outputs(report.table, outcomes, report.issues, info, results, self.failed_path)

        try:
            tally, self.results, saved = save_with_fallback(save, self.results)
        finally:
            self.finish_run(collections.Counter(o.status for o in outcomes))  # every input row's
        failed_kinds = [o.reason_kind for o in applied.outcomes if o.status is Status.FAILED]
        return RunSummary(
            rows=report.table.row_count,
            counts=dict(tally.counts),
            top_reasons=top_reasons(report.issues, failed_kinds),
            results_path=self.results,
            failed_path=self.failed_path if tally.failed_rows else None,
            exit_code=applied.exit_code or (ExitCode.ROWS_FAILED if tally.failed_rows else ExitCode.OK),
            notes=[
                *input_notes(report.table, config.input.skip_hidden_rows),
                *report.notes,
                *self.notes(),
                *([saved] if saved else []),
            ],
            outcomes=outcomes,
            stopped=applied.stop_reason,
            requests=self.session.client.request_count if self.session is not None else 0,
        )


def every_row(report: ValidationReport, by_row: Mapping[int, RowOutcome]) -> Iterator[RowOutcome]:
    """One outcome per input row, in input order: validation's, or the plan's and the engine's."""
    grouped = reasons_by_row(report.issues)
    for row in report.table.frame.index.tolist():
        issues = grouped.get(row)
        if issues:
            yield failed_outcome(row, issues)
        else:
            yield (
                by_row.get(row)
                or skipped_outcome(report, row)
                or RowOutcome(
                    row=row, status=Status.NOT_SENT, reason="not sent", reason_kind=ReasonKind.NOT_SENT
                )
            )
