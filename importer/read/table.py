"""Read a carrier's spreadsheet (CSV or workbook) into a RawTable: every cell as the text the user sees.

``read_table`` is the public entry. The format is told by content (``sniff``), and a file is
refused by its size before it is read. Workbooks go to calamine: .xlsx/.xlsm in this process
after the zip has been vetted (``safety``) and with what calamine does not tell read from the
sheet's XML (``xlsx``), by ``workbook``; .xls/.xlsb/.ods in a child process with a memory cap and a timeout
(``isolated``), because some such files make calamine abort the whole process. Delimited text
is decoded and split by ``text``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd

from importer import fields
from importer.errors import ImporterError, InputError, UnreadableFileError
from importer.model import ROW_KEY_STRIDE, RawTable, SheetInfo, SourceInfo
from importer.read.isolated import read_workbook_isolated
from importer.read.safety import check_zip
from importer.read.sheets import SheetChoiceNeeded
from importer.read.sniff import Format, read_head
from importer.read.text import TextGrid, check_encoding, read_text
from importer.read.workbook import REFUSE_PASSWORD, SheetGrid, WorkbookRead, is_blank, read_workbook
from importer.read.xlsx import SheetMarks, mark_table, restore_error_cells, sheet_marks, show_formatted

__all__ = ["list_sheets", "read_table"]

Matrix = npt.NDArray[np.object_]
_ENCRYPTED_STREAM = "EncryptedPackage".encode("utf-16-le")


def read_table(
    path: Path,
    *,
    sheets: str | Sequence[str] = (),
    all_sheets: bool = False,
    extra_headers: Mapping[str, str] = {},
    encoding: str | None = None,
) -> RawTable:
    """Read a spreadsheet into a RawTable, every cell as text, rows numbered as Excel numbers them.

    Args:
        path: A .csv/.tsv/.txt (delimited), .xlsx, .xlsm, .xls, .xlsb or .ods file.
        sheets: The workbook sheets to read (``--sheet``, repeatable); none: the one visible
            sheet whose header row names the fields (see ``sheets.choose_sheets``).
        all_sheets: Read every sheet whose header row names the fields (``--all-sheets``).
        extra_headers: Header text -> field name mapped by the user; helps find the header row.
        encoding: The text encoding of delimited text (``--encoding``); None detects it.
            Workbooks carry their own encoding and ignore it.

    Returns:
        The table, its headers and how it was read. Several sheets make one table whose rows
        each know their sheet and Excel row (``RawTable.origin``).

    Raises:
        SheetChoiceNeeded: Several sheets name the fields and neither ``sheets`` nor ``all_sheets`` chose.
        InputError: The file or the sheet cannot be used (one line saying what to do).
        UnreadableFileError: The file cannot be read as a spreadsheet.
    """
    path = Path(path)
    wanted = (sheets,) if isinstance(sheets, str) else tuple(sheets)
    extra_keys = frozenset(fields.header_key(h) for h in extra_headers)
    codec = check_encoding(encoding) if encoding is not None else None
    try:
        return _read(path, wanted, all_sheets, extra_keys, codec)
    except ImporterError:
        raise
    except (KeyboardInterrupt, SystemExit):
        raise
    except MemoryError:
        raise UnreadableFileError(
            f"{path.name} is too large to read in memory; split it into smaller files"
        ) from None
    except BaseException as error:  # PanicException from calamine is a BaseException
        detail = " ".join(str(error).split())[:120] or type(error).__name__
        raise UnreadableFileError(
            f"{path.name} cannot be read ({detail}); open it in Excel and save as .xlsx or .csv"
        ) from None


def list_sheets(path: Path) -> tuple[SheetInfo, ...]:
    """Survey a workbook without validating it: every visible sheet, its row count, whether it matches.

    Returns:
        The sheets in workbook order; () for delimited text.

    Raises:
        InputError, UnreadableFileError: As for ``read_table``.
    """
    path = Path(path)
    kind, _size = read_head(path)
    if kind is Format.TEXT:
        return ()
    try:
        if kind is Format.ZIP and check_zip(path) == "xlsx":
            return read_workbook(path, (), frozenset(), all_sheets=True).sheets
        return read_workbook_isolated(path, (), frozenset(), all_sheets=True).sheets
    except SheetChoiceNeeded as choice:  # pragma: no cover - all_sheets never needs a choice
        return choice.sheets


def _read(
    path: Path, wanted: tuple[str, ...], all_sheets: bool, extra_keys: frozenset[str], codec: str | None
) -> RawTable:
    kind, _size = read_head(path)  # refuses by size before anything more is read
    suffix = path.suffix.lower()
    if kind is Format.ZIP:
        digest = _file_digest(path)
        book = check_zip(path)
        fmt = "xlsm" if book == "xlsx" and suffix == ".xlsm" else book
        if book != "xlsx":
            found = read_workbook_isolated(path, wanted, extra_keys, all_sheets=all_sheets)
            return _workbook_table(path, fmt, digest, found, [_grid_table(g) for g in found.grids])
        found = read_workbook(path, wanted, extra_keys, all_sheets=all_sheets)
        tables = []
        for grid in found.grids:
            marks = SheetMarks()
            # The sheet itself was read; without its marks it is read as calamine sees it.
            with contextlib.suppress(Exception):
                marks = sheet_marks(path, grid)
            restore_error_cells(grid, marks.errors)
            show_formatted(grid, marks.formats)
            tables.append(mark_table(_grid_table(grid), marks, grid.first_column))
        return _workbook_table(path, fmt, digest, found, tables)
    data = _read_bytes(path)
    digest = hashlib.sha256(data).hexdigest()
    if kind is Format.OLE and _ENCRYPTED_STREAM in data:
        raise UnreadableFileError(f"{path.name}: {REFUSE_PASSWORD}")
    # An OLE container (.xls, or an .xls under another name), or a bare BIFF stream of Excel 2-5
    # that calamine may refuse: either way only in the guarded child.
    if kind is not Format.TEXT:
        found = read_workbook_isolated(path, wanted, extra_keys, all_sheets=all_sheets)
        return _workbook_table(path, "xls", digest, found, [_grid_table(g) for g in found.grids])
    text = read_text(path, data, extra_keys, strict_table=suffix not in (".csv", ".tsv"), codec=codec)
    return _text_table(path, digest, text)


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise InputError(f"cannot open {path.name}: {error.strerror or error}; check the file") from None


def _file_digest(path: Path) -> str:
    """Hash a workbook in chunks: calamine reads it from disk, so it need not be held in memory."""
    try:
        with path.open("rb") as handle:
            return hashlib.file_digest(handle, "sha256").hexdigest()
    except OSError as error:
        raise InputError(f"cannot open {path.name}: {error.strerror or error}; check the file") from None


def _text_table(path: Path, digest: str, text: TextGrid) -> RawTable:
    headers, frame = _frame(text.header, text.matrix, text.numbers)
    source = SourceInfo(
        path,
        "csv",
        digest,
        encoding=text.encoding,
        delimiter=text.delimiter,
        header_row=text.header_row,
        encoding_chosen=text.encoding_chosen,
    )
    return RawTable(source, headers, frame, text.problems)


def _grid_table(grid: SheetGrid) -> RawTable:
    """Build the RawTable of one workbook sheet: drop blank rows, number rows as Excel does.

    Its source is a stand-in until ``_workbook_table`` says which file it came from.
    """
    columns = grid.columns
    count = len(columns[0]) if columns else 0
    matrix: Matrix = np.empty((count, len(columns)), dtype=object)
    for j, column in enumerate(columns):
        matrix[:, j] = column
    first = grid.header_row + 1
    numbers: Sequence[int] = range(first, first + count)
    keep = [not is_blank(row) for row in zip(*columns, strict=True)] if columns else []
    if not all(keep):
        numbers = list(itertools.compress(numbers, keep))
        matrix = matrix[np.array(keep, dtype=bool)]
    headers, frame = _frame(grid.header, matrix, numbers)
    # --map "C=field" names columns by the sheet's letters, so keep where the grid starts.
    source = SourceInfo(
        Path(), "", "", sheet=grid.sheet, header_row=grid.header_row, first_column=grid.first_column
    )
    return RawTable(source, headers, frame)


def _workbook_table(
    path: Path, fmt: str, digest: str, found: WorkbookRead, tables: Sequence[RawTable]
) -> RawTable:
    """Give the sheets' tables their file, and make one table of several sheets."""
    table = tables[0] if len(tables) == 1 else _combine(tables)
    source = dataclasses.replace(table.source, path=path, format=fmt, sha256=digest)
    return dataclasses.replace(table, source=source, sheets=found.sheets)


def _combine(tables: Sequence[RawTable]) -> RawTable:
    """Make one table of several sheets' tables, keying each row by its sheet and Excel row.

    Columns are matched by header text (a sheet may order or add columns differently): the
    first sheet's columns come first, then any column only a later sheet has.
    """
    columns: dict[tuple[str, int], int] = {}
    headers: list[str] = []
    positions: list[list[int]] = []
    for table in tables:
        seen: Counter[str] = Counter()
        mine: list[int] = []
        for header in table.headers:
            key = fields.header_key(header)
            seen[key] += 1
            slot = columns.setdefault((key, seen[key]), len(headers))
            if slot == len(headers):
                headers.append(header)
            mine.append(slot)
        positions.append(mine)
    width = len(headers)
    frames: list[pd.DataFrame] = []
    hidden_rows: list[int] = []
    hidden_columns: set[int] = set()
    notes: dict[tuple[int, int], str] = {}
    problems: dict[int, str] = {}
    for number, (table, mine) in enumerate(zip(tables, positions, strict=True)):
        offset = number * ROW_KEY_STRIDE
        matrix: Matrix = np.full((table.row_count, width), "", dtype=object)
        matrix[:, mine] = table.frame.to_numpy(dtype=object)
        index = pd.Index(table.frame.index.to_numpy(dtype=np.int64) + offset)
        frames.append(pd.DataFrame(matrix, index=index, columns=range(width), dtype=object, copy=False))
        hidden_rows += [row + offset for row in table.hidden_rows]
        hidden_columns.update(mine[j] for j in table.hidden_columns)
        notes.update(((row + offset, mine[j]), text) for (row, j), text in table.cell_notes.items())
        problems.update((row + offset, text) for row, text in table.row_problems.items())
    names = tuple(t.source.sheet or "" for t in tables)
    source = dataclasses.replace(tables[0].source, sheet=", ".join(names))
    return RawTable(
        source,
        tuple(headers),
        pd.concat(frames) if frames else tables[0].frame,
        problems,
        tuple(hidden_rows),
        tuple(sorted(hidden_columns)),
        notes,
        row_sheets=names,
    )


def _frame(
    header: Sequence[str], matrix: Matrix, numbers: Sequence[int]
) -> tuple[tuple[str, ...], pd.DataFrame]:
    """Make the frame (columns 0..n-1, object dtype of str, index = Excel row numbers)."""
    width = len(header)
    # A trailing column with a blank header and no values is Excel's leftover formatting, not data.
    while width and not header[width - 1].strip() and is_blank(matrix[:, width - 1]):
        width -= 1
    index = pd.Index(np.asarray(numbers, dtype=np.int64))
    # One object block, no copy: the cells stay the Python str objects the parser made.
    frame = pd.DataFrame(matrix[:, :width], index=index, columns=range(width), dtype=object, copy=False)
    return tuple(header[:width]), frame
