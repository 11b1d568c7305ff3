"""Validation: every row, all of its problems at once, with Excel row numbers."""

from __future__ import annotations

import random
import re
from pathlib import Path

import httpx
import openpyxl
import pandas as pd
import phonenumbers
import pytest
from click.testing import CliRunner
from helpers import config_for, read_results, write_inventory, write_sheet

from importer.cli import main
from importer.errors import InputError
from importer.fields import FIELD_NAMES, INBOUND_MODES, OUTBOUND_MODES, Direction
from importer.jobs.run import run_import
from importer.jobs.validate import validate_file
from importer.model import RawTable, RoutingRow, SourceInfo
from importer.options import InputOptions, ValidateConfig
from importer.read.xlsx import column_letters
from importer.sandbox import SANDBOX_API_KEY, SandboxConfig, create_sandbox, running_sandbox
from importer.validate.cells import parse_mode, parse_status
from importer.validate.columns import map_columns, parse_column_map
from importer.validate.phones import PhoneNormaliser
from importer.validate.rules import validate_table

HEADERS = (
    "Phone Number",
    "Inbound Mode",
    "Inbound Bot ID",
    "Inbound SIP Trunk",
    "Outbound Mode",
    "Outbound Bot ID",
    "Outbound SIP Trunk",
    "Status",
    "Customer",
)


def make_table(rows: list[list[str]], headers: tuple[str, ...] = HEADERS, first_row: int = 2) -> RawTable:
    frame = pd.DataFrame(rows, index=range(first_row, first_row + len(rows)), dtype=object)
    frame.columns = list(range(len(headers)))
    return RawTable(SourceInfo(Path("sheet.csv"), "csv", "0" * 64), headers, frame, {})


def row(
    number: str = "+91 80 1234 5678",
    inbound: str = "1",
    in_bot: str = "",
    in_trunk: str = "",
    outbound: str = "4",
    out_bot: str = "",
    out_trunk: str = "",
    status: str = "",
    customer: str = "c",
) -> list[str]:
    return [number, inbound, in_bot, in_trunk, outbound, out_bot, out_trunk, status, customer]


def messages(rows: list[list[str]], **kwargs: str | None) -> dict[int, list[str]]:
    report = validate_table(make_table(rows), **kwargs)  # type: ignore[arg-type]
    out: dict[int, list[str]] = {}
    for issue in report.issues:
        out.setdefault(issue.row, []).append(issue.message)
    return out


@pytest.mark.parametrize(
    ("cells", "expected"),
    [
        (row(), {}),
        (row(inbound="bot", in_bot="93"), {}),
        (row(inbound="WebSocket Bot", in_bot="93.0", outbound="websocket", out_bot="94"), {}),
        (row(inbound="SIP", in_trunk="7", outbound="2", out_trunk="8"), {}),
        (row(outbound="Answer Only"), {}),
        (row(outbound="ONLY-ANSWER", status="inactive"), {}),
        (row(inbound="3"), {"Inbound Bot ID": "needs inbound_websocket_bot_id"}),
        (row(inbound="2", in_trunk="12.5"), {"Inbound SIP Trunk": "is not a whole number"}),
        (row(inbound="2", in_trunk="0"), {"Inbound SIP Trunk": "must be 1 or more"}),
        (row(inbound="2", in_trunk="-3"), {"Inbound SIP Trunk": "must be 1 or more"}),
        (row(inbound="2", in_trunk="abc"), {"Inbound SIP Trunk": "is not a number"}),
        (row(inbound="1", in_bot="93"), {"Inbound Bot ID": "does not use inbound_websocket_bot_id"}),
        (row(inbound="voicemail"), {"Inbound Mode": "is not an inbound mode"}),
        (row(outbound="1"), {"Outbound Mode": "is not an outbound mode"}),
        (row(inbound=""), {"Inbound Mode": "is empty"}),
        (row(status="maybe"), {"Status": "is not a status"}),
        (row(number="9.18012E+11"), {"Phone Number": "format the column as Text"}),
        (row(number="080 1122 3399"), {"Phone Number": "add the country code"}),
        (
            row(number="+91 80 1234 5678 ext. 12"),
            {"Phone Number": "DIDs have no extension: remove 'ext. 12'"},
        ),
        (row(number="+1 480 555 0123 x12"), {"Phone Number": "DIDs have no extension: remove 'x12'"}),
        (row(number="+14805550123;ext=12"), {"Phone Number": "DIDs have no extension: remove ';ext=12'"}),
        (row(number="+1 480 555 0123 ext 7"), {"Phone Number": "remove 'ext 7'"}),
        (row(number="+91 80 1234 5678 office"), {"Phone Number": "contains letters"}),
        (row(status="Y"), {}),
        (row(status="n"), {}),
        (row(number=""), {"Phone Number": "no DID"}),
    ],
)
def test_validate_rule_table(cells: list[str], expected: dict[str, str]) -> None:
    report = validate_table(make_table([cells]))
    got = {i.column: i.message for i in report.issues}
    assert set(got) == set(expected), got
    for column, fragment in expected.items():
        assert fragment in got[column]
        assert f'"{column}"' in got[column] or column == "Phone Number"
    assert len(report.valid) == (0 if expected else 1)


def test_validate_reports_every_problem_of_a_row_at_once() -> None:
    bad = row(number="9.18012E+11", inbound="2", in_trunk="x", outbound="3", status="maybe")
    report = validate_table(make_table([row(), bad]))
    assert {i.row for i in report.issues} == {3}
    assert {i.column for i in report.issues} == {
        "Phone Number",
        "Inbound SIP Trunk",
        "Outbound Bot ID",
        "Status",
    }
    values = {i.column: i.value for i in report.issues}
    assert values["Phone Number"] == "9.18012E+11" and values["Inbound SIP Trunk"] == "x"


@pytest.mark.parametrize(
    ("cells", "expected"),
    [
        (
            row(inbound="2", in_trunk="x", outbound="2", out_trunk="y"),
            {"Inbound SIP Trunk": "bad_id", "Outbound SIP Trunk": "bad_id"},
        ),
        (row(inbound="voicemail", outbound="fax"), {"Inbound Mode": "bad_mode", "Outbound Mode": "bad_mode"}),
        (row(inbound="", outbound=""), {"Inbound Mode": "missing_mode", "Outbound Mode": "missing_mode"}),
        (
            row(inbound="3", outbound="3"),
            {"Inbound Bot ID": "missing_mode_id", "Outbound Bot ID": "missing_mode_id"},
        ),
    ],
)
def test_validate_reports_each_column_of_the_same_kind_of_problem(
    cells: list[str], expected: dict[str, str]
) -> None:
    """Two problems of one kind in two columns of a row are two issues, not one."""
    report = validate_table(make_table([row(number="+1 415 555 2601"), cells]))
    assert {(i.column, i.kind) for i in report.issues} == set(expected.items())
    assert all(i.row == 3 for i in report.issues)


def test_validate_duplicate_number_and_id_are_both_reported() -> None:
    headers = ("DID", "DID ID", "Inbound", "Outbound")
    report = validate_table(
        make_table([["+91 80 1234 5678", "812", "1", "4"], ["918012345678", "812", "1", "4"]], headers)
    )
    assert [(i.row, i.column, i.kind) for i in report.issues] == [
        (3, "DID", "duplicate"),
        (3, "DID ID", "duplicate"),
    ]


def test_validate_file_errors_sheet_and_reason_list_every_column(tmp_path: Path) -> None:
    """The results workbook read back: the Errors sheet has a line per column, the reason names both."""
    source = tmp_path / "carrier.csv"
    source.write_text(
        "DID,Inbound,Inbound Trunk,Outbound,Outbound Trunk\n"
        "+91 80 1234 5678,SIP,x,SIP,y\n"
        "+91 80 1234 5679,,,,\n",
        encoding="utf-8",
    )
    summary = validate_file(ValidateConfig(InputOptions(source)))
    book = openpyxl.load_workbook(summary.results_path, read_only=True)
    errors = [tuple(r) for r in book["Errors"].iter_rows(min_row=2, values_only=True)]
    assert [(int(str(r[0])), r[1], r[4]) for r in errors] == [
        (2, "Inbound Trunk", "bad_id"),
        (2, "Outbound Trunk", "bad_id"),
        (3, "Inbound", "missing_mode"),
        (3, "Outbound", "missing_mode"),
    ]
    results = list(book["Results"].iter_rows(values_only=True))
    reason = dict(zip(results[0], results[1], strict=True))["import_reason"]
    assert '"Inbound Trunk": "x"' in reason and '"Outbound Trunk": "y"' in reason
    book.close()


def test_validate_us_export_with_a_state_column_is_valid() -> None:
    """ "State" holds NY, CA: it is carried, not read as a status."""
    headers = ("TN", "Inbound", "Outbound", "State")
    rows = [["+1 480 555 0123", "1", "4", "NY"], ["+1 415 555 2601", "1", "4", "CA"]]
    report = validate_table(make_table(rows, headers))
    assert not report.issues and len(report.valid) == 2 and "status" not in report.mapping


LIKE_STATUS = ("Phone Number", "Inbound", "Outbound", "Status")
PORTED = [
    ["+1 480 555 0123", "1", "4", "Ported"],
    ["+1 415 555 2601", "1", "4", "In Service"],
    ["+1 312 555 0100", "1", "4", "Pending"],
    ["+1 617 555 0199", "1", "4", "In Service"],
    ["+1 646 555 0142", "1", "4", ""],
]


def test_validate_column_whose_values_do_not_fit_is_a_likely_wrong_match() -> None:
    """One reason per row naming the column and the fix, and one note for the file."""
    report = validate_table(make_table(PORTED, LIKE_STATUS))
    assert [(i.row, i.kind) for i in report.issues] == [
        (2, "wrong_column"),
        (3, "wrong_column"),
        (4, "wrong_column"),
        (5, "wrong_column"),
    ]
    message = report.issues[0].message
    assert 'column "Status" does not look like status' in message
    assert '"Ported", "In Service", "Pending"' in message
    assert '--ignore-column "Status"' in message and '--map "Status=status"' in message
    assert [r.row for r in report.valid] == [6]
    (note,) = report.notes
    assert '"Status"' in note and "--ignore-column" in note


def test_validate_mapped_column_is_taken_at_its_word() -> None:
    """--map confirms the column: each value gets its own message, and there is no note."""
    report = validate_table(make_table(PORTED, LIKE_STATUS), column_map={"Status": "status"})
    assert {i.kind for i in report.issues} == {"bad_status"} and not report.notes


def test_validate_a_repeated_typo_is_not_a_wrong_match() -> None:
    rows = [[n, "1", "4", "actve"] for n, *_ in PORTED]
    report = validate_table(make_table(rows, LIKE_STATUS))
    assert {i.kind for i in report.issues} == {"bad_status"} and not report.notes


def test_validate_national_numbers_are_not_a_wrong_match() -> None:
    """A DID column of numbers without country code is a DID column: each number says what to add."""
    rows = [[n, "1", "4", ""] for n in ("4805550123", "4155552601", "3125550100", "6175550199")]
    report = validate_table(make_table(rows, LIKE_STATUS))
    assert {i.kind for i in report.issues} == {"no_country_code"} and not report.notes


def test_validate_file_notes_the_wrong_match_in_summary_and_sheet(tmp_path: Path) -> None:
    source = tmp_path / "carrier.csv"
    source.write_text("\n".join(",".join(r) for r in [list(LIKE_STATUS), *PORTED]) + "\n", encoding="utf-8")
    summary = validate_file(ValidateConfig(InputOptions(source)))
    assert any('column "Status" was matched to status' in line for line in summary.lines())
    book = openpyxl.load_workbook(summary.results_path, read_only=True)
    notes = [r[1] for r in book["Summary"].iter_rows(values_only=True) if r[0] == "note"]
    book.close()
    assert len(notes) == 1 and 'column "Status" was matched to status' in str(notes[0])


def test_validate_file_calls_valid_rows_valid(tmp_path: Path) -> None:
    """The printed summary, the Summary sheet and the status column say "valid", never "not_sent"."""
    source = tmp_path / "carrier.csv"
    source.write_text(
        "DID,Inbound,Outbound\n+91 80 1122 3344,1,4\n+91 80 1122 4455,voicemail,4\n", encoding="utf-8"
    )
    summary = validate_file(ValidateConfig(InputOptions(source)))
    assert summary.lines()[0] == "rows read: 2; failed 1, valid 1"
    book = openpyxl.load_workbook(summary.results_path, read_only=True)
    sheet = {r[0]: r[1] for r in book["Summary"].iter_rows(values_only=True)}
    assert sheet["valid"] == 1 and sheet["failed"] == 1 and "not_sent" not in sheet
    results = list(book["Results"].iter_rows(values_only=True))
    status = results[0].index("import_status")
    assert [r[status] for r in results[1:]] == ["valid", "failed"]
    book.close()


def test_validate_normalises_numbers_and_ids() -> None:
    report = validate_table(
        make_table([row(number=" +1 (415) 555-2601 ", inbound="3", in_bot="93.0", status="NO")])
    )
    (valid,) = report.valid
    assert valid.did_number == "14155552601"
    assert valid.inbound_websocket_bot_id == 93 and isinstance(valid.inbound_websocket_bot_id, int)
    assert valid.status == 0 and valid.row == 2


def test_validate_default_region_reads_national_numbers() -> None:
    report = validate_table(make_table([row(number="080 1122 3399")]), default_region="in")
    assert report.valid[0].did_number == "918011223399"


@pytest.mark.parametrize(
    ("number", "fragment"),
    [
        # A US number without +1 has a possible length for Poland (+48): possible is not valid.
        ("4805550123", "if it is a US number add the country code: +1 480 555 0123"),
        ("480 555 0123", "if it is a US number add the country code: +1 480 555 0123"),
        # A London number without its 0 would be Egyptian (+20) by length alone.
        ("2071234567", "if it is a GB number add the country code: +44 20 7123 4567"),
        ("020 7123 4567", "if it is a GB number add the country code: +44 20 7123 4567"),
        ("+48 0555 0123", "is not a valid number of +48 (PL)"),
        ("12345678901234", "is not a valid number of any country"),
    ],
)
def test_validate_rejects_numbers_that_are_not_valid_for_their_country(number: str, fragment: str) -> None:
    report = validate_table(make_table([row(number=number)]))
    (issue,) = report.issues
    assert issue.column == "Phone Number" and fragment in issue.message, issue.message
    assert not report.valid


@pytest.mark.parametrize(
    ("region", "number", "expected"),
    [
        ("US", "4805550123", "14805550123"),
        ("US", "1 480 555 0123", "14805550123"),
        # Already valid with its country code: never a second code in front.
        ("US", "918012345678", "918012345678"),
        ("IN", "918012345678", "918012345678"),
        ("GB", "14805550123", "14805550123"),
        ("GB", "2071234567", "442071234567"),
        ("IN", "+1 480 555 0123", "14805550123"),
    ],
)
def test_validate_default_region_never_adds_a_second_country_code(
    region: str, number: str, expected: str
) -> None:
    report = validate_table(make_table([row(number=number)]), default_region=region)
    assert not report.issues and report.valid[0].did_number == expected


def test_validate_unknown_default_region_is_an_input_error() -> None:
    with pytest.raises(InputError, match="ZZ"):
        validate_table(make_table([row()]), default_region="ZZ")


def test_validate_duplicates_name_the_first_row() -> None:
    rows = [
        row(number="+91 80 1234 5678"),
        row(number="918012345678"),
        row(number="+1 415 555 2601"),
        row(number="0091-80-1234-5678"),
    ]
    report = validate_table(make_table(rows))
    dup = {i.row: i.message for i in report.issues}
    assert set(dup) == {3, 5}
    assert "duplicate of row 2" in dup[3] and "duplicate of row 2" in dup[5]


def test_validate_duplicate_did_ids() -> None:
    headers = ("DID ID", "Inbound", "Outbound")
    report = validate_table(make_table([["812", "1", "4"], ["813", "1", "4"], ["812.0", "1", "4"]], headers))
    assert [(i.row, i.kind) for i in report.issues] == [(4, "duplicate")]
    assert "duplicate of row 2" in report.issues[0].message


def test_validate_row_numbers_follow_the_header_row() -> None:
    report = validate_table(make_table([row(), row(number="+14155552601", status="bad")], first_row=5))
    assert [i.row for i in report.issues] == [6]


def test_validate_ragged_row_fails_alone() -> None:
    table = make_table([row(), row()])
    table = RawTable(
        table.source, table.headers, table.frame, {3: "row 3 has 11 fields but the header has 9"}
    )
    report = validate_table(table)
    assert [(i.row, i.kind) for i in report.issues] == [(3, "ragged_row")]
    assert len(report.valid) == 1


@pytest.mark.parametrize(
    ("headers", "fragment"),
    [
        (("Number", "Inbound"), "missing required column for_outbound_call"),
        (("Customer", "Inbound Mode", "Outbound Mode"), "did_number (or did_id)"),
        (("Phone Numbr", "Inbound Mode", "Outbound Mode"), '"Phone Numbr" looks like did_number'),
    ],
)
def test_map_columns_missing_column_names_found_and_closest(headers: tuple[str, ...], fragment: str) -> None:
    with pytest.raises(InputError) as info:
        map_columns(headers, {})
    message = str(info.value)
    assert fragment in message and "columns found" in message and "\n" not in message


def test_map_columns_matches_spellings_and_maps() -> None:
    headers = ("  did-NUMBER ", "INBOUND_MODE", "Outbound (mode)", "Carrier Bot", "Notes")
    assert map_columns(headers, {"Carrier Bot": "outbound_websocket_bot_id"}) == {
        "did_number": 0,
        "for_inbound_call": 1,
        "for_outbound_call": 2,
        "outbound_websocket_bot_id": 3,
    }


@pytest.mark.parametrize(
    ("pairs", "fragment"),
    [
        (["Carrier Bot"], "must look like"),
        (["Carrier Bot=bot"], 'unknown field "bot"'),
        (["Tel=did_number", "Tel=did_id"], r"two fields \(did_number and did_id\)"),
    ],
)
def test_parse_column_map_rejects_bad_pairs(pairs: list[str], fragment: str) -> None:
    with pytest.raises(InputError, match=fragment):
        parse_column_map(pairs)


def test_map_columns_two_columns_for_one_field() -> None:
    with pytest.raises(InputError, match="both mean did_number"):
        map_columns(("DID", "Phone Number", "Inbound", "Outbound"), {})


def test_map_columns_map_wins_over_header_matching() -> None:
    """The --map that the two-columns error suggests resolves it (it used to repeat the error)."""
    headers = ("DID", "Phone Number", "Inbound", "Outbound")
    with pytest.raises(InputError) as info:
        map_columns(headers, {})
    suggested = re.search(r'--map "([^"]+)"', str(info.value))
    assert suggested is not None
    mapping = map_columns(headers, parse_column_map([suggested.group(1)]))
    assert mapping["did_number"] == 1 and 0 not in mapping.values()


def test_map_columns_ignore_column_leaves_a_column_out() -> None:
    headers = ("DID", "Phone Number", "Inbound", "Outbound", "Status")
    assert map_columns(headers, {}, ["Phone Number", "status"]) == {
        "did_number": 0,
        "for_inbound_call": 2,
        "for_outbound_call": 3,
    }
    assert map_columns(headers, {}, ["A"])["did_number"] == 1


@pytest.mark.parametrize(
    ("column_map", "first_column", "expected"),
    [
        ({"B": "did_number"}, 0, 1),
        ({"b": "did_number"}, 0, 1),
        ({"C": "did_number"}, 1, 1),  # the sheet's data starts at column B
        ({"AA": "did_number"}, 0, 26),
        ({"Tel": "did_number"}, 0, 1),
    ],
)
def test_map_columns_by_letter(column_map: dict[str, str], first_column: int, expected: int) -> None:
    headers = ("Customer", "Tel", "Inbound", "Outbound", *(f"x{i}" for i in range(30)))
    assert map_columns(headers, column_map, first_column=first_column)["did_number"] == expected


def test_column_letter_round_trip() -> None:
    assert [column_letters(p) for p in (0, 1, 25, 26, 27, 51, 52, 701, 702)] == [
        "A",
        "B",
        "Z",
        "AA",
        "AB",
        "AZ",
        "BA",
        "ZZ",
        "AAA",
    ]


@pytest.mark.parametrize(
    ("column_map", "ignore", "fragment"),
    [
        ({"Carrier": "did_number"}, (), '--map names the column "Carrier", which is not in the file'),
        ({"Z": "did_number"}, (), 'columns found: A "Tel", B "Inbound", C "Outbound"'),
        ({}, ("Notes",), '--ignore-column names the column "Notes"'),
        ({"Tel": "did_number", "A": "did_id"}, (), "two fields"),
        ({"Tel": "did_number", "Inbound": "did_number"}, (), "did_number twice"),
        ({"Tel": "did_number"}, ("A",), "--ignore-column leaves out"),
    ],
)
def test_map_columns_bad_options_are_one_line_errors(
    column_map: dict[str, str], ignore: tuple[str, ...], fragment: str
) -> None:
    with pytest.raises(InputError) as info:
        map_columns(("Tel", "Inbound", "Outbound"), column_map, ignore)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def _carrier_xlsx(path: Path, start_column: int) -> Path:
    """A workbook whose table starts at ``start_column`` (1 = A): Customer, Tel, Inbound, Outbound, State.

    The number is one of the sandbox's default inventory."""
    book = openpyxl.Workbook()
    sheet = book.active
    assert sheet is not None
    rows = [("Customer", "Tel", "Inbound", "Outbound", "State"), ("Acme", "+91 80 1122 3344", "1", "4", "NY")]
    for r, values in enumerate(rows, start=1):
        for c, value in enumerate(values, start=start_column):
            sheet.cell(r, c, value)
    book.save(path)
    return path


@pytest.mark.parametrize("command", ["validate", "run"])
def test_cli_map_by_letter_and_ignore_column(tmp_path: Path, command: str) -> None:
    """Through the CLI, on a sheet that starts at column B: "C" is the Tel column, "F" the State."""
    sheet = _carrier_xlsx(tmp_path / "carrier.xlsx", start_column=2)
    args = [command, str(sheet), "--map", "C=did_number", "--ignore-column", "F", "--map", "F=status"]
    result = CliRunner().invoke(main, args, env={"VOCOBASE_API_KEY": "k"})
    assert result.exit_code == 2 and "--ignore-column leaves out" in result.output, result.output
    args = [command, str(sheet), "--map", "C=did_number", "--ignore-column", "F"]
    if command == "validate":
        result = CliRunner().invoke(main, args)
    else:
        with running_sandbox(SandboxConfig(requests_per_minute=100_000)) as (url, _sandbox):
            args += ["--base-url", url, "--dry-run", "--quiet"]
            result = CliRunner().invoke(main, args, env={"VOCOBASE_API_KEY": SANDBOX_API_KEY})
    assert result.exit_code == 0, result.output
    assert "rows read: 1" in result.output
    book = openpyxl.load_workbook(tmp_path / "carrier.results.xlsx", read_only=True)
    summary = {r[0]: r[1] for r in book["Summary"].iter_rows(values_only=True)}
    assert summary["option map"] == "C=did_number" and summary["option ignore_column"] == "F"
    results = list(book["Results"].iter_rows(values_only=True))
    assert dict(zip(results[0], results[1], strict=True))["import_status"] != "failed"
    book.close()


@pytest.mark.parametrize("command", ["validate", "run"])
@pytest.mark.parametrize(
    ("option", "fragment"),
    [
        (["--map", "Tel=phone"], 'unknown field "phone"; fields are: did_id, did_number'),
        (["--map", "Fax=did_number"], 'columns found: B "Customer", C "Tel"'),
        (["--ignore-column", "Fax"], '--ignore-column names the column "Fax"'),
    ],
)
def test_cli_bad_map_or_ignore_column_exits_2_with_one_line(
    tmp_path: Path, command: str, option: list[str], fragment: str
) -> None:
    sheet = _carrier_xlsx(tmp_path / "carrier.xlsx", start_column=2)
    result = CliRunner().invoke(main, [command, str(sheet), *option], env={"VOCOBASE_API_KEY": "k"})
    assert result.exit_code == 2, result.output
    (line,) = result.output.strip().splitlines()
    assert line.startswith("Error: ") and fragment in line


@pytest.mark.parametrize(
    ("direction", "text", "expected"),
    [
        (Direction.INBOUND, "Mobile", 1),
        (Direction.INBOUND, "sip", 2),
        (Direction.INBOUND, "WebSocket bot", 3),
        (Direction.INBOUND, "3.0", 3),
        (Direction.INBOUND, "4", None),
        (Direction.OUTBOUND, "answer only", 4),
        (Direction.OUTBOUND, "Only-Answer", 4),
        (Direction.OUTBOUND, "mobile", None),
        (Direction.OUTBOUND, "bot", 3),
    ],
)
def test_parse_mode_numbers_and_labels(direction: Direction, text: str, expected: int | None) -> None:
    assert parse_mode(direction, text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", 1),
        ("1", 1),
        ("0", 0),
        ("Active", 1),
        ("INACTIVE", 0),
        ("yes", 1),
        ("No", 0),
        ("true", 1),
        ("FALSE", 0),
        ("Y", 1),
        ("y", 1),
        ("N", 0),
        ("n", 0),
        ("YES", 1),
        ("Disabled", 0),
        ("2", None),
        ("maybe", None),
    ],
)
def test_parse_status_values(text: str, expected: int | None) -> None:
    assert parse_status(text) == expected


def _example_digits(rng: random.Random) -> list[str]:
    """Country code + national number: every region's example number of every type, the same
    with its last digits redrawn, one digit longer and shorter, and redrawn whole (mostly invalid)."""
    examples = [
        phonenumbers.example_number_for_type(region, kind)
        for region in sorted(phonenumbers.SUPPORTED_REGIONS)
        for kind in range(11)
    ] + [
        phonenumbers.example_number_for_non_geo_entity(c)
        for c in phonenumbers.COUNTRY_CODES_FOR_NON_GEO_REGIONS
    ]
    out: list[str] = []
    for example in examples:
        if example is None:
            continue
        digits = phonenumbers.format_number(example, phonenumbers.PhoneNumberFormat.E164)[1:]

        def redraw(n: int) -> str:
            return "".join(rng.choice("0123456789") for _ in range(n))

        k = rng.randint(1, min(4, len(digits) - 4))
        out += [
            digits,
            digits[:-k] + redraw(k),
            digits + redraw(1),
            digits[:-1],
            digits[:3] + redraw(len(digits) - 3),
        ]
    return out


def _full_parse(digits: str) -> str | None:
    """What phonenumbers itself makes of "+digits": the E.164 digits of a valid number, else None."""
    try:
        parsed = phonenumbers.parse("+" + digits)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(parsed):
        return None
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)[1:]


@pytest.mark.slow
def test_phone_fast_path_agrees_with_full_parse_for_every_country_code() -> None:
    """The fast path must never give a different answer than phonenumbers.parse + is_valid_number."""
    rng = random.Random(7)
    normaliser = PhoneNormaliser()
    checked = 0
    for code in phonenumbers.COUNTRY_CODE_TO_REGION_CODE:
        for _ in range(60):
            digits = str(code) + "".join(rng.choice("0123456789") for _ in range(rng.randint(4, 13)))
            for text in (digits, "+" + digits):
                fast = normaliser(text)
                slow = normaliser.normalise(text)
                assert fast.number == slow.number == _full_parse(digits), (text, fast, slow)
                checked += 1
    assert checked > 20000


@pytest.mark.slow
def test_phone_fast_path_agrees_with_is_valid_number_on_example_numbers() -> None:
    """Valid and nearly valid numbers of every region and type: the fast path, the full path and
    phonenumbers' own parse + is_valid_number give one answer, and the fast path reads most valid ones."""
    normaliser = PhoneNormaliser()
    samples = _example_digits(random.Random(5))
    valid = fast_hits = 0
    for digits in samples:
        expected = _full_parse(digits)
        fast = normaliser.quick(digits)
        slow = normaliser.normalise(digits)
        assert slow.number == expected, (digits, slow)
        assert fast is None or fast == expected, (digits, fast)
        valid += expected is not None
        fast_hits += fast is not None
    assert len(samples) > 5000 and valid > len(samples) // 3
    assert fast_hits > valid * 9 // 10


def test_validate_schema_covers_every_field() -> None:
    from importer.validate.cells import parse_cells
    from importer.validate.rules import build_schema

    table = make_table([row()])
    clean = pd.DataFrame({name: [""] for name in FIELD_NAMES}, index=[2], dtype=object)
    schema = build_schema(parse_cells(clean, PhoneNormaliser()))
    assert list(schema.columns) == list(FIELD_NAMES)
    assert table.row_count == 1


@pytest.mark.slow
def test_phone_quick_path_agrees_with_full_parse_on_formatted_numbers() -> None:
    """Numbers written with spaces, dashes, brackets or a 00 prefix take the quick path: same answers."""
    rng = random.Random(11)
    normaliser = PhoneNormaliser()
    checked = quick = 0
    for digits in _example_digits(rng)[::2]:
        number = phonenumbers.parse("+" + digits) if _full_parse(digits) else None
        code = str(number.country_code) if number else digits[: rng.randint(1, 3)]
        national = digits[len(code) :]
        if len(national) < 2:
            continue
        cut = rng.randint(1, len(national) - 1)
        for text in (
            f"+{code} {national[:cut]} {national[cut:]}",
            f"00{code}-{national[:cut]}-{national[cut:]}",
            f"+{code} ({national[:cut]}) {national[cut:]}",
        ):
            fast = normaliser.quick(text)
            slow = normaliser.normalise(text)
            if fast is not None:
                quick += 1
                assert fast == slow.number, (text, fast, slow)
            checked += 1
    assert checked > 5000 and quick > checked // 3


# -- load_and_validate: the one way a job reads and checks a table -----------------------------


def _routing_csv(path: Path) -> Path:
    """Three rows: row 2 valid, row 3 with an unknown inbound mode, row 4 valid."""
    path.write_text(
        "Phone Number,Inbound Mode,Outbound Mode,Status\n"
        "+918020000000,1,4,active\n"
        "+918020000001,9,4,active\n"
        "+918020000002,1,4,active\n",
        encoding="utf-8",
    )
    return path


def test_load_and_validate_applies_cell_edits_before_validation(tmp_path: Path) -> None:
    """Edits correct cells of the table read (the later edit of a cell wins); the file is untouched
    and keeps its sha256, so a resume still finds its earlier runs."""
    from importer.jobs.validate import CellEdit, load_and_validate

    path = _routing_csv(tmp_path / "routing.csv")
    before = path.read_bytes()
    plain = load_and_validate(InputOptions(path))
    assert plain.failed_rows == {3} and [i.kind for i in plain.issues] == ["bad_mode"]
    edits = (CellEdit(row=3, column=1, value="7"), CellEdit(row=3, column=1, value="3"))
    edits += (CellEdit(row=4, column=3, value="inactive"),)
    # Mode 3 (a bot) needs a bot id: the edit fixed one problem and validation finds the next.
    edited = load_and_validate(InputOptions(path), edits)
    assert [(i.row, i.kind) for i in edited.issues] == [(3, "missing_mode_id")]
    assert edited.table.frame.loc[4, 3] == "inactive" and [r.row for r in edited.valid] == [2, 4]
    assert edited.valid[1].status == 0
    fixed = load_and_validate(InputOptions(path), (CellEdit(row=3, column=1, value="1"),))
    assert not fixed.issues and len(fixed.valid) == 3
    assert fixed.table.source.sha256 == plain.table.source.sha256 and path.read_bytes() == before
    with pytest.raises(InputError, match="row 9 is not a data row"):
        load_and_validate(InputOptions(path), (CellEdit(row=9, column=0, value="x"),))
    with pytest.raises(InputError, match="no column 12"):
        load_and_validate(InputOptions(path), (CellEdit(row=2, column=11, value="x"),))


def test_load_and_validate_takes_the_header_row_the_user_chose(tmp_path: Path) -> None:
    """The reader took a title row (no row names the fields); the header moves down to the names,
    the column letters map the fields, and validation numbers rows from there."""
    from importer.jobs.validate import load_and_validate, move_header

    path = tmp_path / "export.csv"
    path.write_text("Export,,\nNummer,Eingehend,Ausgehend\n+918020000000,1,4\n\n+918020000001,1,4\n")
    letters = {"A": "did_number", "B": "for_inbound_call", "C": "for_outbound_call"}
    as_read = load_and_validate(InputOptions(path, column_map=letters))
    assert as_read.table.source.header_row == 1 and as_read.failed_rows == {2}  # "Nummer" is no DID
    moved = load_and_validate(InputOptions(path, column_map=letters, header_row=2))
    assert moved.table.headers == ("Nummer", "Eingehend", "Ausgehend") and moved.table.source.header_row == 2
    assert not moved.issues and [r.row for r in moved.valid] == [3, 5]
    assert InputOptions(path, header_row=2).describe()["header_row"] == "2"
    with pytest.raises(InputError, match="can only move down from row 2"):
        move_header(moved.table, 1)
    with pytest.raises(InputError, match="row 4 is blank or past the end"):
        load_and_validate(InputOptions(path, column_map=letters, header_row=4))


# -- issue 17: decimals, footers, what a number became -------------------------------------------


@pytest.mark.parametrize("number", ["918040000040.0", "918040000040.00", "+918040000040.0"])
def test_validate_reads_a_whole_number_decimal_did_as_the_number(number: str) -> None:
    """918040000040.0 is what pandas writes for a DID column with a blank: the number 918040000040."""
    report = validate_table(make_table([row(number=number, in_bot="11.0", inbound="3", status="1.0")]))
    assert report.issues == ()
    assert report.valid[0].did_number == "918040000040"
    assert report.valid[0].inbound_websocket_bot_id == 11


def test_validate_a_decimal_did_is_a_number_saved_as_a_decimal() -> None:
    """A fraction is no phone number, and its digits build no country suggestion."""
    (issue,) = validate_table(make_table([row(number="918040000040.5")])).issues
    assert issue.kind == "decimal_number"
    assert "a number saved as a decimal" in issue.message
    assert "country code" not in issue.message and "+49" not in issue.message


@pytest.mark.parametrize(
    ("cells", "column"),
    [
        (row(inbound="3", in_bot="93.5"), "Inbound Bot ID"),
        (row(inbound="1.5"), "Inbound Mode"),
        (row(status="0.5"), "Status"),
    ],
)
def test_validate_a_decimal_in_a_numeric_field_is_a_number_saved_as_a_decimal(
    cells: list[str], column: str
) -> None:
    (issue,) = validate_table(make_table([cells])).issues
    assert issue.column == column
    assert issue.kind == "decimal_number" and "a number saved as a decimal" in issue.message


FOOTER_HEADERS = ("DID Number", "Inbound Mode", "Outbound Mode", "Notes")


def _write_csv(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_validate_file_skips_footer_rows_as_not_data_rows(tmp_path: Path) -> None:
    """Text only outside the field columns, after the last data row: skipped, not failed, exit 0."""
    path = _write_csv(
        tmp_path / "portal.csv",
        [
            ",".join(FOOTER_HEADERS),
            "+918012345678,1,4,first",
            "+918012345679,1,4,",
            ",,,Total numbers: 2",
            ",,,Confidential - do not forward",
        ],
    )
    summary = validate_file(ValidateConfig(InputOptions(path)))
    assert summary.exit_code == 0
    rows = {r["import_row"]: r for r in read_results(summary.results_path)}
    for footer in ("4", "5"):
        assert rows[footer]["import_status"] == "skipped"
        assert rows[footer]["import_reason"] == "not a data row (footer?)"
    assert [rows[r]["import_status"] for r in ("2", "3")] == ["valid", "valid"]


def test_validate_empty_row_before_the_last_data_row_is_no_footer() -> None:
    """A row without field values between data rows still fails: only trailing rows are footers."""
    table = make_table(
        [row(), row(number="", inbound="", outbound="", customer="note"), row(number="+918012345679")]
    )
    report = validate_table(table)
    assert report.skipped == {}
    assert 3 in report.failed_rows


def test_validate_file_results_show_the_e164_number_of_each_row(tmp_path: Path) -> None:
    """What 4805550123 became under --default-region US, before anything is sent."""
    path = _write_csv(
        tmp_path / "us.csv",
        [",".join(FOOTER_HEADERS[:3]), "4805550123,1,4", "(480) 555-0124,1,4", "+918012345678,1,4", "12,1,4"],
    )
    summary = validate_file(ValidateConfig(InputOptions(path, default_region="US")))
    numbers = [r["import_did_number"] for r in read_results(summary.results_path)]
    assert numbers == ["+14805550123", "+14805550124", "+918012345678", None]


def test_run_footer_rows_are_skipped_and_do_not_fail_the_run(tmp_path: Path) -> None:
    """A portal export's footer lines end skipped in a real run too: nothing sent for them, exit 0."""
    sheet = write_sheet(tmp_path / "sheet.csv", 3)
    with sheet.open("a", encoding="utf-8") as fh:
        fh.write(",,,,,,,,Total numbers: 3\n,,,,,,,,Confidential - do not forward\n")
    sandbox = create_sandbox(SandboxConfig(inventory=write_inventory(tmp_path / "inv.json", 3)))
    summary = run_import(config_for(sheet, tmp_path), transport=httpx.ASGITransport(app=sandbox.app))
    assert summary.exit_code == 0
    assert summary.counts == {"succeeded": 3, "skipped": 2}
    footers = [r for r in read_results(summary.results_path) if r["import_row"] in ("5", "6")]
    assert [(r["import_status"], r["import_reason"]) for r in footers] == [
        ("skipped", "not a data row (footer?)")
    ] * 2


def test_validate_valid_rows_carry_each_id_in_its_own_field() -> None:
    """Every pair of modes, each row with the ids its modes need: each id lands in its own field."""
    pairs = [(i, o) for i in INBOUND_MODES for o in OUTBOUND_MODES]
    ids = {
        "inbound_websocket_bot_id": 11,
        "inbound_sip_trunk_id": 12,
        "outbound_websocket_bot_id": 13,
        "outbound_sip_trunk_id": 14,
    }

    def cell(name: str, used: set[str | None]) -> str:
        return str(ids[name]) if name in used else ""

    rows = []
    for k, (i, o) in enumerate(pairs):
        used = {INBOUND_MODES[i].requires, OUTBOUND_MODES[o].requires}
        rows.append(
            row(
                number=f"+91 80 1234 {5600 + k}",
                inbound=str(i),
                in_bot=cell("inbound_websocket_bot_id", used),
                in_trunk=cell("inbound_sip_trunk_id", used),
                outbound=str(o),
                out_bot=cell("outbound_websocket_bot_id", used),
                out_trunk=cell("outbound_sip_trunk_id", used),
                status="0",
            )
        )
    report = validate_table(make_table(rows))
    assert not report.issues and [r.row for r in report.valid] == list(range(2, 2 + len(pairs)))
    for k, (valid, (i, o)) in enumerate(zip(report.valid, pairs, strict=True)):
        used = {INBOUND_MODES[i].requires, OUTBOUND_MODES[o].requires}
        assert valid._asdict() == {
            "row": 2 + k,
            "did_id": None,
            "did_number": f"91801234{5600 + k}",
            "for_inbound_call": i,
            "for_outbound_call": o,
            **{name: (value if name in used else None) for name, value in ids.items()},
            "status": 0,
            "connection_id": None,
        }, (i, o)
        assert all(type(v) is int for v in (valid.row, valid.for_inbound_call, valid.status))


def test_routing_row_record_is_its_routing_fields_by_name() -> None:
    valid = RoutingRow(7, 1001, "918012345678", 3, 2, 93, None, None, 8, 0, None)
    assert valid.record() == {
        "for_inbound_call": 3,
        "for_outbound_call": 2,
        "inbound_websocket_bot_id": 93,
        "inbound_sip_trunk_id": None,
        "outbound_websocket_bot_id": None,
        "outbound_sip_trunk_id": 8,
        "status": 0,
    }
    assert valid.record_values() == tuple(valid.record().values())
