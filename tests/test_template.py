"""Tests of the routing templates: derived from fields.py, deterministic, committed copies current."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import openpyxl
import pandas as pd
import pytest
from openpyxl.utils import get_column_letter

from importer import fields
from importer.model import RawTable, SourceInfo
from importer.output.template import (
    INSTRUCTIONS_SHEET,
    ROUTING_SHEET,
    TEMPLATE_FILES,
    template_csv_text,
    write_template_xlsx,
)
from importer.validate.rules import validate_table

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"


@pytest.fixture(scope="module")
def template_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / TEMPLATE_FILES["xlsx"]
    write_template_xlsx(path)
    return path


@pytest.fixture(scope="module")
def book(template_path: Path) -> openpyxl.Workbook:
    return openpyxl.load_workbook(template_path)


def instruction_rows(book: openpyxl.Workbook) -> list[tuple[str, ...]]:
    ws = book[INSTRUCTIONS_SHEET]
    return [tuple(v or "" for v in row) for row in ws.iter_rows(values_only=True)]


def test_template_committed_files_are_current(template_path: Path) -> None:
    """templates/ holds what the functions generate (regenerate: python -m importer.output.template)."""
    assert (TEMPLATES / TEMPLATE_FILES["xlsx"]).read_bytes() == template_path.read_bytes()
    assert (TEMPLATES / TEMPLATE_FILES["csv"]).read_bytes() == template_csv_text().encode("utf-8")


def test_template_xlsx_is_deterministic(tmp_path: Path, template_path: Path) -> None:
    again = tmp_path / "again.xlsx"
    write_template_xlsx(again)
    assert again.read_bytes() == template_path.read_bytes()


def test_template_csv_is_the_header_line() -> None:
    text = template_csv_text()
    assert text.endswith("\r\n") and text.count("\n") == 1
    assert next(csv.reader(io.StringIO(text))) == list(fields.FIELD_NAMES)


def test_template_routing_sheet_headers_and_nothing_below(book: openpyxl.Workbook) -> None:
    ws = book[ROUTING_SHEET]
    assert book.sheetnames == [ROUTING_SHEET, INSTRUCTIONS_SHEET]
    assert next(ws.iter_rows(values_only=True)) == fields.FIELD_NAMES
    assert ws.max_row == 1
    assert ws.freeze_panes == "A2"


def test_template_did_number_column_is_text(book: openpyxl.Workbook) -> None:
    ws = book[ROUTING_SHEET]
    letter = get_column_letter(fields.FIELD_NAMES.index("did_number") + 1)
    assert ws.column_dimensions[letter].number_format == "@"


@pytest.mark.parametrize(
    ("field", "labels"),
    [
        (fields.MODE_FIELD[fields.Direction.INBOUND], fields.mode_labels(fields.Direction.INBOUND)),
        (fields.MODE_FIELD[fields.Direction.OUTBOUND], fields.mode_labels(fields.Direction.OUTBOUND)),
        ("status", list(fields.STATUS_LABELS.values())),
    ],
)
def test_template_dropdowns_offer_the_labels(book: openpyxl.Workbook, field: str, labels: list[str]) -> None:
    ws = book[ROUTING_SHEET]
    letter = get_column_letter(fields.FIELD_NAMES.index(field) + 1)
    lists = [dv for dv in ws.data_validations.dataValidation if dv.type == "list"]
    (dropdown,) = [dv for dv in lists if str(dv.sqref) == f"{letter}2:{letter}1048576"]
    assert dropdown.formula1 == '"' + ",".join(labels) + '"'
    assert dropdown.errorStyle == "warning"  # numbers such as 3 can still be typed


def test_template_headers_carry_input_messages(book: openpyxl.Workbook) -> None:
    ws = book[ROUTING_SHEET]
    prompts = {str(dv.sqref): dv for dv in ws.data_validations.dataValidation if dv.type is None}
    for c, f in enumerate(fields.FIELDS, start=1):
        dv = prompts[f"{get_column_letter(c)}1"]
        assert dv.promptTitle == f.title
        assert dv.prompt and len(dv.prompt) <= 255
        assert dv.prompt.rstrip("…") in f.description


def test_template_instructions_explain_every_field(book: openpyxl.Workbook) -> None:
    rows = instruction_rows(book)
    titles = {f.name: f.title for f in fields.FIELDS}
    by_name = {row[0]: row for row in rows if row[0] in titles and row[1] == titles[row[0]]}
    assert set(by_name) == set(fields.FIELD_NAMES)
    for f in fields.FIELDS:
        aliases, _required, description, example = by_name[f.name][2:6]
        assert (description, example) == (f.description, f.example)
        assert all(alias in aliases for alias in f.aliases)


def test_template_instructions_name_each_modes_required_id(book: openpyxl.Workbook) -> None:
    rows = instruction_rows(book)
    for direction, modes in fields.MODES.items():
        for mode in modes.values():
            key = (fields.MODE_FIELD[direction], f"{mode.number} {mode.label}")
            (row,) = [r for r in rows if r[:2] == key]
            if mode.requires:
                assert row[3].startswith(mode.requires)
            else:
                assert row[3].startswith("no id")


def test_template_example_row_is_valid(book: openpyxl.Workbook) -> None:
    """The example in the Instructions passes the importer's own validation."""
    rows = instruction_rows(book)
    header_at = max(i for i, row in enumerate(rows) if row[: len(fields.FIELD_NAMES)] == fields.FIELD_NAMES)
    example = list(rows[header_at + 1][: len(fields.FIELD_NAMES)])
    source = SourceInfo(Path("example.xlsx"), "xlsx", "0" * 64)
    table = RawTable(source, fields.FIELD_NAMES, pd.DataFrame([example], index=[2]))
    report = validate_table(table)
    assert report.issues == ()
    assert len(report.valid) == 1
