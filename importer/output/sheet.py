"""Stream text cells into a worksheet: Excel's limits, cell texts made safe and fitted, column widths.

Every output workbook writes its tables through here: every cell as text with ``write_string``
(never a formula, whatever it starts with), streamed row by row in ``constant_memory`` mode.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

EXCEL_MAX_ROWS = 1_048_576
EXCEL_MAX_COLUMNS = 16_384
EXCEL_MAX_CELL = 32_767
"""Excel's cell limit, counted in UTF-16 code units."""
TRUNCATION_MARKER = " …[truncated: cell longer than Excel's 32767 characters]"

_MIN_WIDTH = 6
_MAX_WIDTH = 60
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")

_StringWriter = Callable[..., int]


@dataclass(frozen=True, slots=True)
class _Column:
    """One output column: its header and its cleaned cell texts."""

    header: str
    values: list[str]
    truncated: int
    width: float


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
    sheet: Any, columns: list[_Column], header_format: Any, *, column_format: Any = None
) -> None:
    """Stream a header and rows of text cells under an autofilter, the header frozen."""
    rows_count = len(columns[0].values) if columns else 0
    for c, column in enumerate(columns):
        sheet.set_column(c, c, column.width, column_format)
        sheet.write_string(0, c, column.header, header_format)
    sheet.freeze_panes(1, 0)
    sheet.autofilter(0, 0, rows_count, len(columns) - 1)

    write: _StringWriter = sheet.write_string
    rows = zip(*(column.values for column in columns), strict=True) if columns else iter(())
    for r, values in enumerate(rows, start=1):
        # Empty cells are left out: they read back as empty and keep the file small.
        for c, value in enumerate(values):
            if value:
                write(r, c, value)
