"""Read a carrier's spreadsheet (CSV or workbook) into a RawTable: every cell as the text the user sees.

The format is told by content, not trusted from the name: a zip holding a workbook, an OLE container
(.xls or an encrypted workbook) or delimited text. Workbooks go to calamine: .xlsx/.xlsm in this
process after the zip has been checked for bombs, .xls/.xlsb/.ods in a child process with a memory
cap and a timeout, because some such files make calamine abort the whole process.

What calamine does not tell about an .xlsx sheet (its error cells, hidden rows and columns,
merged ranges) is read from the sheet's XML in one guarded pass and carried in the RawTable.
Delimited text that is neither UTF-8 nor marked by a BOM gets its code page from
charset-normalizer, looking only at the lines that hold non-ASCII bytes.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import dataclasses
import hashlib
import io
import itertools
import posixpath
import re
import zipfile
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np
import numpy.typing as npt
import pandas as pd
from defusedxml import DefusedXmlException
from defusedxml import ElementTree as SafeET

from importer import fields
from importer.display import format_kind, render, renderable_formats
from importer.errors import ImporterError, InputError, UnreadableFileError, shown
from importer.model import RawTable, SourceInfo
from importer.read.isolated import (
    REFUSE_PASSWORD,
    SheetGrid,
    find_header,
    is_blank,
    read_workbook,
    read_workbook_isolated,
)

__all__ = ["EXCEL_ERRORS", "check_encoding", "column_letters", "describe_hidden", "read_table"]

Matrix = npt.NDArray[np.object_]

SUPPORTED = ".xlsx, .xlsm, .xls, .xlsb, .ods, or delimited text (.csv, .tsv, .txt)"
MAX_FILE_BYTES = 1024**3
MAX_TEXT_BYTES = 256 * 1024**2
"""Delimited text is held in memory as one string per cell (about 9x the file size): 256 MiB is
over two million typical routing rows, more than an XLSX sheet can hold, and stays within a few GB."""
MAX_UNZIPPED_BYTES = 512 * 1024**2
MAX_ZIP_MEMBERS = 10_000
MAX_RATIO = 200
"""Deflate ratio above which a large zip member is taken for a bomb; real sheets stay far below."""
RATIO_CHECK_BYTES = 1024**2
PROLOG_CHUNK = 64 * 1024
MAX_WORKBOOK_XML_BYTES = 32 * 1024**2
DELIMITERS = (",", ";", "\t", "|")
SNIFF_CHARS = 64 * 1024
SNIFF_RECORDS = 50

_OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")
_ENCRYPTED_STREAM = "EncryptedPackage".encode("utf-16-le")
_BIFF_STARTS = (b"\x09\x00", b"\x09\x02", b"\x09\x04", b"\x09\x08")
_TEXT_SUFFIXES = frozenset({".csv", ".tsv", ".txt", ".tab"})
_WORKBOOK_SUFFIXES = frozenset({".xlsx", ".xlsm", ".xls", ".xlsb", ".ods"})
# cp1252 leaves five bytes undefined; latin-1 maps them to the C1 controls of the same value.
_CP1252_HOLES = {0xDC00 + b: b for b in (0x81, 0x8D, 0x8F, 0x90, 0x9D)}
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32-le", "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32-be", "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig", "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16-le", "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16-be", "utf-16"),
)


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
    if not path.is_file():
        raise InputError(f"{path} does not exist or is not a file; check the path")
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise InputError(f"{path.name} is larger than 1 GiB; split it into smaller files")
        data = path.read_bytes()
    except OSError as error:
        raise InputError(f"cannot open {path.name}: {error.strerror or error}; check the file") from None
    digest = hashlib.sha256(data).hexdigest()
    suffix = path.suffix.lower()
    if not data:
        raise UnreadableFileError(f"{path.name} is empty (0 bytes); export the spreadsheet again")
    if data.startswith(_ZIP_MAGICS):
        kind = _check_zip(path)
        fmt = "xlsm" if kind == "xlsx" and suffix == ".xlsm" else kind
        marks = _SheetMarks()
        if kind == "xlsx":
            grid = read_workbook(path, sheet, extra_keys)
            # The sheet itself was read; without its marks it is read as calamine sees it.
            with contextlib.suppress(Exception):
                marks = _sheet_marks(path, grid)
            _restore_error_cells(grid, marks.errors)
            _show_formatted(grid, marks.formats)
        else:
            grid = read_workbook_isolated(path, sheet, extra_keys)
        source = SourceInfo(
            path, fmt, digest, sheet=grid.sheet, header_row=grid.header_row, first_column=grid.first_column
        )
        return _marked(_grid_table(grid, source), marks, grid.first_column)
    is_ole = data.startswith(_OLE_MAGIC)
    if is_ole and _ENCRYPTED_STREAM in data:
        raise UnreadableFileError(f"{path.name}: {REFUSE_PASSWORD}")
    # An OLE container (.xls, or an .xls under another name), or a bare BIFF stream of Excel 2-5
    # that calamine may refuse: either way only in the guarded child.
    if is_ole or (suffix == ".xls" and data.startswith(_BIFF_STARTS)):
        grid = read_workbook_isolated(path, sheet, extra_keys)
        return _grid_table(
            grid, SourceInfo(path, "xls", digest, sheet=grid.sheet, header_row=grid.header_row)
        )
    if suffix in _TEXT_SUFFIXES or suffix in (".xls", ""):
        if size > MAX_TEXT_BYTES:
            raise InputError(
                f"{path.name} is larger than {MAX_TEXT_BYTES // 1024**2} MiB of text; "
                "split it into files of under a million rows"
            )
        return _read_text(
            path, data, digest, extra_keys, strict_table=suffix not in (".csv", ".tsv"), codec=codec
        )
    if suffix in _WORKBOOK_SUFFIXES:
        raise UnreadableFileError(
            f"{path.name} is not a {suffix} workbook (its content is not a spreadsheet); "
            "open it in Excel and save as .xlsx"
        )
    raise UnreadableFileError(f"{path.name}: unsupported file type {suffix!r}; use {SUPPORTED}")


def _check_zip(path: Path) -> str:
    """Vet a zip before any XML parser sees it; return 'xlsx', 'xlsb' or 'ods'."""
    name = path.name
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            if not infos:
                raise UnreadableFileError(f"{name} is an empty zip archive, not a workbook; export it again")
            if len(infos) > MAX_ZIP_MEMBERS:
                raise UnreadableFileError(
                    f"{name} holds {len(infos)} zip members; refusing a suspicious archive"
                )
            total = sum(i.file_size for i in infos)
            if total > MAX_UNZIPPED_BYTES:
                raise UnreadableFileError(
                    f"{name} would expand to {total // 1024**2} MiB when unzipped "
                    f"(limit {MAX_UNZIPPED_BYTES // 1024**2} MiB); split the data or save it as .csv"
                )
            for info in infos:
                if info.file_size > RATIO_CHECK_BYTES and info.file_size > MAX_RATIO * max(
                    info.compress_size, 1
                ):
                    raise UnreadableFileError(
                        f"{name} looks like a zip bomb ({info.filename} compressed "
                        f"{info.file_size // max(info.compress_size, 1)}:1); refusing to open it"
                    )
            members = {i.filename.replace("\\", "/").lower(): i for i in infos}
            mimetype = members.get("mimetype")
            if mimetype is not None:
                with archive.open(mimetype) as handle:
                    if handle.read(128).startswith(b"application/vnd.oasis.opendocument.spreadsheet"):
                        return "ods"
            if "[content_types].xml" not in members:
                raise UnreadableFileError(
                    f"{name} is a zip archive, not an Excel workbook (no [Content_Types].xml); "
                    f"unzip it, or use {SUPPORTED}"
                )
            workbook = members.get("xl/workbook.xml")
            if workbook is None:
                if "xl/workbook.bin" in members:
                    return "xlsb"
                raise UnreadableFileError(
                    f"{name} is not an Excel workbook (no xl/workbook.xml); "
                    "open it in Excel and save as .xlsx"
                )
            for info in infos:
                if info.filename.lower().endswith((".xml", ".rels", ".vml")):
                    with archive.open(info) as handle:
                        if _prolog_declares_dtd(handle):
                            raise _xml_bomb(name)
            with archive.open(workbook) as handle:
                text = handle.read(MAX_WORKBOOK_XML_BYTES)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError, ValueError) as error:
        detail = " ".join(str(error).split())[:100]
        raise UnreadableFileError(
            f"{name} is a damaged or unsupported zip ({detail}); open it in Excel and save as .xlsx"
        ) from None
    try:
        root = SafeET.fromstring(text, forbid_dtd=True)
    except DefusedXmlException:
        raise _xml_bomb(name) from None
    except SafeET.ParseError:
        raise UnreadableFileError(
            f"{name} has a damaged workbook.xml; open it in Excel and save as .xlsx"
        ) from None
    if not any(el.tag == "sheet" or el.tag.endswith("}sheet") for el in root.iter()):
        raise UnreadableFileError(f"{name} has no sheets; open it in Excel, add the data and save again")
    return "xlsx"


_TAG_NAME = re.compile(rb"<(?:[\w.-]+:)?([\w]+)[\s/>]")
_CELL_REF = re.compile(rb"""\br=["']([A-Z]{1,3})([0-9]{1,7})["']""")
_VALUE = re.compile(rb"<(?:[\w.-]+:)?v>([^<]{1,32})</")
_ROW_NUMBER = re.compile(rb"""\br=["']([0-9]{1,7})["']""")
_COL_SPAN = re.compile(rb"""\b(min|max)=["']([0-9]{1,5})["']""")
_MERGED_REF = re.compile(rb"""\bref=["']([A-Z]{1,3})([0-9]{1,7}):([A-Z]{1,3})([0-9]{1,7})["']""")
_MARKERS = (b't="e"', b"t='e'", b"hidden=", b"mergeCell")
"""What makes a sheet worth a second look: error cells, hidden rows or columns, merged cells."""
_SCAN_CHUNK = 1024**2
MAX_CELL_NOTES = 100_000
"""Merged cells noted at most: a sheet merging whole blocks must not cost a note per cell."""


@dataclass(frozen=True, slots=True)
class _SheetMarks:
    """What calamine does not tell about a worksheet, read from its XML."""

    errors: dict[tuple[int, int], str] = field(default_factory=dict)
    """{(Excel row, 0-based column): error text} of the error cells."""
    hidden_rows: frozenset[int] = frozenset()
    """Excel row numbers of the hidden rows (hidden by hand or by a filter)."""
    hidden_columns: frozenset[int] = frozenset()
    """0-based sheet columns that are hidden."""
    merged: tuple[tuple[int, int, int, int], ...] = ()
    """Merged ranges as (first row, first column, last row, last column): Excel rows, 0-based columns."""
    formats: dict[int, str] = field(default_factory=dict)
    """{grid column: number format} of the date and percent columns to show as Excel does."""


def _column_index(letters: bytes) -> int:
    """Turn column letters (b"A", b"AB") into a 0-based column number."""
    column = 0
    for letter in letters:
        column = column * 26 + letter - 64
    return column - 1


def column_letters(index: int) -> str:
    """Turn a 0-based column number into Excel's letters (0 -> "A", 27 -> "AB")."""
    letters = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        letters = chr(65 + rest) + letters
    return letters


def _sheet_marks(path: Path, grid: SheetGrid) -> _SheetMarks:
    """Read a worksheet's error cells, hidden rows and columns, merged ranges and display formats.

    The XML is streamed once looking for the markers; only a sheet that has any is read whole
    and searched, so a large clean sheet costs one pass of decompression and no parsing. The
    number formats of date and numeric columns are looked up in the first chunk (their first
    data cells), and only when the workbook has a date or percent format to apply.
    """
    with zipfile.ZipFile(path) as archive:
        members = {i.filename.replace("\\", "/").lower(): i for i in archive.infolist()}
        part = _sheet_part(archive, members, grid.sheet)
        if part is None:
            return _SheetMarks()
        styles = _display_styles(archive, members) if grid.dated or grid.numeric else {}
        head = b""
        with archive.open(part) as handle:
            tail = b""
            while chunk := handle.read(_SCAN_CHUNK):
                head = head or chunk
                window = tail + chunk
                if any(marker in window for marker in _MARKERS):
                    break
                tail = chunk[-16:]
            else:
                return _SheetMarks(formats=_column_formats(head, grid, styles) if styles else {})
        text = archive.read(part)
    errors: dict[tuple[int, int], str] = {}
    error_tags = (tag for needle in (b't="e"', b"t='e'") for tag in _tags_holding(text, needle, b"c"))
    for tag, end in error_tags:
        ref = _CELL_REF.search(tag)
        value = _VALUE.match(text, end) or _VALUE.search(text, end, end + 4096)
        if ref is not None and value is not None:
            errors[(int(ref.group(2)), _column_index(ref.group(1)))] = value.group(1).decode(
                "ascii", "replace"
            )
    rows: set[int] = set()
    columns: set[int] = set()
    for needle in (b'hidden="1"', b'hidden="true"', b"hidden='1'", b"hidden='true'"):
        for tag, _end in _tags_holding(text, needle, b"row"):
            if (number := _ROW_NUMBER.search(tag)) is not None:
                rows.add(int(number.group(1)))
        for tag, _end in _tags_holding(text, needle, b"col"):
            span = {key.decode(): int(value) for key, value in _COL_SPAN.findall(tag)}
            low = span.get("min", 0)
            high = span.get("max", low)
            if 1 <= low <= high:
                columns.update(range(low - 1, min(high, 16_384)))
    merged = tuple(
        (int(ref.group(2)), _column_index(ref.group(1)), int(ref.group(4)), _column_index(ref.group(3)))
        for tag, _end in _tags_holding(text, b"mergeCell ", b"mergeCell")
        if (ref := _MERGED_REF.search(tag)) is not None
    )
    formats = _column_formats(head, grid, styles) if styles else {}
    return _SheetMarks(errors, frozenset(rows), frozenset(columns), merged, formats)


_CELL_STYLE = re.compile(rb"""\bs=["']([0-9]{1,6})["']""")
_CELL_TYPE = re.compile(rb"""\bt=["']([A-Za-z]+)["']""")
PROBE_ROWS = 20
"""Data rows searched for a column's first value, whose number format is taken for the column."""


def _display_styles(archive: zipfile.ZipFile, members: Mapping[str, zipfile.ZipInfo]) -> dict[int, str]:
    """Return {cell style index: format code} of the styles with a date, time or percent format."""
    info = members.get("xl/styles.xml")
    if info is None or info.file_size > MAX_WORKBOOK_XML_BYTES:
        return {}
    codes: dict[int, str] = {}
    styles: list[int] = []
    for element in SafeET.fromstring(archive.read(info), forbid_dtd=True).iter():
        tag = element.tag.rsplit("}", 1)[-1]
        if tag == "numFmt" and (element.get("numFmtId") or "").isdigit():
            codes[int(element.get("numFmtId") or 0)] = element.get("formatCode") or ""
        elif tag == "cellXfs":
            styles = [
                int(xf.get("numFmtId") or 0) if (xf.get("numFmtId") or "0").isdigit() else 0 for xf in element
            ]
    return renderable_formats(codes, styles)


def _column_formats(head: bytes, grid: SheetGrid, styles: Mapping[int, str]) -> dict[int, str]:
    """Find the display format of each date or numeric grid column from its first data cell.

    A column is formatted as a whole in practice; its first number or date decides (a percent
    format for a numeric column, a date or time format for a date column).
    """
    wanted = [(j, "date") for j in grid.dated] + [(j, "percent") for j in grid.numeric if j not in grid.dated]
    found: dict[int, str] = {}
    first = grid.header_row + 1
    for j, kind in wanted:
        letters = column_letters(grid.first_column + j).encode()
        cells = grid.columns[j]
        for i in range(min(PROBE_ROWS, len(cells))):
            if not cells[i]:
                continue
            row = str(first + i).encode()
            tag = next(
                (
                    t
                    for q in (b'"', b"'")
                    for t, _ in _tags_holding(head, b"r=" + q + letters + row + q, b"c")
                ),
                None,
            )
            if tag is None:
                break
            typed = _CELL_TYPE.search(tag)
            if typed is not None and typed.group(1) not in (b"n", b"d"):
                continue  # text ("n/a") shows as typed whatever the format: the next value decides
            style = _CELL_STYLE.search(tag)
            code = styles.get(int(style.group(1))) if style is not None else None
            if code is not None and format_kind(code) == kind:
                found[j] = code
            break
    return found


def _show_formatted(grid: SheetGrid, formats: Mapping[int, str]) -> None:
    """Show the cells of formatted columns as Excel does ("05/01/2024", "25%"), each distinct text once."""
    for j, code in formats.items():
        column = grid.columns[j]
        seen: dict[str, str] = {}
        for i, text in enumerate(column):
            if text:
                shown_text = seen.get(text)
                if shown_text is None:
                    shown_text = seen[text] = render(code, text) or text
                column[i] = shown_text


def _tags_holding(text: bytes, needle: bytes, name: bytes) -> Iterator[tuple[bytes, int]]:
    """Yield each start tag called ``name`` (any namespace prefix) that contains ``needle``, and its end.

    The needle is searched as plain bytes (C speed); only its few hits are looked at in Python,
    where a regular expression over every tag of a large sheet would take a good part of a second.
    """
    pos = text.find(needle)
    while pos >= 0:
        start = text.rfind(b"<", 0, pos)
        end = text.find(b">", pos)
        if start >= 0 and end >= 0:
            tag = text[start : end + 1]
            found = _TAG_NAME.match(tag)
            if found is not None and found.group(1) == name:
                yield tag, end + 1
        pos = text.find(needle, pos + len(needle))


def _sheet_part(
    archive: zipfile.ZipFile, members: Mapping[str, zipfile.ZipInfo], sheet: str
) -> zipfile.ZipInfo | None:
    """Find the zip member holding the worksheet named ``sheet``."""
    workbook = members.get("xl/workbook.xml")
    rels = members.get("xl/_rels/workbook.xml.rels")
    if workbook is None or rels is None:
        return None
    rid = None
    for element in SafeET.fromstring(archive.read(workbook), forbid_dtd=True).iter():
        if element.tag.rsplit("}", 1)[-1] == "sheet" and element.get("name") == sheet:
            rid = next((v for k, v in element.attrib.items() if k.endswith("}id")), None)
    if rid is None:
        return None
    for element in SafeET.fromstring(archive.read(rels), forbid_dtd=True).iter():
        if element.get("Id") == rid:
            target = (element.get("Target") or "").replace("\\", "/")
            full = target.lstrip("/") if target.startswith("/") else f"xl/{target}"
            return members.get(posixpath.normpath(full).lower())
    return None


EXCEL_ERRORS: Mapping[str, str] = {
    "#N/A": "a formula that found nothing",
    "#REF!": "a formula that refers to a deleted cell",
    "#VALUE!": "a formula given the wrong kind of value",
    "#DIV/0!": "a division by zero",
    "#NAME?": "a formula naming something Excel does not know",
    "#NUM!": "a formula whose number is invalid or too large",
    "#NULL!": "a formula whose ranges do not meet",
    "#SPILL!": "a formula whose results have no room",
    "#CALC!": "a calculation Excel cannot do",
    "#GETTING_DATA": "a value still loading when the file was saved",
}
"""The error values Excel shows in a cell, and what each means."""
HIDDEN_LISTED = 20
"""Hidden rows named one by one in the summary; more are counted."""


def describe_hidden(table: RawTable) -> list[tuple[str, str]]:
    """Name the table's rows and columns hidden in Excel, for the summary and the Summary sheet.

    Returns:
        ("hidden rows", "3 (rows 5, 9, 12)") and ("hidden columns", 'D ("Notes")') when there are any.
    """
    out: list[tuple[str, str]] = []
    rows = table.hidden_rows
    if rows:
        listed = ", ".join(map(str, rows[:HIDDEN_LISTED])) + (", ..." if len(rows) > HIDDEN_LISTED else "")
        out.append(("hidden rows", f"{len(rows)} ({'row' if len(rows) == 1 else 'rows'} {listed})"))
    if table.hidden_columns:
        first = table.source.first_column
        named = [
            f'{column_letters(first + j)} ("{shown(table.headers[j])}")'
            if table.headers[j].strip()
            else column_letters(first + j)
            for j in table.hidden_columns
        ]
        out.append(("hidden columns", ", ".join(named)))
    return out


def _restore_error_cells(grid: SheetGrid, errors: Mapping[tuple[int, int], str]) -> None:
    """Put Excel's error text (#N/A, #REF!, ...) back into cells calamine reads as empty.

    The user sees "#N/A" in Excel; an empty cell instead would be reported as a missing
    value, which sends them looking for the wrong problem.
    """
    count = len(grid.columns[0]) if grid.columns else 0
    for (row, column), text in errors.items():
        i = row - grid.header_row - 1
        j = column - grid.first_column
        if 0 <= i < count and 0 <= j < len(grid.columns) and grid.columns[j][i] == "":
            grid.columns[j][i] = text


def _marked(table: RawTable, marks: _SheetMarks, first_column: int) -> RawTable:
    """Add the hidden rows and columns and the merged-cell notes that fall inside the table."""
    if not (marks.hidden_rows or marks.hidden_columns or marks.merged):
        return table
    rows = table.frame.index
    width = len(table.headers)
    present = set(rows.tolist())
    hidden_rows = tuple(sorted(r for r in marks.hidden_rows if r in present))
    hidden_columns = tuple(j for j in range(width) if first_column + j in marks.hidden_columns)
    notes: dict[tuple[int, int], str] = {}
    for top, left, bottom, right in marks.merged:
        first = f"{column_letters(left)}{top}"
        area = f"{first}:{column_letters(right)}{bottom}"
        for row in range(max(top, table.source.header_row + 1), bottom + 1):
            if row not in present:
                continue
            for column in range(max(left, first_column), min(right, first_column + width - 1) + 1):
                if (row, column) == (top, left) or len(notes) >= MAX_CELL_NOTES:
                    continue
                notes[(row, column - first_column)] = (
                    f"cell {column_letters(column)}{row} is part of the merged range {area}; "
                    f"Excel keeps the value only in {first}"
                )
    return dataclasses.replace(
        table, hidden_rows=hidden_rows, hidden_columns=hidden_columns, cell_notes=notes
    )


def _prolog_declares_dtd(handle: IO[bytes]) -> bool:
    """Tell whether an XML part declares a DTD anywhere before its root element.

    The whole prolog is scanned, not a fixed-size head: a long comment, processing
    instruction or run of spaces before ``<!DOCTYPE`` is legal XML and would hide it from a peek.
    Memory stays at one chunk; scanning stops at the root element.
    """
    pending = b""
    closing: bytes | None = None  # the end marker of the comment or PI being skipped
    first = True
    while True:
        chunk = handle.read(PROLOG_CHUNK)
        if first:
            first = False
            for bom in (codecs.BOM_UTF8, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE):
                chunk = chunk.removeprefix(bom)
        data = pending + chunk.replace(b"\x00", b"")  # the NULs of UTF-16 XML would hide the markers
        at_end = not chunk
        pos = 0
        while True:
            if closing is not None:
                end = data.find(closing, pos)
                if end < 0:
                    # Keep a tail that may hold the start of the end marker.
                    pending = data[max(pos, len(data) - len(closing) + 1) :]
                    break
                pos, closing = end + len(closing), None
                continue
            while pos < len(data) and data[pos] in b" \t\r\n":
                pos += 1
            head = data[pos : pos + 4]
            if len(head) < 4 and not at_end:
                pending = data[pos:]
                break
            if head.startswith(b"<?"):
                pos, closing = pos + 2, b"?>"
            elif head.startswith(b"<!--"):
                pos, closing = pos + 4, b"-->"
            else:
                # Only a DOCTYPE may start with "<!" here; anything else ends the prolog.
                return head.startswith(b"<!")
        if at_end:
            return False


def _xml_bomb(name: str) -> UnreadableFileError:
    return UnreadableFileError(
        f"{name} contains XML DTD/entity declarations (a possible XML bomb); refusing to read it"
    )


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


def check_encoding(name: str) -> str:
    """Return the codec a ``--encoding`` value names.

    Raises:
        InputError: the name is not a text encoding Python knows.
    """
    hint = "use a text encoding such as utf-8, cp1252, cp1251, cp1253, cp1254 or iso-8859-7"
    try:
        codec = codecs.lookup(name.strip()).name
        "0123456789".encode(codec)  # LookupError for codecs that are not text encodings (base64)
    except (LookupError, ValueError):
        raise InputError(f"--encoding {shown(name)!r} is not a known text encoding; {hint}") from None
    return codec


def _decode_plan(data: bytes, given: str | None = None) -> tuple[str, str, bytes, str]:
    """Choose how to decode text bytes.

    Returns:
        The encoding recorded, the codec used, the bytes to decode and how the encoding was
        chosen ("" when the text is plain UTF-8 or ASCII).
    """
    if given is not None:
        if given == "utf-8" and data.startswith(codecs.BOM_UTF8):
            return "utf-8-sig", "utf-8-sig", data, "--encoding"
        return given, given, data, "--encoding"
    for bom, label, codec in _BOMS:
        if data.startswith(bom):
            return label, codec, data, "byte order mark"
    head = data[:4096]
    if head.count(0) > len(head) // 4 and len(head) >= 4:
        # No BOM but NUL-heavy: UTF-16 text puts the NULs of ASCII on one side.
        even = head[0::2].count(0)
        odd = head[1::2].count(0)
        codec = "utf-16-le" if odd > even else "utf-16-be"
        try:
            data.decode(codec)
        except UnicodeDecodeError:
            return "binary", "", data, ""
        return codec, codec, data, "detected"
    if data.isascii():
        return "utf-8", "utf-8", data, ""
    try:
        data.decode("utf-8")
        return "utf-8", "utf-8", data, ""
    except UnicodeDecodeError:
        pass
    for codec in _legacy_candidates(data):
        if codec == "cp1252" and not _decodes(data, codec):
            # cp1252 is the last resort and reads anything: its five undefined bytes as latin-1.
            return "cp1252", "utf-8", _cp1252_text(data).encode("utf-8"), "detected"
        if _decodes(data, codec):
            return codecs.lookup(codec).name, codec, data, "detected"
    raise AssertionError("unreachable: cp1252 ends the candidates")  # pragma: no cover


def _cp1252_text(data: bytes) -> str:
    return data.decode("cp1252", errors="surrogateescape").translate(_CP1252_HOLES)


_LEGACY_CODECS = (
    # Ordered by how often carriers' tools export them: a tie between candidates that read the
    # sample equally well goes to the earlier one (cp1252 first, as before detection existed).
    "cp1252", "cp1250", "cp1251", "cp1253", "cp1254", "cp1257", "cp1255", "cp1256", "cp1258",
    "iso8859_7", "iso8859_2", "iso8859_9", "iso8859_13", "iso8859_5", "koi8_r", "koi8_u",
    "cp874", "cp932", "gb18030", "big5", "cp949", "euc_jp",
)  # fmt: skip
_SIBLINGS = {
    # Pairs that differ in a few letters (Greek capitals with tonos sit elsewhere in iso8859_7):
    # charset-normalizer may rank them equal, so the one that reads more letters wins.
    "cp1253": ("iso8859_7",),
    "iso8859_7": ("cp1253",),
    "cp1250": ("iso8859_2",),
    "iso8859_2": ("cp1250",),
    "cp1254": ("iso8859_9",),
    "iso8859_9": ("cp1254",),
    "cp1257": ("iso8859_13",),
    "iso8859_13": ("cp1257",),
}
DETECT_SAMPLE_BYTES = 64 * 1024
"""How much of the text's non-ASCII lines charset-normalizer looks at."""
_NON_ASCII = re.compile(rb"[\x80-\xff]")


def _legacy_candidates(data: bytes) -> list[str]:
    """Rank the legacy codecs that may have written ``data`` (best first) with charset-normalizer.

    Only lines holding non-ASCII bytes are looked at: in a carrier's sheet they are the few
    names and notes among thousands of ASCII numbers, and they alone tell the encodings apart.
    """
    import charset_normalizer

    lines: list[bytes] = []
    size = 0
    found = _NON_ASCII.search(data)
    while found is not None and size < DETECT_SAMPLE_BYTES:
        start = data.rfind(b"\n", 0, found.start()) + 1
        end = data.find(b"\n", found.start())
        end = len(data) if end < 0 else end
        lines.append(data[start:end])
        size += end - start + 1
        found = _NON_ASCII.search(data, end)
    sample = b"\n".join(lines)[:DETECT_SAMPLE_BYTES]
    if not sample:
        return ["cp1252"]
    matches = list(
        charset_normalizer.from_bytes(
            sample, steps=1, chunk_size=len(sample), cp_isolation=list(_LEGACY_CODECS)
        )
    )
    if not matches:
        return ["cp1252"]
    best = matches[0]
    tied: list[str] = []
    for match in matches:
        if abs(match.chaos - best.chaos) < 0.01 and match.coherence == best.coherence:
            tied += [match.encoding, *match.could_be_from_charset]
    tied += _SIBLINGS.get(best.encoding, ())
    rank = {codec: i for i, codec in enumerate(_LEGACY_CODECS)}
    known = sorted({c for c in tied if c in rank}, key=rank.__getitem__)
    # A few lines give charset-normalizer little to go on, and then it ties; the tie goes to
    # the reading with the fewest implausible words, then the most letters, then the commoner codec.
    texts = {codec: sample.decode(codec, errors="replace") for codec in known}
    scored = sorted(known, key=lambda c: (_odd_words(texts[c]), -_letters(texts[c]), rank[c]))
    others = [m.encoding for m in matches if m.encoding not in scored]
    ranked = [*scored, *others, "cp1252"]
    # cp1252 drops out of charset-normalizer's list when a byte it leaves undefined occurs, and
    # a Cyrillic code page may then win on Western text ("cafй"): keep cp1252 when it reads better.
    # (Its five undefined bytes are left out of that judgment: they are junk in any reading.)
    if ranked[0] != "cp1252" and _odd_words(sample.decode(ranked[0], errors="replace")) > _odd_words(
        sample.decode("cp1252", errors="ignore")
    ):
        ranked.insert(0, "cp1252")
    return ranked


_WORD = re.compile(r"[^\s\d!-/:-@\[-`{-~]+")
"""A word: a run of anything but spaces, digits and ASCII punctuation (combining marks included)."""
_C1_CONTROL = re.compile("[\x80-\x9f]")
_TURKISH_AS_CP1252 = frozenset("ÐðÞþ")
"""What ğ and ş become when Turkish is read as cp1252; outside Icelandic, no language writes them."""


def _odd_words(text: str) -> int:
    """Count the words that a wrong code page makes and real text does not.

    Such a word mixes ASCII letters with another script ("cafй", or Thai marks after a "t"),
    is three or more Latin letters none of which is ASCII (Russian read as cp1250: "Ìîńęâŕ"),
    holds a byte the code page leaves undefined or reads as a C1 control, or holds the
    Icelandic letters Turkish turns into under cp1252 ("Þiþli" for "Şişli").
    """
    count = 0
    for word in _WORD.findall(text):
        if word.isascii():
            continue
        top = max(word)
        has_ascii = any(c.isascii() for c in word)
        if (
            (has_ascii and top >= "\u0370")
            or (not has_ascii and len(word) >= 3 and top < "\u0250")
            or "\ufffd" in word
            or _C1_CONTROL.search(word) is not None
            or not _TURKISH_AS_CP1252.isdisjoint(word)
        ):
            count += 1
    return count


def _letters(text: str) -> int:
    """Count the non-ASCII letters of a decoded sample (symbols and controls are not letters)."""
    return sum(1 for char in text if char >= "\x80" and char.isalpha())


def _decodes(data: bytes, codec: str) -> bool:
    """Tell whether the whole of ``data`` is valid in ``codec``, in chunks (no second copy)."""
    decoder = codecs.getincrementaldecoder(codec)()
    try:
        for start in range(0, len(data), 1024**2):
            decoder.decode(data[start : start + 1024**2])
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    return True


def _sniff_delimiter(sample: str, preferred: str, extra_keys: frozenset[str]) -> tuple[str, int]:
    """Pick the delimiter that names header fields, else splits the top rows most consistently.

    Returns:
        The delimiter and the usual number of fields per row with it (1 when nothing splits).
    """
    truncated = not sample.endswith(("\n", "\r"))
    order = (preferred, *(d for d in DELIMITERS if d != preferred))
    best: tuple[tuple[int, int, int], str, int] | None = None
    for rank, delimiter in enumerate(order):
        try:
            records = [r for r in csv.reader(io.StringIO(sample, newline=""), delimiter=delimiter) if r]
        except csv.Error:
            continue
        if truncated and len(records) > 1:
            records = records[:-1]
        records = [r for r in records if not is_blank(r)][:SNIFF_RECORDS]
        if not records:
            continue
        index, matches = find_header(records, extra_keys)
        widths = Counter(len(r) for r in records[max(index, 0) :])
        usual, often = widths.most_common(1)[0]
        split_rows = often if usual > 1 else 0
        key = (matches if matches >= 2 else 0, split_rows, -rank)
        if best is None or key > best[0]:
            best = (key, delimiter, usual)
    if best is None or best[0][:2] == (0, 0):
        return preferred, 1  # nothing splits: one column, or all blank, under the usual delimiter
    return best[1], best[2]


def _read_text(
    path: Path,
    data: bytes,
    digest: str,
    extra_keys: frozenset[str],
    *,
    strict_table: bool,
    codec: str | None = None,
) -> RawTable:
    """Read delimited text: detect encoding and delimiter, number records as Excel rows."""
    name = path.name
    encoding, codec, payload, chosen = _decode_plan(data, codec)
    if encoding == "binary" or (not codec):
        raise UnreadableFileError(f"{name} is binary, not a text table; use {SUPPORTED}")
    head = payload[: SNIFF_CHARS * 4].decode(codec, errors="ignore")[:SNIFF_CHARS]
    controls = sum(1 for char in head if char < " " and char not in "\t\n\r\f\v")
    if controls > len(head) // 10:
        raise UnreadableFileError(f"{name} is binary, not a text table; use {SUPPORTED}")
    if strict_table and head.lstrip()[:1] == "<":
        raise UnreadableFileError(
            f"{name} is HTML/XML, not a spreadsheet; open it in Excel and save as .xlsx"
        )
    preferred = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
    delimiter, usual = _sniff_delimiter(head, preferred, extra_keys)
    if usual < 2 and strict_table:
        raise UnreadableFileError(
            f"{name} is not a delimited table (no comma, semicolon, tab or pipe columns); use {SUPPORTED}"
        )
    stream = io.TextIOWrapper(io.BytesIO(payload), encoding=codec, newline="")
    reader = csv.reader(stream, delimiter=delimiter, strict=False)
    numbers: list[int] = []
    rows: list[list[str]] = []
    record = 0
    try:
        for record, row in enumerate(reader, start=1):
            if not row:
                continue
            first = row[0]
            # Most rows start with a value; only the others need the whole-row blank test.
            if (not first or first.isspace()) and is_blank(row):
                continue
            numbers.append(record)
            rows.append(row)
    except csv.Error as error:
        raise UnreadableFileError(
            f"{name}: row {record + 1} cannot be parsed ({error}); a quote is probably never closed"
        ) from None
    except UnicodeDecodeError as error:
        fix = "check --encoding" if chosen == "--encoding" else "save it again as UTF-8 CSV"
        raise UnreadableFileError(
            f"{name} is not valid {encoding} text (byte {error.object[error.start]:#04x} "
            f"in row {record + 1}); {fix}"
        ) from None
    if not rows:
        raise UnreadableFileError(f"{name} has no header row (the file is blank); export it again")
    index, _score = find_header(rows[: 4 * SNIFF_RECORDS], extra_keys)
    header = rows[index]
    data_rows = rows[index + 1 :]
    data_numbers = numbers[index + 1 :]
    del rows
    problems, data_rows = _square(header, data_rows, data_numbers)
    # Every row now has the header's width, so numpy makes one 2-D block in C.
    matrix: Matrix = (
        np.array(data_rows, dtype=object) if data_rows else np.empty((0, len(header)), dtype=object)
    )
    del data_rows
    headers, frame = _frame(header, matrix, data_numbers)
    source = SourceInfo(
        path,
        "csv",
        digest,
        encoding=encoding,
        delimiter=delimiter,
        header_row=numbers[index],
        encoding_chosen=chosen,
    )
    return RawTable(source, headers, frame, problems)


def _square(
    header: Sequence[str], rows: list[list[str]], numbers: Sequence[int]
) -> tuple[dict[int, str], list[list[str]]]:
    """Bring every row to the header's width; a row that does not fit is a row problem."""
    width = len(header)
    named = width
    while named and not header[named - 1].strip():
        named -= 1
    problems: dict[int, str] = {}
    for position, row in enumerate(rows):
        count = len(row)
        if count == width:
            continue
        if count > width:
            if is_blank(row[width:]):
                rows[position] = row[:width]  # stray trailing delimiters: harmless
                continue
            problems[numbers[position]] = (
                f"row has {count} fields but the header has {width} columns "
                "(an unquoted delimiter in a value?)"
            )
            rows[position] = row[:width]
            continue
        if count < named:
            problems[numbers[position]] = f"row has {count} fields but the header has {width} columns"
        rows[position] = [*row, *([""] * (width - count))]
    return problems, rows
