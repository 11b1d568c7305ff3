"""Cells: clean each field's text and parse it once (ids, modes, statuses, UUIDs, phones).

A million-row file costs one parse per distinct value: ``parse_series`` caches by value.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from importer.fields import (
    DID_FIELDS,
    DIRECTION_OF,
    FIELD_NAMES,
    FIELDS,
    MODE_INDEX,
    MODES,
    STATUS_VALUES,
    Direction,
    Kind,
    header_key,
)
from importer.model import RawTable
from importer.validate.phones import PhoneNormaliser, PhoneResult

__all__ = [
    "Parsed",
    "clean_frame",
    "clean_text",
    "parse_cells",
    "parse_mode",
    "parse_positive_int",
    "parse_status",
]

# Characters that sneak in from copy and paste and are invisible in Excel.
_INVISIBLE = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff"), None)
# At most 19 digits: every id fits in 63 bits, and int() of thousands of digits would raise.
_INT_TEXT = re.compile(r"\+?(\d{1,19})(?:\.0*)?")
_MAX_ID = 2**63 - 1


def clean_text(value: str) -> str:
    """Trim whitespace (including no-break spaces) and invisible characters from a cell."""
    return value.translate(_INVISIBLE).strip()


NOT_WHOLE = "is not a whole number"


def parse_positive_int(text: str) -> int | None:
    """Return the positive integer a cell holds ('93', '93.0'), or None."""
    m = _INT_TEXT.fullmatch(text)
    if m is None:
        return None
    value = int(m.group(1))
    return value if 0 < value <= _MAX_ID else None


def describe_bad_int(text: str) -> str:
    """Say why a cell is not a positive whole number."""
    if len(text) > 19 and text.lstrip("+-").isdigit():
        return "is too large to be an id"
    try:
        number = float(text.replace(",", "."))
    except ValueError:
        return "is not a number"
    if number != number or number in (float("inf"), float("-inf")):
        return "is not a finite number"
    if number != int(number):
        return NOT_WHOLE
    if number <= 0:
        return "must be 1 or more"
    return "is not a plain whole number (write it without exponent or separators)"


def parse_mode(direction: Direction, text: str) -> int | None:
    """Return the mode number a cell names in ``direction`` (number or label), or None."""
    m = _INT_TEXT.fullmatch(text)
    if m is not None:
        number = int(m.group(1))
        return number if number in MODES[direction] else None
    return MODE_INDEX[direction].get(header_key(text))


def parse_status(text: str) -> int | None:
    """Return 1 or 0 for a status cell (blank is 1), or None when it is not a status."""
    if text == "":
        return 1
    m = _INT_TEXT.fullmatch(text)
    key = m.group(1).lstrip("0") or "0" if m is not None else text.casefold()
    return STATUS_VALUES.get(key)


def parse_uuid(text: str) -> str | None:
    """Return the canonical form of a UUID cell, or None."""
    try:
        return str(uuid.UUID(text))
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class Parsed:
    """Every field column, cleaned and parsed (None where a cell does not parse)."""

    clean: pd.DataFrame
    values: dict[str, pd.Series]
    phone: dict[int, PhoneResult]
    """Why each non-empty phone cell that did not parse failed, by Excel row (the others are fine)."""
    duplicate_of: dict[str, pd.Series]
    """For did_number and did_id: the Excel row of the first occurrence, for each later row."""
    blank: dict[str, pd.Series]
    """True where a field's cell is empty (computed once: each costs a pass over the column)."""
    parsed_ok: dict[str, pd.Series]
    """True where a field's cell parsed (computed once, as ``blank``)."""


def parse_series(series: pd.Series, fn: Callable[[str], object]) -> pd.Series:
    """Apply ``fn`` once per distinct value of a text column."""
    seen: dict[object, object] = {}
    out = []
    for v in series.tolist():
        try:
            out.append(seen[v])
        except KeyError:
            seen[v] = result = fn(v)
            out.append(result)
    # dtype object keeps ints as ints next to None (pandas would make them floats)
    return pd.Series(out, index=series.index, dtype=object)


def _parse_phones(column: pd.Series, normaliser: PhoneNormaliser) -> tuple[pd.Series, dict[int, PhoneResult]]:
    """Normalise a phone column: the numbers (None when blank or bad) and why the bad ones failed."""
    quick = normaliser.quick
    numbers: list[str | None] = []
    problems: dict[int, PhoneResult] = {}
    # Phone cells are nearly all distinct, so no cache; the fast path needs no result object.
    for row, text in zip(column.index.tolist(), column.tolist(), strict=True):
        number = quick(text) if text else None
        if number is None and text:
            result = normaliser.normalise(text)
            number = result.number
            if number is None:
                problems[row] = result
        numbers.append(number)
    return pd.Series(numbers, index=column.index, dtype=object), problems


def parse_cells(clean: pd.DataFrame, normaliser: PhoneNormaliser) -> Parsed:
    values: dict[str, pd.Series] = {}
    problems: dict[int, PhoneResult] = {}
    for f in FIELDS:
        col = clean[f.name]
        if f.kind is Kind.INT_ID:
            values[f.name] = parse_series(col, parse_positive_int)
        elif f.kind is Kind.PHONE:
            values[f.name], problems = _parse_phones(col, normaliser)
        elif f.kind is Kind.MODE:
            direction = DIRECTION_OF[f.name]
            values[f.name] = parse_series(col, lambda t, d=direction: parse_mode(d, t))  # type: ignore[misc]
        elif f.kind is Kind.STATUS:
            values[f.name] = parse_series(col, parse_status)
        else:
            values[f.name] = parse_series(col, lambda t: parse_uuid(t) if t else None)
    duplicate_of = {name: _first_occurrence(values[name]) for name in DID_FIELDS}
    blank = {name: clean[name] == "" for name in FIELD_NAMES}
    parsed_ok = {name: values[name].notna() for name in FIELD_NAMES}
    return Parsed(clean, values, problems, duplicate_of, blank, parsed_ok)


def _first_occurrence(keys: pd.Series) -> pd.Series:
    """For each row whose key appeared on an earlier row, the Excel row of the first one."""
    # Hash codes in C, then the first position of each code: no per-cell Python and no sort of
    # the keys themselves (a groupby on a million distinct strings costs seconds).
    codes, _ = pd.factorize(keys.to_numpy(dtype=object))  # missing keys get -1
    positions = np.flatnonzero(codes >= 0)
    present = codes[positions]
    _, first_index = np.unique(present, return_index=True)
    first = positions[first_index][present]
    later = first != positions
    rows = keys.index.to_numpy()
    return pd.Series(rows[first[later]], index=pd.Index(rows[positions[later]]), dtype="int64")


def _clean_cells(cells: list[object]) -> list[str]:
    """Clean a column's cells; ASCII text only needs its whitespace trimmed."""
    # The invisible characters clean_text removes are all non-ASCII, and str.strip returns the
    # very same object when there is nothing to trim: most cells cost one check and no copy.
    return [v.strip() if type(v) is str and v.isascii() else clean_text(str(v)) for v in cells]


_PROTECTED = re.compile(r'="(.*)"|\'(.*)', re.DOTALL)


def _unprotect(cells: list[str]) -> list[str]:
    """Read ``="918012345678"`` and ``'918012345678`` as the value they protect from Excel.

    Both are how people keep Excel from turning a long number into 9.18E+11 in a CSV. The
    results keep the cell as typed; only the parsed value loses the wrapper. A column with
    neither character anywhere (nearly all) costs one join and two C-speed character searches.
    """
    joined = "".join(cells)
    if "=" not in joined and "'" not in joined:
        return cells
    out = []
    for cell in cells:
        m = _PROTECTED.fullmatch(cell) if cell[:1] in ("=", "'") else None
        out.append(clean_text(m.group(1) if m.group(1) is not None else m.group(2)) if m else cell)
    return out


def clean_frame(table: RawTable, mapping: Mapping[str, int], rows: pd.Index) -> pd.DataFrame:
    whole = len(rows) == len(table.frame)  # no ragged rows left out: no reindexing needed
    data: dict[str, list[str]] = {}
    for name in FIELD_NAMES:
        pos = mapping.get(name)
        if pos is None:
            data[name] = [""] * len(rows)
        else:
            column = table.frame[pos]
            data[name] = _unprotect(_clean_cells(column.tolist() if whole else column.loc[rows].tolist()))
    return pd.DataFrame(data, index=rows, dtype=object)
