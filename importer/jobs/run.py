"""Import for real: read -> validate -> account state -> plan -> confirm -> apply -> results, resumable.

``run_import`` (or ``await run_import_async``) is the whole job in one call; ``_run_import`` is
its body, the stages in the order they run, each passing its value to the next. The live state
is read once, in as few reads as the rows allow (connections and one sync, and only what sync
leaves unresolved: ``preflight.read_inventory``); ``plan.plan_import`` turns every row into a write
or a settled outcome, its cost (reads done, writes, time) shown before asking;
``apply.apply_plan`` sends the writes, and one more sync reads the ids of created routing back,
only if there are some.

Guarantees (kept by the engine in ``apply.py``): never a duplicate, never a lost row, within
the rate limit. Resume: every row is planned against the live state, whatever earlier runs of
the same file (same sha256) did: a row they confirmed is unchanged if still as asked and updated
back ("changed since run N") if not; a write a crash left in flight shows as done if it had
landed and is sent once if not. A dry run reads the journal too (read-only, unclaimed), so it
plans exactly what the real run would.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Sequence
from pathlib import Path

import httpx

from importer.account.inventory import Rows
from importer.account.limiter import RateLimiter
from importer.account.retry import MAX_ATTEMPTS
from importer.collector import keep_out_of_collections, own_process_collections
from importer.engine.apply import Applied, ProgressCallback
from importer.engine.journal import Journal
from importer.engine.plan import Plan, plan_import
from importer.jobs.outputs import (
    OutcomeTally,
    check_writable,
    default_journal_path,
    output_paths,
    save_with_fallback,
    write_outputs,
)
from importer.jobs.session import (
    Ask,
    Session,
    ask_in_loop,
    history_of,
    job_audit,
    journal_for,
    now_text,
    open_session,
    run_info,
    run_sync,
    send_if_confirmed,
)
from importer.jobs.summary import RunSummary, input_notes, job_notes, top_reasons
from importer.jobs.validate import every_row, read_input, table_checker
from importer.model import RoutingRow, Status, ValidationReport
from importer.options import ImportConfig
from importer.output.paths import failed_path_for
from importer.vocab import ExitCode

__all__ = ["MAX_WRITE_ATTEMPTS", "run_import", "run_import_async", "write_report"]

MAX_WRITE_ATTEMPTS = MAX_ATTEMPTS


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
    return run_sync(
        lambda ask: _run_import(config, transport, on_progress, None, None, validated, ask),
        "run_import_async",
    )


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
    return await _run_import(config, transport, on_progress, cancel, limiter, validated, ask_in_loop)


async def _run_import(
    config: ImportConfig,
    transport: httpx.AsyncBaseTransport | None,
    on_progress: ProgressCallback | None,
    cancel: asyncio.Event | None,
    limiter: RateLimiter | None,
    validated: ValidationReport | None,
    ask: Ask,
) -> RunSummary:
    """One run, its stages in order: each passes its value to the next. In a process of its own
    (the CLI), what the run keeps is left out of the collector's walks."""
    with own_process_collections(config.own_process):
        started = now_text()
        config.check()
        results, failed = output_paths(
            config.input.path, config.output, config.failed_out, overwrite=config.overwrite
        )
        check_writable(results, failed)
        loaded: list[ValidationReport] = [validated] if validated else []
        rows: Rows = validated.valid if validated else ()
        if validated is None:
            # The file is read and the options checked before anything is sent (an unusable one
            # stops the run here); its rows are checked once the sync request is out, while the API
            # builds the account's answer (seconds for a large account).
            check_rows = table_checker(read_input(config.input), config.input)

            def check() -> Sequence[RoutingRow]:
                loaded.append(check_rows())
                return list(loaded[0].valid)  # built here too, while the answer is made

            rows = check

        def start_run(journal: Journal, session: Session) -> int:
            return journal.start_run(
                input_sha256=loaded[0].table.source.sha256,
                input_name=config.input.path.name,
                command=config.command,
                audit=session.audit,
                options=config.describe(),
            )

        journal_path = config.journal or default_journal_path(results, config.input.path)
        with journal_for(journal_path, dry_run=config.dry_run) as journal:
            async with open_session(config, transport, limiter, rows=rows) as session:
                # The account's state and the rows, kept to the end.
                keep_out_of_collections(config.own_process)
                report = loaded[0]
                history = history_of(journal, report.table.source.sha256)
                plan = plan_import(
                    report.valid, session.inventory, session.inventory.connection, history, config.on_existing
                )
                plan, applied, run_id = await send_if_confirmed(
                    plan,
                    session=session,
                    journal=journal,
                    config=config,
                    ask=ask,
                    start_run=start_run,
                    cancel=cancel,
                    on_progress=on_progress,
                )
            keep_out_of_collections(config.own_process)  # the plan and what was sent
            # A results workbook of every row takes seconds for a large input: off the event loop,
            # which may be serving others (a web service's other jobs).
            return await asyncio.to_thread(
                write_report,
                config,
                report,
                plan,
                applied,
                session,
                journal,
                run_id,
                started,
                results,
                failed,
            )


def write_report(
    config: ImportConfig,
    report: ValidationReport,
    plan: Plan,
    applied: Applied,
    session: Session,
    journal: Journal | None,
    run_id: int,
    started: str,
    results: Path,
    failed: Path,
) -> RunSummary:
    """Write the results workbook (every input row), close the journal's run, sum the run up."""
    outcomes = tuple(every_row(report, {o.row: o for o in applied.outcomes}))
    audit = {**job_audit(session, plan, applied, journal, run_id), **config.audit_extra}
    info = run_info(config.command, config, started, audit, config.facts)

    def save(path: Path) -> tuple[OutcomeTally, Path]:
        failed_here = failed if path == results else failed_path_for(path)  # a fallback's goes beside it
        tally = write_outputs(
            report.table,
            outcomes,
            report.issues,
            info,
            path,
            failed_here,
            config.surface,
            apart=config.own_process,
        )
        return tally, failed_here

    try:
        (tally, failed), results, saved = save_with_fallback(save, results)
    finally:
        if journal is not None and run_id:  # every input row's outcome, counted by status
            counts = collections.Counter(o.status for o in outcomes)
            journal.finish_run(run_id, {s.value: counts.get(s, 0) for s in Status})
    failed_kinds = [o.reason_kind for o in applied.outcomes if o.status is Status.FAILED]
    return RunSummary(
        rows=report.table.row_count,
        counts=dict(tally.counts),
        top_reasons=top_reasons(report.issues, failed_kinds),
        results_path=results,
        failed_path=failed if tally.failed_rows else None,
        exit_code=applied.exit_code or (ExitCode.ROWS_FAILED if tally.failed_rows else ExitCode.OK),
        notes=[
            *input_notes(report.table, config.input.skip_hidden_rows, config.surface),
            *report.notes_for(config.surface),
            *job_notes(plan, applied, session.client, dry_run=config.dry_run),
            *([saved] if saved else []),
        ],
        outcomes=outcomes,
        stopped=applied.stop_reason,
        requests=session.client.request_count,
    )
