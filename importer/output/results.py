"""Write the results workbook (every row's outcome) and the failed-rows file.

Both files are streamed with xlsxwriter in ``constant_memory`` mode, every cell from the
input written as text with ``write_string`` (never a formula, whatever it starts with),
to a temporary file in the target folder that replaces the target only when complete.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import errno
import itertools
import os
import re
import secrets
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import xlsxwriter
import xlsxwriter.exceptions

from importer.errors import InputError, OutputError
from importer.model import Action, RawTable, RowIssue, RowOutcome, RunInfo, Status
from importer.read.reader import describe_hidden
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

EXCEL_MAX_ROWS = 1_048_576
EXCEL_MAX_COLUMNS = 16_384
EXCEL_MAX_CELL = 32_767
"""Excel's cell limit, counted in UTF-16 code units."""
TRUNCATION_MARKER = " …[truncated: cell longer than Excel's 32767 characters]"

_OWN_COLUMNS = frozenset((*RESULT_COLUMNS, *DRY_RUN_COLUMNS, ROW_COLUMN))
_MIN_WIDTH = 6
_MAX_WIDTH = 60
_WORKBOOK_OPTIONS = {"constant_memory": True}
_FAILED_FILL = {"bg_color": "#FFC7CE", "font_color": "#9C0006"}
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")

_StringWriter = Callable[..., int]
_ErrorLine = tuple[int, str, str, str, str]
"""row, column, value, message, kind"""


@dataclass(frozen=True, slots=True)
class _Column:
    """One output column: its header and its cleaned cell texts."""

    header: str
    values: list[str]
    truncated: int
    width: float


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


def default_paths(input_path: Path) -> tuple[Path, Path]:
    """Return where the results and failed-rows workbooks go by default.

    Args:
        input_path: The imported file.

    Returns:
        ``(<dir>/<stem>.results.xlsx, <dir>/<stem>.failed.xlsx)``; neither can equal the input,
        since both end in a suffix the input's own name cannot end in.
    """
    folder, stem = input_path.parent, input_path.stem
    return folder / f"{stem}.results.xlsx", folder / f"{stem}.failed.xlsx"


def stamped_path(path: Path, when: dt.datetime) -> Path:
    """Return a free name beside ``path`` with a timestamp: ``x.results.xlsx`` -> ``x.results.<stamp>.xlsx``.

    Args:
        path: The name that is taken (``<stem>.results.xlsx``).
        when: The time to stamp (local time, to the second).

    Returns:
        ``<stem>.results.<YYYYmmdd-HHMMSS>.xlsx``, with ``-2``, ``-3``... added when that is taken too
        (the failed-rows name that goes with it, by ``failed_path_for``, must be free as well).
    """
    stem = path.name[: -len(".xlsx")] if path.name.lower().endswith(".xlsx") else path.name
    stamp = when.strftime("%Y%m%d-%H%M%S")
    for n in itertools.count(1):
        candidate = path.with_name(f"{stem}.{stamp}{'' if n == 1 else f'-{n}'}.xlsx")
        if not candidate.exists() and not failed_path_for(candidate).exists():
            return candidate
    raise AssertionError("unreachable")  # pragma: no cover


_RESULTS_NAME = re.compile(r"(?P<stem>.*)\.results(?P<stamp>\.\d{8}-\d{6}(?:-\d+)?)?\.xlsx", re.IGNORECASE)


def failed_path_for(results: Path) -> Path:
    """Return the failed-rows file that goes with a results workbook, beside it.

    Args:
        results: The results workbook.

    Returns:
        ``x.results.xlsx`` -> ``x.failed.xlsx``, ``x.results.<stamp>.xlsx`` -> ``x.failed.<stamp>.xlsx``,
        any other ``x.xlsx`` -> ``x.failed.xlsx``.
    """
    match = _RESULTS_NAME.fullmatch(results.name)
    if match:
        return results.with_name(f"{match['stem']}.failed{match['stamp'] or ''}.xlsx")
    name = results.name
    stem = name[: -len(".xlsx")] if name.lower().endswith(".xlsx") else name
    return results.with_name(f"{stem}.failed.xlsx")


def check_workbook_name(path: Path, option: str = "-o") -> None:
    """Refuse an output name that does not end in .xlsx: the tool writes only workbooks.

    Raises:
        InputError: the name ends otherwise (``out.csv`` would be a workbook named .csv).
    """
    if path.suffix.lower() != ".xlsx":
        raise InputError(
            f"{path.name}: results are always an Excel workbook; give {option} a name ending in .xlsx "
            f"(e.g. {path.with_suffix('.xlsx').name})"
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
    columns.append(_column(ROW_COLUMN, [str(r) for r in excel_rows]))
    if len(columns) > EXCEL_MAX_COLUMNS:
        raise InputError(f"{len(columns)} columns do not fit in one Excel sheet ({EXCEL_MAX_COLUMNS} max)")
    failed = outcome_columns.failed()
    error_lines = _error_lines(outcome_columns, failed, issues, surface)

    with atomic_workbook(path) as book:
        bold = book.add_format({"bold": True})
        fill = book.add_format(_FAILED_FILL)
        results = book.add_worksheet("Results")
        summary = book.add_worksheet("Summary")
        errors = book.add_worksheet("Errors")
        _write_table(results, columns, bold, fill, failed)
        errors_written = _write_errors(errors, error_lines, bold)
        _write_summary(
            summary,
            _summary_items(table, outcome_columns, issues, info, columns, len(error_lines) - errors_written),
            bold,
        )


FAILED_COLUMNS = ("import_reason", ROW_COLUMN)
"""Added after the input's columns in the failed-rows file: why the row failed, and its row in the input."""


def write_failed_rows(
    path: Path, table: RawTable, rows: Collection[int], reasons: Mapping[int, str] | None = None
) -> None:
    """Write only the given rows, in the input's own columns and headers, ready to fix and re-import.

    The input's columns come first, unchanged, so column letters stay those of the input; then
    ``import_reason`` and ``import_row`` (the row's number in the input), which the next import
    carries along as ordinary columns.

    Args:
        path: The workbook to write; replaced atomically, never the input file.
        table: The input as read.
        rows: Excel row numbers of the rows to keep (rows of ``table``).
        reasons: Each row's reason (a row not in it gets an empty reason).

    Raises:
        InputError: ``path`` is the input file.
        ValueError: A row number is not a row of the table.
    """
    _refuse_input(path, table)
    wanted = set(rows)
    index = table.frame.index
    missing = wanted.difference(index.tolist())
    if missing:
        raise ValueError(f"rows not in the table: {sorted(missing)[:10]}")
    kept = table.frame[index.isin(wanted)]
    columns = _input_columns(table.headers, kept)
    numbers = kept.index.tolist()
    reason_header, row_header = FAILED_COLUMNS
    columns.append(_column(reason_header, [(reasons or {}).get(r, "") for r in numbers]))
    columns.append(_column(row_header, [str(r) for r in numbers]))
    with atomic_workbook(path) as book:
        text = book.add_format({"num_format": "@"})
        bold = book.add_format({"bold": True, "num_format": "@"})
        sheet = book.add_worksheet(_sheet_name(table.source.sheet))
        # Text-formatted columns keep the digits of numbers the user types in while fixing rows.
        _write_table(sheet, columns, bold, None, [False] * len(wanted), column_format=text)


# --- the Results sheet ---------------------------------------------------------------------------------


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


def _result_values(
    outcomes: OutcomeColumns, dry_run: bool, labels: Mapping[Status, str]
) -> Iterator[tuple[str, list[str]]]:
    yield "import_status", _Texts(labels.items()).of(outcomes.status)
    yield "import_action", _Texts().of(outcomes.action)
    yield "import_reason", list(outcomes.reason)
    if outcomes.did_number is not None:
        yield "import_did_number", list(outcomes.did_number)
    yield "import_did_id", _Texts().of(outcomes.did_id)
    yield "import_routing_id", _Texts().of(outcomes.routing_id)
    yield "import_http_status", _Texts().of(outcomes.http_status)
    yield "import_attempts", _Texts().of(outcomes.attempts)
    if dry_run:
        yield "import_current", list(outcomes.current)
        yield "import_proposed", list(outcomes.proposed)


def _column(header: str, values: list[str], min_width: int = _MIN_WIDTH) -> _Column:
    """Make cell texts safe for Excel and size the column from them."""
    truncated = 0
    longest = max(map(len, values), default=0)
    # A whole-column encode is C-speed; only columns that fail it pay for a per-cell fix.
    try:
        "".join(values).encode("utf-8")
    except UnicodeEncodeError:
        values = [_LONE_SURROGATE.sub("\ufffd", v) for v in values]
    # Half the limit in characters cannot exceed the limit in UTF-16 units.
    if longest > EXCEL_MAX_CELL // 2:
        fitted = [_fit_cell(v) for v in values]
        truncated = sum(a is not b for a, b in zip(values, fitted, strict=True))
        values = fitted
    width = min(max(len(header) + 2, min(longest, _MAX_WIDTH) + 1, min_width), max(_MAX_WIDTH, min_width))
    return _Column(_fit_cell(_LONE_SURROGATE.sub("\ufffd", header)), values, truncated, width)


def _fit_cell(value: str) -> str:
    """Cut a string to Excel's cell limit with a visible marker; return it unchanged when it fits."""
    if len(value) <= EXCEL_MAX_CELL // 2:
        return value
    units = value.encode("utf-16-le")
    if len(units) // 2 <= EXCEL_MAX_CELL:
        return value
    room = (EXCEL_MAX_CELL - len(TRUNCATION_MARKER.encode("utf-16-le")) // 2) * 2
    # "ignore" drops half of a surrogate pair cut at the boundary.
    return units[:room].decode("utf-16-le", errors="ignore") + TRUNCATION_MARKER


def _write_table(
    sheet: Any,
    columns: list[_Column],
    header_format: Any,
    fill: Any,
    highlighted: list[bool],
    *,
    column_format: Any = None,
) -> None:
    """Stream a header and rows of text cells; highlighted rows get ``fill`` on every cell."""
    last_col = len(columns) - 1
    for c, column in enumerate(columns):
        sheet.set_column(c, c, column.width, column_format)
        sheet.write_string(0, c, column.header, header_format)
    sheet.freeze_panes(1, 0)
    sheet.autofilter(0, 0, len(highlighted), last_col)

    write: _StringWriter = sheet.write_string
    blank: _StringWriter = sheet.write_blank
    rows = zip(*(column.values for column in columns), strict=True) if columns else iter(())
    for r, (values, marked) in enumerate(zip(rows, highlighted, strict=True), start=1):
        if marked:
            for c, value in enumerate(values):
                if value:
                    write(r, c, value, fill)
                else:
                    blank(r, c, None, fill)
        else:
            # Empty cells are left out: they read back as empty and keep the file small.
            for c, value in enumerate(values):
                if value:
                    write(r, c, value)


# --- the Errors and Summary sheets ---------------------------------------------------------------------

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


def _write_errors(sheet: Any, lines: list[_ErrorLine], bold: Any) -> int:
    """Write the problem lines (as many as fit) and return how many were written."""
    kept = lines[: EXCEL_MAX_ROWS - 1]
    columns = [
        _column(header, [str(line[k]) for line in kept], min_width=width)
        for k, (header, width) in enumerate(zip(_ERROR_HEADERS, _ERROR_WIDTHS, strict=True))
    ]
    _write_table(sheet, columns, bold, None, [False] * len(kept))
    return len(kept)


def _summary_items(
    table: RawTable,
    outcomes: OutcomeColumns,
    issues: Sequence[RowIssue],
    info: RunInfo,
    columns: list[_Column],
    errors_left_out: int,
) -> list[tuple[str, str | int | None]]:
    """List the Summary sheet's lines; a line whose value is None is a section title."""
    src = table.source
    delimiter = {"\t": "tab", " ": "space"}.get(src.delimiter or "", src.delimiter or "")
    items: list[tuple[str, str | int | None]] = [
        ("Input", None),
        ("file", src.path.name),
        ("path", str(src.path)),
        ("sha256", src.sha256),
        ("format", src.format),
        ("sheet", src.sheet or ""),
        (
            "encoding",
            f"{src.encoding} ({src.encoding_chosen})" if src.encoding_chosen else src.encoding or "",
        ),
        ("delimiter", delimiter),
        ("header row", src.header_row),
        ("rows read", table.row_count),
        *describe_hidden(table),
        ("Run", None),
        ("command", info.command),
        ("started", info.started),
        ("finished", info.finished),
    ]
    items += [(f"option {name}", value) for name, value in info.options.items()]
    items += [(name, value) for name, value in info.audit.items()]
    by_status = Counter(outcomes.status)
    items.append(("Rows by status", None))
    items += [(info.status_labels.get(status, status.value), by_status[status]) for status in Status]
    items.append(("Rows by reason", None))
    by_reason = Counter(outcomes.reason_kind)
    by_reason.pop("", None)
    items += sorted(by_reason.items())
    items.append(("Problems by kind", None))
    items += sorted(Counter(i.kind for i in issues).items())
    truncated = sum(c.truncated for c in columns)
    notes: list[tuple[str, str | int | None]] = [("note", note) for note in info.notes]
    if truncated:
        notes.append(("cells truncated", f"{truncated} cells over Excel's limit were cut, marked at the end"))
    if errors_left_out:
        notes.append(("problems left out", f"{errors_left_out} problems did not fit in the Errors sheet"))
    if notes:
        items += [("Notes", None), *notes]
    return items


def _write_summary(sheet: Any, items: list[tuple[str, str | int | None]], bold: Any) -> None:
    sheet.set_column(0, 0, 24)
    sheet.set_column(1, 1, 70)
    for r, (name, value) in enumerate(items):
        if value is None:
            sheet.write_string(r, 0, name, bold)
            continue
        sheet.write_string(r, 0, name)
        if isinstance(value, int):
            sheet.write_number(r, 1, value)
        else:
            sheet.write_string(r, 1, _fit_cell(_LONE_SURROGATE.sub("\ufffd", value)))


# --- files ---------------------------------------------------------------------------------------------


def _refuse_input(path: Path, table: RawTable) -> None:
    source = table.source.path
    same = path.resolve() == source.resolve()
    if not same and path.exists() and source.exists():
        same = os.path.samefile(path, source)
    if same:
        raise InputError(f"refusing to overwrite the input file {source.name}: choose another output path")


def _sheet_name(name: str | None) -> str:
    """Return ``name`` made valid as an Excel sheet name, or 'Sheet1'."""
    cleaned = re.sub(r"[\[\]:*?/\\]", "_", name or "").strip("'")[:31]
    return cleaned or "Sheet1"


def save_problem(exc: OSError, *, replacing: bool) -> str:
    """Say in plain words why a file could not be saved (never naming a temp file).

    Args:
        exc: The error from creating the folder, writing the temp file or replacing the target.
        replacing: True when the temp file was written and only replacing the target failed, so
            the folder is writable and a refusal comes from the target file itself.
    """
    code = exc.errno
    if code in (errno.EACCES, errno.EPERM):
        if replacing:
            return "the file is locked by another program (open in Excel?) or read-only"
        return "permission denied (the folder is read-only or belongs to another user)"
    reasons = {
        errno.ENOENT: "the folder does not exist",
        errno.ENOTDIR: "a part of the path is a file, not a folder",
        errno.EEXIST: "a part of the path is a file, not a folder",
        errno.EISDIR: "a folder has that name",
        errno.EROFS: "the disk is read-only",
        errno.ENOSPC: "the disk is full",
        errno.EDQUOT: "the disk quota is used up",
        errno.ENAMETOOLONG: "the name is too long",
    }
    if code in reasons:
        return reasons[code]
    return (os.strerror(code) if code else type(exc).__name__).lower()


@contextlib.contextmanager
def atomic_workbook(path: Path) -> Iterator[Any]:
    """Yield a streaming workbook written to a temp file that replaces ``path`` once complete.

    The results, failed-rows and export workbooks are written through here, so a reader
    never sees a half-written file and a failed save leaves the earlier one in place.

    Failing to save raises ``OutputError`` naming ``path`` (the temp file is an internal detail)
    with a plain reason. The folder must exist (``jobs.outputs.check_writable`` makes it).
    """
    # Not mkstemp: its 0600 mode would stick to the final file; this name is unique enough.
    temp_name = str(path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"))
    replacing = False
    try:
        book = xlsxwriter.Workbook(temp_name, _WORKBOOK_OPTIONS)
        try:
            yield book
        finally:
            book.close()
        replacing = True
        os.replace(temp_name, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(temp_name)
        # xlsxwriter wraps the OSError of writing the file in FileCreateError.
        cause = exc.args[0] if isinstance(exc, xlsxwriter.exceptions.FileCreateError) and exc.args else exc
        if isinstance(cause, OSError):
            raise OutputError(path, save_problem(cause, replacing=replacing)) from None
        raise
