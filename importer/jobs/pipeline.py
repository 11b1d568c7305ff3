"""The offline stages every job shares: read -> validate -> results, and the ``RunSummary``.

``validate_file`` is the offline job; ``run_import`` (``run.py``) adds resolve -> plan -> apply
between validate and results and reuses everything here. Both return a ``RunSummary`` and
never raise for bad rows, only for run-level problems (see ``errors.py``).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime as dt
import errno
import gc
import itertools
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pandas as pd

from importer.errors import InputError, OutputError, ResultsNotSavedError
from importer.model import RawTable, RowIssue, RowOutcome, RunInfo, Status, ValidationReport
from importer.output.results import (
    OutcomeColumns,
    check_workbook_name,
    default_paths,
    failed_path_for,
    save_problem,
    stamped_path,
    write_failed_rows,
    write_results,
)
from importer.read.sheets import sheet_notes
from importer.read.table import read_table
from importer.read.xlsx import describe_hidden
from importer.validate.rules import validate_table
from importer.vocab import Action, ExitCode, describe_kind

__all__ = [
    "InputOptions",
    "RunSummary",
    "ValidateConfig",
    "input_notes",
    "load_and_validate",
    "skipped_outcome",
    "validate_file",
]


@dataclass(frozen=True, slots=True)
class InputOptions:
    """How to read and validate the input file."""

    path: Path
    sheets: tuple[str, ...] = ()
    """--sheet: the workbook sheets to read; () reads the one sheet that names the fields."""
    all_sheets: bool = False
    """--all-sheets: read every sheet that names the fields, as one table."""
    column_map: Mapping[str, str] = field(default_factory=dict)
    """--map: header text or column letter -> field; wins over header matching."""
    default_region: str | None = None
    encoding: str | None = None
    """The text encoding of a CSV (``--encoding``); None detects it."""
    skip_hidden_rows: bool = False
    """Skip the rows hidden in Excel (``--skip-hidden-rows``) instead of importing them."""
    ignore_columns: tuple[str, ...] = ()
    """--ignore-column: header texts or column letters left out of matching."""

    def __post_init__(self) -> None:
        as_path(self, "path")
        if isinstance(self.sheets, str):  # one name given where a tuple of names is wanted
            object.__setattr__(self, "sheets", (self.sheets,))
        if self.sheets and self.all_sheets:
            raise InputError("give --sheet NAME or --all-sheets, not both")

    def describe(self) -> dict[str, str]:
        """The options as text for the Summary sheet."""
        sheet = "; ".join(self.sheets) or ("(all that match)" if self.all_sheets else "(auto)")
        out = {"sheet": sheet, "default_region": self.default_region or "(none)"}
        if self.column_map:
            out["map"] = "; ".join(f"{h}={f}" for h, f in self.column_map.items())
        if self.encoding:
            out["encoding"] = self.encoding
        if self.skip_hidden_rows:
            out["skip_hidden_rows"] = "yes"
        if self.ignore_columns:
            out["ignore_column"] = "; ".join(self.ignore_columns)
        return out


@dataclass(frozen=True, slots=True)
class ValidateConfig:
    """Options of the ``validate`` command."""

    input: InputOptions
    output: Path | None = None
    failed_out: Path | None = None
    overwrite: bool = False
    """Overwrite the default output files of an earlier run instead of writing timestamped ones."""

    def __post_init__(self) -> None:
        for name in ("output", "failed_out"):
            as_path(self, name)


def as_path(config: object, name: str) -> None:
    """Let a frozen config take a ``str`` where it wants a ``Path`` (library callers pass either)."""
    value = getattr(config, name)
    if isinstance(value, str):
        object.__setattr__(config, name, Path(value))


@dataclass(frozen=True, slots=True)
class RunSummary:
    """What a job did, for the CLI's summary and for callers of the library."""

    rows: int
    counts: Mapping[Status, int]
    top_reasons: Sequence[tuple[str, int]]
    """The most common problems, each as a label for people and how many rows had it."""
    results_path: Path
    failed_path: Path | None
    exit_code: ExitCode
    notes: Sequence[str] = ()
    outcomes: tuple[RowOutcome, ...] = ()
    """One outcome per input row, in input order (``validate_file`` leaves it empty: read its workbook)."""
    status_labels: Mapping[Status, str] = field(default_factory=dict)
    """Words for statuses where the job means more than the status's label (validate: "valid")."""
    stopped: str = ""
    """Why the job stopped before trying every write ("" when it did not stop early)."""
    requests: int = 0
    """Requests the job made to the API (a dry run's: the reads its send will make again)."""

    @property
    def failed(self) -> int:
        return self.counts.get(Status.FAILED, 0)

    def frame(self) -> pd.DataFrame:
        """The outcomes as a DataFrame, one row per input row (statuses and actions as their codes)."""
        columns = list(RowOutcome.__slots__)
        records = [[getattr(o, name) for name in columns] for o in self.outcomes]
        # StrEnum members become their plain codes, so the frame compares and saves as text.
        records = [[str(v) if isinstance(v, Status | Action) else v for v in r] for r in records]
        return pd.DataFrame.from_records(records, columns=columns)

    def lines(self) -> list[str]:
        """A short human summary (labels, never internal codes)."""
        parts = [
            f"{self.status_labels.get(s, s.label)} {self.counts.get(s, 0)}"
            for s in Status
            if self.counts.get(s, 0)
        ]
        out = [f"rows read: {self.rows}; " + (", ".join(parts) if parts else "nothing to do")]
        if self.top_reasons:
            out.append("most common problems:")
            out += [f"  {n} x {reason}" for reason, n in self.top_reasons]
        out += list(self.notes)
        out.append(f"results: {self.results_path}")
        if self.failed_path is not None:
            out.append(f"failed rows (fix and re-import): {self.failed_path}")
        return out


def now_text() -> str:
    """The local time as the Summary sheet shows it."""
    return dt.datetime.now().astimezone().isoformat(timespec="seconds")


def output_paths(
    input_path: Path, output: Path | None, failed_out: Path | None, *, overwrite: bool = False
) -> tuple[Path, Path]:
    """Resolve the results and failed-rows paths; refuse any that would overwrite the input.

    A path given explicitly is used as it is (overwriting). The default ``<stem>.results.xlsx``
    is not overwritten when it (or ``<stem>.failed.xlsx``) is there from an earlier run, unless
    ``overwrite``: the outputs get a timestamped name beside it instead. The failed-rows file
    follows the results' name (``x.results.xlsx`` -> ``x.failed.xlsx``, ``name.xlsx`` ->
    ``name.failed.xlsx``).

    Raises:
        InputError: a path is the input, both are the same, or a name does not end in .xlsx.
    """
    default_results, default_failed = default_paths(input_path)
    results = output or default_results
    if output is None and not overwrite and (default_results.exists() or default_failed.exists()):
        results = stamped_path(default_results, dt.datetime.now())
    failed = failed_out or failed_path_for(results)
    source = input_path.resolve()
    for path in (results, failed):
        if path.resolve() == source:
            raise InputError(f"{path} is the input file; choose another output path")
    if results.resolve() == failed.resolve():
        raise InputError("the results and failed-rows files must be different paths")
    check_workbook_name(results, "-o")
    check_workbook_name(failed, "--failed-out")
    return results, failed


def check_writable(*paths: Path) -> None:
    """Refuse, before anything is sent, an output that cannot be written (its folder is made).

    Raises:
        OutputError: the folder cannot be made or written, or the file is a folder or locked.
    """
    for path in paths:
        replacing = False
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.is_dir():
                raise IsADirectoryError(errno.EISDIR, "it is a folder")
            # The writer writes a temp file beside the target, then renames it over the target.
            probe = path.with_name(f".{path.name}.{os.getpid()}.probe")
            os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            probe.unlink()
            if path.exists():
                replacing = True
                with path.open("r+b"):  # a file open in Excel (Windows) refuses this
                    pass
        except OSError as exc:
            raise OutputError(path, save_problem(exc, replacing=replacing)) from None


T = TypeVar("T")


def fallback_paths(path: Path) -> list[Path]:
    """Where a results file goes when its own path fails: beside it, here, the temp folder (timestamped)."""
    now = dt.datetime.now()
    folders = (path.parent, Path.cwd(), Path(tempfile.gettempdir()))
    return [stamped_path(folder / path.name, now) for folder in folders]


def save_with_fallback(save: Callable[[Path], T], path: Path) -> tuple[T, Path, str]:
    """Save to ``path``, else to the first fallback that works (writes were sent: never lose the record).

    Returns:
        What ``save`` returned, where it saved, and a note for the summary ("" when ``path`` worked).

    Raises:
        ResultsNotSavedError: no fallback could be written either.
    """
    try:
        return save(path), path, ""
    except (OutputError, OSError) as first:
        why = first.reason if isinstance(first, OutputError) else save_problem(first, replacing=False)
        for alt in fallback_paths(path):
            with contextlib.suppress(OutputError, OSError):
                note = f"the results could not be saved to {path} ({why}); saved to {alt} instead"
                return save(alt), alt, note
        tried = ", ".join(str(p) for p in fallback_paths(path))
        raise ResultsNotSavedError(
            f"the writes were sent and journalled, but the results could not be saved to {path} ({why}) "
            f"nor to {tried}"
        ) from None


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector for a stage that builds millions of lasting objects.

    Reading and validating a large file creates millions of containers (row lists, cells) that
    all survive; each pass of the collector over them frees nothing, and on a million rows
    those passes cost a third of the read and validate time. Reference counting still frees
    every object as usual: only reference cycles wait, until the collector is back on.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def load_and_validate(options: InputOptions) -> ValidationReport:
    """Read the input file and validate every row."""
    if not options.path.exists():
        raise InputError(f"{options.path}: no such file")
    if options.path.is_dir():
        raise InputError(f"{options.path} is a folder; give a .csv or .xlsx file")
    with collector_paused():
        table = read_table(
            options.path,
            sheets=options.sheets,
            all_sheets=options.all_sheets,
            extra_headers=options.column_map,
            encoding=options.encoding,
        )
        if table.row_count == 0:
            raise InputError(
                f"{options.path.name}: the header is on row {table.source.header_row} "
                "but no data rows follow it"
            )
        hidden = table.hidden_rows if options.skip_hidden_rows else ()
        # The hidden rows are left out of validation (a duplicate of a skipped row is no duplicate)
        # but stay in the table, so each still gets its outcome: skipped, with the reason.
        visible = dataclasses.replace(table, frame=table.frame.drop(index=list(hidden))) if hidden else table
        report = validate_table(
            visible,
            column_map=options.column_map,
            default_region=options.default_region,
            ignore_columns=options.ignore_columns,
        )
        if not hidden:
            return report
        return dataclasses.replace(report, table=table, skipped=dict.fromkeys(hidden, HIDDEN_ROW_REASON))


HIDDEN_ROW_REASON = "hidden in Excel (--skip-hidden-rows)"


def skipped_outcome(report: ValidationReport, row: int) -> RowOutcome | None:
    """The outcome of a row left out on purpose (a hidden row with --skip-hidden-rows), or None."""
    reason = report.skipped.get(row)
    if reason is None:
        return None
    return RowOutcome(
        row=row, status=Status.SKIPPED, action=Action.SKIP, reason=reason, reason_kind="hidden_row"
    )


def input_notes(table: RawTable, skip_hidden_rows: bool = False) -> list[str]:
    """Say how the input was read where the user may not expect it (printed with the summary)."""
    notes = sheet_notes(table.sheets, table.sheets_read)
    for name, text in describe_hidden(table):
        if name == "hidden rows":
            text += (
                " skipped"
                if skip_hidden_rows
                else " imported like the others (--skip-hidden-rows skips them)"
            )
        notes.append(f"{name} in Excel: {text}")
    source = table.source
    if source.encoding_chosen == "detected" and not (source.encoding or "").startswith("utf"):
        notes.append(
            f"text read as {source.encoding} (detected); if letters look wrong, pass --encoding NAME"
        )
    return notes


def reasons_by_row(issues: Iterable[RowIssue]) -> dict[int, list[RowIssue]]:
    """Group issues by Excel row."""
    grouped: dict[int, list[RowIssue]] = collections.defaultdict(list)
    for issue in issues:
        grouped[issue.row].append(issue)
    return grouped


def failed_outcome(row: int, issues: Sequence[RowIssue]) -> RowOutcome:
    """The outcome of a row that failed validation: every problem in one reason."""
    return RowOutcome(
        row=row,
        status=Status.FAILED,
        reason="; ".join(i.message for i in issues),
        reason_kind=issues[0].kind,
    )


VALIDATE_LABELS: Mapping[Status, str] = {Status.NOT_SENT: "valid"}
"""A validate-only run sends nothing by design: its valid rows are "valid", not "not_sent"."""

_VALIDATED_ONLY = RowOutcome(
    row=0, status=Status.NOT_SENT, reason="validated only", reason_kind="validated_only"
)
"""The outcome of every valid row of a validate-only run (its row number aside)."""


def validation_outcomes(report: ValidationReport) -> OutcomeColumns:
    """One outcome per input row of a validate-only run, in input order, as columns."""
    rows = report.table.frame.index.tolist()
    count = len(rows)
    ok = _VALIDATED_ONLY
    # Shared values, not a RowOutcome per row: the valid rows all say the same thing.
    status, reason, kind = [ok.status] * count, [ok.reason] * count, [ok.reason_kind] * count
    grouped = reasons_by_row(report.issues)
    action = [ok.action] * count
    if report.skipped:
        positions = report.table.frame.index.get_indexer(pd.Index(list(report.skipped), dtype="int64"))
        for row, position in zip(report.skipped, positions.tolist(), strict=True):
            skipped = skipped_outcome(report, row)
            if position >= 0 and skipped is not None:
                status[position] = skipped.status
                action[position] = skipped.action
                reason[position] = skipped.reason
                kind[position] = skipped.reason_kind
    positions = report.table.frame.index.get_indexer(pd.Index(list(grouped), dtype="int64"))
    for row, position in zip(grouped, positions.tolist(), strict=True):
        if position >= 0:  # as before: an issue of a row the table does not have adds no outcome
            failed = failed_outcome(row, grouped[row])
            status[position] = failed.status
            reason[position] = failed.reason
            kind[position] = failed.reason_kind
    nothing: list[int | None] = [None] * count
    empty = [""] * count
    return OutcomeColumns(
        row=rows,
        status=status,
        action=action,
        reason=reason,
        reason_kind=kind,
        did_id=nothing,
        routing_id=nothing,
        http_status=nothing,
        attempts=[ok.attempts] * count,
        current=empty,
        proposed=empty,
    )


class OutcomeTally:
    """Counts outcomes by status and keeps the failed rows."""

    def __init__(self, outcomes: OutcomeColumns) -> None:
        self.counts: collections.Counter[Status] = collections.Counter(outcomes.status)
        self.failed_rows: list[int] = list(itertools.compress(outcomes.row, outcomes.failed()))


def top_reasons(
    issues: Iterable[RowIssue], extra: Iterable[str] = (), limit: int = 5
) -> list[tuple[str, int]]:
    """The most common problems as labels for people (validation's and the engine's kinds alike)."""
    counter: collections.Counter[str] = collections.Counter()
    for issue in issues:
        counter[_KIND_TEXT.get(issue.kind, issue.kind)] += 1
    for kind in extra:
        counter[describe_kind(kind)] += 1
    return counter.most_common(limit)


_KIND_TEXT = {
    "scientific_notation": "DID in scientific notation (Excel lost digits)",
    "no_country_code": "DID without a country code",
    "bad_number": "not a valid phone number",
    "extension": "DID with an extension",
    "missing_did": "no DID on the row",
    "missing_mode": "mode missing",
    "bad_mode": "unknown mode",
    "missing_mode_id": "bot or trunk id missing for the mode",
    "id_for_unused_mode": "id filled in for a mode that does not use it",
    "bad_id": "id is not a positive whole number",
    "bad_status": "unknown status",
    "bad_uuid": "connection id is not a UUID",
    "duplicate": "duplicate DID",
    "excel_error": "Excel error in a cell (#N/A, #REF!, ...)",
    "ragged_row": "row has the wrong number of fields",
    "wrong_column": "column does not look like the field its header matched",
}


def write_outputs(
    table: RawTable,
    outcomes: Iterable[RowOutcome] | OutcomeColumns,
    issues: Sequence[RowIssue],
    info: RunInfo,
    results: Path,
    failed: Path,
) -> OutcomeTally:
    """Write the results workbook (streaming) and, when rows failed, the failed-rows file."""
    columns = outcomes if isinstance(outcomes, OutcomeColumns) else OutcomeColumns.from_outcomes(outcomes)
    tally = OutcomeTally(columns)
    write_results(results, table, columns, issues, info)
    if tally.failed_rows:
        write_failed_rows(failed, table, tally.failed_rows, columns.failed_reasons())
    elif failed.exists():
        failed.unlink()  # a stale file from an earlier run would mislead
    return tally


def validate_file(config: ValidateConfig) -> RunSummary:
    """Read and validate a file offline; write the results workbook.

    Returns:
        The summary; ``exit_code`` is 0 when every row is valid and 1 when any failed.

    Raises:
        InputError: the file or an option cannot be used.
    """
    started = now_text()
    results, failed = output_paths(
        config.input.path, config.output, config.failed_out, overwrite=config.overwrite
    )
    check_writable(results, failed)
    report = load_and_validate(config.input)
    info = RunInfo(
        command="validate",
        started=started,
        finished=now_text(),
        options=config.input.describe(),
        status_labels=VALIDATE_LABELS,
        notes=report.notes,
    )
    tally = write_outputs(report.table, validation_outcomes(report), report.issues, info, results, failed)
    return RunSummary(
        rows=report.table.row_count,
        counts=dict(tally.counts),
        top_reasons=top_reasons(report.issues),
        results_path=results,
        failed_path=failed if tally.failed_rows else None,
        exit_code=ExitCode.ROWS_FAILED if tally.failed_rows else ExitCode.OK,
        status_labels=VALIDATE_LABELS,
        notes=[*input_notes(report.table, config.input.skip_hidden_rows), *report.notes],
    )
