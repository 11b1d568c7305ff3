"""Roll back an import: put back the routing it changed, paced, settled and journalled like a run.

``rollback_run`` is the whole job in one call; ``_rollback`` is its body, the stages in the
order they run: find the journal and the runs -> read the live state -> plan one undo
per DID changed (``plan.plan_rollback``) -> (confirm) -> send (``apply.apply_plan``, the engine
``run`` uses) -> results workbook.

- Every run of the same input (same content hash) that changed something is undone together,
  so an interrupted run and its resume are one rollback; ``run_ids`` narrows it to the runs
  named (``choose_runs``). Per DID, the record before the first of them is put back.

- A row the run **updated** gets its previous record back: the full replacement body built
  from the record the run read before writing (status included).
- A row the run **created** cannot be deleted (the API documents no delete), so its routing is
  updated to the same modes and ids with ``status`` 0 (inactive); the plan and the results say so.
- Nothing is overwritten blindly: when the live routing is no longer what the run wrote,
  someone changed it since and the row is skipped (``force`` overwrites anyway). A row already
  as the rollback wants it is unchanged and nothing is sent, so a second rollback sends nothing.
- A write the run left in flight (it crashed) is settled against the live state: if the live
  routing is what it sent, it was applied and is rolled back; otherwise there is nothing to undo.
- Each write is journalled, as a new run with command ``rollback``, before it is sent.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import pandas as pd

from importer.account.limiter import RateLimiter
from importer.engine.apply import Applied, ProgressCallback
from importer.engine.journal import Journal
from importer.engine.plan import NO_DELETE, Plan, Undo, record_text
from importer.engine.records import ChangeRecord, RunRecord
from importer.engine.undo import named_did, plan_rollback
from importer.errors import InputError, NothingToDo
from importer.jobs.outputs import check_writable, default_journal_path, save_with_fallback
from importer.jobs.session import (
    Ask,
    Session,
    ask_in_loop,
    job_audit,
    now_text,
    open_journal,
    open_session,
    run_info,
    run_sync,
    send_if_confirmed,
)
from importer.jobs.summary import RunSummary, job_notes
from importer.model import RawTable, SourceInfo, Status
from importer.options import RollbackConfig
from importer.output.paths import check_workbook_name, stamped_path
from importer.output.results import write_results
from importer.vocab import Action, ExitCode, describe_kind

__all__ = [
    "ROLLBACK_COLUMNS",
    "Coverage",
    "choose_runs",
    "default_rollback_path",
    "free_rollback_path",
    "locate_run",
    "rollback_run",
    "rollback_run_async",
    "rollback_table",
    "write_report",
]

COMMAND = "rollback"
ROLLBACK_COLUMNS = (
    "run_row",
    "did_id",
    "did_number",
    "routing_id",
    "action_undone",
    "run_wrote",
    "live_at_start",
    "restored_to",
)
"""The columns the rollback's own Results sheet starts with (one row per change of the run)."""
JOURNAL_SUFFIXES = (".sqlite", ".sqlite3", ".db")


# -- finding the journal and the run --------------------------------------------------


def _summary_lines(workbook: Path) -> dict[str, str]:
    """Read a results workbook's Summary sheet as name -> value text."""
    import openpyxl  # only a results-workbook argument needs it

    try:
        book = openpyxl.load_workbook(workbook, read_only=True)
    except Exception as exc:  # openpyxl raises many types for a file that is not a workbook
        raise InputError(f"{workbook} cannot be read as a results workbook: {exc}") from None
    try:
        if "Summary" not in book.sheetnames:
            raise InputError(f"{workbook} has no Summary sheet: pass a results workbook or a journal")
        out: dict[str, str] = {}
        for row in book["Summary"].iter_rows(min_col=1, max_col=2, values_only=True):
            name, value = (*tuple(row), None, None)[:2]
            if name is not None and value is not None:
                out.setdefault(str(name).strip().casefold(), str(value).strip())
        return out
    finally:
        book.close()


def locate_run(
    source: Path, run_id: int | None = None, *, rollback_results: bool = False
) -> tuple[Path, int | None, str | None]:
    """Find the journal a results workbook (or journal path) points to.

    A results workbook names its journal on a ``journal`` Summary line when the writer records
    one; otherwise the journal is where ``run`` puts it by default: beside the workbook, named
    after the input (``<input stem>.journal.sqlite``).

    Args:
        source: A results workbook or a journal.
        run_id: The run asked for, if any (it wins over what the workbook says).
        rollback_results: Accept a rollback's own results workbook (``history`` reads it; a
            rollback refuses it, since undoing a rollback takes its --run-id).

    Returns:
        The journal path, the run id (None: choose by ``input_sha256`` or the latest) and the
        input's sha256 from the workbook (None for a journal argument).

    Raises:
        InputError: the file is missing or says nothing usable.
    """
    if not source.exists():
        raise InputError(f"{source}: no such file")
    if source.is_dir():
        raise InputError(f"{source} is a folder; give a results workbook or a journal")
    if source.suffix.lower() in JOURNAL_SUFFIXES:
        return source, run_id, None
    lines = _summary_lines(source)
    if lines.get("command", "").startswith(COMMAND) and not rollback_results:
        raise InputError(
            f"{source.name} is a rollback's own results; to undo a rollback pass the journal and its --run-id"
        )
    named = lines.get("journal")
    if named:
        journal = Path(named)
        journal = journal if journal.is_absolute() else source.parent / journal
    elif lines.get("file"):
        journal = default_journal_path(source, Path(lines["file"]))
    else:
        raise InputError(f"{source.name}: its Summary sheet names neither the journal nor the input file")
    if run_id is None:
        for key in ("journal run", "journal_run", "run id", "run_id"):
            text = lines.get(key, "")
            if text.isdigit():
                run_id = int(text)
                break
    return journal, run_id, lines.get("sha256") or None


@dataclass(frozen=True, slots=True)
class Coverage:
    """The runs a rollback undoes and their writes, oldest first."""

    runs: tuple[RunRecord, ...]
    changes: tuple[ChangeRecord, ...]

    @property
    def ids(self) -> tuple[int, ...]:
        return tuple(r.run_id for r in self.runs)

    def label(self) -> str:
        """'run 3' or 'runs 1, 2'."""
        return _runs_label(self.ids, last=", ")

    def inputs(self) -> str:
        """The runs' input names, each once."""
        return ", ".join(dict.fromkeys(r.input_name for r in self.runs))


def _runs_label(ids: Sequence[int], last: str = " and ") -> str:
    """'run 3', 'runs 1 and 2' (or with ``last`` ", ": 'runs 1, 2')."""
    if len(ids) == 1:
        return f"run {ids[0]}"
    return "runs " + ", ".join(map(str, ids[:-1])) + last + str(ids[-1])


def choose_runs(
    journal: Journal, asked: Sequence[int] = (), anchor: int | None = None, sha256: str | None = None
) -> Coverage:
    """Pick the runs to roll back and their writes.

    Asked runs (``--run-id``) are taken as they are. Otherwise every import of one input that
    changed something is covered: an interrupted run and its resume are one rollback. The
    input is the one of the results workbook's run (``anchor``) or hash, else the journal's
    latest import that changed something. Rollback runs are never covered by default: a second
    rollback must not undo the first.

    Args:
        journal: The journal.
        asked: Run ids the user named; empty: choose as above.
        anchor: The results workbook's run, if any.
        sha256: The results workbook's input hash, if any.

    Returns:
        The runs (oldest first) and their writes that changed or may have changed something.

    Raises:
        InputError: a run that does not exist, or nothing to roll back (naming the runs that
            did change something, when there are some).
    """
    runs = {r.run_id: r for r in journal.runs()}
    changes = journal.changes(include_unsettled=True)
    changed = {c.run_id for c in changes}
    for i in (*asked, *(() if anchor is None else (anchor,))):
        if i not in runs:
            known = ", ".join(str(k) for k in sorted(runs)) or "none"
            raise InputError(f"the journal {journal.path} has no run {i} (runs: {known})")
    imports = [r for r in runs.values() if not r.command.startswith(COMMAND) and r.run_id in changed]
    if asked:
        chosen = [runs[i] for i in asked if i in changed]
        if not chosen:
            raise InputError(_changed_nothing(journal, list(asked), runs, imports, changes))
    else:
        if anchor is not None:
            if anchor not in changed:
                raise InputError(_changed_nothing(journal, [anchor], runs, imports, changes))
            sha256 = runs[anchor].input_sha256
        elif sha256 is None and imports:
            # The journal alone: the latest import with something left, never one rolled back already.
            timeline = journal.timeline()
            if not (left := timeline.left_runs()):
                raise NothingToDo(timeline.nothing_left(journal.path.name))
            sha256 = runs[left[-1]].input_sha256
        chosen = [r for r in imports if r.input_sha256 == sha256]
        if not chosen:
            which = "of that results workbook's input " if sha256 else ""
            raise InputError(f"the journal {journal.path} records no run {which}that changed anything")
        ids = {r.run_id for r in chosen}
        changes = _since_last_rollback([c for c in changes if c.run_id in ids], journal.undone_by())
        chosen = [r for r in chosen if r.run_id in {c.run_id for c in changes}]
    ids = {r.run_id for r in chosen}
    return Coverage(tuple(chosen), tuple(c for c in changes if c.run_id in ids))


def _since_last_rollback(
    changes: Sequence[ChangeRecord], undone_by: Mapping[tuple[int, int], int]
) -> list[ChangeRecord]:
    """Per row, leave out the changes an earlier rollback already put back, if later ones followed.

    After run 1, its rollback and a re-run, the record to restore is the one before the re-run
    (someone may have changed it between), not the one before run 1. A row with no change since
    its last rollback keeps the changes that rollback undid, so rolling back again finds it as
    before (unchanged) or reports what changed since.
    """
    rows: dict[int, list[int]] = collections.defaultdict(list)
    for i, c in enumerate(changes):
        rows[c.row].append(i)
    keep: set[int] = set()
    for row, picked in rows.items():
        by = {i: undone_by.get((changes[i].run_id, row), 0) for i in picked}
        latest = max(by.values())
        live = [i for i in picked if changes[i].run_id > latest]
        keep.update(live or [i for i in picked if by[i] == latest])
    return [c for i, c in enumerate(changes) if i in keep]


def _changed_nothing(
    journal: Journal,
    ids: list[int],
    runs: Mapping[int, RunRecord],
    imports: Sequence[RunRecord],
    changes: Sequence[ChangeRecord],
) -> str:
    """Say which runs of the same input did change something, and how to roll them back."""
    said = f"{_runs_label(ids)} changed nothing"
    shas = {runs[i].input_sha256 for i in ids}
    others = [r.run_id for r in imports if r.input_sha256 in shas and r.run_id not in ids]
    if not others:
        return f"{said}, nor did any other run of the same input: nothing to roll back"
    undone_by = journal.undone_by()
    theirs = [c for c in changes if c.run_id in others]
    pending = [c for c in theirs if (c.run_id, c.row) not in undone_by]
    if not pending:
        by = sorted({undone_by[(c.run_id, c.row)] for c in theirs})
        return (
            f"{said}; {_runs_label(others)} of the same input changed {len({c.row for c in theirs})} "
            f"rows and {_runs_label(by)} rolled them back already"
        )
    named = sorted({c.run_id for c in pending})
    how = " ".join(f"--run-id {i}" for i in named)
    # Passing the journal covers its latest import's input: suggest it only when that is this one.
    journal_too = f" or pass the journal {journal.path.name}" if imports[-1].input_sha256 in shas else ""
    return (
        f"{said}; {_runs_label(named)} of the same input changed {len({c.row for c in pending})} rows: "
        f"roll back with {how}{journal_too}"
    )


def default_rollback_path(journal: Path) -> Path:
    """The rollback's results sit beside the journal: ``<stem>.rollback.xlsx``."""
    stem = journal.name
    for suffix in (*JOURNAL_SUFFIXES, ".journal"):
        stem = stem.removesuffix(suffix)
    return journal.with_name(f"{stem or 'journal'}.rollback.xlsx")


def free_rollback_path(journal: Path, when: dt.datetime) -> Path:
    """The default rollback workbook, or a timestamped name beside it when an earlier rollback's is there.

    Each rollback keeps its own record, so a second one never overwrites the first silently (rollback's
    ``--force`` is about rows changed since the run, not about files; an explicit ``-o`` is overwritten).
    """
    default = default_rollback_path(journal)
    return stamped_path(default, when) if default.exists() else default


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def rollback_table(journal_path: Path, sha256: str, undos: Sequence[Undo]) -> RawTable:
    """The rollback's own 'input': one row per change of the run, as text cells (its results
    workbook's table; the web shows a rollback job's rows from it)."""

    def cells(u: Undo) -> list[str]:
        return [
            str(u.run_row),
            "" if u.did_id is None else str(u.did_id),
            u.did_number,
            "" if u.routing_id is None else str(u.routing_id),
            u.action_undone,
            record_text(u.run_wrote),
            record_text(u.live_record),
            record_text(u.target),
        ]

    frame = pd.DataFrame(
        [cells(u) for u in undos],
        index=pd.Index([u.index for u in undos], dtype="int64"),
        columns=range(len(ROLLBACK_COLUMNS)),
        dtype=object,
    )
    source = SourceInfo(path=journal_path, format="journal", sha256=sha256)
    return RawTable(source=source, headers=ROLLBACK_COLUMNS, frame=frame)


def rollback_run(
    config: RollbackConfig,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    on_progress: ProgressCallback | None = None,
) -> RunSummary:
    """Roll back an import: restore what it updated, deactivate what it created, write the results.

    Every run of the input ``config.source`` names is covered (an interrupted run and its
    resume together) unless ``config.run_ids`` names the runs; see ``choose_runs``.

    Args:
        config: the rollback's options.
        transport: an httpx transport instead of the network (the sandbox in-process, tests).
        on_progress: called before the first write and after each one.

    Returns:
        The summary; ``exit_code`` 0 no undo failed, 1 some failed, 3 aborted, 130 interrupted.
        Skipped rows (changed since the run) do not fail the rollback; the notes count them.

    Raises:
        InputError: no journal, no such run, a run that changed nothing (the message names the
            runs of the same input that did), a bad option (exit 2);
            also when called inside a running event loop (``await rollback_run_async`` there).
        AuthError: the key was rejected before anything was sent (exit 3).
    """
    return run_sync(
        lambda ask: _rollback(config, transport, on_progress, None, None, ask), "rollback_run_async"
    )


async def rollback_run_async(
    config: RollbackConfig,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    on_progress: ProgressCallback | None = None,
    cancel: asyncio.Event | None = None,
    limiter: RateLimiter | None = None,
) -> RunSummary:
    """``rollback_run`` inside an event loop; ``cancel`` and ``limiter`` as in ``run_import_async``."""
    return await _rollback(config, transport, on_progress, cancel, limiter, ask_in_loop)


async def _rollback(
    config: RollbackConfig,
    transport: httpx.AsyncBaseTransport | None,
    on_progress: ProgressCallback | None,
    cancel: asyncio.Event | None,
    limiter: RateLimiter | None,
    ask: Ask,
) -> RunSummary:
    """One rollback, its stages in order: each passes its value to the next."""
    started = now_text()
    config.check()
    if config.output is not None:  # before the source is read: a bad -o is the plainest problem
        check_workbook_name(config.output)
    journal_path, anchor, sha256 = locate_run(config.source)
    journal_path = config.journal or journal_path
    if not journal_path.exists():
        raise InputError(
            f"no journal at {journal_path}: a rollback needs the journal the run wrote (pass it instead)"
        )
    results = config.output or free_rollback_path(journal_path, dt.datetime.now())
    check_writable(results)
    journal_sha = _sha256(journal_path)
    with open_journal(journal_path, claim=not config.dry_run, read_only=config.dry_run) as journal:
        covered = choose_runs(journal, config.run_ids, anchor, sha256)

        def start_run(journal: Journal, session: Session) -> int:
            return journal.start_run(
                input_sha256=f"{COMMAND}:{covered.runs[-1].input_sha256}",
                input_name=f"rollback of {covered.label()} ({covered.inputs()})",
                command=COMMAND,
                audit={**session.audit, "rollback_of_run": ",".join(map(str, covered.ids))},
                options=config.describe(),
            )

        async with open_session(
            config,
            transport,
            limiter,
            rows=[named_did(c) for c in covered.changes],
            used_before=covered.runs[-1].audit.get("connection") or None,
        ) as session:
            heading = f"rollback of {covered.label()} ({covered.inputs()}) from {journal.path}:"
            timeline = journal.timeline()
            plan = plan_rollback(
                covered.changes, session.inventory, config.force, heading=heading, timeline=timeline
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
        return await asyncio.to_thread(
            write_report,
            config,
            covered,
            plan,
            applied,
            session,
            journal,
            run_id,
            journal_sha,
            started,
            results,
        )


def write_report(
    config: RollbackConfig,
    covered: Coverage,
    plan: Plan,
    applied: Applied,
    session: Session,
    journal: Journal,
    run_id: int,
    journal_sha: str,
    started: str,
    results: Path,
) -> RunSummary:
    """Write the rollback's results workbook, close its journal run, sum the rollback up."""
    by_row = {o.row: o for o in applied.outcomes}
    outcomes = tuple(by_row[u.index] for u in plan.undos)
    audit = {
        "rollback of runs": ", ".join(map(str, covered.ids)),
        "run input": covered.inputs(),
        "run input sha256": ", ".join(dict.fromkeys(r.input_sha256 for r in covered.runs)),
        **job_audit(session, plan, applied, journal, run_id),
        "journal": str(journal.path),
        **config.audit_extra,
    }
    info = run_info(COMMAND, config, started, audit, config.facts)
    tally = collections.Counter(o.status for o in outcomes)
    table = rollback_table(journal.path, journal_sha, plan.undos)
    try:
        _, results, saved = save_with_fallback(
            lambda path: write_results(path, table, outcomes, (), info), results
        )
    finally:
        if run_id:
            journal.finish_run(run_id, {s.value: tally.get(s, 0) for s in Status})
    notes = [*job_notes(plan, applied, session.client, dry_run=config.dry_run), *([saved] if saved else [])]
    deactivated = [
        u.run_id
        for u, o in zip(plan.undos, outcomes, strict=True)
        if u.action_undone == Action.CREATE and o.status is Status.SUCCEEDED
    ]
    if deactivated:
        notes.append(
            f"{NO_DELETE}: {len(deactivated)} routing records {_runs_label(sorted(set(deactivated)))} "
            "created were deactivated (status 0), modes kept"
        )
    if tally[Status.SKIPPED]:
        notes.append(
            f"{tally[Status.SKIPPED]} rows skipped: changed since the run "
            "(see the results; --force overwrites them)"
        )
    failed_kinds = [describe_kind(o.reason_kind) for o in outcomes if o.status is Status.FAILED]
    return RunSummary(
        rows=len(outcomes),
        counts=dict(tally),
        top_reasons=collections.Counter(failed_kinds).most_common(5),
        results_path=results,
        failed_path=None,
        exit_code=applied.exit_code or (ExitCode.ROWS_FAILED if failed_kinds else ExitCode.OK),
        notes=notes,
        outcomes=outcomes,
        stopped=applied.stop_reason,
        requests=session.client.request_count,
    )
