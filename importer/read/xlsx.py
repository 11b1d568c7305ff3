"""What calamine does not tell about an .xlsx sheet, read from the sheet's XML in one guarded pass.

Error cells (#N/A, #REF!, ...), hidden rows and columns, merged ranges and the number formats
of date and percent columns. The zip has been vetted by ``safety.check_zip`` before.
"""

from __future__ import annotations

import dataclasses
import posixpath
import re
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from defusedxml import ElementTree as SafeET

from importer.display import format_kind, render, renderable_formats
from importer.errors import shown
from importer.model import RawTable
from importer.read.safety import MAX_WORKBOOK_XML_BYTES
from importer.read.workbook import SheetGrid

__all__ = [
    "EXCEL_ERRORS",
    "UNSAVED_FORMULA",
    "SheetMarks",
    "column_letters",
    "describe_hidden",
    "mark_table",
    "restore_error_cells",
    "sheet_marks",
    "show_formatted",
]

_TAG_NAME = re.compile(rb"<(?:[\w.-]+:)?([\w]+)[\s/>]")
_CELL_REF = re.compile(rb"""\br=["']([A-Z]{1,3})([0-9]{1,7})["']""")
_VALUE = re.compile(rb"<(?:[\w.-]+:)?v>([^<]{1,32})</")
_ROW_NUMBER = re.compile(rb"""\br=["']([0-9]{1,7})["']""")
_COL_SPAN = re.compile(rb"""\b(min|max)=["']([0-9]{1,5})["']""")
_MERGED_REF = re.compile(rb"""\bref=["']([A-Z]{1,3})([0-9]{1,7}):([A-Z]{1,3})([0-9]{1,7})["']""")
_MARKERS = (b't="e"', b"t='e'", b"hidden=", b"mergeCell", b"<f>", b"<f ", b":f>", b":f ")
"""What makes a sheet worth a second look: error cells, hidden rows or columns, merged cells, formulas."""
_UNSAVED_FORMULA = re.compile(
    rb"<(?:[\w.-]+:)?c\b([^>]*)>\s*<(?:[\w.-]+:)?f\b[^>]*?(?:/>|>[^<]*</(?:[\w.-]+:)?f>)\s*"
    rb"(<(?:[\w.-]+:)?v\s*/>|<(?:[\w.-]+:)?v>\s*</(?:[\w.-]+:)?v>)?\s*</(?:[\w.-]+:)?c>"
)
"""A cell holding a formula and no saved result: no value, or an empty one (group 2)."""
_STRING_TYPE = re.compile(rb"""\bt=["']str["']""")
UNSAVED_FORMULA = "holds a formula with no saved result: open and save the file in Excel"
"""What a cell written by a script (a formula, never calculated) is said to hold."""
_SCAN_CHUNK = 1024**2
MAX_CELL_NOTES = 100_000
"""Merged cells noted at most: a sheet merging whole blocks must not cost a note per cell."""


@dataclass(frozen=True, slots=True)
class SheetMarks:
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
    unsaved_formulas: frozenset[tuple[int, int]] = frozenset()
    """(Excel row, 0-based column) of the cells holding a formula with no saved result."""


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


def sheet_marks(path: Path, grid: SheetGrid) -> SheetMarks:
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
            return SheetMarks()
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
                return SheetMarks(formats=_column_formats(head, grid, styles) if styles else {})
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
    unsaved: set[tuple[int, int]] = set()
    for found in _UNSAVED_FORMULA.finditer(text):
        # An empty value of a string formula is a saved result: the empty text.
        if found.group(2) is not None and _STRING_TYPE.search(found.group(1)) is not None:
            continue
        if (ref := _CELL_REF.search(found.group(1))) is not None:
            unsaved.add((int(ref.group(2)), _column_index(ref.group(1))))
    return SheetMarks(errors, frozenset(rows), frozenset(columns), merged, formats, frozenset(unsaved))


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


def show_formatted(grid: SheetGrid, formats: Mapping[int, str]) -> None:
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


def restore_error_cells(grid: SheetGrid, errors: Mapping[tuple[int, int], str]) -> None:
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


def mark_table(table: RawTable, marks: SheetMarks, first_column: int) -> RawTable:
    """Add the hidden rows and columns and the merged-cell and formula notes that fall inside the table."""
    if not (marks.hidden_rows or marks.hidden_columns or marks.merged or marks.unsaved_formulas):
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
    # calamine reads such a cell as empty: without the note it would be reported as a missing value.
    for row, column in sorted(marks.unsaved_formulas):
        j = column - first_column
        if row in present and 0 <= j < width and table.frame.at[row, j] == "" and len(notes) < MAX_CELL_NOTES:
            notes[(row, j)] = f"cell {column_letters(column)}{row} {UNSAVED_FORMULA}"
    return dataclasses.replace(
        table, hidden_rows=hidden_rows, hidden_columns=hidden_columns, cell_notes=notes
    )
