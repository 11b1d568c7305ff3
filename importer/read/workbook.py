"""Read a workbook's cells as text with calamine: every sheet surveyed, the chosen ones as grids.

Each cell becomes the text the user sees (numbers as typed or as Excel shows them, dates in ISO
form); the header row is found among the top rows; which sheets to read follows
``sheets.choose_sheets``. ``table.py`` builds the table from the grids; ``text.py`` reuses
``find_header`` for CSV; ``isolated.py`` runs ``read_workbook`` in a capped child process.

Free of pandas, so that the child starts fast and inside a small memory limit.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import sys
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from importer import fields
from importer.errors import InputError, UnreadableFileError
from importer.read.sheets import SheetInfo, choose_sheets, resolve_sheet

HEADER_SCAN_ROWS = 30
"""How many non-blank rows at the top of a sheet may hold the header row."""
MIN_HEADER_MATCHES = 2
_PRECISE_LIMIT = 1e15
"""Integral floats below this are exact in 15 significant digits, as Excel shows them."""

UNREADABLE_CELL = "#UNREADABLE!"
"""Fills every cell of a row calamine cannot convert, so the row fails validation instead of vanishing."""

REFUSE_PASSWORD = "password-protected or encrypted workbook: remove the password in Excel and save again"


@dataclass(frozen=True, slots=True)
class SheetGrid:
    """The chosen sheet of a workbook, as text: its header row and its data columns."""

    sheet: str
    header_row: int
    """The Excel row number of the header row."""
    first_column: int
    """The 0-based sheet column of the grid's first column (calamine skips empty leading columns)."""
    header: tuple[str, ...]
    columns: tuple[list[str], ...]
    """One list per column (as wide as the sheet), rows from header_row + 1 on, blanks included."""
    dated: tuple[int, ...] = ()
    """Positions of the columns holding date or time cells (their number format may show them otherwise)."""
    numeric: tuple[int, ...] = ()
    """Positions of the columns holding non-integral or numeric cells read as numbers."""


def _timedelta_text(value: dt.timedelta) -> str:
    # Durations read as [h]:mm:ss, as Excel shows a time above 24 hours.
    total = int(value.total_seconds())
    sign = "-" if total < 0 else ""
    hours, rest = divmod(abs(total), 3600)
    return f"{sign}{hours}:{rest // 60:02d}:{rest % 60:02d}"


def float_text(value: float) -> str:
    """Render a numeric cell as the digits the user typed, or as Excel would show a lossy number."""
    if value != value or value in (float("inf"), float("-inf")):
        return repr(value)
    if value.is_integer():
        if abs(value) < _PRECISE_LIMIT:
            return str(int(value))
        # 15 significant digits in scientific notation, as Excel displays such a cell: the digits
        # beyond are lost already, and validation should see that rather than invented digits.
        mantissa, exponent = f"{value:.14E}".split("E")
        mantissa = mantissa.rstrip("0").rstrip(".")
        power = int(exponent)
        return f"{mantissa}E{'+' if power >= 0 else '-'}{abs(power):02d}"
    # Excel shows at most 15 significant digits: 0.1 + 0.2, stored as 0.30000000000000004, shows 0.3.
    return f"{value:.15g}"


def cell_text(value: object) -> str:
    """Render one calamine cell value as the text a user sees in the cell."""
    kind = type(value)
    if kind is str:
        return value  # type: ignore[return-value]
    if kind is float:
        return float_text(value)  # type: ignore[arg-type]
    if kind is bool:
        return "TRUE" if value else "FALSE"
    if kind is int:
        return str(value)
    if kind is dt.datetime:
        stamp: dt.datetime = value  # type: ignore[assignment]
        return stamp.isoformat(sep=" ", timespec="seconds" if not stamp.microsecond else "milliseconds")
    if kind is dt.date:
        return value.isoformat()  # type: ignore[attr-defined, no-any-return]
    if kind is dt.time:
        moment: dt.time = value  # type: ignore[assignment]
        return moment.isoformat(timespec="seconds" if not moment.microsecond else "milliseconds")
    if kind is dt.timedelta:
        return _timedelta_text(value)  # type: ignore[arg-type]
    if value is None:
        return ""
    return str(value)


def column_text(values: Sequence[Any]) -> list[str]:
    """Render a column of cells as text; columns of only strings and numbers take a fast path."""
    return _column_text(values, set(map(type, values)))


def _column_text(values: Sequence[Any], kinds: set[type]) -> list[str]:
    if kinds <= {str}:
        return list(values)
    if kinds <= {str, float}:
        limit = _PRECISE_LIMIT
        return [
            v if type(v) is str else (str(int(v)) if v.is_integer() and -limit < v < limit else float_text(v))
            for v in values
        ]
    return [cell_text(v) for v in values]


_DATE_KINDS = frozenset({dt.date, dt.datetime, dt.time})


def is_blank(cells: Iterable[str]) -> bool:
    """Tell whether a row of text cells is empty or only whitespace."""
    joined = "".join(cells)
    return not joined or joined.isspace()


def header_score(cells: Sequence[str], extra_keys: frozenset[str]) -> int:
    """Count the cells of a row that name a field (or a header the user mapped)."""
    score = 0
    for cell in cells:
        if cell and (fields.match_header(cell) is not None or fields.header_key(cell) in extra_keys):
            score += 1
    return score


def find_header(rows: Sequence[Sequence[str]], extra_keys: frozenset[str]) -> tuple[int, int]:
    """Find the header among the top non-blank rows.

    Args:
        rows: Rows of text cells, blank rows included.
        extra_keys: ``fields.header_key`` of headers the user mapped to fields.

    Returns:
        The index of the best row (the first non-blank row when none matches) and its score;
        (-1, 0) when every row is blank.
    """
    best, best_score, seen = -1, -1, 0
    for index, row in enumerate(rows):
        if is_blank(row):
            continue
        score = header_score(row, extra_keys)
        if score > best_score:
            best, best_score = index, score
        seen += 1
        if seen >= HEADER_SCAN_ROWS:
            break
    if best_score < MIN_HEADER_MATCHES:
        first = next((i for i, row in enumerate(rows) if not is_blank(row)), -1)
        return first, max(best_score, 0)
    return best, best_score


def _one_line(text: str, limit: int = 160) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def calamine_failure(name: str, error: BaseException) -> UnreadableFileError:
    import python_calamine as pc

    if isinstance(error, pc.PasswordError):
        return UnreadableFileError(f"{name}: {REFUSE_PASSWORD}")
    detail = _one_line(str(error) or type(error).__name__)
    return UnreadableFileError(
        f"{name} cannot be read as a spreadsheet ({detail}); open it in Excel and save as .xlsx"
    )


def _grid(
    name: str, raw: list[list[object]], start: tuple[int, int], extra_keys: frozenset[str]
) -> SheetGrid | None:
    """Turn a sheet's cells into a SheetGrid, or None when the sheet has no non-blank row."""
    head: list[list[str]] = []
    nonblank = 0
    for row in raw:
        text = [cell_text(v) for v in row]
        head.append(text)
        if not is_blank(text):
            nonblank += 1
            if nonblank >= HEADER_SCAN_ROWS:
                break
    index, _score = find_header(head, extra_keys)
    if index < 0:
        return None
    data = raw[index + 1 :]
    width = max([len(head[index]), *map(len, data)])
    if any(len(row) != width for row in data):  # calamine gives a rectangle; be safe anyway
        data = [[*row, *([""] * (width - len(row)))] for row in data]
    header = (*head[index], *([""] * (width - len(head[index]))))
    texts: list[list[str]] = []
    dated: list[int] = []
    numeric: list[int] = []
    for j, col in enumerate(zip(*data, strict=True) if data else ()):
        kinds = set(map(type, col))
        texts.append(_column_text(col, kinds))
        if kinds & _DATE_KINDS:
            dated.append(j)
        if float in kinds:
            numeric.append(j)
    columns = tuple(texts) if texts else tuple([] for _ in range(width))
    return SheetGrid(name, start[0] + 1 + index, start[1], header, columns, tuple(dated), tuple(numeric))


@dataclass(frozen=True, slots=True)
class WorkbookRead:
    """What was read of a workbook: every visible sheet surveyed, and the grids of the chosen sheets."""

    sheets: tuple[SheetInfo, ...]
    """Every visible worksheet, in workbook order, with its row count and whether it matches."""
    grids: tuple[SheetGrid, ...]
    """The chosen sheets, in workbook order (named sheets: in the order named)."""


def _data_rows(grid: SheetGrid) -> int:
    return sum(1 for row in zip(*grid.columns, strict=True) if not is_blank(row)) if grid.columns else 0


def read_workbook(
    path: Path, wanted: Sequence[str], extra_keys: frozenset[str], *, all_sheets: bool = False
) -> WorkbookRead:
    """Survey every visible sheet of a workbook (xlsx, xlsm, xlsb, xls, ods) and read the chosen ones.

    Args:
        path: The workbook.
        wanted: The sheet names the user asked for; empty to choose by ``sheets.choose_sheets``.
        extra_keys: ``fields.header_key`` of headers the user mapped to fields.
        all_sheets: Read every matching sheet (``--all-sheets``).

    Returns:
        The survey and the chosen sheets' headers and data columns as text.

    Raises:
        InputError: A named sheet is missing or empty.
        SheetChoiceNeeded: Several sheets match and none was named.
    """
    import python_calamine as pc

    def load(name: str) -> SheetGrid | None:
        found = workbook.get_sheet_by_name(name)
        try:
            with _native_stderr_muted():
                raw: list[list[object]] = found.to_python()  # type: ignore[assignment]
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException:  # PanicException: calamine cannot convert a cell (see _rows_one_by_one)
            raw = _rows_one_by_one(found)
        # calamine skips the empty rows and columns before the data; start says where it begins.
        return _grid(name, raw, found.start or (0, 0), extra_keys)

    try:
        workbook = pc.CalamineWorkbook.from_path(str(path))
        metas = workbook.sheets_metadata
    except Exception as error:
        raise calamine_failure(path.name, error) from None
    names = [m.name for m in metas]
    if not names:
        raise UnreadableFileError(f"{path.name} has no sheets; open it in Excel, add the data and save again")
    visible = [
        m.name
        for m in metas
        if m.typ == pc.SheetTypeEnum.WorkSheet and m.visible == pc.SheetVisibleEnum.Visible
    ]
    chosen: list[str] = []
    for sheet in wanted:
        name = resolve_sheet(sheet, names)
        if name is None:
            listed = ", ".join(repr(n) for n in names)
            raise InputError(f"sheet {sheet!r} is not in {path.name}; its sheets are {listed}")
        if name not in chosen:
            chosen.append(name)
    grids: dict[str, SheetGrid] = {}
    survey: list[SheetInfo] = []
    failure: BaseException | None = None
    for name in [*visible, *(n for n in chosen if n not in visible)]:
        try:
            grid = load(name)
        except Exception as error:  # one broken sheet must not hide a good one
            if name in chosen:
                raise calamine_failure(path.name, error) from None
            failure = failure or error
            continue
        if grid is None:
            if name in chosen:
                raise InputError(f"sheet {name!r} of {path.name} is empty; choose another with --sheet")
            survey.append(SheetInfo(name, 0, False))
            continue
        matches = header_score(grid.header, extra_keys) >= MIN_HEADER_MATCHES
        if name in visible:
            survey.append(SheetInfo(name, _data_rows(grid), matches))
        # Keep only what may be read: the named sheets, else a matching one or the first with data.
        if name in chosen if chosen else (matches or not grids):
            grids[name] = grid
    if not chosen:
        chosen = list(choose_sheets(path.name, survey, all_sheets=all_sheets))
    for name in chosen:
        if name not in grids and (grid := load(name)) is not None:  # the first sheet with data, dropped
            grids[name] = grid
    if not any(name in grids for name in chosen):
        if failure is not None:
            raise calamine_failure(path.name, failure)
        raise UnreadableFileError(
            f"{path.name} has no visible sheet with data; check the file and save again"
        )
    return WorkbookRead(tuple(survey), tuple(grids[name] for name in chosen if name in grids))


def _rows_one_by_one(found: Any) -> list[list[object]]:
    """Read a sheet row by row, a row calamine cannot convert becoming a row of UNREADABLE_CELL.

    calamine raises for the whole sheet when one cell cannot be converted (a number such as
    -1e20 in a duration format overflows its time types, and panics); the other rows are fine.
    ``iter_rows`` starts at the sheet's first row, not at ``start`` as ``to_python`` does.
    """
    first_row = (found.start or (0, 0))[0]
    width = found.width
    rows: list[list[object]] = []
    iterator = found.iter_rows()
    # Bounded: a failing row still advances the iterator, but never loop on a stuck one.
    for _ in range(first_row + found.height + 1):
        try:
            with _native_stderr_muted():
                row: list[object] = next(iterator)
        except StopIteration:
            break
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException:
            row = [UNREADABLE_CELL] * width
        rows.append(row)
    return rows[first_row:]


@contextlib.contextmanager
def _native_stderr_muted() -> Iterator[None]:
    """Keep a Rust panic's message off the user's terminal; pass anything else written through.

    A panic inside calamine prints to file descriptor 2 before Python sees an exception, which
    would break the one-line error promise. Output of a call that succeeds is replayed.
    """
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no usable fd 2: nothing to protect
        yield
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        failed = True
        try:
            yield
            failed = False
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            if not failed:
                sink.seek(0)
                captured = sink.read()
                if captured:
                    os.write(2, captured)
