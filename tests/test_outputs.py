"""Where the output files go and what they say: names, folders, save errors, failed rows, re-runs."""

from __future__ import annotations

import csv
import errno
import re
import shutil
from pathlib import Path

import httpx
import openpyxl
import pytest
from click.testing import CliRunner
from helpers import SAMPLE, config_for, desired_record, read_results, write_inventory, write_sheet

from importer.cli import main
from importer.errors import OutputError
from importer.jobs.rollback import locate_run
from importer.jobs.run import run_import
from importer.jobs.validate import validate_file
from importer.model import Status
from importer.options import InputOptions, ValidateConfig
from importer.output.paths import failed_path_for, save_problem
from importer.sandbox import SandboxConfig, create_sandbox


def one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), stderr
    return lines[0]


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["validate", "{sheet}", "-o", "{tmp}/out.csv"], "out.csv: results are always an Excel workbook"),
        (
            ["validate", "{sheet}", "--failed-out", "{tmp}/bad.csv"],
            "give --failed-out a name ending in .xlsx",
        ),
        (["run", "{sheet}", "-o", "{tmp}/out", "--dry-run"], "(e.g. out.xlsx)"),
        (["demo", "-o", "{tmp}/demo.csv"], "demo.csv: results are always"),
        (["rollback", "{sheet}", "-o", "{tmp}/undo.ods"], "undo.ods: results are always"),
    ],
)
def test_cli_output_name_not_xlsx_is_refused(tmp_path: Path, args: list[str], fragment: str) -> None:
    sheet = shutil.copy(SAMPLE / "carrier_routing.csv", tmp_path / "c.csv")
    values = {"sheet": str(sheet), "tmp": str(tmp_path)}
    result = CliRunner().invoke(
        main, [a.format(**values) for a in args], env={"VOCOBASE_API_KEY": "rg_live_unused_1234"}
    )
    assert result.exit_code == 2, result.output + result.stderr
    assert fragment in one_error_line(result.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.csv"]  # nothing written


@pytest.mark.parametrize("fmt", ["xlsx", "csv"])
def test_cli_template_into_a_missing_folder_creates_it(tmp_path: Path, fmt: str) -> None:
    out = tmp_path / "new" / f"t.{fmt}"
    result = CliRunner().invoke(main, ["template", "--format", fmt, "-o", str(out)])
    assert result.exit_code == 0, result.output + result.stderr
    assert out.is_file()


@pytest.mark.slow
@pytest.mark.parametrize("command", ["validate", "run"])
def test_cli_output_into_a_missing_folder_creates_it(tmp_path: Path, command: str) -> None:
    """validate and run both create the results' folder (run did, through its journal)."""
    sheet = shutil.copy(SAMPLE / "carrier_routing.csv", tmp_path / "c.csv")
    out = tmp_path / "new" / "deeper" / "r.xlsx"
    extra = ["--dry-run", "--base-url", "http://127.0.0.1:9/api/v2"] if command == "run" else []
    result = CliRunner().invoke(
        main, [command, str(sheet), "-o", str(out), *extra], env={"VOCOBASE_API_KEY": "rg_live_x_1234"}
    )
    if command == "validate":
        assert result.exit_code == 1, result.output + result.stderr
        assert out.is_file() and (out.parent / "r.failed.xlsx").is_file()
    else:  # nothing listens on port 9: the run stops at pre-flight, with one line, never a traceback
        assert result.exit_code == 3, result.output + result.stderr
        assert "could not connect" in one_error_line(result.stderr)


def test_failed_path_for_names() -> None:
    folder = Path("/x")
    assert failed_path_for(folder / "a.results.xlsx") == folder / "a.failed.xlsx"
    assert (
        failed_path_for(folder / "a.results.20261127-101500.xlsx") == folder / "a.failed.20261127-101500.xlsx"
    )
    assert failed_path_for(folder / "mine.XLSX") == folder / "mine.failed.xlsx"
    assert failed_path_for(folder / "a.b.xlsx") == folder / "a.b.failed.xlsx"


@pytest.mark.parametrize(
    ("code", "replacing", "reason"),
    [
        (errno.EACCES, False, "permission denied"),
        (errno.EPERM, False, "permission denied"),
        (errno.EACCES, True, "locked by another program"),
        (errno.ENOENT, False, "the folder does not exist"),
        (errno.ENOTDIR, False, "is a file, not a folder"),
        (errno.EISDIR, True, "a folder has that name"),
        (errno.ENOSPC, False, "the disk is full"),
        (errno.EROFS, False, "the disk is read-only"),
        (errno.EIO, False, "input/output error"),
    ],
)
def test_save_problem_plain_reasons(code: int, replacing: bool, reason: str) -> None:
    exc = OSError(code, "os text", "/tmp/.out.xlsx.123.abcd.tmp")
    assert reason in save_problem(exc, replacing=replacing)
    assert ".tmp" not in save_problem(exc, replacing=replacing)


def _validate_to(tmp_path: Path, output: Path) -> None:
    sheet = shutil.copy(SAMPLE / "carrier_routing.csv", tmp_path / "c.csv")
    validate_file(ValidateConfig(InputOptions(path=sheet), output=output))


def test_save_over_a_folder_names_the_destination_not_the_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "taken.xlsx"
    target.mkdir()
    with pytest.raises(OutputError) as info:
        _validate_to(tmp_path, target)
    assert str(info.value) == f"cannot save {target}: a folder has that name"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_save_under_a_file_says_the_path_has_a_file(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("x", encoding="utf-8")
    target = tmp_path / "notes.txt" / "r.xlsx"
    with pytest.raises(
        OutputError, match=r"cannot save .*r\.xlsx: a part of the path is a file, not a folder"
    ):
        _validate_to(tmp_path, target)


def test_cli_save_error_is_one_plain_line(tmp_path: Path) -> None:
    sheet = shutil.copy(SAMPLE / "carrier_routing.csv", tmp_path / "c.csv")
    (tmp_path / "notes.txt").write_text("x", encoding="utf-8")
    target = tmp_path / "notes.txt" / "r.xlsx"
    result = CliRunner().invoke(main, ["validate", str(sheet), "-o", str(target)])
    assert result.exit_code == 2, result.output + result.stderr
    line = one_error_line(result.stderr)
    assert line == f"Error: cannot save {target}: a part of the path is a file, not a folder"
    assert "unexpected" not in line and ".tmp" not in line


def sheet_rows(path: Path) -> list[list[str]]:
    book = openpyxl.load_workbook(path, read_only=True)
    try:
        return [
            ["" if v is None else str(v) for v in r] for r in book.worksheets[0].iter_rows(values_only=True)
        ]
    finally:
        book.close()


def test_failed_rows_file_carries_reason_and_input_row(tmp_path: Path) -> None:
    """Each failed row keeps its cells as read, then says why it failed and which input row it was."""
    sheet = shutil.copy(SAMPLE / "carrier_routing.csv", tmp_path / "c.csv")
    summary = validate_file(ValidateConfig(InputOptions(path=sheet)))
    assert summary.failed_path is not None
    results = {r["import_row"]: r for r in read_results(summary.results_path)}
    rows = sheet_rows(summary.failed_path)
    header = rows[0]
    with sheet.open(encoding="utf-8-sig", newline="") as fh:
        source = list(csv.reader(fh, delimiter=";"))
    assert header == [*source[0], "import_reason", "import_row"]
    assert len(rows) - 1 == summary.counts[Status.FAILED]
    for row in rows[1:]:
        number = row[-1]
        assert results[number]["import_status"] == "failed"
        assert row[-2] == results[number]["import_reason"] and row[-2]
        assert row[: len(source[0])] == source[int(number) - 1] + [""] * (
            len(source[0]) - len(source[int(number) - 1])
        )

    # Imported again as it is, the file fails the same rows; its own columns are replaced, not repeated.
    again = validate_file(
        ValidateConfig(InputOptions(path=summary.failed_path), output=tmp_path / "again.xlsx")
    )
    assert again.failed_path is not None
    header_again = sheet_rows(again.failed_path)[0]
    assert header_again == header
    assert [h for h in sheet_rows(again.results_path)[0] if h == "import_reason"] == ["import_reason"]


STAMPED = re.compile(r"c\.(results|failed)\.\d{8}-\d{6}\.xlsx")


def test_validate_keeps_an_earlier_runs_outputs_and_force_overwrites(tmp_path: Path) -> None:
    sheet = shutil.copy(SAMPLE / "carrier_routing.csv", tmp_path / "c.csv")
    first = CliRunner().invoke(main, ["validate", str(sheet)])
    assert first.exit_code == 1, first.output + first.stderr
    kept = {p.name: p.read_bytes() for p in tmp_path.glob("c.*.xlsx")}
    assert sorted(kept) == ["c.failed.xlsx", "c.results.xlsx"]

    second = CliRunner().invoke(main, ["validate", str(sheet)])
    assert second.exit_code == 1, second.output + second.stderr
    assert {p.name: p.read_bytes() for p in tmp_path.glob("c.*.xlsx") if p.name in kept} == kept
    new = sorted(p.name for p in tmp_path.glob("c.*.xlsx") if p.name not in kept)
    assert len(new) == 2 and all(STAMPED.fullmatch(n) for n in new), new
    assert new[0].replace(".failed.", ".results.") == new[1]  # one stamp for both files
    assert f"results: {tmp_path / new[1]}" in second.output

    forced = CliRunner().invoke(main, ["validate", str(sheet), "--force"])
    assert forced.exit_code == 1, forced.output + forced.stderr
    assert f"results: {tmp_path / 'c.results.xlsx'}" in forced.output
    assert len(list(tmp_path.glob("c.*.xlsx"))) == 4

    out = tmp_path / "mine.xlsx"
    out.write_bytes(b"old")
    named = CliRunner().invoke(main, ["validate", str(sheet), "-o", str(out)])
    assert named.exit_code == 1 and out.read_bytes() != b"old"  # a path given with -o is overwritten


def test_run_again_keeps_the_first_results_and_both_find_the_journal(tmp_path: Path) -> None:
    inv = write_inventory(tmp_path / "inv.json", 4)
    sheet = write_sheet(tmp_path / "sheet.csv", 4)
    sandbox = create_sandbox(SandboxConfig(inventory=inv))
    config = config_for(sheet, tmp_path, output=None, journal=None)  # the default names beside the sheet
    transport = httpx.ASGITransport(app=sandbox.app)
    first = run_import(config, transport=transport)
    before = first.results_path.read_bytes()
    again = run_import(config, transport=transport)
    assert first.results_path == tmp_path / "sheet.results.xlsx"
    assert again.results_path != first.results_path
    assert re.fullmatch(r"sheet\.results\.\d{8}-\d{6}\.xlsx", again.results_path.name)
    assert first.results_path.read_bytes() == before
    journal = tmp_path / "sheet.journal.sqlite"
    assert locate_run(first.results_path)[:2] == (journal, 1)
    assert locate_run(again.results_path)[:2] == (journal, 2)


def test_rerun_results_keep_the_routing_ids_of_rows_done_earlier(tmp_path: Path) -> None:
    """Creates answer without an id (read back after the run): a re-run still shows every routing id."""
    inv = write_inventory(tmp_path / "inv.json", 6, existing={0: desired_record(1)})
    sheet = write_sheet(tmp_path / "sheet.csv", 6)
    sandbox = create_sandbox(SandboxConfig(inventory=inv))
    transport = httpx.ASGITransport(app=sandbox.app)
    config = config_for(sheet, tmp_path, output=None, journal=None)  # the default names beside the sheet
    first = run_import(config, transport=transport)
    again = run_import(config, transport=transport)
    # Planned against the live state (issue 9.8): still as asked, so unchanged.
    assert first.counts == {Status.SUCCEEDED: 6} and again.counts == {Status.UNCHANGED: 6}
    routed = {str(r["did_id"]): str(r["id"]) for r in sandbox.state_snapshot()["routing"]}
    for summary in (first, again):
        rows = read_results(summary.results_path)
        assert {r["import_did_id"]: r["import_routing_id"] for r in rows} == routed
