"""Write the failed-rows file: only the given rows, in the input's own columns, ready to fix and re-import."""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from pathlib import Path

from importer.model import RawTable
from importer.output.paths import _refuse_input, atomic_workbook
from importer.output.results import ROW_COLUMN, _input_columns, _origin_columns
from importer.output.sheet import _column, _write_table

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
    columns.append(_column(FAILED_COLUMNS[0], [(reasons or {}).get(r, "") for r in numbers]))
    columns += _origin_columns(table, numbers)
    with atomic_workbook(path) as book:
        text = book.add_format({"num_format": "@"})
        bold = book.add_format({"bold": True, "num_format": "@"})
        sheet = book.add_worksheet(_sheet_name(None if table.row_sheets else table.source.sheet))
        # Text-formatted columns keep the digits of numbers the user types in while fixing rows.
        _write_table(sheet, columns, bold, column_format=text)


def _sheet_name(name: str | None) -> str:
    """Return ``name`` made valid as an Excel sheet name, or 'Sheet1'."""
    cleaned = re.sub(r"[\[\]:*?/\\]", "_", name or "").strip("'")[:31]
    return cleaned or "Sheet1"
