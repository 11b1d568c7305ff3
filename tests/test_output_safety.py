"""Output safety: no cell of any workbook the tool writes is a formula, whatever the input holds.

Input cells, input headers, sheet names and file names are user data: a value such as
``=cmd|' /C calc'!A0`` must come back as that text, never as a formula Excel would run.
"""

from __future__ import annotations

import csv
import re
import zipfile
from pathlib import Path

import httpx
import openpyxl
import pytest
import python_calamine
import xlsxwriter
from helpers import CONNECTION, did_number, write_inventory

from importer.fields import FIELD_NAMES
from importer.jobs.run import run_import
from importer.jobs.validate import validate_file
from importer.options import ImportConfig, InputOptions, ValidateConfig
from importer.output.template import template_csv_text, write_template_xlsx
from importer.read.table import read_table
from importer.sandbox import SANDBOX_API_KEY, SandboxConfig, create_sandbox

HOSTILE = [
    '=HYPERLINK("http://x","y")',
    "=1+1",
    "@SUM(A1)",
    "+918012345678",
    "-5",
    "=cmd|' /C calc'!A0",
    "\t=1+1",
    "=1+1\r\n",
    "_x0041_",
    "a\x01b",
]
HEADER = ["DID", "Inbound Mode", "Inbound Bot ID", "Outbound Mode", "Status", *HOSTILE[:6]]
_FORMULA = re.compile(rb"<(?:\w+:)?f[\s>/]")
_CELL_TYPE = re.compile(rb'<(?:\w+:)?c\b[^>]*?\bt="([^"]*)"')


def _rows(n_valid: int) -> list[list[str]]:
    """Valid rows for DIDs 0..n-1 with hostile extra cells, then rows with hostile DIDs and ids."""
    rows = []
    for i in range(n_valid):
        extra = [HOSTILE[(i + k) % len(HOSTILE)] for k in range(6)]
        rows.append(["+" + did_number(i), "3", "93", "4", "active", *extra])
    for value in HOSTILE:
        rows.append([value, "3", value, "4", value, *HOSTILE[:6]])
    return rows


def _write_input(folder: Path, n_valid: int = 4) -> tuple[Path, list[list[str]]]:
    path = folder / "=HYPERLINK(1) carrier.csv"  # the file name shows in the Summary sheet
    rows = _rows(n_valid)
    with path.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([HEADER, *rows])
    return path, rows


def assert_no_formulas(path: Path) -> None:
    """No formula element in any part, and every typed cell a string or a number."""
    with zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            if not name.endswith(".xml"):
                continue
            xml = archive.read(name)
            assert not _FORMULA.search(xml), f"{path.name}:{name} holds a formula element"
            if name.startswith("xl/worksheets/"):
                kinds = set(_CELL_TYPE.findall(xml))
                assert kinds <= {b"s", b"inlineStr"}, f"{path.name}:{name} cell types {kinds}"
    book = openpyxl.load_workbook(path)
    try:
        for sheet in book.worksheets:
            for row in sheet.iter_rows():
                for cell in row:
                    assert cell.data_type in ("s", "n"), (sheet.title, cell.coordinate, cell.data_type)
    finally:
        book.close()


def sheet_rows(path: Path, title: str) -> list[list[object]]:
    """A sheet's values as Excel shows them (calamine decodes _xHHHH_ escapes; openpyxl does not)."""
    book = python_calamine.CalamineWorkbook.from_path(str(path))
    try:
        return book.get_sheet_by_name(title).to_python(skip_empty_area=False)  # type: ignore[return-value]
    finally:
        book.close()


def _input_part(rows: list[list[object]], width: int) -> tuple[list[object], list[list[str]]]:
    """The header and the input columns of a Results sheet, empty cells as ''."""
    header = list(rows[0][:width])
    return header, [["" if v is None else str(v) for v in r[:width]] for r in rows[1:]]


def test_validate_outputs_keep_hostile_text_as_text(tmp_path: Path) -> None:
    path, rows = _write_input(tmp_path)
    results, failed = tmp_path / "v.results.xlsx", tmp_path / "v.failed.xlsx"
    summary = validate_file(ValidateConfig(InputOptions(path), output=results, failed_out=failed))
    assert summary.exit_code == 1 and summary.failed_path == failed
    for workbook in (results, failed):
        assert_no_formulas(workbook)
    header, cells = _input_part(sheet_rows(results, "Results"), len(HEADER))
    assert header == HEADER
    assert cells == rows
    failed_rows = sheet_rows(failed, "Sheet1")
    assert failed_rows[0] == [*HEADER, "import_reason", "import_row"]
    assert [list(r)[: len(HEADER)] for r in failed_rows[1:]] == rows[4:]
    errors = sheet_rows(results, "Errors")
    assert {r[2] for r in errors[1:]} >= {"=cmd|' /C calc'!A0", '=HYPERLINK("http://x","y")', "@SUM(A1)"}
    summary_sheet = {r[0]: r[1] for r in sheet_rows(results, "Summary")}
    assert summary_sheet["file"] == path.name


@pytest.mark.parametrize("dry_run", [False, True])
def test_run_outputs_keep_hostile_text_as_text(tmp_path: Path, dry_run: bool) -> None:
    inventory = write_inventory(tmp_path / "inventory.json", 4)
    path, rows = _write_input(tmp_path)
    sandbox = create_sandbox(SandboxConfig(inventory=inventory))
    config = ImportConfig(
        input=InputOptions(path),
        api_key=SANDBOX_API_KEY,
        base_url="http://sandbox.test/api/v2",
        output=tmp_path / "r.results.xlsx",
        failed_out=tmp_path / "r.failed.xlsx",
        journal=tmp_path / "r.journal.sqlite",
        requests_per_minute=100_000,
        retry_backoff=0,
        connection_id=CONNECTION,
        dry_run=dry_run,
    )
    summary = run_import(config, transport=httpx.ASGITransport(app=sandbox.app))
    assert summary.exit_code == 1
    assert summary.counts.get("succeeded" if not dry_run else "not_sent") == 4
    for workbook in (summary.results_path, tmp_path / "r.failed.xlsx"):
        assert_no_formulas(workbook)
    results = sheet_rows(summary.results_path, "Results")
    header, cells = _input_part(results, len(HEADER))
    assert header == HEADER and cells == rows
    if dry_run:
        assert "import_proposed" in results[0]


def test_failed_rows_file_keeps_a_hostile_sheet_name_and_headers(tmp_path: Path) -> None:
    """An XLSX input's sheet name and headers go into the failed-rows file as plain names and text."""
    path = tmp_path / "input.xlsx"
    sheet_name = "=1+1 @SUM(A1)"
    with xlsxwriter.Workbook(str(path), {"strings_to_formulas": False}) as book:
        sheet = book.add_worksheet(sheet_name)
        sheet.write_row(0, 0, HEADER)
        for r, row in enumerate(_rows(1), start=1):
            sheet.write_row(r, 0, row)
    table = read_table(path)
    failed = tmp_path / "x.failed.xlsx"
    # One valid row among many hostile ones would read as a wrongly matched column: confirm the mapping.
    confirmed = {"DID": "did_number", "Inbound Bot ID": "inbound_websocket_bot_id", "Status": "status"}
    options = InputOptions(path, column_map=confirmed)
    validate_file(ValidateConfig(options, output=tmp_path / "x.results.xlsx", failed_out=failed))
    assert_no_formulas(failed)
    book = openpyxl.load_workbook(failed, read_only=True)
    try:
        assert book.sheetnames == [sheet_name]
    finally:
        book.close()
    rows = sheet_rows(failed, sheet_name)
    assert rows[0] == [*table.headers, "import_reason", "import_row"]
    assert [[v or "" for v in r[: len(table.headers)]] for r in rows[1:]] == [
        list(r) for r in table.frame.loc[3:].itertuples(index=False)
    ]


def test_template_xlsx_has_no_formulas(tmp_path: Path) -> None:
    path = tmp_path / "template.xlsx"
    write_template_xlsx(path)
    assert_no_formulas(path)


def test_tool_writes_no_csv_but_the_template_header_line(tmp_path: Path) -> None:
    """Validate and run write only XLSX (and the journal); the CSV template is one header line."""
    inventory = write_inventory(tmp_path / "inventory.json", 4)
    path, _rows_written = _write_input(tmp_path)
    before = {p for p in tmp_path.rglob("*") if p.is_file()}
    validate_file(ValidateConfig(InputOptions(path)))
    sandbox = create_sandbox(SandboxConfig(inventory=inventory))
    run_import(
        ImportConfig(
            input=InputOptions(path), api_key=SANDBOX_API_KEY, base_url="http://sandbox.test/api/v2"
        ),
        transport=httpx.ASGITransport(app=sandbox.app),
    )
    written = {p for p in tmp_path.rglob("*") if p.is_file()} - before
    assert written, "the runs must have written their results"
    assert {p.suffix for p in written} <= {
        ".xlsx",
        ".sqlite",
        ".sqlite-wal",
        ".sqlite-shm",
        ".sqlite-lock",
    }, written
    assert template_csv_text() == ",".join(FIELD_NAMES) + "\r\n"
