"""Read and check a table: the offline job (``validate_file``) and the one way every job reads its
input (``load_and_validate``), with the user's corrections (cell edits, a header row) applied.

Both never raise for bad rows, only for run-level problems (see ``errors.py``): every row's
problems are data in the ``ValidationReport``.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import pandas as pd

from importer.errors import InputError
from importer.jobs.outputs import check_writable, output_paths, write_outputs
from importer.jobs.session import now_text
from importer.jobs.summary import RunSummary, input_notes, top_reasons
from importer.model import RawTable, RowIssue, RowOutcome, RunInfo, Status, ValidationReport
from importer.options import InputOptions, ValidateConfig
from importer.output.results import OutcomeColumns
from importer.read.table import read_table
from importer.validate.rules import table_check
from importer.vocab import Action, ExitCode, ReasonKind
from importer.words import Surface, render_reason

__all__ = [
    "VALIDATE_LABELS",
    "CellEdit",
    "apply_edits",
    "check_table",
    "every_row",
    "failed_outcome",
    "load_and_validate",
    "move_header",
    "read_input",
    "reasons_by_row",
    "skipped_outcome",
    "table_checker",
    "validate_file",
    "validation_outcomes",
]


@dataclass(frozen=True, slots=True)
class CellEdit:
    """One cell of the input corrected by the user; the file itself is never changed."""

    row: int
    """The cell's Excel row."""
    column: int
    """The input column's position, from 0 (headers can repeat or be blank)."""
    value: str


def load_and_validate(options: InputOptions, edits: Sequence[CellEdit] = ()) -> ValidationReport:
    """Read the input file and validate every row: the one way a job reads and checks its table.

    Every option is honoured: the sheet, the encoding, ``--map`` and ``--ignore-column``, the
    default region, hidden rows and a header row the user chose (``options.header_row``).

    Args:
        options: How to read and check the file.
        edits: Cell corrections applied to the table read, in order (a later edit of a cell
            wins), before validation. The journal keys runs by the file's own sha256, so an
            edited table still resumes its earlier runs.

    Raises:
        InputError: the file, a sheet, an option, a header row or an edit cannot be used, or
            the table has no data rows.
    """
    return check_table(read_input(options), options, edits)


def read_input(options: InputOptions) -> RawTable:
    """Read the input file as ``options`` say (sheets, encoding, header row), without checking rows.

    Raises:
        InputError: the file, a sheet, an option or the header row cannot be used, or the table
            has no data rows.
    """
    if not options.path.exists():
        raise InputError(f"{options.path}: no such file")
    if options.path.is_dir():
        raise InputError(f"{options.path} is a folder; give a .csv or .xlsx file")
    table = read_table(
        options.path,
        sheets=options.sheets,
        all_sheets=options.all_sheets,
        extra_headers=options.column_map,
        encoding=options.encoding,
    )
    if options.header_row is not None and options.header_row != table.source.header_row:
        table = move_header(table, options.header_row)
    if table.row_count == 0:
        raise InputError(
            f"{options.path.name}: the header is on row {table.source.header_row} but no data rows follow it"
        )
    return table


def check_table(table: RawTable, options: InputOptions, edits: Sequence[CellEdit] = ()) -> ValidationReport:
    """Validate a table already read (``read_input``), with ``edits`` laid over it first.

    Raises:
        InputError: an edit names a cell the table does not have, the columns cannot be mapped,
            or the region is unknown.
    """
    return table_checker(table, options, edits)()


def table_checker(
    table: RawTable, options: InputOptions, edits: Sequence[CellEdit] = ()
) -> Callable[[], ValidationReport]:
    """``check_table`` in two steps: the edits and options checked now, the rows when it is called.

    A run checks the rows while the API builds the account's answer (``inventory.read_state``);
    an unusable option or edit still stops it before anything is sent.

    Raises:
        InputError: as ``check_table``, at once.
    """
    table = apply_edits(table, edits)
    hidden = table.hidden_rows if options.skip_hidden_rows else ()
    # The hidden rows are left out of validation (a duplicate of a skipped row is no duplicate)
    # but stay in the table, so each still gets its outcome: skipped, with the reason.
    visible = dataclasses.replace(table, frame=table.frame.drop(index=list(hidden))) if hidden else table
    check_rows = table_check(
        visible,
        column_map=options.column_map,
        default_region=options.default_region,
        ignore_columns=options.ignore_columns,
    )

    def check() -> ValidationReport:
        report = check_rows()
        if not hidden:
            return report
        return dataclasses.replace(
            report, table=table, skipped={**dict.fromkeys(hidden, ReasonKind.HIDDEN_ROW), **report.skipped}
        )

    return check


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
    return dataclasses.replace(
        table,
        source=dataclasses.replace(table.source, header_row=row),
        headers=headers,
        frame=frame.loc[frame.index > row],
        row_problems={r: text for r, text in table.row_problems.items() if r > row},
        hidden_rows=tuple(r for r in table.hidden_rows if r > row),
        cell_notes={(r, c): text for (r, c), text in table.cell_notes.items() if r > row},
    )


def apply_edits(table: RawTable, edits: Sequence[CellEdit]) -> RawTable:
    """Return a table with the edited cells (in order, so a later edit of a cell wins).

    Raises:
        InputError: an edit names a row or column the table does not have.
    """
    if not edits:
        return table
    for edit in edits:
        if edit.row not in table.frame.index:
            raise InputError(f"row {edit.row} is not a data row of the table; it cannot be edited")
        if edit.column not in table.frame.columns:
            raise InputError(f"the table has no column {edit.column + 1}; row {edit.row} cannot be edited")
    frame = table.frame.copy(deep=False)
    for column in {e.column for e in edits}:
        frame[column] = frame[column].copy()  # only the edited columns are copied
    for edit in edits:
        frame.at[edit.row, edit.column] = edit.value
    return dataclasses.replace(table, frame=frame)


def skipped_outcome(report: ValidationReport, row: int) -> RowOutcome | None:
    """The outcome of a row left out on purpose (hidden with --skip-hidden-rows, a footer), or None."""
    kind = report.skipped.get(row)
    if kind is None:
        return None
    reason = render_reason(kind, Surface.CLI)
    return RowOutcome(row=row, status=Status.SKIPPED, action=Action.SKIP, reason=reason, reason_kind=kind)


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
        did_number=_e164(report, rows),
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


def _e164(report: ValidationReport, rows: list[int]) -> list[str]:
    """Each row's DID number as E.164 ("+" and digits), "" where it did not read."""
    numbers = report.did_numbers
    if numbers is None:
        return [""] * len(rows)
    found = numbers.reindex(rows) if len(numbers) != len(rows) else numbers
    return ["" if n is None or n != n else "+" + n for n in found.tolist()]  # n != n: NaN of reindex


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
    tally = write_outputs(
        report.table,
        validation_outcomes(report),
        report.issues,
        info,
        results,
        failed,
        apart=config.own_process,
    )
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
