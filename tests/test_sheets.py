"""Workbooks with several sheets: every sheet surveyed, none chosen silently, several read as one table."""

from __future__ import annotations

from pathlib import Path

import httpx
import openpyxl
import pytest
from click.testing import CliRunner
from helpers import (
    REGIONS,
    config_for,
    did_number,
    read_results,
    write_carrier_workbook,
    write_inventory,
    write_region_workbook,
)

from importer.cli import main
from importer.errors import InputError
from importer.jobs.run import run_import
from importer.jobs.validate import load_and_validate, validate_file
from importer.model import SheetInfo
from importer.options import InputOptions, ValidateConfig
from importer.read.isolated import read_workbook_isolated
from importer.read.sheets import SheetChoiceNeeded, sheet_notes
from importer.read.table import list_sheets, read_table
from importer.sandbox import SandboxConfig, create_sandbox
from importer.words import Surface

NINE_SIX = tuple(SheetInfo(region, 6, True) for region in REGIONS)


def _sheet_rows(path: Path, name: str) -> list[dict[str, object]]:
    book = openpyxl.load_workbook(path, read_only=True)
    try:
        rows = list(book[name].iter_rows(values_only=True))
    finally:
        book.close()
    return [dict(zip(rows[0], row, strict=False)) for row in rows[1:]]


def test_list_sheets_reports_every_sheet_with_its_rows_and_match(tmp_path: Path) -> None:
    path = write_carrier_workbook(tmp_path / "carrier.xlsx")
    assert list_sheets(path) == (
        SheetInfo("Read me", 1, False),
        SheetInfo("Old DIDs 2023", 3, False),
        SheetInfo("DIDs", 41, True),
        SheetInfo("Lists", 4, False),
    )
    assert list_sheets(write_region_workbook(tmp_path / "regions.xlsx")) == NINE_SIX


def test_list_sheets_of_text_is_empty(tmp_path: Path) -> None:
    path = tmp_path / "dids.csv"
    path.write_text("DID,Inbound Mode,Outbound Mode\n+918012345678,1,4\n", encoding="utf-8")
    assert list_sheets(path) == ()


def test_read_table_several_matching_sheets_are_never_chosen_silently(tmp_path: Path) -> None:
    with pytest.raises(SheetChoiceNeeded) as caught:
        read_table(write_region_workbook(tmp_path / "regions.xlsx"))
    assert caught.value.candidates == NINE_SIX
    assert caught.value.sheets == NINE_SIX
    message = str(caught.value)
    assert "\n" not in message and "9 sheets" in message
    assert '"US East" (6 rows)' in message and '"Australia" (6 rows)' in message
    assert "--sheet" in message and "--all-sheets" in message
    assert isinstance(caught.value, InputError)


@pytest.mark.slow
def test_read_table_choice_needed_crosses_the_child_process_as_data(tmp_path: Path) -> None:
    """The capped child (.xls/.ods) answers the same rule with the same candidates."""
    with pytest.raises(SheetChoiceNeeded) as caught:
        read_workbook_isolated(write_region_workbook(tmp_path / "regions.xlsx"), (), frozenset())
    assert caught.value.candidates == NINE_SIX
    found = read_workbook_isolated(tmp_path / "regions.xlsx", (), frozenset(), all_sheets=True)
    assert found.sheets == NINE_SIX and [g.sheet for g in found.grids] == list(REGIONS)


def test_read_table_all_sheets_reads_one_table_whose_rows_know_their_sheet(tmp_path: Path) -> None:
    table = read_table(write_region_workbook(tmp_path / "regions.xlsx"), all_sheets=True)
    assert table.row_count == 54
    assert table.row_sheets == REGIONS and table.sheets == NINE_SIX
    origins = [table.origin(row) for row in table.frame.index]
    assert origins[:2] == [("US East", 2), ("US East", 3)]
    assert origins[-1] == ("Australia", 7)
    assert len(set(origins)) == 54
    assert table.frame.iloc[53, 0] == "+" + did_number(53)
    assert table.row_name(table.frame.index[6]) == 'row 2 of sheet "US West"'


def test_read_table_sheet_is_repeatable(tmp_path: Path) -> None:
    path = write_region_workbook(tmp_path / "regions.xlsx")
    table = read_table(path, sheets=["uk", "Japan"])  # case forgiven, as for one sheet
    assert table.row_sheets == ("UK", "Japan") and table.row_count == 12
    single = read_table(path, sheets=["UK"])
    assert single.row_sheets == () and single.source.sheet == "UK"
    assert list(single.frame.index) == [2, 3, 4, 5, 6, 7]


def test_read_table_sheets_with_columns_in_another_order_line_up_by_header(tmp_path: Path) -> None:
    book = openpyxl.Workbook()
    first = book.active
    assert first is not None
    first.title = "A"
    first.append(["DID Number", "Inbound Mode", "Outbound Mode"])
    first.append(["+918012345678", 1, 4])
    second = book.create_sheet("B")
    second.append(["Outbound Mode", "DID Number", "Inbound Mode", "Notes"])
    second.append([4, "+918012345679", 2, "late"])
    book.save(tmp_path / "ab.xlsx")
    table = read_table(tmp_path / "ab.xlsx", all_sheets=True)
    assert table.headers == ("DID Number", "Inbound Mode", "Outbound Mode", "Notes")
    assert table.frame.values.tolist() == [
        ["+918012345678", "1", "4", ""],
        ["+918012345679", "2", "4", "late"],
    ]


def test_read_table_stale_sheet_whose_headers_do_not_match_is_passed_over(tmp_path: Path) -> None:
    table = read_table(write_carrier_workbook(tmp_path / "carrier.xlsx"))
    assert table.source.sheet == "DIDs" and table.source.header_row == 3
    assert table.row_count == 41 and table.row_sheets == ()


def test_load_and_validate_stale_matching_sheet_asks_which(tmp_path: Path) -> None:
    """The web's four-sheet workbook, whose stale sheet has the same headers: a choice, not a guess."""
    path = write_carrier_workbook(tmp_path / "carrier.xlsx", stale_matches=True)
    with pytest.raises(SheetChoiceNeeded) as caught:
        load_and_validate(InputOptions(path))
    assert [(s.name, s.rows) for s in caught.value.candidates] == [("Old DIDs 2023", 3), ("DIDs", 41)]
    report = load_and_validate(InputOptions(path, sheets=("DIDs",)))
    assert report.table.source.sheet == "DIDs"


def test_validate_file_notes_say_which_sheet_was_read_and_which_not(tmp_path: Path) -> None:
    path = write_carrier_workbook(tmp_path / "carrier.xlsx")
    summary = validate_file(ValidateConfig(InputOptions(path)))
    assert summary.rows == 41
    note = next(n for n in summary.notes if n.startswith("read sheet"))
    assert note.startswith('read sheet "DIDs" (41 rows); not read: ')
    assert '"Old DIDs 2023" (3 rows, its headers do not name the fields)' in note
    assert '"Read me" (1 row, its headers' in note


def test_sheet_notes_name_the_controls_of_the_surface_that_reads_them() -> None:
    sheets = [SheetInfo("DIDs", 41, True), SheetInfo("Old", 3, True)]
    assert sheet_notes(sheets, ["DIDs"])[0].endswith(
        '"Old" (3 rows with the columns: --sheet or --all-sheets reads it)'
    )
    web = sheet_notes(sheets, ["DIDs"], Surface.WEB)[0]
    assert web.endswith(
        '"Old" (3 rows with the columns: choose it among the sheets (step 2, Sheet and columns) to read it)'
    )


def test_validate_a_did_repeated_across_sheets_is_a_duplicate(tmp_path: Path) -> None:
    path = write_region_workbook(tmp_path / "regions.xlsx", repeat=(2, 1))
    report = load_and_validate(InputOptions(path, all_sheets=True))
    (issue,) = report.issues
    assert issue.kind == "duplicate"
    assert report.table.origin(issue.row) == ("UK", 3)
    assert 'is a duplicate of row 2 of sheet "US East"' in issue.message


def test_input_options_sheet_and_all_sheets_exclude_each_other(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not both"):
        InputOptions(tmp_path / "x.xlsx", sheets=("UK",), all_sheets=True)
    assert InputOptions(tmp_path / "x.xlsx", sheets="UK").sheets == ("UK",)  # type: ignore[arg-type]


def test_cli_validate_several_matching_sheets_stops_with_the_candidates(tmp_path: Path) -> None:
    path = write_region_workbook(tmp_path / "regions.xlsx")
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: regions.xlsx has 9 sheets with the columns: ")
    assert all(f'"{region}" (6 rows)' in lines[0] for region in REGIONS)
    assert not (tmp_path / "regions.results.xlsx").exists()


def test_cli_validate_all_sheets_names_each_rows_sheet_and_row(tmp_path: Path) -> None:
    path = write_region_workbook(tmp_path / "regions.xlsx", repeat=(2, 1))
    results, failed = tmp_path / "r.xlsx", tmp_path / "f.xlsx"
    result = CliRunner().invoke(
        main, ["validate", str(path), "--all-sheets", "-o", str(results), "--failed-out", str(failed)]
    )
    assert result.exit_code == 1, result.output
    assert "rows read: 54" in result.output and "failed 1" in result.output
    rows = _sheet_rows(results, "Results")
    assert [(r["import_sheet"], r["import_row"]) for r in rows[:2]] == [("US East", "2"), ("US East", "3")]
    assert (rows[-1]["import_sheet"], rows[-1]["import_row"]) == ("Australia", "7")
    (bad,) = _sheet_rows(failed, "Sheet1")
    assert (bad["import_sheet"], bad["import_row"]) == ("UK", "3")
    assert "duplicate" in str(bad["import_reason"])
    errors = _sheet_rows(results, "Errors")
    assert [(e["sheet"], e["row"], e["kind"]) for e in errors] == [("UK", "3", "duplicate")]


def test_cli_sheet_option_is_repeatable(tmp_path: Path) -> None:
    path = write_region_workbook(tmp_path / "regions.xlsx")
    result = CliRunner().invoke(
        main, ["validate", str(path), "--sheet", "UK", "--sheet", "India", "-o", str(tmp_path / "r.xlsx")]
    )
    assert result.exit_code == 0, result.output
    assert "rows read: 12" in result.output
    assert 'read 2 sheets as one table: "UK" (6 rows), "India" (6 rows)' in result.output


def test_run_all_sheets_sends_every_sheets_rows_once_and_names_their_sheet(tmp_path: Path) -> None:
    """The nine region sheets through the sandbox: 54 routings created, a rerun changes nothing."""
    inventory = write_inventory(tmp_path / "inv.json", 54)
    sheet = write_region_workbook(tmp_path / "regions.xlsx")
    sandbox = create_sandbox(SandboxConfig(inventory=inventory))
    transport = httpx.ASGITransport(app=sandbox.app)
    config = config_for(sheet, tmp_path, input=InputOptions(sheet, all_sheets=True))
    summary = run_import(config, transport=transport)
    assert summary.exit_code == 0 and summary.counts == {"succeeded": 54}
    created = {int(r["did_id"]) for r in sandbox.state_snapshot()["routing"]}
    assert created == {1000 + i for i in range(54)}
    rows = read_results(summary.results_path)
    assert [(r["import_sheet"], r["import_row"]) for r in rows[6:8]] == [("US West", "2"), ("US West", "3")]
    again = run_import(config, transport=transport)
    assert again.counts == {"unchanged": 54}


def test_cli_run_several_matching_sheets_stops_before_connecting(tmp_path: Path) -> None:
    """run reads the file first: the choice is asked for before any request (nothing listens on port 9)."""
    path = write_region_workbook(tmp_path / "regions.xlsx")
    args = ["run", str(path), "--api-key", "rg_test_0123456789", "--base-url", "http://127.0.0.1:9/api/v2"]
    result = CliRunner().invoke(main, [*args, "--yes"])
    assert result.exit_code == 2, result.output
    assert "regions.xlsx has 9 sheets with the columns" in result.output
    both = CliRunner().invoke(main, [*args, "--yes", "--all-sheets", "--sheet", "UK"])
    assert both.exit_code == 2 and "give --sheet NAME or --all-sheets, not both" in both.output
