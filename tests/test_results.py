"""Tests of the results workbook and the failed-rows file: real XLSX written, read back and unzipped."""

from __future__ import annotations

import os
import re
import zipfile
from collections.abc import Collection
from pathlib import Path

import openpyxl
import pandas as pd
import pytest

from importer.errors import InputError, OutputError
from importer.jobs import outputs
from importer.jobs.outputs import write_outputs
from importer.model import Action, RawTable, RowIssue, RowOutcome, RunInfo, SourceInfo, Status
from importer.output.failed import write_failed_rows
from importer.output.paths import default_paths
from importer.output.results import DRY_RUN_COLUMNS, RESULT_COLUMNS, ROW_COLUMN, write_results
from importer.output.sheet import EXCEL_MAX_CELL, TRUNCATION_MARKER
from importer.read.table import read_table
from importer.words import IssueKind

HEADERS = ("Customer", "Phone Number", "Inbound Mode", "Outbound Mode", "Inbound Bot ID", "Notes")
TRICKY = (
    '=HYPERLINK("http://evil.example","click")',
    "@SUM(A1)",
    "+918012345678",
    "-5",
    "0123",
    "=1+1",
    "1E5",
    "TRUE",
    "2024-01-01",
    "http://example.com",
)
INFO = RunInfo(
    command="voicelink-import carrier.xlsx",
    started="2025-03-14T10:00:00+00:00",
    finished="2025-03-14T10:01:00+00:00",
    options={"dry_run": "no", "workers": "1"},
    audit={"os user": "ops", "key": "…1234"},
)


def make_table(
    tmp_path: Path, rows: list[list[str]], *, first_row: int = 2, dtype: object = None
) -> RawTable:
    """Build a RawTable as the reader would: text cells, columns 0..n-1, Excel row numbers as index."""
    source = tmp_path / "carrier.xlsx"
    source.write_bytes(b"input")
    frame = pd.DataFrame(rows, index=range(first_row, first_row + len(rows)), dtype=dtype)  # type: ignore[call-overload]
    info = SourceInfo(source, "xlsx", "ab" * 32, sheet="DID Routing", header_row=first_row - 1)
    return RawTable(info, HEADERS, frame)


def row_values(n: int) -> list[list[str]]:
    return [
        [f"Cust {i}", f"+91 80 1122 {3300 + i}", "mobile", "only-answer", "", f"note {i}"] for i in range(n)
    ]


def outcomes_for(table: RawTable, failed: Collection[int] = ()) -> list[RowOutcome]:
    return [
        RowOutcome(r, Status.FAILED, Action.FAIL, "bad mode", "bad_mode")
        if r in failed
        else RowOutcome(r, Status.SUCCEEDED, Action.CREATE, "", "", 812, 5001, 200, 1)
        for r in table.frame.index
    ]


def sheet_xml(path: Path, sheet_number: int = 1) -> str:
    with zipfile.ZipFile(path) as zf:
        return zf.read(f"xl/worksheets/sheet{sheet_number}.xml").decode("utf-8")


def summary_of(path: Path) -> dict[str, object]:
    ws = openpyxl.load_workbook(path)["Summary"]
    return {row[0]: row[1] for row in ws.iter_rows(values_only=True) if row[0] is not None}


@pytest.mark.parametrize(
    ("name", "results", "failed"),
    [
        ("carrier.xlsx", "carrier.results.xlsx", "carrier.failed.xlsx"),
        ("batch.7.csv", "batch.7.results.xlsx", "batch.7.failed.xlsx"),
        ("carrier.results.xlsx", "carrier.results.results.xlsx", "carrier.results.failed.xlsx"),
        ("noext", "noext.results.xlsx", "noext.failed.xlsx"),
    ],
)
def test_default_paths_next_to_input_never_equal(
    tmp_path: Path, name: str, results: str, failed: str
) -> None:
    paths = default_paths(tmp_path / name)
    assert paths == (tmp_path / results, tmp_path / failed)
    assert tmp_path / name not in paths


def test_write_results_columns_values_and_row_numbers(tmp_path: Path) -> None:
    table = make_table(tmp_path, row_values(3), first_row=4)
    out = tmp_path / "out.xlsx"
    write_results(out, table, outcomes_for(table), [], INFO)
    book = openpyxl.load_workbook(out)
    assert book.sheetnames == ["Results", "Summary", "Errors"]
    rows = list(book["Results"].iter_rows(values_only=True))
    assert rows[0] == (*HEADERS, *RESULT_COLUMNS, ROW_COLUMN)
    assert [r[: len(HEADERS)] for r in rows[1:]] == [tuple(v or None for v in r) for r in row_values(3)]
    assert [r[-1] for r in rows[1:]] == ["4", "5", "6"]
    assert rows[1][len(HEADERS) :] == ("succeeded", "create", None, "812", "5001", "200", "1", "4")


@pytest.mark.parametrize(
    ("current", "proposed", "has_columns"), [("", "", False), ("1/4", "3/4 bot 93", True)]
)
def test_write_results_dry_run_columns_only_when_present(
    tmp_path: Path, current: str, proposed: str, has_columns: bool
) -> None:
    table = make_table(tmp_path, row_values(2))
    outcomes = [
        RowOutcome(2, Status.NOT_SENT, Action.UPDATE),
        RowOutcome(3, Status.NOT_SENT, Action.UPDATE, current=current, proposed=proposed),
    ]
    out = tmp_path / "out.xlsx"
    write_results(out, table, outcomes, [], INFO)
    header = next(openpyxl.load_workbook(out)["Results"].iter_rows(values_only=True))
    assert (header[-3:-1] == DRY_RUN_COLUMNS) is has_columns
    assert header[-1] == ROW_COLUMN
    if has_columns:
        last = list(openpyxl.load_workbook(out)["Results"].iter_rows(values_only=True))[-1]
        assert last[-3:] == (current, proposed, "3")


def test_write_results_tricky_values_stay_text(tmp_path: Path) -> None:
    """Formula-like and number-like values are written as text cells, never formulas or numbers."""
    table = make_table(tmp_path, [[v, v, v, v, v, v] for v in TRICKY])
    out = tmp_path / "out.xlsx"
    write_results(out, table, outcomes_for(table), [], INFO)
    ws = openpyxl.load_workbook(out)["Results"]
    for r, value in enumerate(TRICKY, start=2):
        for c in range(1, len(HEADERS) + 1):
            cell = ws.cell(r, c)
            assert (cell.value, cell.data_type) == (value, "s")
    xml = sheet_xml(out)
    assert "<f>" not in xml and "<f " not in xml
    assert 't="n"' not in xml and not re.search(r"<c [^>]*>\s*<v>", xml)


def test_write_results_streams_inline_strings(tmp_path: Path) -> None:
    """constant_memory mode writes in-line strings and no shared-string table, and leaves no temp file."""
    table = make_table(tmp_path, row_values(5))
    out = tmp_path / "out.xlsx"
    write_results(out, table, outcomes_for(table), [], INFO)
    assert 't="inlineStr"' in sheet_xml(out)
    with zipfile.ZipFile(out) as zf:
        assert "xl/sharedStrings.xml" not in zf.namelist()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["carrier.xlsx", "out.xlsx"]


def test_write_results_failed_rows_highlighted(tmp_path: Path) -> None:
    """Failed rows are filled red across the table: one conditional format (Excel's light red
    fill, dark red text) whose formula reads each row's status cell, true exactly on failed rows."""
    table = make_table(tmp_path, row_values(4))
    out = tmp_path / "out.xlsx"
    write_results(out, table, outcomes_for(table, failed={3, 5}), [], INFO)
    ws = openpyxl.load_workbook(out)["Results"]
    width = len(HEADERS) + len(RESULT_COLUMNS) + 1
    (area,) = ws.conditional_formatting
    assert str(area.sqref) == f"A2:{openpyxl.utils.get_column_letter(width)}5"  # every cell of every row
    (rule,) = area.rules
    assert rule.type == "expression" and rule.dxf.fill.bgColor.rgb == "FFFFC7CE"
    assert rule.dxf.font.color.rgb == "FF9C0006"
    status = openpyxl.utils.get_column_letter(len(HEADERS) + 1)
    assert rule.formula == [f'${status}2="failed"']
    assert ws[f"{status}1"].value == "import_status"
    # The formula, relative to each row, is true on exactly the failed rows.
    assert [r for r in range(2, 6) if ws[f"{status}{r}"].value == "failed"] == [3, 5]


def test_write_results_header_frozen_bold_filtered(tmp_path: Path) -> None:
    table = make_table(tmp_path, row_values(3))
    out = tmp_path / "out.xlsx"
    write_results(out, table, outcomes_for(table), [], INFO)
    ws = openpyxl.load_workbook(out)["Results"]
    assert ws.freeze_panes == "A2"
    assert ws.auto_filter.ref == "A1:N4"
    assert all(cell.font.b for cell in ws[1])
    widths = {c: d.width for d in ws.column_dimensions.values() for c in range(d.min, d.max + 1)}
    assert all(len(str(cell.value)) + 2 <= widths[cell.column] <= 61 for cell in ws[1])


def test_write_results_summary_counts(tmp_path: Path) -> None:
    table = make_table(tmp_path, row_values(5))
    outcomes = [
        RowOutcome(2, Status.SUCCEEDED, Action.CREATE),
        RowOutcome(3, Status.FAILED, Action.FAIL, "bad", "bad_mode"),
        RowOutcome(4, Status.FAILED, Action.FAIL, "bad", "bad_mode"),
        RowOutcome(
            5, Status.FAILED, Action.CREATE, "404 not found", "not_found", http_status=404, attempts=1
        ),
        RowOutcome(6, Status.UNCHANGED, Action.UNCHANGED),
    ]
    issues = [
        _issue(3, "Inbound Mode", "voicemail", IssueKind.BAD_MODE, direction="inbound", modes="1 (mobile)"),
        _issue(3, "Phone Number", "12", IssueKind.BAD_NUMBER),
        _issue(4, "Inbound Mode", "x", IssueKind.BAD_MODE, direction="inbound", modes="1 (mobile)"),
    ]
    out = tmp_path / "out.xlsx"
    write_results(out, table, outcomes, issues, INFO)
    summary = summary_of(out)
    assert {s.value: summary[s.value] for s in Status} == {
        "succeeded": 1,
        "unchanged": 1,
        "skipped": 0,
        "failed": 3,
        "not_sent": 0,
    }
    assert summary["rows read"] == 5
    assert summary["not_found"] == 1
    assert summary["bad_mode"] == 2  # by reason kind (rows 3, 4) and by problem kind (two issues)
    assert summary["bad_number"] == 1
    assert summary["file"] == "carrier.xlsx"
    assert summary["sha256"] == "ab" * 32
    assert summary["sheet"] == "DID Routing"
    assert summary["header row"] == 1
    assert summary["command"] == INFO.command
    assert summary["option dry_run"] == "no"
    assert summary["key"] == "…1234"


def test_write_results_errors_sheet_lists_every_problem(tmp_path: Path) -> None:
    table = make_table(tmp_path, row_values(4))
    outcomes = [
        RowOutcome(2, Status.SUCCEEDED, Action.CREATE),
        RowOutcome(3, Status.FAILED, Action.FAIL, "2 problems", "bad_mode"),
        RowOutcome(4, Status.FAILED, Action.CREATE, "DID not found", "not_found", http_status=404),
        RowOutcome(5, Status.SKIPPED, Action.SKIP, "skipped by --only", "filtered"),
    ]
    issues = [
        _issue(3, "Inbound Mode", "voicemail", IssueKind.BAD_MODE, direction="inbound", modes="1 (mobile)"),
        _issue(3, "Inbound Bot ID", "=1+1", IssueKind.BAD_ID, problem="is not a whole number"),
    ]
    out = tmp_path / "out.xlsx"
    write_results(out, table, outcomes, issues, INFO)
    rows = list(openpyxl.load_workbook(out)["Errors"].iter_rows(values_only=True))
    assert rows == [
        ("row", "column", "value", "message", "kind"),
        (
            "3",
            "Inbound Mode",
            "voicemail",
            '"Inbound Mode": "voicemail" is not an inbound mode; use one of 1 (mobile)',
            "bad_mode",
        ),
        (
            "3",
            "Inbound Bot ID",
            "=1+1",
            '"Inbound Bot ID": "=1+1" is not a whole number; ids are positive whole numbers',
            "bad_id",
        ),
        ("4", None, None, "DID not found", "not_found"),
    ]
    assert "<f>" not in sheet_xml(out, 3)


def test_write_results_control_characters_and_odd_unicode(tmp_path: Path) -> None:
    """Control characters, odd code points and even lone surrogates make a file openpyxl opens."""
    values = [
        "\x00a\x01b\x1f",
        "\u202eabc",
        "😀 ok",
        "\ufeffbom",
        "\u2028x",
        "\ufffe",
        "_x0041_",
        "\ud800lone",
    ]
    table = make_table(tmp_path, [[v] * len(HEADERS) for v in values], dtype=object)
    out = tmp_path / "out.xlsx"
    write_results(out, table, outcomes_for(table, failed={2}), [], INFO)
    ws = openpyxl.load_workbook(out)["Results"]
    assert ws.max_row == len(values) + 1
    assert [ws.cell(r, 1).value for r in (3, 4, 5, 9)] == ["\u202eabc", "😀 ok", "\ufeffbom", "\ufffdlone"]


def test_write_results_truncates_long_cells_and_says_so(tmp_path: Path) -> None:
    long = "9" * (EXCEL_MAX_CELL + 10)
    table = make_table(tmp_path, [["a", long, "", "", "", ""]])
    out = tmp_path / "out.xlsx"
    write_results(out, table, outcomes_for(table), [], INFO)
    cell = openpyxl.load_workbook(out)["Results"].cell(2, 2).value
    assert len(cell) == EXCEL_MAX_CELL
    assert cell.endswith(TRUNCATION_MARKER) and cell.startswith("999")
    assert "1 cells" in str(summary_of(out)["cells truncated"])


@pytest.mark.parametrize("spelling", ["same", "dotdot"])
def test_write_results_refuses_to_overwrite_input(tmp_path: Path, spelling: str) -> None:
    table = make_table(tmp_path, row_values(1))
    target = table.source.path if spelling == "same" else tmp_path / "sub" / ".." / "carrier.xlsx"
    (tmp_path / "sub").mkdir()
    with pytest.raises(InputError, match="overwrite the input"):
        write_results(target, table, outcomes_for(table), [], INFO)
    with pytest.raises(InputError, match="overwrite the input"):
        write_failed_rows(target, table, [2])
    assert table.source.path.read_bytes() == b"input"


def test_write_results_rejects_outcomes_not_matching_rows(tmp_path: Path) -> None:
    table = make_table(tmp_path, row_values(2))
    with pytest.raises(ValueError, match="one outcome per table row"):
        write_results(tmp_path / "out.xlsx", table, outcomes_for(table)[:1], [], INFO)


def test_write_results_failure_keeps_previous_file(tmp_path: Path) -> None:
    """A crash while writing leaves the old file as it was and no temp file behind."""
    table = make_table(tmp_path, row_values(2))
    out = tmp_path / "out.xlsx"
    out.write_bytes(b"previous")
    broken = RunInfo("cmd", "a", "b", {"workers": b"3"})  # type: ignore[dict-item]
    with pytest.raises(TypeError):
        write_results(out, table, outcomes_for(table), [], broken)
    assert out.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["carrier.xlsx", "out.xlsx"]


def test_write_failed_rows_round_trips_through_reader(tmp_path: Path) -> None:
    rows = [
        ["Acme", TRICKY[0], "mobile", "only-answer", "", "a\r\nb"],
        ["Acme", "+918012345678", "bot", "bot", "0093", "@SUM(A1)"],
        ["Acme", "0123", "3", "4", "-5", "\x01ctl"],
        ["Beta", "918011223344", "SIP", "SIP", "1E5", "  spaced  "],
    ]
    table = make_table(tmp_path, rows, first_row=4)
    out = tmp_path / "carrier.failed.xlsx"
    write_failed_rows(out, table, {7, 4, 6}, {4: "bad DID", 7: "unknown mode; trunk id missing"})
    back = read_table(out)
    assert list(back.headers) == [*HEADERS, "import_reason", "import_row"]
    assert back.frame.index.tolist() == [2, 3, 4]
    assert back.frame.values.tolist() == [
        [*rows[0], "bad DID", "4"],
        [*rows[2], "", "6"],
        [*rows[3], "unknown mode; trunk id missing", "7"],
    ]
    assert back.source.sheet == "DID Routing"
    ws = openpyxl.load_workbook(out)["DID Routing"]
    assert ws.max_column == len(HEADERS) + 2
    assert ws.column_dimensions["B"].number_format == "@"  # digits typed in while fixing stay text
    assert "<f>" not in sheet_xml(out)


def test_write_failed_rows_rejects_unknown_rows(tmp_path: Path) -> None:
    table = make_table(tmp_path, row_values(2))
    with pytest.raises(ValueError, match="not in the table"):
        write_failed_rows(tmp_path / "f.xlsx", table, [2, 99])


def test_benchmark_floor_writes_the_same_result_columns() -> None:
    """bench/ spells the columns out (its floor process must not import the package): keep them equal."""
    import importlib.util
    import sys

    from importer.output.results import RESULT_COLUMNS, ROW_COLUMN

    path = Path(__file__).resolve().parent.parent / "bench" / "bench_validate.py"
    spec = importlib.util.spec_from_file_location("bench_validate", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while being built
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    expected = (*RESULT_COLUMNS, ROW_COLUMN)
    assert expected == module.RESULT_HEADERS


def _issue(row: int, column: str, value: str, kind: IssueKind, **params: str) -> RowIssue:
    return RowIssue(row, column, value, kind, {"column": column, "value": value, **params})


# -- the failed-rows file written in a forked process (the CLI) ------------------------------------


def _both_ways(tmp_path: Path) -> tuple[Path, Path]:
    """The same outcomes written one after the other and apart; the two failed-rows files."""
    table = make_table(tmp_path, row_values(40))
    outcomes = outcomes_for(table, failed={3, 9, 10, 41})
    paths = []
    for way, apart in (("seq", False), ("apart", True)):
        results, failed = tmp_path / f"{way}.results.xlsx", tmp_path / f"{way}.failed.xlsx"
        tally = write_outputs(table, outcomes, [], INFO, results, failed, apart=apart)
        assert tally.failed_rows == [3, 9, 10, 41]
        paths.append(failed)
    return paths[0], paths[1]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this system")
def test_write_outputs_apart_writes_the_same_failed_rows_file(tmp_path: Path) -> None:
    """Written in a forked process while the results are written: the same cells as one after the other."""
    seq, apart = _both_ways(tmp_path)

    def cells(path: Path) -> list[tuple[object, ...]]:
        return list(openpyxl.load_workbook(path).active.iter_rows(values_only=True))  # type: ignore[union-attr]

    assert cells(apart) == cells(seq) and len(cells(apart)) == 5
    assert sheet_xml(apart) == sheet_xml(seq)
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this system")
def test_written_apart_raises_the_childs_save_error_in_the_parent(tmp_path: Path) -> None:
    """The child cannot save (the disk is full, say): the parent raises that, naming the file."""
    target = tmp_path / "x.failed.xlsx"

    def refused() -> None:
        raise OutputError(target, "the disk is full")

    with (
        pytest.raises(OutputError, match=r"cannot save .*x\.failed\.xlsx: the disk is full"),
        outputs._written_apart(refused, target),
    ):
        pass


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this system")
def test_written_apart_writes_again_here_when_the_child_ends_without_saying(tmp_path: Path) -> None:
    """A child that dies without a word (killed, crashed) leaves no gap: the file is written here."""
    target = tmp_path / "x.failed.xlsx"
    parent = os.getpid()

    def dies_in_the_child() -> None:
        if os.getpid() != parent:
            os._exit(9)
        target.write_text("written by the parent")

    with outputs._written_apart(dies_in_the_child, target):
        pass
    assert target.read_text() == "written by the parent"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this system")
def test_written_apart_removes_the_childs_file_when_the_results_fail(tmp_path: Path) -> None:
    """The results could not be saved: the failed-rows file the child saved is taken away again, as
    it would never have been written one after the other (the fallback writes both elsewhere)."""
    target = tmp_path / "x.failed.xlsx"

    def save() -> None:
        target.write_text("child")

    with pytest.raises(OutputError, match="results"), outputs._written_apart(save, target):
        raise OutputError(tmp_path / "x.results.xlsx", "the results failed")
    assert not target.exists()
