"""Write the results workbook: the Results sheet (every row's outcome), its Errors sheet, and the
Summary sheet (``summary_sheet``); ``OutcomeColumns`` carries the outcomes into it.

The workbook is streamed with xlsxwriter (``sheet``) to a temporary file in the target folder
that replaces the target only when complete (``paths.atomic_workbook``).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from xlsxwriter.utility import xl_col_to_name

from importer.errors import InputError
from importer.model import Action, RawTable, RowIssue, RowOutcome, RunInfo, Status
from importer.output.paths import _refuse_input, atomic_workbook
from importer.output.sheet import EXCEL_MAX_COLUMNS, EXCEL_MAX_ROWS, _Column, _column, _write_table
from importer.output.summary_sheet import _summary_items, _write_summary
from importer.vocab import ReasonKind
from importer.words import Surface, render, render_reason

RESULT_COLUMNS = (
    "import_status",
    "import_action",
    "import_reason",
    "import_did_id",
    "import_routing_id",
    "import_http_status",
    "import_attempts",
)
DRY_RUN_COLUMNS = ("import_current", "import_proposed")
ROW_COLUMN = "import_row"
"""Last column of the Results sheet: the input's Excel row number, to find the row in the file."""
SHEET_COLUMN = "import_sheet"
"""Before ``import_row`` when several sheets were read: the sheet the row is on."""

_OWN_COLUMNS = frozenset((*RESULT_COLUMNS, *DRY_RUN_COLUMNS, SHEET_COLUMN, ROW_COLUMN))
_FAILED_FILL = {"bg_color": "#FFC7CE", "font_color": "#9C0006"}

_ErrorLine = tuple[int, str, str, str, str]
"""row, column, value, message, kind"""


@dataclass(frozen=True, slots=True)
class OutcomeColumns:
    """Every row's outcome as columns, one sequence per ``RowOutcome`` field, in table order.

    A validate-only run of a million rows builds these from a few shared values instead of a
    million ``RowOutcome`` objects; ``from_outcomes`` turns outcomes of any run into columns.
    """

    row: Sequence[int]
    status: Sequence[Status]
    action: Sequence[Action]
    reason: Sequence[str]
    reason_kind: Sequence[str]
    did_id: Sequence[int | None]
    routing_id: Sequence[int | None]
    http_status: Sequence[int | None]
    attempts: Sequence[int]
    current: Sequence[str]
    proposed: Sequence[str]
    did_number: Sequence[str] | None = None
    """Validate only: each row's DID as E.164 ("+14805550123"; "" where it did not read): what a
    national number became under ``--default-region`` before anything is sent."""

    @classmethod
    def from_outcomes(cls, outcomes: Iterable[RowOutcome]) -> OutcomeColumns:
        """Gather outcomes into columns.

        Args:
            outcomes: One outcome per row, in table order.

        Returns:
            The same outcomes as columns.
        """
        items = list(outcomes)
        return cls(
            row=[o.row for o in items],
            status=[o.status for o in items],
            action=[o.action for o in items],
            reason=[o.reason for o in items],
            reason_kind=[o.reason_kind for o in items],
            did_id=[o.did_id for o in items],
            routing_id=[o.routing_id for o in items],
            http_status=[o.http_status for o in items],
            attempts=[o.attempts for o in items],
            current=[o.current for o in items],
            proposed=[o.proposed for o in items],
        )

    def __len__(self) -> int:
        return len(self.row)

    def failed(self) -> list[bool]:
        """Tell, row by row, whether the row failed."""
        return [s is Status.FAILED for s in self.status]

    def failed_reasons(self) -> dict[int, str]:
        """Map each failed row's Excel row number to its reason."""
        failed = self.failed()
        return dict(
            zip(itertools.compress(self.row, failed), itertools.compress(self.reason, failed), strict=True)
        )


def in_words(columns: OutcomeColumns, issues: Sequence[RowIssue], surface: Surface) -> OutcomeColumns:
    """The outcomes with their reasons in the words of ``surface`` (the CLI's are already so).

    A failed row's reason is its issues, rendered again; a reason kind whose words name a
    control (hidden rows, ``--force``) is rendered again when its reason is that kind's words.
    """
    if surface is Surface.CLI:
        return columns
    by_row: dict[int, list[str]] = {}
    for issue in issues:
        by_row.setdefault(issue.row, []).append(render(issue, surface))
    reasons = list(columns.reason)
    for k, (row, kind, reason) in enumerate(
        zip(columns.row, columns.reason_kind, columns.reason, strict=True)
    ):
        if row in by_row:
            reasons[k] = "; ".join(by_row[row])
            continue
        member = ReasonKind._value2member_map_.get(kind)
        if isinstance(member, ReasonKind) and reason == render_reason(member, Surface.CLI):
            reasons[k] = render_reason(member, surface)
    return dataclasses.replace(columns, reason=reasons)


def write_results(
    path: Path,
    table: RawTable,
    outcomes: Iterable[RowOutcome] | OutcomeColumns,
    issues: Sequence[RowIssue],
    info: RunInfo,
    surface: Surface = Surface.CLI,
) -> None:
    """Write the results workbook: sheets Results, Summary and Errors.

    Args:
        path: The workbook to write; replaced atomically, never the input file.
        table: The input as read.
        outcomes: Exactly one outcome per table row, in table (Excel row) order, as outcomes
            or as columns.
        issues: Every validation problem found (several per row are fine).
        info: The run's command, times, options and audit items.
        surface: Whose words the reasons and problems are in (a web job's workbook: the page's).

    Raises:
        InputError: ``path`` is the input file, or the table is larger than a sheet can hold.
        ValueError: ``outcomes`` does not match the table's rows one to one.
    """
    _refuse_input(path, table)
    outcome_columns = in_words(
        outcomes if isinstance(outcomes, OutcomeColumns) else OutcomeColumns.from_outcomes(outcomes),
        issues,
        surface,
    )
    excel_rows = table.frame.index.tolist()
    if list(outcome_columns.row) != excel_rows:
        raise ValueError("write_results needs exactly one outcome per table row, in table order")
    if len(excel_rows) + 1 > EXCEL_MAX_ROWS:
        raise InputError(f"{len(excel_rows)} rows do not fit in one Excel sheet ({EXCEL_MAX_ROWS - 1} max)")

    dry_run = any(outcome_columns.current) or any(outcome_columns.proposed)
    columns = _input_columns(table.headers, table.frame)
    columns += [
        _column(header, values)
        for header, values in _result_values(outcome_columns, dry_run, info.status_labels)
    ]
    columns += _origin_columns(table, excel_rows)
    if len(columns) > EXCEL_MAX_COLUMNS:
        raise InputError(f"{len(columns)} columns do not fit in one Excel sheet ({EXCEL_MAX_COLUMNS} max)")
    failed = outcome_columns.failed()
    error_lines = _error_lines(outcome_columns, failed, issues, surface)

    with atomic_workbook(path) as book:
        bold = book.add_format({"bold": True})
        results = book.add_worksheet("Results")
        summary = book.add_worksheet("Summary")
        errors = book.add_worksheet("Errors")
        _write_table(results, columns, bold)
        if any(failed):
            _highlight_failed(results, book, columns, info.status_labels)
        errors_written = _write_errors(errors, error_lines, bold, table)
        _write_summary(
            summary,
            _summary_items(table, outcome_columns, issues, info, columns, len(error_lines) - errors_written),
            bold,
        )


# --- the Results sheet ---------------------------------------------------------------------------------


def _highlight_failed(sheet: Any, book: Any, columns: list[_Column], labels: Mapping[Status, str]) -> None:
    """Fill every failed row red: one conditional format on the table, whose status cell says failed.

    Excel, LibreOffice and Google Sheets show it as a fill of each cell of those rows, and it
    follows the rows when they are sorted or filtered; a fill written on each cell cost about
    1 s for 20,000 failed rows of a 100,000-row dry run.
    """
    status = next(c for c, column in enumerate(columns) if column.header == "import_status")
    label = labels.get(Status.FAILED, Status.FAILED.value).replace('"', '""')
    last_row = len(columns[status].values)
    sheet.conditional_format(
        1,
        0,
        last_row,
        len(columns) - 1,
        {
            "type": "formula",
            "criteria": f'=${xl_col_to_name(status)}2="{label}"',
            "format": book.add_format(_FAILED_FILL),
        },
    )


def _origin_columns(table: RawTable, rows: Sequence[int]) -> list[_Column]:
    """Where each row is in the input: its Excel row, after its sheet when several sheets were read."""
    origins = [table.origin(r) for r in rows]
    row_column = _column(ROW_COLUMN, [str(excel_row) for _sheet, excel_row in origins])
    if not table.row_sheets:
        return [row_column]
    return [_column(SHEET_COLUMN, [sheet or "" for sheet, _row in origins]), row_column]


def _input_columns(headers: Sequence[str], frame: pd.DataFrame) -> list[_Column]:
    """Return the input's columns, in its order, with its header texts and cell texts.

    Columns this tool wrote itself (``import_status`` ... ``import_row``, in a failed-rows or
    results file imported again) are left out: the new ones replace them instead of repeating them.
    """
    return [
        _column(header, frame[label].tolist())
        for header, label in zip(headers, frame.columns, strict=True)
        if header not in _OWN_COLUMNS
    ]


class _Texts(dict[object, str]):
    """Cell texts of values, each distinct value converted once (None is an empty cell)."""

    def __missing__(self, key: object) -> str:
        self[key] = text = "" if key is None else str(getattr(key, "value", key))
        return text

    def of(self, values: Iterable[object]) -> list[str]:
        # map over the bound lookup runs in C; most columns repeat a handful of values.
        return list(map(self.__getitem__, values))


def _id_texts(values: Iterable[int | None]) -> list[str]:
    """Cell texts of ids: a different value on almost every row, so each is converted as it comes."""
    return ["" if v is None else str(v) for v in values]


def _result_values(
    outcomes: OutcomeColumns, dry_run: bool, labels: Mapping[Status, str]
) -> Iterator[tuple[str, list[str]]]:
    yield "import_status", _Texts(labels.items()).of(outcomes.status)
    yield "import_action", _Texts().of(outcomes.action)
    yield "import_reason", list(outcomes.reason)
    if outcomes.did_number is not None:
        yield "import_did_number", list(outcomes.did_number)
    yield "import_did_id", _id_texts(outcomes.did_id)
    yield "import_routing_id", _id_texts(outcomes.routing_id)
    yield "import_http_status", _Texts().of(outcomes.http_status)
    yield "import_attempts", _Texts().of(outcomes.attempts)
    if dry_run:
        yield "import_current", list(outcomes.current)
        yield "import_proposed", list(outcomes.proposed)


# --- the Errors sheet -----------------------------------------------------------------------------------

_ERROR_HEADERS = ("row", "column", "value", "message", "kind")
_ERROR_WIDTHS = (8, 24, 24, 80, 18)


def _error_lines(
    outcomes: OutcomeColumns, failed: list[bool], issues: Sequence[RowIssue], surface: Surface
) -> list[_ErrorLine]:
    """List every problem: each issue, plus each failed row's reason when no issue explains it."""
    lines: list[_ErrorLine] = [(i.row, i.column, i.value, render(i, surface), str(i.kind)) for i in issues]
    explained = {i.row for i in issues}
    lines += [
        (outcomes.row[k], "", "", outcomes.reason[k], outcomes.reason_kind[k])
        for k in itertools.compress(range(len(failed)), failed)
        if outcomes.row[k] not in explained
    ]
    lines.sort(key=lambda line: line[0])  # stable: a row's issues keep their order
    return lines


def _write_errors(sheet: Any, lines: list[_ErrorLine], bold: Any, table: RawTable) -> int:
    """Write the problem lines (as many as fit) and return how many were written."""
    kept = lines[: EXCEL_MAX_ROWS - 1]
    columns = [
        _column(header, [str(line[k]) for line in kept], min_width=width)
        for k, (header, width) in enumerate(zip(_ERROR_HEADERS, _ERROR_WIDTHS, strict=True))
    ]
    if table.row_sheets:  # the row keys of several sheets, as each sheet's name and Excel row
        origins = [table.origin(line[0]) for line in kept]
        columns[0] = _column("row", [str(row) for _sheet, row in origins], min_width=_ERROR_WIDTHS[0])
        columns.insert(0, _column("sheet", [sheet or "" for sheet, _row in origins], min_width=16))
    _write_table(sheet, columns, bold)
    return len(kept)
