"""Validate every row of a table with pandera: all of a row's problems at once.

The rules come from ``fields.py``. Each cell is parsed once (``cells.py``; phone numbers in
``phones.py``), the columns are matched to fields (``columns.py``), and a pandera schema built
from the field spec checks the parsed columns. ``validate(lazy=True)`` gathers every failure;
the failure cases become ``RowIssue`` values: a kind and the params its words are rendered from
(``words.py``), naming the column as the user wrote it and the value. Rows are never dropped
silently: each input row is in ``ValidationReport.valid``, has at least one issue, or is in
``ValidationReport.skipped`` with why (a footer line after the last data row).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import cast, overload

import numpy as np
import numpy.typing as npt
import pandas as pd
import pandera.pandas as pa
import phonenumbers

from importer.collector import collector_paused
from importer.errors import shown
from importer.fields import (
    DIRECTION_OF,
    FIELD_NAMES,
    FIELDS,
    MODE_FIELD,
    MODE_ID_FIELDS,
    MODES,
    Direction,
    Kind,
    describe_modes,
)
from importer.model import RawTable, RoutingRow, RowIssue, ValidationReport
from importer.read.xlsx import EXCEL_ERRORS, UNSAVED_FORMULA
from importer.validate.cells import NOT_WHOLE, Parsed, clean_frame, clean_text, describe_bad_int, parse_cells
from importer.validate.columns import map_columns, wrong_column_params, wrong_matches
from importer.validate.phones import PhoneNormaliser
from importer.vocab import ReasonKind
from importer.words import IssueKind, Note, NoteKind, worded

__all__ = ["build_schema", "table_check", "validate_table"]


def _modes_needing(id_field: str) -> tuple[Direction, set[int]]:
    for direction, modes in MODES.items():
        numbers = {m.number for m in modes.values() if m.requires == id_field}
        if numbers:
            return direction, numbers
    raise KeyError(id_field)  # pragma: no cover - fields.py defines every id field with a mode


def _check(ok: pd.Series, name: str) -> pa.Check:
    """A check whose answer was computed from the parsed columns (True where the cell is fine)."""
    # ignore_na=False: cells are never null, and pandera's null scan per check costs a full pass.
    return pa.Check(lambda _obj: ok, name=name, ignore_na=False)


def build_schema(parsed: Parsed, wrong: Mapping[str, str] | None = None) -> pa.DataFrameSchema:
    """Build the pandera schema for one table from the field spec.

    Column checks test each cell's parse; dataframe-wide checks test the rules that span
    columns (a DID on every row, the id each mode needs, ids for unused modes, duplicates).
    A column in ``wrong`` (see ``wrong_matches``) fails each cell that does not parse as a column
    that is not its field, instead of with a message about the value.
    """
    clean, values, blank = parsed.clean, parsed.values, parsed.blank
    columns: dict[str, pa.Column] = {}
    for f in FIELDS:
        checks: list[pa.Check] = []
        parsed_ok = parsed.parsed_ok[f.name]
        if wrong and f.name in wrong:
            # Its few values that parse are taken as they are; the others get one reason that
            # names the column instead of one per value.
            checks.append(_check(parsed_ok | blank[f.name], "wrong_column"))
            if f.kind is Kind.MODE:
                checks.append(_check(~blank[f.name], "mode_required"))
        elif f.kind is Kind.PHONE:
            scientific = [row for row, r in parsed.phone.items() if r.kind is IssueKind.SCIENTIFIC_NOTATION]
            sci = pd.Series(clean.index.isin(scientific), index=clean.index)
            checks.append(_check(~sci, "scientific_notation"))
            checks.append(_check(parsed_ok | blank[f.name] | sci, "phone_number"))
        elif f.kind is Kind.MODE:
            checks.append(_check(~blank[f.name], "mode_required"))
            checks.append(_check(parsed_ok | blank[f.name], "mode"))
        elif f.kind is Kind.STATUS:
            checks.append(_check(parsed_ok, "status"))
        else:
            name = "positive_integer" if f.kind is Kind.INT_ID else "uuid"
            checks.append(_check(parsed_ok | blank[f.name], name))
        # nullable=True: cleaned cells are always str, so pandera's null scan could never fail.
        columns[f.name] = pa.Column(object, checks=checks, nullable=True)

    frame_checks = [_check(~(blank["did_id"] & blank["did_number"]), "did_missing")]
    for id_field in MODE_ID_FIELDS:
        direction, numbers = _modes_needing(id_field)
        mode = values[MODE_FIELD[direction]]
        uses = mode.isin(numbers)
        known_mode = parsed.parsed_ok[MODE_FIELD[direction]]
        frame_checks.append(_check(~(uses & blank[id_field]), f"mode_id_missing:{id_field}"))
        frame_checks.append(_check(~(~blank[id_field] & known_mode & ~uses), f"mode_id_unused:{id_field}"))
    duplicate = clean.index.isin(parsed.duplicate_of["did_number"].index) | clean.index.isin(
        parsed.duplicate_of["did_id"].index
    )
    frame_checks.append(_check(pd.Series(~duplicate, index=clean.index), "duplicate_did"))
    return pa.DataFrameSchema(columns, checks=frame_checks, strict=True, coerce=False)


class _Messages:
    """Turn pandera failure cases into RowIssues that name the user's column and value."""

    def __init__(
        self, table: RawTable, mapping: Mapping[str, int], parsed: Parsed, wrong: Mapping[str, str]
    ) -> None:
        self.table = table
        self.mapping = mapping
        self.parsed = parsed
        self.wrong = wrong
        self.dup_number = parsed.duplicate_of["did_number"]
        self.dup_id = parsed.duplicate_of["did_id"]
        # Plain arrays and one index lookup per row: DataFrame.at costs ~10 us a call, and a
        # large file can have tens of thousands of failing rows.
        self._raw = {field: table.frame[pos].to_numpy() for field, pos in mapping.items()}
        self._raw_position = table.frame.index.get_loc
        self._clean = {name: parsed.clean[name].to_numpy() for name in MODE_FIELD.values()}
        self._values = {name: parsed.values[name].to_numpy() for name in MODE_FIELD.values()}
        self._clean_position = parsed.clean.index.get_loc

    def header(self, field: str) -> str:
        pos = self.mapping.get(field)
        return shown(self.table.headers[pos]) if pos is not None else field

    def raw(self, row: int, field: str) -> str:
        cells = self._raw.get(field)
        return str(cells[self._raw_position(row)]) if cells is not None else ""

    def note(self, row: int, field: str) -> str:
        """What the reader knows of an empty cell (e.g. that it is merged), as "; ..." or ""."""
        pos = self.mapping.get(field)
        note = self.table.cell_notes.get((row, pos)) if pos is not None and self.table.cell_notes else None
        return f"; {note}" if note else ""

    def issue(self, row: int, check: str) -> list[RowIssue]:
        if ":" in check:
            check, id_field = check.split(":", 1)
            direction, _ = _modes_needing(id_field)
            mode_field = MODE_FIELD[direction]
            at = self._clean_position(row)
            mode_text = str(self._clean[mode_field][at])
            mode = cast("int | None", self._values[mode_field][at])
            label = MODES[direction][mode].label if mode is not None else mode_text
            about_mode = {
                "mode_column": self.header(mode_field),
                "mode": mode_text,
                "mode_label": label,
                "field": id_field,
            }
            if check == "mode_id_missing":
                variant = "" if id_field in self.mapping else "absent"
                note = self.note(row, id_field)
                return [
                    _issue(
                        row,
                        self.header(id_field),
                        "",
                        IssueKind.MISSING_MODE_ID,
                        variant=variant,
                        note=note,
                        **about_mode,
                    )
                ]
            value = self.raw(row, id_field)
            return [_issue(row, self.header(id_field), value, IssueKind.ID_FOR_UNUSED_MODE, **about_mode)]
        if check == "did_missing":
            note = self.note(row, "did_number") or self.note(row, "did_id")
            return [
                _issue(
                    row,
                    self.header("did_number"),
                    "",
                    IssueKind.MISSING_DID,
                    number_column=self.header("did_number"),
                    id_column=self.header("did_id"),
                    note=note,
                    **({"variant": "formula", "formula": note[2:]} if UNSAVED_FORMULA in note else {}),
                )
            ]
        if check == "duplicate_did":
            issues = []
            for field, firsts in (("did_number", self.dup_number), ("did_id", self.dup_id)):
                if row in firsts.index:
                    first = self.table.row_name(cast(int, firsts.at[row]))
                    issues.append(
                        _issue(
                            row, self.header(field), self.raw(row, field), IssueKind.DUPLICATE, first=first
                        )
                    )
            return issues
        raise KeyError(check)  # pragma: no cover - every dataframe check is handled above

    def column_issue(self, row: int, field: str, check: str) -> RowIssue:
        header = self.header(field)
        value = self.raw(row, field)
        text = clean_text(value)
        if check == "wrong_column":
            params = wrong_column_params(header, field, self.wrong[field])
            return _issue(row, header, value, IssueKind.WRONG_COLUMN, **params)
        excel_error = EXCEL_ERRORS.get(text)
        if excel_error is not None:
            return _issue(row, header, value, IssueKind.EXCEL_ERROR, error=text, meaning=excel_error)
        if check == "scientific_notation" or check == "phone_number":
            result = self.parsed.phone.get(row)
            if result is None or result.kind is None:
                return _issue(row, header, value, IssueKind.BAD_NUMBER)
            return _issue(row, header, value, result.kind, **result.params)
        if check == "mode_required":
            direction = DIRECTION_OF[field]
            return _issue(
                row,
                header,
                value,
                IssueKind.MISSING_MODE,
                direction=direction.value,
                modes=describe_modes(direction),
                note=self.note(row, field),
            )
        if check == "mode":
            direction = DIRECTION_OF[field]
            modes = describe_modes(direction)
            if describe_bad_int(text) == NOT_WHOLE:
                expected = f"{direction.value} modes are {modes}"
                return _issue(row, header, value, IssueKind.DECIMAL_NUMBER, expected=expected)
            return _issue(row, header, value, IssueKind.BAD_MODE, direction=direction.value, modes=modes)
        if check == "status":
            if describe_bad_int(text) == NOT_WHOLE:
                expected = "a status is 1 or 0 (or active/inactive, yes/no, y/n, true/false)"
                return _issue(row, header, value, IssueKind.DECIMAL_NUMBER, expected=expected)
            return _issue(row, header, value, IssueKind.BAD_STATUS)
        if check == "uuid":
            return _issue(row, header, value, IssueKind.BAD_UUID)
        problem = describe_bad_int(text)
        if problem == NOT_WHOLE:
            return _issue(
                row, header, value, IssueKind.DECIMAL_NUMBER, expected="ids are positive whole numbers"
            )
        return _issue(row, header, value, IssueKind.BAD_ID, problem=problem)


def _issue(row: int, column: str, value: str, kind: IssueKind, **params: str) -> RowIssue:
    """A row problem whose params carry the column and value its message quotes."""
    return RowIssue(row, column, value, kind, {"column": column, "value": value, **params})


def validate_table(
    table: RawTable,
    *,
    column_map: Mapping[str, str] | None = None,
    default_region: str | None = None,
    ignore_columns: Sequence[str] = (),
) -> ValidationReport:
    """Validate every row of ``table``; return the valid rows and every problem.

    Args:
        table: the table as read.
        column_map: ``--map`` entries, header text (or column letter) -> field name.
        default_region: ISO region (e.g. "IN") used to read national numbers.
        ignore_columns: ``--ignore-column`` entries (header text or letter) left out of matching.

    Returns:
        A report in which each input row is either valid or has at least one issue.

    Raises:
        InputError: the columns cannot be mapped, or the region is unknown.
    """
    return table_check(
        table, column_map=column_map, default_region=default_region, ignore_columns=ignore_columns
    )()


def table_check(
    table: RawTable,
    *,
    column_map: Mapping[str, str] | None = None,
    default_region: str | None = None,
    ignore_columns: Sequence[str] = (),
) -> Callable[[], ValidationReport]:
    """Check the options against ``table`` now; return the check of its rows, to run when wanted.

    A run reads its file, checks the options (an unusable one stops it before anything is sent),
    and checks the rows while the API builds the account's answer (``inventory.read_state``).
    Arguments and errors as ``validate_table``.
    """
    if default_region is not None:
        default_region = default_region.strip().upper()
        # "UK" is what people write; ISO 3166 (and phonenumbers) call the United Kingdom GB.
        default_region = {"UK": "GB"}.get(default_region, default_region)
        if default_region not in phonenumbers.SUPPORTED_REGIONS:
            raise worded(
                '{region_option} "{region}" is not a known region code (e.g. IN, US, GB)',
                region=default_region,
            )
    mapping = map_columns(
        table.headers, column_map or {}, ignore_columns, first_column=table.source.first_column
    )
    chosen = set((column_map or {}).values())
    return lambda: _check_rows(table, mapping, chosen, default_region)


def _check_rows(
    table: RawTable, mapping: dict[str, int], chosen: set[str], default_region: str | None
) -> ValidationReport:
    """Validate every row of ``table`` under its column ``mapping`` (``--map`` chose ``chosen``)."""
    issues: list[RowIssue] = [
        _issue(row, "", "", IssueKind.RAGGED_ROW, problem=problem)
        for row, problem in sorted(table.row_problems.items())
    ]
    rows = table.frame.index[~table.frame.index.isin(list(table.row_problems))]
    footers = footer_rows(table, mapping, rows)
    if footers:
        rows = rows[~rows.isin(footers)]
    clean = clean_frame(table, mapping, rows)
    parsed = parse_cells(clean, PhoneNormaliser(default_region))
    wrong = wrong_matches(parsed, [f for f in mapping if f not in chosen])
    schema = build_schema(parsed, wrong)
    failures: pd.DataFrame | None = None
    try:
        schema.validate(clean, lazy=True)
    except pa.errors.SchemaErrors as exc:
        failures = exc.failure_cases
    if failures is not None and len(failures):
        messages = _Messages(table, mapping, parsed, wrong)
        # pandera reports a dataframe-wide check once per column: keep one per (row, check). A
        # column check is kept per column too, so two bad ids (or two empty modes) of one row
        # are two problems, each naming its own column.
        failures = failures.assign(
            _column=failures["column"].where(failures["schema_context"] == "Column", "")
        ).drop_duplicates(["index", "check", "schema_context", "_column"])
        for index, context, column, check in zip(
            failures["index"].tolist(),
            failures["schema_context"].tolist(),
            failures["column"].tolist(),
            failures["check"].tolist(),
            strict=True,
        ):
            if context == "Column":
                issues.append(messages.column_issue(int(index), str(column), str(check)))
            else:
                issues.extend(messages.issue(int(index), str(check)))
    headers = tuple(map(shown, table.headers))  # as issues name them
    issues.sort(key=lambda i: (i.row, _column_order(mapping, headers, i.column)))
    failed = rows.isin(list({i.row for i in issues}))
    valid = _LazyRows(parsed.values, rows.to_numpy()[~failed])
    findings = tuple(
        Note(NoteKind.WRONG_MATCH, {"column": table.headers[mapping[f]], "field": f, "values": values})
        for f, values in wrong.items()
    )
    return ValidationReport(
        table=table,
        valid=valid,
        issues=tuple(issues),
        mapping=dict(mapping),
        skipped=dict.fromkeys(footers, ReasonKind.FOOTER_ROW),
        findings=findings,
        did_numbers=parsed.values["did_number"],
    )


def footer_rows(table: RawTable, mapping: Mapping[str, int], rows: pd.Index) -> list[int]:
    """The table's trailing rows that hold text only outside the field columns ("Total numbers: 15").

    Portal exports end with such lines; they are no data rows, and failing them would fail every
    such export. Only rows after the last row with a value in a field column count: a table with
    no such row at all has no footer (its rows fail, each saying what it lacks).
    """
    fields = sorted(set(mapping.values()))
    others = [p for p in range(len(table.headers)) if p not in mapping.values()]
    if not others:
        return []
    frame = table.frame
    at = frame.index.get_indexer(rows)
    found: list[int] = []
    for position in reversed(at.tolist()):  # from the end, up to the last data row: a few rows
        cells = frame.iloc[position]
        if any(clean_text(str(cells.iloc[p])) for p in fields):
            return found[::-1]
        if any(clean_text(str(cells.iloc[p])) for p in others):
            found.append(int(frame.index[position]))
        else:
            return found[::-1]
    return []


def _column_order(mapping: Mapping[str, int], headers: tuple[str, ...], column: str) -> int:
    try:
        return headers.index(column)
    except ValueError:
        return len(headers) + (FIELD_NAMES.index(column) if column in FIELD_NAMES else 0)


class LazyRows(Sequence[RoutingRow]):
    """Rows built when first read (``_build``), then kept: a plan reads them, a validate-only run
    and a cell edit never do."""

    _rows: list[RoutingRow] | None = None

    def _build(self) -> list[RoutingRow]:
        raise NotImplementedError

    def _built(self) -> list[RoutingRow]:
        if self._rows is None:
            self._rows = self._build()
        return self._rows

    @overload
    def __getitem__(self, index: int) -> RoutingRow: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[RoutingRow]: ...
    def __getitem__(self, index: int | slice) -> RoutingRow | Sequence[RoutingRow]:
        return self._built()[index]

    def __iter__(self) -> Iterator[RoutingRow]:
        # Sequence's own goes through __getitem__ (and _built) once per row.
        return iter(self._built())

    def __len__(self) -> int:
        return len(self._built())


class _LazyRows(LazyRows):
    """The valid rows as RoutingRow values, built when first read."""

    def __init__(self, values: dict[str, pd.Series], rows: npt.NDArray[np.int64]) -> None:
        # Only the parsed values are kept (not the cleaned frame): a validate-only run holds
        # them while it writes, and never builds the rows.
        self._values: dict[str, pd.Series] | None = values
        self._numbers = rows

    def _build(self) -> list[RoutingRow]:
        assert self._values is not None
        rows = _valid_rows(self._values, self._numbers.tolist())
        self._values = None
        return rows

    def __len__(self) -> int:
        return len(self._numbers)

    def __repr__(self) -> str:
        return f"<{len(self)} valid rows>"


_AT = {name: k for k, name in enumerate(RoutingRow._fields)}
"""Each RoutingRow field's position: a row is built from its cells in this order."""


@collector_paused()  # a list of new tuples of numbers and texts: no cycle to find
def _valid_rows(values: dict[str, pd.Series], rows: list[int]) -> list[RoutingRow]:
    if not rows:
        return []
    columns = [values[name].loc[rows].tolist() for name in RoutingRow._fields[1:]]
    inbound_at, outbound_at, status_at = _AT["for_inbound_call"], _AT["for_outbound_call"], _AT["status"]
    # The ids a pair of modes does not use, as positions in the row: found once per pair.
    unused_for: dict[tuple[int, int], tuple[int, ...]] = {}
    out: list[RoutingRow] = []
    append = out.append
    make = RoutingRow._make
    for cells in map(list, zip(rows, *columns, strict=True)):
        modes = (int(cells[inbound_at]), int(cells[outbound_at]))
        unused = unused_for.get(modes)
        if unused is None:
            wanted = _required_ids(*modes)
            unused = unused_for[modes] = tuple(_AT[f] for f in MODE_ID_FIELDS if f not in wanted)
        for k in unused:
            cells[k] = None
        cells[0] = int(cells[0])
        cells[inbound_at], cells[outbound_at] = modes
        cells[status_at] = int(cells[status_at])
        append(make(cells))
    return out


_REQUIRED_IDS: dict[tuple[int, int], frozenset[str]] = {
    (i.number, o.number): frozenset(n for n in (i.requires, o.requires) if n is not None)
    for i in MODES[Direction.INBOUND].values()
    for o in MODES[Direction.OUTBOUND].values()
}


def _required_ids(inbound: int, outbound: int) -> frozenset[str]:
    return _REQUIRED_IDS[(inbound, outbound)]
