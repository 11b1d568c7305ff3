"""Read a carrier's spreadsheet (CSV or workbook) into a RawTable: every cell as the text the user sees.

``read_table`` is the public entry. The format is told by content (``sniff``), and a file is
refused by its size before it is read. Workbooks go to calamine: .xlsx/.xlsm in this process
after the zip has been vetted (``safety``) and with what calamine does not tell read from the
sheet's XML (``xlsx``); .xls/.xlsb/.ods in a child process with a memory cap and a timeout
(``isolated``), because some such files make calamine abort the whole process. Delimited text
is decoded and split by ``text``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd

from importer import fields
from importer.errors import ImporterError, InputError, UnreadableFileError
from importer.model import RawTable, SourceInfo
from importer.read.isolated import (
    REFUSE_PASSWORD,
    SheetGrid,
    is_blank,
    read_workbook,
    read_workbook_isolated,
)
from importer.read.safety import check_zip
from importer.read.sniff import Format, read_head
from importer.read.text import TextGrid, check_encoding, read_text
from importer.read.xlsx import SheetMarks, mark_table, restore_error_cells, sheet_marks, show_formatted

__all__ = ["read_table"]

Matrix = npt.NDArray[np.object_]
_ENCRYPTED_STREAM = "EncryptedPackage".encode("utf-16-le")


def read_table(
    path: Path,
    *,
    sheet: str | None = None,
    extra_headers: Mapping[str, str] = {},
    encoding: str | None = None,
) -> RawTable:
    """Read a spreadsheet into a RawTable, every cell as text, rows numbered as Excel numbers them.

    Args:
        path: A .csv/.tsv/.txt (delimited), .xlsx, .xlsm, .xls, .xlsb or .ods file.
        sheet: The workbook sheet to read; None picks the first visible sheet whose header
            row names the fields.
        extra_headers: Header text -> field name mapped by the user; helps find the header row.
        encoding: The text encoding of delimited text (``--encoding``); None detects it.
            Workbooks carry their own encoding and ignore it.

    Returns:
        The table, its headers and how it was read.

    Raises:
        InputError: The file or the sheet cannot be used (one line saying what to do).
        UnreadableFileError: The file cannot be read as a spreadsheet.
    """
    path = Path(path)
    extra_keys = frozenset(fields.header_key(h) for h in extra_headers)
    codec = check_encoding(encoding) if encoding is not None else None
    try:
        return _read(path, sheet, extra_keys, codec)
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


def _read(path: Path, sheet: str | None, extra_keys: frozenset[str], codec: str | None) -> RawTable:
    kind, _size = read_head(path)  # refuses by size before anything more is read
    suffix = path.suffix.lower()
    if kind is Format.ZIP:
        digest = _file_digest(path)
        book = check_zip(path)
        fmt = "xlsm" if book == "xlsx" and suffix == ".xlsm" else book
        marks = SheetMarks()
        if book == "xlsx":
            grid = read_workbook(path, sheet, extra_keys)
            # The sheet itself was read; without its marks it is read as calamine sees it.
            with contextlib.suppress(Exception):
                marks = sheet_marks(path, grid)
            restore_error_cells(grid, marks.errors)
            show_formatted(grid, marks.formats)
        else:
            grid = read_workbook_isolated(path, sheet, extra_keys)
        source = SourceInfo(
            path, fmt, digest, sheet=grid.sheet, header_row=grid.header_row, first_column=grid.first_column
        )
        return mark_table(_grid_table(grid, source), marks, grid.first_column)
    data = _read_bytes(path)
    digest = hashlib.sha256(data).hexdigest()
    if kind is Format.OLE and _ENCRYPTED_STREAM in data:
        raise UnreadableFileError(f"{path.name}: {REFUSE_PASSWORD}")
    # An OLE container (.xls, or an .xls under another name), or a bare BIFF stream of Excel 2-5
    # that calamine may refuse: either way only in the guarded child.
    if kind is not Format.TEXT:
        grid = read_workbook_isolated(path, sheet, extra_keys)
        return _grid_table(
            grid, SourceInfo(path, "xls", digest, sheet=grid.sheet, header_row=grid.header_row)
        )
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


def _grid_table(grid: SheetGrid, source: SourceInfo) -> RawTable:
    """Build the RawTable of a workbook sheet: drop blank rows, number rows as Excel does."""
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
    return RawTable(dataclasses.replace(source, first_column=grid.first_column), headers, frame)


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
