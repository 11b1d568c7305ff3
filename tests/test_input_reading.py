"""Issue 9, the reading side, end to end: what the user sees of how their sheet was read.

Real files written here (CSV bytes in legacy encodings, XLSX with hidden rows, merged and
error cells via openpyxl), read by the real pipeline and CLI, results read back with openpyxl.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import openpyxl
import pytest
import xlsxwriter
from click.testing import CliRunner
from helpers import hidden_book

from importer.cli import main
from importer.jobs.validate import load_and_validate, validate_file
from importer.options import InputOptions, ValidateConfig

HEADER = ["DID Number", "Inbound Mode", "Outbound Mode", "Inbound Bot ID"]


def _summary(path: Path) -> dict[str, object]:
    sheet = openpyxl.load_workbook(path)["Summary"]
    return {row[0]: row[1] for row in sheet.iter_rows(values_only=True) if row[0] is not None}


def _results(path: Path) -> list[dict[str, object]]:
    sheet = openpyxl.load_workbook(path)["Results"]
    rows = list(sheet.iter_rows(values_only=True))
    return [dict(zip(rows[0], row, strict=True)) for row in rows[1:]]


def _greek_csv(path: Path) -> Path:
    text = "DID Number,Inbound Mode,Outbound Mode,Inbound Bot ID,Πελάτης\r\n"
    text += "+302105550001,3,4,93,Γεώργιος Παπαδόπουλος\r\n+302105550002,1,4,,Μαρία Ιωάννου\r\n"
    text += "+302105550003,3,4,93,Νίκος Κωνσταντίνου\r\n"
    path.write_bytes(text.encode("cp1253"))
    return path


def test_validate_legacy_encoding_in_summary_sheet_and_note(tmp_path: Path) -> None:
    path = _greek_csv(tmp_path / "greek.csv")
    summary = validate_file(ValidateConfig(InputOptions(path)))
    assert any("text read as cp1253 (detected)" in line for line in summary.lines())
    sheet = _summary(summary.results_path)
    assert sheet["encoding"] == "cp1253 (detected)"
    names = [row["Πελάτης"] for row in _results(summary.results_path)]
    assert names == ["Γεώργιος Παπαδόπουλος", "Μαρία Ιωάννου", "Νίκος Κωνσταντίνου"]


def test_cli_encoding_option_overrides_detection(tmp_path: Path) -> None:
    path = _greek_csv(tmp_path / "greek.csv")
    out = tmp_path / "r.results.xlsx"
    result = CliRunner().invoke(main, ["validate", str(path), "--encoding", "iso-8859-7", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "text read as" not in result.output
    sheet = _summary(out)
    assert sheet["encoding"] == "iso8859-7 (--encoding)"
    assert sheet["option encoding"] == "iso8859-7"


@pytest.mark.parametrize("command", ["validate", "run"])
def test_cli_encoding_unknown_is_one_line_exit_2(tmp_path: Path, command: str) -> None:
    path = _greek_csv(tmp_path / "greek.csv")
    key = ["--api-key", "k" * 20] if command == "run" else []
    result = CliRunner().invoke(main, [command, str(path), "--encoding", "klingon", *key])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert lines == [
        "Error: --encoding 'klingon' is not a known text encoding; use a text encoding "
        "such as utf-8, cp1252, cp1251, cp1253, cp1254 or iso-8859-7"
    ]


def test_validate_reports_hidden_rows_and_columns(tmp_path: Path) -> None:
    summary = validate_file(ValidateConfig(InputOptions(hidden_book(tmp_path / "hidden.xlsx"))))
    lines = summary.lines()
    assert (
        "hidden rows in Excel: 3 (rows 5, 9, 12) imported like the others (--skip-hidden-rows skips them)"
        in lines
    )
    assert 'hidden columns in Excel: D ("Inbound Bot ID")' in lines
    sheet = _summary(summary.results_path)
    assert sheet["hidden rows"] == "3 (rows 5, 9, 12)"
    assert sheet["hidden columns"] == 'D ("Inbound Bot ID")'
    statuses = {row["import_row"]: row["import_status"] for row in _results(summary.results_path)}
    assert statuses["5"] == "valid"  # imported: validated like any row


def test_cli_skip_hidden_rows_gives_each_hidden_row_an_outcome(tmp_path: Path) -> None:
    path = hidden_book(tmp_path / "hidden.xlsx")
    out = tmp_path / "hidden.results.xlsx"
    result = CliRunner().invoke(main, ["validate", str(path), "--skip-hidden-rows", "-o", str(out)])
    assert result.exit_code == 1, result.output  # the merged rows 7 and 8 lack their outbound mode
    assert "hidden rows in Excel: 3 (rows 5, 9, 12) skipped" in result.output
    rows = {row["import_row"]: row for row in _results(out)}
    assert sorted(rows, key=int) == [str(r) for r in range(2, 14)]  # no row vanishes
    for hidden in ("5", "9", "12"):
        assert rows[hidden]["import_status"] == "skipped"
        assert rows[hidden]["import_action"] == "skip"
        assert rows[hidden]["import_reason"] == "hidden in Excel (--skip-hidden-rows)"
    assert rows["6"]["import_status"] == "valid"
    assert _summary(out)["option skip_hidden_rows"] == "yes"


def test_validate_merged_cell_reason_says_it_is_merged(tmp_path: Path) -> None:
    summary = validate_file(ValidateConfig(InputOptions(hidden_book(tmp_path / "merged.xlsx"))))
    rows = {row["import_row"]: row for row in _results(summary.results_path)}
    assert rows["7"]["import_status"] == "failed"
    reason = rows["7"]["import_reason"]
    assert reason.startswith('"Outbound Mode" is empty: give the outbound mode (')
    assert reason.endswith("; cell C7 is part of the merged range C6:C8; Excel keeps the value only in C6")
    assert rows["8"]["import_reason"].endswith(
        "; cell C8 is part of the merged range C6:C8; Excel keeps the value only in C6"
    )
    assert rows["6"]["import_status"] == "valid"


def test_validate_excel_error_cells_say_so(tmp_path: Path) -> None:
    import xlsxwriter

    path = tmp_path / "errors.xlsx"
    book = xlsxwriter.Workbook(path)
    sheet = book.add_worksheet("DIDs")
    sheet.write_row(0, 0, HEADER)
    sheet.write_string(1, 0, "+918012340001")
    sheet.write_formula(1, 1, "=NA()", None, "#N/A")
    sheet.write_row(1, 2, [4, 93])
    sheet.write_formula(2, 0, "=#REF!", None, "#REF!")
    sheet.write_row(2, 1, [3, 4, 93])
    book.close()
    summary = validate_file(ValidateConfig(InputOptions(path)))
    rows = {row["import_row"]: row for row in _results(summary.results_path)}
    assert rows["2"]["import_reason"] == (
        '"Inbound Mode": the cell holds the Excel error #N/A (a formula that found nothing); '
        "fix it in the sheet"
    )
    assert rows["3"]["import_reason"] == (
        '"DID Number": the cell holds the Excel error #REF! (a formula that refers to a deleted cell); '
        "fix it in the sheet"
    )
    assert ("Excel error in a cell (#N/A, #REF!, ...)", 2) in summary.top_reasons


def test_run_skip_hidden_rows_sends_nothing_for_them(tmp_path: Path) -> None:
    """Against the sandbox: hidden rows are skipped, never written; the others are routed."""
    import httpx
    from helpers import did_number, write_inventory

    from importer.jobs.run import run_import
    from importer.options import ImportConfig
    from importer.sandbox import SANDBOX_API_KEY, SandboxConfig, create_sandbox

    book = openpyxl.Workbook()
    sheet = book.active
    sheet.append(["Phone Number", "Inbound Mode", "Inbound Bot ID", "Outbound Mode", "Outbound Bot ID"])
    for i in range(6):
        sheet.append([f"+{did_number(i)}", 3, 93, 3, 94])
    sheet.row_dimensions[3].hidden = True
    sheet.row_dimensions[6].hidden = True
    path = tmp_path / "hidden.xlsx"
    book.save(path)
    sandbox = create_sandbox(SandboxConfig(inventory=write_inventory(tmp_path / "inv.json", 6)))
    config = ImportConfig(
        input=InputOptions(path=path, skip_hidden_rows=True),
        api_key=SANDBOX_API_KEY,
        base_url="http://sandbox.test/api/v2",
        output=tmp_path / "out.results.xlsx",
        journal=tmp_path / "run.journal.sqlite",
        requests_per_minute=100_000,
        retry_backoff=0,
    )
    summary = run_import(config, transport=httpx.ASGITransport(app=sandbox.app))
    assert summary.counts == {"succeeded": 4, "skipped": 2}
    assert "hidden rows in Excel: 2 (rows 3, 6) skipped" in summary.lines()
    routed = {int(r["did_id"]) for r in sandbox.state_snapshot()["routing"]}
    assert routed == {1000, 1002, 1003, 1005}
    rows = {row["import_row"]: row for row in _results(summary.results_path)}
    assert rows["3"]["import_reason"] == rows["6"]["import_reason"] == "hidden in Excel (--skip-hidden-rows)"


@pytest.mark.parametrize(
    ("did", "did_id"),
    [('="918012345678"', '="1001"'), ("'918012345678", "'1001"), ('"=""918012345678"""', "1001")],
)
def test_validate_excel_protected_csv_cells_read_as_their_number(
    tmp_path: Path, did: str, did_id: str
) -> None:
    """="918..." and '918... (as Excel users protect long numbers) validate as the number."""
    path = tmp_path / "protected.csv"
    path.write_text(
        f"DID Number,DID ID,Inbound Mode,Outbound Mode\r\n{did},{did_id},1,4\r\n", encoding="utf-8"
    )
    summary = validate_file(ValidateConfig(InputOptions(path)))
    assert summary.exit_code == 0, summary.lines()
    (row,) = _results(summary.results_path)
    typed = did.replace('""', '"')[1:-1] if did.startswith('"') else did
    assert (row["DID Number"], row["DID ID"]) == (typed, did_id)  # carried as typed


def test_validate_protected_cell_still_checked(tmp_path: Path) -> None:
    path = tmp_path / "protected.csv"
    path.write_text("DID Number,Inbound Mode,Outbound Mode\r\n'12ab,'9,4\r\n", encoding="utf-8")
    summary = validate_file(ValidateConfig(InputOptions(path)))
    (row,) = _results(summary.results_path)
    assert row["import_status"] == "failed"
    assert '"DID Number": "\'12ab" contains letters' in row["import_reason"]
    assert '"Inbound Mode": "\'9" is not an inbound mode' in row["import_reason"]


@pytest.mark.parametrize(
    ("header", "args", "fragment"),
    [
        (
            '"DID\nNumber","DID Number"',
            [],
            r'columns A "DID\nNumber" and B "DID Number" both mean did_number; '
            r'pick one with --map "B=did_number"',
        ),
        ('"Weird\x07Col","Inbound\r\nNotes"', [], r'columns found: "Weird\x07Col", "Inbound\r\nNotes"'),
        ('"DID\tNumber","Notes"', ["--map", "Nope\x07=did_number"], r'--map names the column "Nope\x07"'),
    ],
)
def test_cli_headers_with_control_characters_stay_on_one_line(
    tmp_path: Path, header: str, args: list[str], fragment: str
) -> None:
    path = tmp_path / "odd.csv"
    path.write_text(f"{header},Inbound Mode,Outbound Mode\r\n918012345678,x,3,4\r\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["validate", str(path), *args])
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1 and result.output.startswith("Error: "), result.output
    assert fragment in result.output


def test_validate_row_reason_shows_header_escaped(tmp_path: Path) -> None:
    path = tmp_path / "odd.csv"
    path.write_text('"DID\nNumber","Inbound Mode","Outbound Mode"\r\n12ab,3,4\r\n', encoding="utf-8")
    summary = validate_file(ValidateConfig(InputOptions(path)))
    (row,) = _results(summary.results_path)
    assert row["import_reason"].startswith('"DID\\nNumber": "12ab" contains letters')


def test_validate_carries_other_cells_as_the_sheet_shows_them(tmp_path: Path) -> None:
    """Dates, times, percents, booleans and numbers the user did not ask to change, as Excel shows them."""
    import datetime as dt
    import zipfile

    book = openpyxl.Workbook()
    sheet = book.active
    columns = ["Since", "Updated", "Opens", "Amount", "Share", "Active", "Ref", "Due", "Rate", "Local"]
    sheet.append([*HEADER[:3], *columns])
    day, last = dt.date(2024, 1, 5), dt.date(2024, 12, 31)
    sheet.append([918012345678, 1, 4, day, dt.datetime(2024, 1, 5, 13, 45), dt.time(9, 30), *[0.5] * 4])
    sheet["K2"], sheet["L2"], sheet["M2"] = day, 0.125, day
    sheet.append([918012345679, 1, 4, dt.datetime(2024, 2, 1), None, None, 12.0, 0.25, True, 1001.0])
    sheet["K3"], sheet["L3"], sheet["M3"] = last, 1, last
    for row in (2, 3):
        sheet[f"K{row}"].number_format = "dd/mm/yyyy"
        sheet[f"L{row}"].number_format = "0.0%"
        sheet[f"M{row}"].number_format = "mm-dd-yy"  # built-in 14: the reader's locale decides
    plain = tmp_path / "plain.xlsx"
    book.save(plain)
    # Excel writes the double it holds: 0.1 + 0.2 appears in the XML as 0.30000000000000004.
    path = tmp_path / "dates.xlsx"
    with zipfile.ZipFile(plain) as old, zipfile.ZipFile(path, "w") as new:
        for info in old.infolist():
            data = old.read(info)
            if info.filename == "xl/worksheets/sheet1.xml":
                data = data.replace(
                    b'<c r="G2" t="n"><v>0.5</v>', b'<c r="G2" t="n"><v>0.30000000000000004</v>'
                )
            new.writestr(info, data)
    summary = validate_file(ValidateConfig(InputOptions(path)))
    rows = _results(summary.results_path)
    shown = [[row[h] for h in ("DID Number", *columns)] for row in rows]
    assert shown[0] == [
        *("918012345678", "2024-01-05", "2024-01-05 13:45:00", "9:30:00", "0.3", "0.5", "0.5", "0.5"),
        *("05/01/2024", "12.5%", "2024-01-05"),
    ]
    assert shown[1] == [
        *("918012345679", "2024-02-01", None, None, "12", "0.25", "TRUE", "1001"),
        *("31/12/2024", "100.0%", "2024-12-31"),
    ]


def test_validate_formula_without_saved_result_is_named_not_reported_missing(tmp_path: Path) -> None:
    """A script (openpyxl) writes =D2 with no cached value: calamine reads it as empty."""
    book = openpyxl.Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.append(["DID Number", "Inbound Mode", "Outbound Mode", "Source"])
    sheet.append(["=D2", 1, 4, "+918012345678"])
    sheet.append(["+918012345679", "=1+0", 4, "x"])
    sheet.append(["+918012345680", 1, 4, "fine"])
    book.save(tmp_path / "script.xlsx")
    report = load_and_validate(InputOptions(tmp_path / "script.xlsx"))
    messages = {issue.row: issue.message for issue in report.issues}
    assert messages[2] == "cell A2 holds a formula with no saved result: open and save the file in Excel"
    assert messages[3].startswith('"Inbound Mode" is empty')
    assert messages[3].endswith(
        "; cell B3 holds a formula with no saved result: open and save the file in Excel"
    )
    assert 4 not in messages


def test_validate_formula_saved_as_empty_text_is_an_empty_cell(tmp_path: Path) -> None:
    """Excel saves a formula whose result is "" as a string value (t="str"), empty: a saved result."""
    written = tmp_path / "written.xlsx"
    with xlsxwriter.Workbook(written) as book:
        sheet = book.add_worksheet("DIDs")
        sheet.write_row(0, 0, ["DID Number", "Inbound Mode", "Outbound Mode"])
        sheet.write_formula(1, 0, '=IF(TRUE,"","x")', None, "")
        sheet.write_row(1, 1, [1, 4])
    path = tmp_path / "saved.xlsx"
    with zipfile.ZipFile(written) as source, zipfile.ZipFile(path, "w") as target:
        for info in source.infolist():
            data = source.read(info)
            if info.filename == "xl/worksheets/sheet1.xml":
                assert b'<c r="A2"><f>' in data
                data = data.replace(b'<c r="A2"><f>', b'<c r="A2" t="str"><f>')  # as Excel writes it
            target.writestr(info, data)
    (issue,) = load_and_validate(InputOptions(path)).issues
    assert issue.message.startswith("no DID") and "formula" not in issue.message
