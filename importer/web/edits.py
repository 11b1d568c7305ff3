"""Edit operations on a web job's table: set, replace, fill, exclude, include, accept suggestions,
undo; and the incremental check that revalidates only the rows an operation touched.

Everything here is a pure function over values: the table as read (with the job's corrections),
its ``ValidationReport`` and the job's list of operations. ``web.jobs`` keeps the results (the
cell edits in ``edits.json``, the operations in ``operations.json``) and saves them.

An operation adds cell edits at the end of the job's edit list, so the edits in effect are the
concatenation of the operations in effect, in order; undo takes back the last one in effect (its
edits are the list's tail) as a whole. Excluded rows are the fold of the exclude and include
operations in effect: they are left out of validation, never planned nor sent, and end skipped.
"""

from __future__ import annotations

import collections
import dataclasses
import difflib
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from importer.errors import shown
from importer.fields import MODE_INDEX, STATUS_VALUES, header_key
from importer.jobs.validate import CellEdit, apply_edits, check_table
from importer.model import RawTable, RoutingRow, RowIssue, ValidationReport
from importer.options import InputOptions
from importer.validate.cells import clean_frame, clean_text, parse_cells, parse_positive_int, parse_series
from importer.validate.columns import WRONG_MATCH_SHARE
from importer.validate.phones import PhoneNormaliser
from importer.validate.rules import LazyRows, _column_order, validate_table
from importer.vocab import ReasonKind
from importer.web.engine import Edit
from importer.words import IssueKind

__all__ = [
    "OPS",
    "Change",
    "EditRefused",
    "Operation",
    "apply_op",
    "check",
    "column_position",
    "edited_table",
    "excluded_rows",
    "operation_from",
    "recheck",
    "suggestion",
    "undo",
]

SMALL_EDIT = 1000
"""Edits of fewer cells than this in a column are written cell by cell, more as one array."""
OPS = frozenset({"set", "replace", "fill", "exclude", "include", "accept_suggestions", "undo"})


class EditRefused(ValueError):
    """An operation that cannot be applied as given; the API answers 409 with the message."""


@dataclass(frozen=True, slots=True)
class Operation:
    """One operation the user made on the page (or the single-row PATCH), as listed and undone."""

    id: int
    op: str
    who: str
    when: str
    what: str
    """One line saying what it did, in the page's words."""
    cells: int
    """The cells it changed (its edits, the tail of the job's edit list while it is in effect)."""
    rows: tuple[int, ...]
    """The rows it changed, excluded or included."""
    excluded: tuple[int, ...] = ()
    included: tuple[int, ...] = ()
    undone: str = ""
    """When it was taken back ("" while in effect)."""


def operation_from(data: Mapping[str, Any]) -> Operation:
    """An operation as ``operations.json`` holds it."""
    values = dict(data)
    for name in ("rows", "excluded", "included"):
        values[name] = tuple(int(r) for r in values.get(name, ()))
    return Operation(**values)


@dataclass(frozen=True, slots=True)
class Change:
    """What one operation makes of the job: its edit list, operations, and the rows to check again."""

    edits: tuple[Edit, ...]
    operations: tuple[Operation, ...]
    touched: frozenset[int]
    """Rows whose cells or exclusion changed: only these (and their duplicates) are checked again."""
    operation: Operation


def excluded_rows(operations: Iterable[Operation]) -> frozenset[int]:
    """The rows excluded by the operations in effect."""
    out: set[int] = set()
    for o in operations:
        if not o.undone:
            out.update(o.excluded)
            out.difference_update(o.included)
    return frozenset(out)


def _rows_of(spec: Any, table: RawTable, report: ValidationReport, *, allow_all: bool) -> list[int]:
    index = table.frame.index
    if spec == "all" and allow_all:
        return index.tolist()
    if spec == "failed":
        return sorted(report.failed_rows)
    if isinstance(spec, list) and spec and all(type(r) is int for r in spec):
        missing = [r for r in spec if r not in index]
        if missing:
            raise EditRefused(f"row {missing[0]} is not a data row of this file")
        return list(dict.fromkeys(spec))
    choices = '"all", "failed"' if allow_all else '"failed"'
    raise EditRefused(f'"rows" must be {choices} or a list of row numbers')


def column_position(table: RawTable, mapping: Mapping[str, int], column: Any) -> int:
    """A column named by its position, its header text or the field it maps to."""
    headers = table.headers
    if type(column) is int:
        if 0 <= column < len(headers):
            return column
        raise EditRefused(f"no column at position {column} in this file")
    if isinstance(column, str):
        if column in headers:
            return headers.index(column)
        if column in mapping:
            return mapping[column]
    raise EditRefused(f"no column {column!r} in this file")


def _text(body: Mapping[str, Any], name: str) -> str:
    value = body.get(name)
    if value is None:
        return ""
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    raise EditRefused(f'"{name}" must be text')


def _cell_edits(
    table: RawTable, position: int, rows: Sequence[int], values: Sequence[str], when: str
) -> list[Edit]:
    """Edits for the cells whose text changes (a cell set to what it holds is no edit)."""
    if not rows:
        return []
    old = table.frame[position].loc[list(rows)].astype(str).tolist()
    header = table.headers[position]
    return [
        Edit(row, position, header, before, after, when)
        for row, before, after in zip(rows, old, values, strict=True)
        if before != after
    ]


def suggestion(issue: RowIssue) -> str | None:
    """The label a near-miss mode or status cell most likely means ("Only Answr" -> "only answer")."""
    if issue.kind is IssueKind.BAD_MODE:
        direction = issue.params.get("direction", "")
        spellings = next((index for d, index in MODE_INDEX.items() if d.value == direction), None)
        if spellings is None:
            return None
        key = header_key(issue.value)
    elif issue.kind is IssueKind.BAD_STATUS:
        spellings = {k: v for k, v in STATUS_VALUES.items() if not k.isdigit()}
        key = issue.value.strip().casefold()
    else:
        return None
    if not key:
        return None
    close = difflib.get_close_matches(key, [s for s in spellings if len(s) > 1], n=1, cutoff=0.75)
    if not close:
        return None
    if issue.kind is IssueKind.BAD_STATUS:
        return close[0]
    return str(spellings[close[0]])


def apply_op(
    body: Mapping[str, Any],
    report: ValidationReport,
    edits: Sequence[Edit],
    operations: Sequence[Operation],
    *,
    who: str,
    when: str,
) -> Change:
    """Apply one operation (the API's body) to the job's table; return its new edits and operations.

    ``report`` is the job's current check (its table carries the edits in effect).

    Raises:
        EditRefused: the operation is unknown, names a row or column the table does not have,
            or there is nothing to undo.
    """
    op = body.get("op")
    if op not in OPS:
        raise EditRefused(f'"op" must be one of {", ".join(sorted(OPS))}')
    if op == "undo":
        return undo(edits, operations, when)
    table = report.table
    new: list[Edit] = []
    excluded: tuple[int, ...] = ()
    included: tuple[int, ...] = ()
    if op == "set" and "cells" in body:
        new, what = _set_cells(body.get("cells"), report, when)
    elif op == "set":
        row = body.get("row")
        if type(row) is not int or row not in table.frame.index:
            raise EditRefused(f"row {row} is not a data row of this file")
        position = column_position(table, report.mapping, body.get("column"))
        value = _text(body, "value")
        new = _cell_edits(table, position, [row], [value], when)
        what = f"set row {row}, {table.headers[position]!r} to {value!r}"
    elif op == "replace":
        position = column_position(table, report.mapping, body.get("column"))
        find, replace = _text(body, "find"), _text(body, "replace")
        rows = _rows_of(body.get("rows", "all"), table, report, allow_all=True)
        cells = table.frame[position].loc[rows].astype(str).str.strip().str.casefold()
        matching = cells.index[(cells == find.strip().casefold()).to_numpy()].tolist()
        new = _cell_edits(table, position, matching, [replace] * len(matching), when)
        what = f"replace {find!r} with {replace!r} in {table.headers[position]!r}"
    elif op == "fill":
        position = column_position(table, report.mapping, body.get("column"))
        value = _text(body, "value")
        rows = _rows_of(body.get("rows"), table, report, allow_all=False)
        new = _cell_edits(table, position, rows, [value] * len(rows), when)
        what = f"fill {table.headers[position]!r} with {value!r}"
    elif op == "accept_suggestions":
        rows = _rows_of(body.get("rows", "failed"), table, report, allow_all=True)
        wanted = set(rows)
        by_cell: dict[tuple[int, int], str] = {}
        for issue in report.issues:
            if issue.row in wanted and (fix := suggestion(issue)) is not None:
                position = column_position(table, report.mapping, issue.column)
                by_cell[(issue.row, position)] = fix
        for (row, position), fix in sorted(by_cell.items()):
            new += _cell_edits(table, position, [row], [fix], when)
        what = "accept the suggested labels"
    else:
        rows = _rows_of(body.get("rows"), table, report, allow_all=False)
        now = excluded_rows(operations)
        if op == "exclude":
            excluded = tuple(r for r in rows if r not in now)
            what = f"exclude {len(excluded)} row(s)"
        else:
            included = tuple(r for r in rows if r in now)
            what = f"include {len(included)} row(s) again"
    changed = tuple(dict.fromkeys(e.row for e in new)) + excluded + included
    if not changed:
        raise EditRefused("nothing to change: no cell differs from what it holds")
    operation = Operation(
        id=max((o.id for o in operations), default=0) + 1,
        op=str(op),
        who=who,
        when=when,
        what=what,
        cells=len(new),
        rows=changed,
        excluded=excluded,
        included=included,
    )
    return Change((*edits, *new), (*operations, operation), frozenset(changed), operation)


def _set_cells(cells: Any, report: ValidationReport, when: str) -> tuple[list[Edit], str]:
    """``{"op": "set", "cells": [{"row", "column", "value"}, ...]}``: several cells as one operation
    (the page's "Save changes"), so one undo takes the whole save back."""
    table = report.table
    if not isinstance(cells, list) or not cells or not all(isinstance(c, Mapping) for c in cells):
        raise EditRefused('"cells" must be a list of {"row": R, "column": C, "value": V}')
    wanted: dict[tuple[int, int], str] = {}
    for cell in cells:
        row = cell.get("row")
        if type(row) is not int or row not in table.frame.index:
            raise EditRefused(f"row {row} is not a data row of this file")
        wanted[(row, column_position(table, report.mapping, cell.get("column")))] = _text(cell, "value")
    new = [e for (row, p), v in sorted(wanted.items()) for e in _cell_edits(table, p, [row], [v], when)]
    if len(new) == 1:
        e = new[0]
        return new, f"set row {e.row}, {e.header!r} to {e.new!r}"
    named = ", ".join(f"row {e.row} {e.header!r}" for e in new[:5]) + (", ..." if len(new) > 5 else "")
    return new, f"set {len(new)} cells ({named})"


def undo(edits: Sequence[Edit], operations: Sequence[Operation], when: str) -> Change:
    """Take back the last operation still in effect, as a whole.

    Raises:
        EditRefused: no operation is in effect.
    """
    last = next((i for i in range(len(operations) - 1, -1, -1) if not operations[i].undone), None)
    if last is None:
        raise EditRefused("nothing to undo")
    taken = operations[last]
    kept = edits[: len(edits) - taken.cells]
    done = dataclasses.replace(taken, undone=when)
    listed = (*operations[:last], done, *operations[last + 1 :])
    return Change(tuple(kept), listed, frozenset(taken.rows), done)


# -- checking ------------------------------------------------------------------------------------


def check(
    table: RawTable, options: InputOptions, edits: Sequence[Edit], excluded: frozenset[int]
) -> ValidationReport:
    """Check the whole table as read: the library's ``check_table`` with the edits, and the
    excluded rows left out of validation and skipped ("excluded on the page").

    Raises:
        InputError: an edit names a cell the table does not have, or the columns cannot be mapped.
    """
    cells = [CellEdit(e.row, e.column, e.new) for e in edits]
    if not excluded:
        return check_table(table, options, cells)
    edited = apply_edits(table, cells)
    gone = [r for r in excluded if r in edited.frame.index]
    kept = dataclasses.replace(edited, frame=edited.frame.drop(index=gone))
    report = check_table(kept, options)
    skipped: dict[int, ReasonKind] = {**report.skipped, **dict.fromkeys(gone, ReasonKind.EXCLUDED)}
    return dataclasses.replace(report, table=edited, skipped=skipped)


def _checked_rows(table: RawTable, options: InputOptions, excluded: frozenset[int]) -> pd.Index:
    """The rows validation looks at: not ragged, hidden (when skipped) or excluded."""
    left_out = set(table.row_problems) | set(excluded)
    if options.skip_hidden_rows:
        left_out.update(table.hidden_rows)
    index = table.frame.index
    return index[~index.isin(list(left_out))] if left_out else index


def _did_keys(
    table: RawTable, mapping: Mapping[str, int], report: ValidationReport, rows: pd.Index
) -> list[pd.Series]:
    """Each checked row's DID keys (its number as E.164 digits, its id as a number), for duplicates."""
    keys = []
    if report.did_numbers is not None and "did_number" in mapping:
        keys.append(report.did_numbers.reindex(rows))
    if "did_id" in mapping:
        clean = clean_frame(table, {"did_id": mapping["did_id"]}, rows)
        keys.append(parse_series(clean["did_id"], parse_positive_int))
    return keys


def recheck(
    old: ValidationReport,
    table: RawTable,
    options: InputOptions,
    touched: Iterable[int],
    excluded: frozenset[int],
    before: RawTable | None = None,
    columns: Collection[int] | None = None,
) -> ValidationReport | None:
    """Check again only the rows an operation touched and the rows sharing a DID with them.

    ``table`` is the table with the edits now in effect; ``before`` the one ``old`` checked (its
    table, when left out). The rows checked again are closed under sharing a DID number or id
    (before or after the change), so each duplicate is found with its first occurrence, as a
    whole check finds it. Returns None when only a whole check can tell: the file has findings
    about whole columns, one may appear (``columns``: the columns whose cells changed, None: any),
    or a touched row is at the end (a footer can appear or go).
    """
    if old.findings:
        return None
    before = before if before is not None else old.table
    touched = set(touched)
    rows = _checked_rows(table, options, excluded)
    if old.skipped and any(kind is ReasonKind.FOOTER_ROW for kind in old.skipped.values()):
        return None
    mapping = old.mapping
    if (
        columns is not None
        and not set(columns) & set(mapping.values())
        and _ends_with_data(table, mapping, rows)
    ):
        # Only columns no field reads changed: every row checks as before (no footer can appear
        # while the last row holds a field value).
        return dataclasses.replace(old, table=table)
    if len(touched) * 5 > len(rows):
        return None  # most of the table: one whole check costs less than two partial ones
    last = rows[-1] if len(rows) else None
    if last is None or max(touched, default=last) >= last or touched & set(table.row_problems):
        return None
    sub_rows = rows[rows.isin(list(touched))]
    affected = set(touched)
    now = _did_keys(table, mapping, old, rows) if mapping.keys() & {"did_number", "did_id"} else []
    if now:
        # The touched rows' keys before the change: rows that were their duplicates change too.
        # Over every touched row: one excluded now was checked before, and its duplicates change.
        earlier = _did_keys(before, mapping, old, pd.Index(sorted(touched), dtype="int64"))
        if "did_number" in mapping and len(sub_rows):
            # The touched rows' numbers now, parsed as validation parses them (no schema needed).
            region = (options.default_region or "").strip().upper()
            normaliser = PhoneNormaliser({"UK": "GB"}.get(region, region) or None)
            parsed = parse_cells(clean_frame(table, mapping, sub_rows), normaliser)
            numbers = now[0].copy()
            numbers.loc[sub_rows] = parsed.values["did_number"]
            now[0] = numbers
        wanted = [set(k.dropna().tolist()) for k in earlier]
        frontier = set(touched)
        while frontier:
            for i, keys in enumerate(now):
                wanted[i].update(v for v in keys.reindex(sorted(frontier)).dropna().tolist())
            found: set[int] = set()
            for i, keys in enumerate(now):
                found.update(keys.index[keys.isin(list(wanted[i])).to_numpy()].tolist())
            frontier = found - affected
            affected |= frontier
    sub_rows = rows[rows.isin(list(affected))]
    fresh_issues: list[RowIssue] = []
    fresh_valid: list[RoutingRow] = []
    fresh_numbers: pd.Series | None = None
    if len(sub_rows):
        fresh = validate_table(
            _sub_table(table, sub_rows),
            column_map=options.column_map,
            default_region=options.default_region,
            ignore_columns=options.ignore_columns,
        )
        if fresh.findings or fresh.skipped:
            return None
        fresh_issues = list(fresh.issues)
        fresh_valid = list(fresh.valid)
        fresh_numbers = fresh.did_numbers
    redone = (affected & set(rows.tolist())) | set(excluded)
    headers = tuple(map(shown, table.headers))
    issues = sorted(
        [i for i in old.issues if i.row not in redone] + fresh_issues,
        key=lambda i: (i.row, _column_order(mapping, headers, i.column)),
    )
    if _may_look_wrong(table, mapping, options, issues, rows, columns):
        return None
    merged = None if old.did_numbers is None else old.did_numbers.reindex(rows)
    if merged is not None and fresh_numbers is not None:
        merged.loc[fresh_numbers.index] = fresh_numbers
    skipped: dict[int, ReasonKind] = {r: k for r, k in old.skipped.items() if k is not ReasonKind.EXCLUDED}
    skipped.update(dict.fromkeys((r for r in excluded if r in table.frame.index), ReasonKind.EXCLUDED))
    return dataclasses.replace(
        old,
        table=table,
        valid=_MergedRows(old.valid, redone, fresh_valid),
        issues=tuple(issues),
        skipped=skipped,
        did_numbers=merged,
    )


def _ends_with_data(table: RawTable, mapping: Mapping[str, int], rows: pd.Index) -> bool:
    """Whether the last checked row holds a value in a field's column (then no row is a footer)."""
    if not len(rows):
        return False
    cells = table.frame.loc[rows[-1]]
    return any(clean_text(str(cells.iloc[p])) for p in mapping.values())


def _may_look_wrong(
    table: RawTable,
    mapping: Mapping[str, int],
    options: InputOptions,
    issues: Sequence[RowIssue],
    rows: pd.Index,
    columns: Collection[int] | None,
) -> bool:
    """Whether a column may now look wrongly matched (``wrong_matches``): most of its filled
    cells fail. An upper bound on its failing cells (its issues that quote a value) against its
    filled cells: True sends the operation to a whole check, which decides."""
    chosen = set(options.column_map.values())  # a --map is taken at its word
    bad = collections.Counter(i.column for i in issues if i.value)
    for field, position in mapping.items():
        if field in chosen or (columns is not None and position not in columns):
            continue
        failing = bad.get(shown(table.headers[position]), 0)
        if failing < 2:
            continue
        cells = table.frame[position].loc[rows].astype(str).str.strip()
        if failing > int((cells != "").sum()) * (1 - WRONG_MATCH_SHARE):
            return True
    return False


def _sub_table(table: RawTable, rows: pd.Index) -> RawTable:
    wanted = set(rows.tolist())
    return dataclasses.replace(
        table,
        frame=table.frame.loc[rows],
        row_problems={},
        hidden_rows=(),
        cell_notes={k: v for k, v in table.cell_notes.items() if k[0] in wanted},
    )


class _MergedRows(LazyRows):
    """The valid rows of an earlier check, with some rows' replaced by a new check's, in row order.

    Built when first read, as the library's own valid rows are: a plan reads them, a cell edit
    does not.
    """

    def __init__(self, old: Sequence[RoutingRow], redone: set[int], fresh: list[RoutingRow]) -> None:
        self._old: Sequence[RoutingRow] | None = old
        self._redone = redone
        self._fresh = fresh

    def _build(self) -> list[RoutingRow]:
        assert self._old is not None
        kept = [r for r in self._old if r.row not in self._redone]
        rows = kept + self._fresh
        order = np.argsort(np.array([r.row for r in rows], dtype=np.int64), kind="stable")
        self._old = None
        return [rows[i] for i in order.tolist()]

    def __repr__(self) -> str:
        return "<valid rows, merged>"


def edited_table(table: RawTable, before: Sequence[Edit], after: Sequence[Edit]) -> RawTable:
    """The table with the edits ``after`` in effect, from ``table`` with ``before`` in effect.

    One list extends the other (an operation adds edits at the end, undo takes its tail away):
    added edits are laid over, taken ones give their cells back their earlier text.
    """
    if len(after) >= len(before):
        cells = [(e.row, e.column, e.new) for e in after[len(before) :]]
    else:
        cells = [(e.row, e.column, e.old) for e in reversed(before[len(after) :])]
    if not cells:
        return table
    frame = table.frame.copy(deep=False)
    by_column: dict[int, dict[int, str]] = {}
    for row, column, value in cells:
        by_column.setdefault(column, {})[row] = value  # in order: a later edit of a cell wins
    for column, values in by_column.items():
        # One array write per column: the library's per-cell ``.at`` costs ~40 us a cell.
        positions = frame.index.get_indexer(pd.Index(list(values)))
        if len(values) < SMALL_EDIT:  # keeps the column's own dtype, no conversion of the rest
            cells_now = frame[column].copy()
            cells_now.iloc[positions] = list(values.values())
            frame[column] = cells_now
        else:
            data = frame[column].to_numpy(dtype=object, copy=True)
            data[positions] = list(values.values())
            frame[column] = data
    return dataclasses.replace(table, frame=frame)


def recheck_or_check(
    report: ValidationReport,
    before: Sequence[Edit],
    after: Sequence[Edit],
    options: InputOptions,
    touched: Iterable[int],
    excluded: frozenset[int],
) -> ValidationReport:
    """The check after an operation: only its rows when ``recheck`` can tell, else the whole table."""
    table = edited_table(report.table, before, after)
    changed = after[len(before) :] if len(after) >= len(before) else before[len(after) :]
    touched = set(touched)
    # Exclusions change every column's share of failing cells; cell edits only their columns'.
    columns = {e.column for e in changed} if touched == {e.row for e in changed} else None
    fresh = recheck(report, table, options, touched, excluded, columns=columns)
    return fresh if fresh is not None else check(table, options, (), excluded)
