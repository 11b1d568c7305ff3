"""Roll back a run: put back the routing it changed, paced, settled and journalled like the run.

``rollback_run`` is the whole job in one call; its stages are the methods of ``_RollbackJob``
in the order they run: find the journal and the run -> read the live state -> plan one undo
per change (``plan.plan_rollback``) -> (confirm) -> send (``apply.apply_plan``, the engine
``run`` uses) -> results workbook.

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
import contextlib
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import pandas as pd

from .apply import (
    ConnectOptions,
    Job,
    ProgressCallback,
    Session,
    drive,
    drive_async,
    open_session,
)
from .errors import InputError
from .journal import Journal, RunRecord
from .limiter import RateLimiter
from .model import RawTable, RunInfo, SourceInfo, Status
from .pipeline import RunSummary, as_path, check_writable, now_text, save_with_fallback
from .plan import NO_DELETE, Plan, Undo, plan_rollback, record_text
from .results import write_results
from .run import default_journal_path, open_journal
from .vocab import Action, ExitCode, describe_kind

__all__ = [
    "ROLLBACK_COLUMNS",
    "RollbackConfig",
    "RunHistory",
    "default_rollback_path",
    "locate_run",
    "rollback_run",
    "rollback_run_async",
    "run_history",
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


@dataclass(frozen=True, slots=True, kw_only=True)
class RollbackConfig(ConnectOptions):
    """Everything a rollback needs; the CLI builds it from flags and the environment.

    ``journal`` (from ``SendOptions``), when given, is the journal to use instead of the one
    ``source`` points to.
    """

    source: Path
    """A results workbook of a run, or the journal itself."""
    run_id: int | None = None
    """The run to roll back; None: the run the results workbook belongs to, else the journal's latest."""
    output: Path | None = None
    force: bool = False
    """Overwrite rows someone changed since the run instead of skipping them."""
    on_plan: Callable[[Plan], None] | None = None
    """Shown the plan once it is made (dry runs too)."""

    def __post_init__(self) -> None:
        ConnectOptions.__post_init__(self)
        for name in ("source", "output"):
            as_path(self, name)

    def describe(self) -> dict[str, str]:
        """The options as text for the Summary sheet and the journal (never the key)."""
        return {**ConnectOptions.describe(self), "force": "yes" if self.force else "no"}


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


def locate_run(source: Path, run_id: int | None = None) -> tuple[Path, int | None, str | None]:
    """Find the journal a results workbook (or journal path) points to, and the input it was run on.

    A results workbook names its journal on a ``journal`` Summary line when the writer records
    one; otherwise the journal is where ``run`` puts it by default: beside the workbook, named
    after the input (``<input stem>.journal.sqlite``).

    Args:
        source: A results workbook or a journal.
        run_id: The run asked for (``--run-id``), if any.

    Returns:
        The journal path, the run id asked for (or, from a workbook that names no input sha256,
        the workbook's own run) and the input's sha256 from the workbook (None for a journal).

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
    if lines.get("command", "").startswith(COMMAND):
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
    sha256 = lines.get("sha256") or None
    if run_id is None and sha256 is None:
        for key in ("journal run", "journal_run", "run id", "run_id"):
            text = lines.get(key, "")
            if text.isdigit():
                run_id = int(text)
                break
    return journal, run_id, sha256


def _choose_runs(journal: Journal, run_id: int | None, sha256: str | None) -> tuple[RunRecord, ...]:
    """Pick the runs to undo: the one asked for, else every run of the input that changed something.

    The input is the workbook's (by sha256), or, given the journal itself, the latest run's that
    changed something. Covering every run matters after an interrupted run and its resume: the
    first run's changes are the import's too. Rollback runs are never picked by default: a
    second rollback must not undo the first.
    """
    runs = {r.run_id: r for r in journal.runs()}
    if run_id is not None:
        if run_id not in runs:
            known = ", ".join(str(i) for i in sorted(runs)) or "none"
            raise InputError(f"the journal {journal.path} has no run {run_id} (runs: {known})")
        return (runs[run_id],)
    changed = {c.run_id for c in journal.changes(include_unsettled=True)}
    imports = [r for i, r in sorted(runs.items()) if i in changed and not r.command.startswith(COMMAND)]
    if sha256 is None and imports:
        sha256 = imports[-1].input_sha256
    chosen = tuple(r for r in imports if r.input_sha256 == sha256)
    if chosen:
        return chosen
    if not imports:
        raise InputError(f"the journal {journal.path} records no run that changed anything")
    others = "; ".join(f"run {r.run_id} ({r.input_name}, {r.started})" for r in imports)
    raise InputError(
        f"no run of that results workbook's input changed anything; runs that did: {others} "
        "(pass the journal with --run-id to undo one)"
    )


def _runs_text(runs: Sequence[RunRecord]) -> str:
    ids = ", ".join(str(r.run_id) for r in runs)
    names = ", ".join(dict.fromkeys(r.input_name for r in runs))
    return f"run{'s' if len(runs) > 1 else ''} {ids} ({names})"


@dataclass(frozen=True, slots=True)
class RunHistory:
    """One run of a journal, and the rollbacks that undid it."""

    run: RunRecord
    rolled_back_by: tuple[int, ...]

    def line(self) -> str:
        """The run as one line for people: when, who, what, on which input, with what result."""
        r = self.run
        who = f"{r.audit.get('os_user', '?')}@{r.audit.get('host', '?')}"
        counts = ", ".join(f"{Status(k).label} {n}" for k, n in (r.counts or {}).items() if n) or "no rows"
        state = "" if r.finished else "; never finished (interrupted or killed)"
        undone = (
            f"; rolled back by run {', '.join(map(str, self.rolled_back_by))}" if self.rolled_back_by else ""
        )
        return (
            f"run {r.run_id}: {r.command}, {r.started}, {who}, {r.input_name} "
            f"(sha256 {r.input_sha256.rpartition(':')[2][:12]}): {counts}{state}{undone}"
        )


def run_history(source: Path) -> tuple[RunHistory, ...]:
    """Every run the journal of ``source`` (a results workbook or the journal) records, oldest first.

    Raises:
        InputError: no journal can be found or opened.
    """
    journal_path = locate_run(source)[0]
    if not journal_path.exists():
        raise InputError(f"no journal at {journal_path}")
    with contextlib.closing(open_journal(journal_path, claim=False)) as journal:
        runs = journal.runs()
    undone: dict[int, list[int]] = collections.defaultdict(list)
    for r in runs:
        if r.command.startswith(COMMAND):
            for of in r.audit.get("rollback_of_run", "").split(","):
                if of.strip().isdigit():
                    undone[int(of)].append(r.run_id)
    return tuple(RunHistory(r, tuple(undone.get(r.run_id, ()))) for r in runs)


def default_rollback_path(journal: Path) -> Path:
    """The rollback's results sit beside the journal: ``<stem>.rollback.xlsx``."""
    stem = journal.name
    for suffix in (*JOURNAL_SUFFIXES, ".journal"):
        stem = stem.removesuffix(suffix)
    return journal.with_name(f"{stem or 'journal'}.rollback.xlsx")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _table(journal_path: Path, sha256: str, undos: Sequence[Undo]) -> RawTable:
    """The rollback's own 'input': one row per change of the run, as text cells."""

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
    """Roll back one run: restore what it updated, deactivate what it created, write the results.

    Args:
        config: the rollback's options.
        transport: an httpx transport instead of the network (the sandbox in-process, tests).
        on_progress: called before the first write and after each one.

    Returns:
        The summary; ``exit_code`` 0 no undo failed, 1 some failed, 3 aborted, 130 interrupted.
        Skipped rows (changed since the run) do not fail the rollback; the notes count them.

    Raises:
        InputError: no journal, no such run, a run that changed nothing, a bad option (exit 2);
            also when called inside a running event loop (``await rollback_run_async`` there).
        AuthError: the key was rejected before anything was sent (exit 3).
    """
    return drive(_RollbackJob(config, transport, on_progress, None, None), "rollback_run_async")


async def rollback_run_async(
    config: RollbackConfig,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    on_progress: ProgressCallback | None = None,
    cancel: asyncio.Event | None = None,
    limiter: RateLimiter | None = None,
) -> RunSummary:
    """``rollback_run`` inside an event loop; ``cancel`` and ``limiter`` as in ``run_import_async``."""
    return await drive_async(_RollbackJob(config, transport, on_progress, cancel, limiter))


class _RollbackJob(Job[RollbackConfig, RunSummary]):
    """One rollback's stages, in order: prepare (find the run -> live state -> plan), then the
    engine's approve and apply (``apply.Job``), then report (the rollback's results workbook)."""

    async def prepare(self) -> None:
        """Check the options, find the journal and the run, read the live state, plan the undos."""
        config = self.config
        config.check()
        journal_path, run_id, sha256 = locate_run(config.source, config.run_id)
        journal_path = config.journal or journal_path
        if not journal_path.exists():
            raise InputError(
                f"no journal at {journal_path}: a rollback needs the journal the run wrote (pass it instead)"
            )
        self.results = config.output or default_rollback_path(journal_path)
        if self.results.suffix.lower() != ".xlsx":
            raise InputError(f"the results workbook must be an .xlsx file, not {self.results.name}")
        check_writable(self.results)
        self.journal_sha = _sha256(journal_path)
        journal = self.journal = open_journal(journal_path, claim=not config.dry_run)
        runs = self.runs = _choose_runs(journal, run_id, sha256)
        ids = {r.run_id for r in runs}
        changes = [c for c in journal.changes(include_unsettled=True) if c.run_id in ids]
        if not changes:
            raise InputError(
                f"{_runs_text(runs)} of {journal_path.name} changed nothing: nothing to roll back"
            )
        session = self.session = await open_session(
            config, self.transport, self.limiter, used_before=runs[-1].audit.get("connection") or None
        )
        heading = f"rollback of {_runs_text(runs)} from {journal.path}:"
        self.plan = plan_rollback(changes, session.inventory, config.force, heading=heading)
        if config.on_plan is not None:
            config.on_plan(self.plan)

    def start_run(self, journal: Journal, session: Session) -> int:
        return journal.start_run(
            input_sha256=f"{COMMAND}:{self.runs[-1].input_sha256}",
            input_name=f"rollback of {_runs_text(self.runs)}",
            command=COMMAND,
            audit={**session.audit, "rollback_of_run": ",".join(str(r.run_id) for r in self.runs)},
            options=self.config.describe(),
        )

    def report(self) -> RunSummary:
        """Write the rollback's results workbook and close its journal run."""
        config, plan, applied = self.config, self.plan, self.applied
        assert plan is not None and self.journal is not None
        by_row = {o.row: o for o in applied.outcomes}
        outcomes = tuple(by_row[u.index] for u in plan.undos)
        info = RunInfo(
            command=COMMAND + (" (dry run)" if config.dry_run else ""),
            started=self.started,
            finished=now_text(),
            options=config.describe(),
            audit={
                "rollback of run": ", ".join(str(r.run_id) for r in self.runs),
                "run input": self.runs[-1].input_name,
                "run input sha256": self.runs[-1].input_sha256,
                **self.audit(),
                "journal": str(self.journal.path),
            },
        )
        tally = collections.Counter(o.status for o in outcomes)
        table = _table(self.journal.path, self.journal_sha, plan.undos)
        try:
            _, self.results, saved = save_with_fallback(
                lambda path: write_results(path, table, outcomes, (), info), self.results
            )
        finally:
            self.finish_run(tally)
        notes = [*self.notes(), *([saved] if saved else [])]
        deactivated = sum(
            1
            for u, o in zip(plan.undos, outcomes, strict=True)
            if u.action_undone == Action.CREATE and o.status is Status.SUCCEEDED
        )
        if deactivated:
            notes.append(
                f"{NO_DELETE}: {deactivated} routing records the run created were deactivated "
                "(status 0), modes kept"
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
            results_path=self.results,
            failed_path=None,
            exit_code=applied.exit_code or (ExitCode.ROWS_FAILED if failed_kinds else ExitCode.OK),
            notes=notes,
            outcomes=outcomes,
        )
