"""Issue 9, the reading side, end to end: what the user sees of how their sheet was read.

Real files written here (CSV bytes in legacy encodings, XLSX with hidden rows, merged and
error cells via openpyxl), read by the real pipeline and CLI, results read back with openpyxl.
"""

from __future__ import annotations

from pathlib import Path

import openpyxl
import pytest
from click.testing import CliRunner

from importer.cli import main
from importer.pipeline import InputOptions, ValidateConfig, validate_file

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
