"""Every file of the shared messy-spreadsheet corpus is read or refused in one line, never crashes us.

The corpus (../shared/corpus/peer, described in its MANIFEST.tsv) holds real files that broke other
readers: encodings, ragged rows, zip and XML oddities, files that make calamine abort the process.
Files whose outcome we know are pinned below, so a regression in either direction fails.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from importer.errors import InputError
from importer.model import RawTable
from importer.read.table import read_table

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "peer"
if not CORPUS.is_dir():  # the repo checked out elsewhere: fall back to the workspace copy
    CORPUS = Path("/work/shared/corpus/peer")
MANIFEST = CORPUS / "MANIFEST.tsv"
SECONDS_PER_FILE = 30


def _manifest() -> list[str]:
    if not MANIFEST.is_file():
        return []
    with MANIFEST.open(encoding="utf-8", newline="") as handle:
        return [row["path"] for row in csv.DictReader(handle, delimiter="\t")]


def _column(table: RawTable, position: int) -> list[str]:
    return [str(v) for v in table.frame[position]]


Check = Callable[[RawTable], bool]

MUST_READ: dict[str, Check] = {
    "csv-spectrum/comma_in_quotes.csv": lambda t: (
        _column(t, 4) == ["08123"] and _column(t, 3) == ["Anytown, WW"]
    ),
    "csv-spectrum/quotes_and_newlines.csv": lambda t: list(t.frame.index) == [2, 3],
    "csvkit/bad.csv": lambda t: len(t.row_problems) == 2 and t.frame.shape[1] == 3,
    "csvkit/bad_skip_lines.csv": lambda t: t.source.header_row == 4 and len(t.row_problems) == 2,
    "csvkit/mac_newlines.csv": lambda t: t.frame.shape == (2, 3),
    "csvkit/null_byte.csv": lambda t: t.frame.shape == (1, 3),
    "csvkit/test_utf16_big.csv": lambda t: t.source.encoding == "utf-16-be" and t.headers == ("a", "b", "c"),
    "csvkit/test_utf8_bom.csv": lambda t: t.source.encoding == "utf-8-sig" and t.headers[0] == "foo",
    "frictionless-py/table-with-accents.csv": lambda t: (
        t.source.encoding == "cp1252" and t.source.delimiter == ";" and t.frame.shape[0] > 600
    ),
    "frictionless-py/leading-zeros.csv": lambda t: _column(t, 0) == ["01", "002", "00003"],
    "frictionless-py/duplicate-headers.csv": lambda t: t.headers.count("id") >= 2,
    "frictionless-py/blank-headers.csv": lambda t: t.headers == ("id", "", "age"),
    "frictionless-py/blank-rows-multiple.csv": lambda t: t.frame.shape[0] == 2,
    "frictionless-py/without-rows.csv": lambda t: t.frame.shape == (0, 2),
    "frictionless-py/table.tsv": lambda t: t.source.delimiter == "\t",
    "frictionless-py/structure-errors.csv": lambda t: len(t.row_problems) == 1,
    "messytables/utf-16le_encoded.csv": lambda t: t.source.encoding == "utf-16-le" and t.frame.shape[0] > 300,
    "messytables/spanish_chars.csv": lambda t: t.source.encoding == "cp1252",
    "messytables/utf8bom.csv": lambda t: t.headers == ("kitten", "win") and t.frame.shape[0] == 0,
    "ExcelDataReader/ean.txt": lambda t: t.source.delimiter == "|",
    "CleverCSV/milk.csv": lambda t: t.source.delimiter == "\t",
    "calamine/any_sheets.xlsx": lambda t: t.source.sheet == "Visible",
    "calamine/strict_iso_paths.xlsx": lambda t: t.frame.shape == (75, 18),
    "calamine/issue_174.xlsx": lambda t: t.frame.shape == (1, 11) and _column(t, 0) == ["123"],
    "calamine/temperature-in-middle.xlsx": lambda t: (
        t.source.header_row == 4 and t.headers == ("label", "value")
    ),
    "calamine/date_1904.xlsx": lambda t: _column(t, 0) == ["2021-01-02", "255:10:10"],
    "csvkit/sheets.xlsx": lambda t: t.source.sheet == "data" and _column(t, 2)[0] == "40",
    "tablib/bad_dimensions.xlsx": lambda t: t.frame.shape == (3, 3),
    "openpyxl/contains_chartsheets.xlsx": lambda t: t.headers == ("x", "y"),
    "excelize/OverflowNumericCell.xlsx": lambda t: t.headers == ("8595602512225",),
    "ExcelDataReader/Test_git_issue_385_backslash.xlsx": lambda t: t.frame.shape == (9, 10),
    "ExcelDataReader/Test_Issue_7433_IllegalOleAutDate.xlsx": lambda t: (
        t.headers == ("3.10101195608231E+17",) and _column(t, 0)[0] == "B221055625"
    ),
    "ExcelDataReader/Test_Issue_11773_Exponential.xlsx": lambda t: _column(t, 0)[0] == "000099",
    "ExcelDataReader/Test_git_issue_14_InvalidOADate.xlsx": lambda t: t.headers == ("1000000000000",),
    "xlrd/ragged.xls": lambda t: t.source.format == "xls" and t.frame.shape[0] == 4,
    "ExcelDataReader/Test_git_issue_477_sst_wrong_count.xls": lambda t: t.source.format == "xls",
    "python-calamine/base.ods": lambda t: t.source.format == "ods" and t.headers[0] == "String",
    "messytables/ods_formats.ods": lambda t: t.headers[:2] == ("Date", "Time"),
}

MUST_REFUSE: dict[str, str] = {
    "csvkit/empty.csv": "no header row",
    "frictionless-py/empty.csv": "empty",
    "python-calamine/empty_file.xlsx": "empty",
    "frictionless-py/table.csv.zip": "zip archive",
    "xlrd/sample.zip": "zip archive",
    "openpyxl/null_archive.xlsx": "not an Excel workbook",
    "excelize/BadWorkbook.xlsx": "no sheets",
    "calamine/pass_protected.xlsx": "password-protected",
    "messytables/encrypted_no_password.xls": "password-protected",
    "calamine/issue_594_dos.ods": "cannot be read",
    "calamine/OOM_alloc3.xls": "cannot be read",
    "calamine/empty_sheet.xlsx": "no visible sheet with data",
    "ExcelDataReader/Test_git_issue_382_oom.xls": "could not be read safely",
    "ExcelDataReader/Test_Issue_12556_corrupt.xls": "cannot be read",
    "ExcelDataReader/Test_git_issue_368_header.xls": "cannot be read",
    "ExcelDataReader/as3xls_BIFF2.xls": "cannot be read",
    "calamine/too_small.xls": "not a delimited table",
}

FILES = _manifest()
pytestmark = pytest.mark.skipif(not FILES, reason=f"corpus manifest not found at {MANIFEST}")


def test_corpus_expectations_name_manifest_files() -> None:
    """A renamed corpus file must not silently drop its expectation."""
    assert set(MUST_READ) <= set(FILES)
    assert set(MUST_REFUSE) <= set(FILES)
    assert not set(MUST_READ) & set(MUST_REFUSE)


@pytest.mark.slow
@pytest.mark.timeout(SECONDS_PER_FILE + 30)
@pytest.mark.parametrize("name", FILES)
def test_corpus_file_read_or_refused_in_one_line(name: str) -> None:
    started = time.monotonic()
    try:
        table = read_table(CORPUS / name)
    except InputError as error:  # UnreadableFileError is an InputError
        message = str(error)
        assert "\n" not in message and "\r" not in message
        assert 10 < len(message) <= 300, message
        assert name not in MUST_READ, f"{name} must be read, got: {message}"
        if name in MUST_REFUSE:
            assert MUST_REFUSE[name] in message
    else:
        assert name not in MUST_REFUSE, f"{name} must be refused, got a {table.frame.shape} table"
        rows, width = table.frame.shape
        assert width == len(table.headers) >= 1
        assert list(table.frame.columns) == list(range(width))
        assert table.frame.index.is_monotonic_increasing
        assert rows == 0 or int(table.frame.index[0]) > table.source.header_row
        assert all(isinstance(v, str) for v in table.frame.to_numpy().ravel())
        assert set(table.row_problems) <= set(table.frame.index)
        assert len(table.source.sha256) == 64
        if name in MUST_READ:
            assert MUST_READ[name](table), f"{name}: unexpected {table.source} {table.headers[:5]}"
    assert time.monotonic() - started < SECONDS_PER_FILE
