"""Typed data that crosses stage boundaries: read -> validate -> plan -> apply -> results."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import pandas as pd

from importer.read.sheets import SheetInfo
from importer.vocab import Action, ReasonKind, Status
from importer.words import IssueKind, Note, Surface, render, render_note

__all__ = [
    "MACHINE_FACTS",
    "Action",
    "RawTable",
    "RoutingRow",
    "RowIssue",
    "RowOutcome",
    "RunFacts",
    "RunInfo",
    "SheetInfo",
    "SourceInfo",
    "Status",
    "ValidationReport",
]


ROW_KEY_STRIDE = 10_000_000
"""Rows of a table read from several sheets are keyed ``position * ROW_KEY_STRIDE + Excel row``,
``position`` the sheet's place in ``RawTable.row_sheets``: above Excel's 1,048,576 rows, so the
keys of different sheets never meet, and the first sheet's rows keep their Excel numbers."""


@dataclass(frozen=True, slots=True)
class SourceInfo:
    """Where a table came from and how it was read."""

    path: Path
    format: str
    """'csv', 'xlsx', 'xlsm', 'xls' or 'ods'."""
    sha256: str
    sheet: str | None = None
    """The sheet read; when several were read, their names joined by ", " (``RawTable.row_sheets``)."""
    encoding: str | None = None
    delimiter: str | None = None
    header_row: int = 1
    """The Excel row number of the header (1 unless title rows sit above it)."""
    first_column: int = 0
    """The 0-based sheet column of the table's first column (a sheet may start at column C)."""
    encoding_chosen: str = ""
    """How ``encoding`` was chosen: "detected", "byte order mark", "--encoding" or "" (plain UTF-8)."""


@dataclass(frozen=True, slots=True, eq=False)
class RawTable:
    """A spreadsheet as the user sees it: every cell as text, exactly as read.

    ``frame`` has one column per input column, labelled 0..n-1 (headers can repeat or be
    blank, so they are kept apart in ``headers``), every value a ``str`` ("" for an empty
    cell), and its index is the Excel row number (header row 1, first data row 2); a table read
    from several sheets keys its rows by sheet and Excel row instead (``origin`` tells both).
    Fully blank rows are not in it.
    """

    source: SourceInfo
    headers: tuple[str, ...]
    frame: pd.DataFrame
    row_problems: Mapping[int, str] = field(default_factory=dict)
    """Structural problems of single rows (e.g. a ragged CSV row), by Excel row number."""
    hidden_rows: tuple[int, ...] = ()
    """Excel row numbers of the table's rows hidden in Excel (by hand or by a filter)."""
    hidden_columns: tuple[int, ...] = ()
    """Positions (0..n-1) of the table's columns hidden in Excel."""
    cell_notes: Mapping[tuple[int, int], str] = field(default_factory=dict)
    """What a cell's text alone does not say, by (Excel row, column position): e.g. that the
    cell is part of a merged range whose value Excel keeps in its first cell."""
    sheets: tuple[SheetInfo, ...] = ()
    """Every visible sheet of the workbook, with its row count and whether it matches (() for text)."""
    row_sheets: tuple[str, ...] = ()
    """The sheets the rows come from when several were read, in key order (see ``ROW_KEY_STRIDE``);
    () when the table is one sheet or a text file, its index then being plain Excel row numbers."""

    @property
    def row_count(self) -> int:
        return len(self.frame)

    @property
    def sheets_read(self) -> tuple[str, ...]:
        """The sheets the table was read from, in order (() for text)."""
        return self.row_sheets or ((self.source.sheet,) if self.source.sheet is not None else ())

    def origin(self, row: int) -> tuple[str | None, int]:
        """Return the sheet (None for text) and the Excel row number of the row keyed ``row``."""
        if not self.row_sheets:
            return self.source.sheet, row
        position, excel_row = divmod(row, ROW_KEY_STRIDE)
        return self.row_sheets[position], excel_row

    def row_name(self, row: int) -> str:
        """Name a row for people: 'row 5', or 'row 5 of sheet "UK"' when several sheets were read."""
        sheet, excel_row = self.origin(row)
        return f'row {excel_row} of sheet "{sheet}"' if self.row_sheets else f"row {excel_row}"


@dataclass(frozen=True, slots=True)
class RowIssue:
    """One problem of one row, as data: its kind and the params its words are rendered from."""

    row: int
    column: str
    """The input's header text (or the field name when the column is absent)."""
    value: str
    kind: IssueKind
    """What is wrong (a ``StrEnum``: its code counts and is stored, its label is read)."""
    params: Mapping[str, str] = field(default_factory=dict, hash=False)
    """What the kind's template needs (``column``, ``value``, ``region``, ``variant``, ...)."""

    @property
    def message(self) -> str:
        """The problem in the CLI's words (``words.render`` renders it for any surface)."""
        return render(self, Surface.CLI)


class RoutingRow(NamedTuple):
    """A valid row, normalised to the API's types (a named tuple: a plan reads 100,000 of them)."""

    row: int
    did_id: int | None
    did_number: str | None
    for_inbound_call: int
    for_outbound_call: int
    inbound_websocket_bot_id: int | None = None
    inbound_sip_trunk_id: int | None = None
    outbound_websocket_bot_id: int | None = None
    outbound_sip_trunk_id: int | None = None
    status: int = 1
    connection_id: str | None = None

    def record(self) -> dict[str, int | None]:
        """The routing fields (modes, ids, status) as a dict, ids of unused modes None."""
        return dict(zip(_RECORD_FIELDS, self.record_values(), strict=True))

    def record_values(self) -> tuple[int | None, ...]:
        """``record()``'s values alone, in its order (a key: rows share a handful of records)."""
        return self[3:10]  # for_inbound_call ... status, the fields _RECORD_FIELDS names


_RECORD_FIELDS = RoutingRow._fields[3:10]
"""The routing fields, modes to status: one run of a RoutingRow's fields."""


class RowOutcome(NamedTuple):
    """The final word on one input row.

    A named tuple, not a frozen dataclass: a run makes one per row (100,000 for a large file)
    and a tuple is made about three times faster, as immutable and read by name alike.
    """

    row: int
    status: Status
    action: Action = Action.NONE
    reason: str = ""
    reason_kind: str = ""
    did_id: int | None = None
    routing_id: int | None = None
    http_status: int | None = None
    attempts: int = 0
    current: str = ""
    """Dry run: the routing as it is now (for updates)."""
    proposed: str = ""
    """Dry run: the routing the row would write (for creates and updates)."""


@dataclass(frozen=True, slots=True)
class ValidationReport:
    """What validation made of a table."""

    table: RawTable
    valid: Sequence[RoutingRow]
    """The valid rows in input order (built on first use: a validate-only run never needs them)."""
    issues: tuple[RowIssue, ...]
    mapping: Mapping[str, int]
    """Field name -> input column position, for the fields the file has."""
    skipped: Mapping[int, ReasonKind] = field(default_factory=dict)
    """Rows left out of validation on purpose (hidden, with ``--skip-hidden-rows``; footers): row -> why."""
    findings: tuple[Note, ...] = ()
    """File-level findings for the summary, e.g. a column that looks wrongly matched (as data)."""
    did_numbers: pd.Series | None = None
    """Each validated row's DID number as E.164 digits without "+" (None where it did not read), by
    Excel row: what a national number became under the default region."""

    @property
    def notes(self) -> tuple[str, ...]:
        """The findings in the CLI's words."""
        return self.notes_for(Surface.CLI)

    def notes_for(self, surface: Surface) -> tuple[str, ...]:
        """The findings in the words of ``surface`` (the page names its own controls)."""
        return tuple(render_note(n, surface) for n in self.findings)

    @property
    def failed_rows(self) -> frozenset[int]:
        return frozenset(i.row for i in self.issues)


MACHINE_LINES = frozenset({"path", "os_user", "host", "journal"})
"""Summary lines that say where on a machine a job ran: the CLI's, never a service's."""


@dataclass(frozen=True, slots=True)
class RunFacts:
    """Where a job ran, as its Summary sheet states it.

    The CLI states its machine (the default): the input's path, the OS user, the host and the
    journal's path, so a results file found later says where it came from. A service's workbooks
    leave its server: it names the file as uploaded and states its own lines (its job id, who
    uploaded: ``RunInfo.audit``), never its paths, user or host (``MACHINE_LINES``).
    """

    file: str | None = None
    """The input's name as its user knows it (None: the name of the path read)."""
    machine: bool = True
    """State the machine's lines (``MACHINE_LINES``)."""


MACHINE_FACTS = RunFacts()
"""The CLI's facts: the machine it runs on."""


@dataclass(frozen=True, slots=True)
class RunInfo:
    """What the Summary sheet says about a run besides the counts."""

    command: str
    started: str
    finished: str
    options: Mapping[str, str]
    audit: Mapping[str, str] = field(default_factory=dict)
    """Who/where: OS user, host, key's last 4, connection, base URL."""
    status_labels: Mapping[Status, str] = field(default_factory=dict)
    """Words shown instead of status codes in the workbook (validate: not_sent -> valid)."""
    notes: tuple[str, ...] = ()
    """File-level findings for the Summary sheet's Notes (e.g. a likely wrong column match)."""
    facts: RunFacts = field(default_factory=RunFacts)
    """Where the job ran: the machine (the CLI) or a service's own facts."""
