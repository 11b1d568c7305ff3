"""Hostile input: fuzzed CSV/XLSX files, zip and XML bombs, and a file over the size limit.

The property under test: ``read_table`` + ``validate_table`` either succeed, and then every
non-blank input row is accounted for (valid, or with at least one issue), or they raise
``InputError`` (``UnreadableFileError`` is one) with a one-line message. Never another
exception, never a hang. Hypothesis runs derandomized so CI sees the same examples every time.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import io
import math
import os
import re
import signal
import struct
import subprocess
import sys
import textwrap
import time
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import openpyxl
import pytest
import xlsxwriter
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from importer.cli import main
from importer.errors import InputError
from importer.model import RawTable
from importer.read.sniff import HEAD_BYTES, MAX_FILE_BYTES, MAX_TEXT_BYTES
from importer.read.table import read_table
from importer.validate.rules import validate_table

pytestmark = pytest.mark.slow  # fuzz: hypothesis over hostile files, bombs in capped children

REPO = Path(__file__).resolve().parent.parent
HEADER = ["DID", "Inbound Mode", "Outbound Mode", "Inbound Bot ID", "Status"]
EXAMPLE_SECONDS = 15
"""A hard per-example deadline (SIGALRM): a hang fails the example instead of the whole run."""

FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=dt.timedelta(seconds=EXAMPLE_SECONDS),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


class ExampleHung(Exception):
    """An example ran past EXAMPLE_SECONDS."""


@contextlib.contextmanager
def hard_deadline(seconds: float = EXAMPLE_SECONDS) -> Iterator[None]:
    """Interrupt the block with ExampleHung when it runs longer than ``seconds``."""

    def expire(signum: int, frame: FrameType | None) -> None:
        raise ExampleHung(f"example ran longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def assert_one_line(message: str) -> None:
    assert message.strip(), "an error message must say something"
    assert "\n" not in message and "\r" not in message, repr(message)
    assert "Traceback" not in message


def read_and_validate(path: Path) -> RawTable | None:
    """Run the property on one file; return the table when it was read, None when refused."""
    with hard_deadline():
        try:
            table = read_table(path)
        except InputError as error:
            assert_one_line(str(error))
            return None
        assert all(type(h) is str for h in table.headers)
        index = table.frame.index.tolist()
        assert index == sorted(set(index)), "rows must be unique Excel row numbers in order"
        assert all(r > table.source.header_row for r in index)
        assert all(type(v) is str for column in table.frame.columns for v in table.frame[column].tolist())
        try:
            report = validate_table(table)
        except InputError as error:
            assert_one_line(str(error))
            return table
        valid = {row.row for row in report.valid}
        failed = report.failed_rows
        assert not valid & failed, "a row cannot be both valid and failed"
        assert valid | failed == set(index), "every row read must be valid or explained"
        assert all(issue.message for issue in report.issues)
    return table


# --- random bytes -----------------------------------------------------------------------------------------

SUFFIXES = [".csv", ".xlsx", ".xls", ".xlsm", ".tsv", ".txt", ".ods"]
PREFIXES = [
    b"",
    b"PK\x03\x04",
    b"PK\x05\x06",
    b"\x09\x00",
    b"\xef\xbb\xbf",
    b"\xff\xfe",
    b"DID,Inbound Mode\r\n",
]


@settings(FUZZ, max_examples=150)
@given(
    suffix=st.sampled_from(SUFFIXES),
    prefix=st.sampled_from(PREFIXES),
    body=st.binary(max_size=3000),
)
def test_read_table_random_bytes_read_or_refused(
    tmp_path: Path, suffix: str, prefix: bytes, body: bytes
) -> None:
    path = tmp_path / f"input{suffix}"
    path.write_bytes(prefix + body)
    read_and_validate(path)


@settings(FUZZ, max_examples=6)
@given(body=st.binary(min_size=0, max_size=4000), suffix=st.sampled_from([".xls", ".xlsx", ".csv"]))
def test_read_table_random_ole_containers_refused_by_the_child(
    tmp_path: Path, body: bytes, suffix: str
) -> None:
    """OLE magic sends the file to the guarded child process; garbage must come back as a refusal."""
    path = tmp_path / f"input{suffix}"
    path.write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + body)
    assert read_and_validate(path) is None


# --- CSV dialects and encodings ---------------------------------------------------------------------------

# Letters, digits, the delimiters and quote, line breaks, controls (no NUL: it is tested as bytes
# above, and NUL-heavy text is rightly taken for UTF-16) and characters outside cp1252.
CELL_ALPHABET = st.sampled_from(
    list("abcXYZ019+-.=@ ")
    + list(",;\t|\"'\r\n")
    + ["\x01", "\x0b", "\x1f", "\x7f", "é", "€", "ß", "中", "😀"]
)
CELL = st.one_of(
    st.text(CELL_ALPHABET, max_size=12),
    st.sampled_from(["+918012345678", "918012345678", "08012345678", "1", "2", "3", "4", "mobile", "93", ""]),
    st.sampled_from(["=1+1", "@SUM(A1)", "-5", "1e5", "9.18012345678E+11", "  ", "\u00a0"]),
)


@st.composite
def csv_files(draw: st.DrawFn) -> tuple[bytes, str, list[list[str]]]:
    """A CSV with the canonical header: (file bytes, encoding, the rows written, header first)."""
    delimiter = draw(st.sampled_from([",", ";", "\t", "|"]))
    quoting = draw(st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL, csv.QUOTE_NONNUMERIC]))
    terminator = draw(st.sampled_from(["\r\n", "\n", "\r"]))
    if terminator != "\r\n":
        # QUOTE_MINIMAL quotes only the characters of the terminator: with a bare CR (or LF),
        # a cell holding the other one would be written unquoted and the file be ambiguous.
        quoting = csv.QUOTE_ALL
    encoding = draw(st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "cp1252"]))
    rows = draw(st.lists(st.lists(CELL, min_size=len(HEADER), max_size=len(HEADER)), max_size=25))
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, delimiter=delimiter, quoting=quoting, lineterminator=terminator)
    writer.writerows([HEADER, *rows])
    text = buffer.getvalue()
    if draw(st.booleans()):
        text = text[: -len(terminator)]  # no line break after the last record
    return text.encode(encoding, errors="replace"), encoding, [HEADER, *rows]


def _expected_text(cell: str, encoding: str) -> str:
    return cell.encode(encoding, errors="replace").decode(encoding)


@settings(FUZZ, max_examples=120)
@given(case=csv_files(), suffix=st.sampled_from([".csv", ".txt", ".tsv"]))
def test_read_table_csv_dialects_and_encodings_round_trip(
    tmp_path: Path, case: tuple[bytes, str, list[list[str]]], suffix: str
) -> None:
    data, encoding, rows = case
    path = tmp_path / f"input{suffix}"
    path.write_bytes(data)
    table = read_and_validate(path)
    non_ascii_utf8 = encoding == "cp1252" and not data.isascii() and _is_utf8(data)
    if table is None or non_ascii_utf8:
        # A refusal is fine only for text that is mostly control characters.
        if table is None:
            controls = sum(
                1 for ch in data.decode(encoding, "replace") if ch < " " and ch not in "\t\n\r\f\v"
            )
            assert controls > 0 or non_ascii_utf8
        return
    assert list(table.headers) == HEADER
    expected = [[_expected_text(c, encoding) for c in row] for row in rows[1:]]
    kept = [(number, row) for number, row in enumerate(expected, start=2) if "".join(row).strip()]
    assert table.frame.index.tolist() == [number for number, _ in kept]
    assert [list(r) for r in table.frame.itertuples(index=False)] == [row for _, row in kept]


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


# --- XLSX files with every kind of cell -------------------------------------------------------------------


class HugeText(str):
    """A cell of ``n`` characters near Excel's 32767 limit, with a short repr for Hypothesis' reports.

    Digits and a letter: an all-digit cell that long hits a known bug in validate.py (see
    test_validate_table_cell_of_thousands_of_digits_is_a_row_issue).
    """

    def __new__(cls, n: int) -> HugeText:
        return super().__new__(cls, "9" * (n - 1) + "x")

    def __repr__(self) -> str:
        return f"HugeText({len(self)})"


XLSX_VALUE = st.one_of(
    st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=20),
    st.lists(st.sampled_from([*"ab \t\n\r", "\x01", "\x1f", "_x0041_"]), max_size=8).map("".join),
    st.integers(min_value=-(2**53), max_value=2**53),
    st.sampled_from([918012345678, 10**15 + 1, 2**63, -(2**63)]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e308, 5e-324, -0.0, 1e-300, 9.18012345678e11]),
    st.booleans(),
    st.dates(min_value=dt.date(1900, 3, 1), max_value=dt.date(9999, 12, 31)),
    st.datetimes(min_value=dt.datetime(1900, 3, 1), max_value=dt.datetime(9999, 12, 31)),
    st.sampled_from(["=1+1", "=A1", "=SUM(A1:A3)", "=1/0", "=NA()", '=HYPERLINK("http://x","y")']),
    st.sampled_from(["#N/A", "#REF!", "#DIV/0!", "#VALUE!", "#NAME?", "#NUM!", "#NULL!"]),
    st.none(),
    st.integers(min_value=32000, max_value=32767).map(lambda n: HugeText(n)),
)
NUMBER_FORMATS = [
    "General",
    "0",
    "0.00",
    "@",
    "0.00E+00",
    "#,##0",
    "yyyy-mm-dd",
    "[h]:mm:ss",
    '"x"0;-0;"zero"',
]


@st.composite
def xlsx_sheets(draw: st.DrawFn) -> tuple[list[list[object]], list[str], list[tuple[int, int, int, int]]]:
    """Rows (header first), a number format per column, and merged ranges (r1, c1, r2, c2)."""
    width = len(HEADER) + draw(st.integers(0, 2))
    rows = draw(st.lists(st.lists(XLSX_VALUE, min_size=width, max_size=width), max_size=12))
    formats = draw(st.lists(st.sampled_from(NUMBER_FORMATS), min_size=width, max_size=width))
    merges = draw(
        st.lists(
            st.tuples(st.integers(1, 8), st.integers(0, width - 2), st.integers(0, 2), st.integers(1, 2)).map(
                lambda t: (t[0], t[1], t[0] + t[2], t[1] + t[3])
            ),
            max_size=2,
            unique_by=lambda t: (t[0], t[1]),
        )
    )
    header: list[object] = [
        *HEADER,
        *draw(st.lists(st.text(max_size=5), min_size=width - 5, max_size=width - 5)),
    ]
    return [header, *rows], formats, merges


def _write_with_xlsxwriter(
    path: Path, rows: list[list[object]], formats: list[str], merges: list[tuple[int, int, int, int]]
) -> None:
    with xlsxwriter.Workbook(str(path), {"nan_inf_to_errors": True, "strings_to_formulas": False}) as book:
        sheet = book.add_worksheet("DIDs")
        styles = [book.add_format({"num_format": f}) for f in formats]
        for r, row in enumerate(rows):
            for c, value in enumerate(row):
                style = styles[c]
                if isinstance(value, str) and value.startswith("="):
                    sheet.write_formula(r, c, value, style, "")
                elif isinstance(value, str) and value.startswith("#") and value.endswith(("!", "A", "?")):
                    sheet.write_formula(r, c, "=" + {"#N/A": "NA()"}.get(value, "1/0"), style, value)
                elif isinstance(value, dt.datetime | dt.date):
                    sheet.write_datetime(r, c, value, book.add_format({"num_format": "yyyy-mm-dd hh:mm"}))
                elif isinstance(value, bool):
                    sheet.write_boolean(r, c, value, style)
                elif isinstance(value, int) and abs(value) > 2**53:
                    sheet.write_string(r, c, str(value), style)
                elif value is None:
                    sheet.write_blank(r, c, None, style)
                else:
                    sheet.write(r, c, value, style)
        for r1, c1, r2, c2 in merges:
            with contextlib.suppress(xlsxwriter.exceptions.OverlappingRange):
                sheet.merge_range(r1, c1, r2, c2, "merged")


def _write_with_openpyxl(
    path: Path, rows: list[list[object]], formats: list[str], merges: list[tuple[int, int, int, int]]
) -> None:
    book = openpyxl.Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.title = "DIDs"
    for r, row in enumerate(rows, start=1):
        for c, value in enumerate(row, start=1):
            if isinstance(value, str):
                # openpyxl refuses control characters (Excel cannot store them raw); drop them here.
                value = re.sub(r"[\x00-\x08\x0b\x0c\x0e-\x1f]", "", value)
            if isinstance(value, float) and not math.isfinite(value):
                value = str(value)
            cell = sheet.cell(row=r, column=c, value=value)  # type: ignore[arg-type]
            cell.number_format = formats[c - 1]
    for r1, c1, r2, c2 in merges:
        with contextlib.suppress(ValueError):
            sheet.merge_cells(start_row=r1 + 1, start_column=c1 + 1, end_row=r2 + 1, end_column=c2 + 1)
    book.save(path)


def _surely_blank(value: object) -> bool:
    """A cell that reads as empty for certain (formulas without a cached value read as empty too)."""
    if value is None:
        return True
    if isinstance(value, str):
        return not value.strip() or value.startswith(("=", "#"))
    return False


@settings(FUZZ, max_examples=60)
@given(sheet=xlsx_sheets(), writer=st.sampled_from(["xlsxwriter", "openpyxl"]))
def test_read_table_xlsx_random_cells_read_or_refused(
    tmp_path: Path,
    sheet: tuple[list[list[object]], list[str], list[tuple[int, int, int, int]]],
    writer: str,
) -> None:
    rows, formats, merges = sheet
    path = tmp_path / "input.xlsx"
    write = _write_with_xlsxwriter if writer == "xlsxwriter" else _write_with_openpyxl
    write(path, rows, formats, merges)
    table = read_and_validate(path)
    assert table is not None, "a workbook written by a real library must be read"
    merged = {(r1 + 1, c) for r1, c1, r2, c2 in merges for c in range(c1, c2 + 1)}  # top rows of merges
    for number, row in enumerate(rows[1:], start=2):
        certain = any(not _surely_blank(v) for v in row) or any(
            (number - 1, c) in merged for c in range(len(row))
        )
        if certain:
            assert number in table.frame.index, f"non-blank row {number} was lost"


@pytest.mark.parametrize("column", ["Inbound Mode", "Inbound Bot ID"])
def test_validate_table_cell_of_thousands_of_digits_is_a_row_issue(tmp_path: Path, column: str) -> None:
    """A 5000-digit cell (a paste gone wrong) must fail its row, not end validation with ValueError."""
    path = tmp_path / "digits.csv"
    row = {"DID": "+918012345678", "Inbound Mode": "3", "Outbound Mode": "4", "Inbound Bot ID": "93"}
    row[column] = "9" * 5000
    path.write_text(",".join(row) + "\r\n" + ",".join(row.values()) + "\r\n", encoding="utf-8")
    report = validate_table(read_table(path))
    assert report.failed_rows == {2}


def _duration_overflow_xlsx(path: Path) -> Path:
    """Row 3 holds numbers calamine cannot turn into durations (it raises, or panics in Rust)."""
    with xlsxwriter.Workbook(str(path)) as book:
        sheet = book.add_worksheet("DIDs")
        duration = book.add_format({"num_format": "[h]:mm:ss"})
        sheet.write_row(0, 0, HEADER)
        sheet.write_row(1, 0, ["+918012345678", "1", "4", "", "active"])
        sheet.write_row(2, 0, ["+918012345679", "1", "4", "", "active"])
        sheet.write_number(2, 3, -1e20, duration)  # chrono panics: "TimeDelta::milliseconds out of bounds"
        sheet.write_number(2, 4, 1e9, duration)  # Python's timedelta overflows
        sheet.write_row(3, 0, ["+918012345670", "3", "4", "93", "active"])
    return path


def test_read_table_xlsx_unconvertible_cell_fails_its_row_only(tmp_path: Path) -> None:
    """Before: the whole workbook was refused ("cannot be read"); now only row 3 is unreadable."""
    table = read_table(_duration_overflow_xlsx(tmp_path / "durations.xlsx"))
    assert table.frame.index.tolist() == [2, 3, 4]
    assert table.frame.loc[2].tolist() == ["+918012345678", "1", "4", "", "active"]
    assert set(table.frame.loc[3].tolist()) == {"#UNREADABLE!"}
    assert table.frame.loc[4].tolist()[:4] == ["+918012345670", "3", "4", "93"]
    report = validate_table(table)
    assert report.failed_rows == {3}
    assert {row.row for row in report.valid} == {2, 4}


def test_cli_validate_rust_panic_stays_off_stderr(tmp_path: Path) -> None:
    """A panic inside calamine prints to fd 2 from Rust; the real CLI's stderr must stay clean."""
    path = _duration_overflow_xlsx(tmp_path / "durations.xlsx")
    env = {**os.environ, "PYTHONPATH": str(REPO), "RUST_BACKTRACE": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "importer", "validate", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert done.stderr == ""
    assert "rows read: 3" in done.stdout


SHEET_XML = "xl/worksheets/sheet1.xml"


def _small_xlsx(path: Path) -> Path:
    with xlsxwriter.Workbook(str(path)) as book:
        sheet = book.add_worksheet("DIDs")
        sheet.write_row(0, 0, HEADER)
        sheet.write_row(1, 0, ["+918012345678", "1", "4", "", "active"])
        sheet.write_row(2, 0, ["#N/A", "3", "4", "93", "inactive"])
        sheet.write_formula(3, 0, "=NA()", None, "#N/A")
    return path


@settings(FUZZ, max_examples=80)
@given(
    member=st.sampled_from(
        [
            SHEET_XML,
            "xl/workbook.xml",
            "xl/sharedStrings.xml",
            "xl/_rels/workbook.xml.rels",
            "[Content_Types].xml",
        ]
    ),
    start=st.floats(0, 1),
    length=st.integers(0, 40),
    replacement=st.one_of(
        st.binary(max_size=40), st.sampled_from([b"<", b"&", b'"', b"<!DOCTYPE x>", b"\x00", b"&#0;", b"]]>"])
    ),
)
def test_read_table_xlsx_corrupted_xml_read_or_refused(
    tmp_path: Path, member: str, start: float, length: int, replacement: bytes
) -> None:
    """Damage one XML part of a valid workbook (the zip stays valid) at a random place."""
    small = _small_xlsx(tmp_path / "small.xlsx")
    path = tmp_path / "input.xlsx"
    with zipfile.ZipFile(small) as old, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as new:
        for info in old.infolist():
            data = old.read(info)
            if info.filename == member:
                at = int(start * len(data))
                data = data[:at] + replacement + data[at + length :]
            new.writestr(info.filename, data)
    read_and_validate(path)


@settings(FUZZ, max_examples=40)
@given(cut=st.floats(0, 1), flips=st.lists(st.tuples(st.floats(0, 1), st.integers(1, 255)), max_size=4))
def test_read_table_xlsx_damaged_zip_read_or_refused(
    tmp_path: Path, cut: float, flips: list[tuple[float, int]]
) -> None:
    data = bytearray(_small_xlsx(tmp_path / "small.xlsx").read_bytes())
    for where, mask in flips:
        data[int(where * (len(data) - 1))] ^= mask
    path = tmp_path / "input.xlsx"
    path.write_bytes(bytes(data[: max(4, int(cut * len(data)))] if cut < 0.9 else data))
    read_and_validate(path)


# --- the CLI on fuzzed files ------------------------------------------------------------------------------


@settings(FUZZ, max_examples=25)
@given(
    content=st.one_of(csv_files().map(lambda case: case[0]), st.binary(max_size=500)),
    suffix=st.sampled_from([".csv", ".xlsx", ".xls"]),
)
def test_cli_validate_fuzzed_files_exit_cleanly(tmp_path: Path, content: bytes, suffix: str) -> None:
    path = tmp_path / f"input{suffix}"
    path.write_bytes(content)
    with hard_deadline():
        result = CliRunner().invoke(main, ["validate", str(path)], catch_exceptions=True)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code in (0, 1, 2), (result.exit_code, result.output, result.stderr)
    assert "Traceback" not in result.output + result.stderr
    if result.exit_code == 2:
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
        assert "unexpected" not in lines[0], lines[0]
    else:
        assert result.stderr == ""
        assert (tmp_path / "input.results.xlsx").is_file()


# --- bombs, in a child process with a memory cap ----------------------------------------------------------

CHILD_MEMORY = 1536 * 1024**2
CHILD_SECONDS = 30
_CHILD = textwrap.dedent(
    """
    import resource, sys
    resource.setrlimit(resource.RLIMIT_AS, ({memory}, {memory}))
    from pathlib import Path
    from importer.errors import InputError
    from importer.read.table import read_table
    try:
        table = read_table(Path(sys.argv[1]))
    except InputError as error:
        print("REFUSED", error)
    else:
        print("READ", table.row_count)
    """
).format(memory=CHILD_MEMORY)


def read_in_capped_child(path: Path) -> tuple[str, float]:
    """Run read_table on ``path`` in a child with RLIMIT_AS and a timeout; return (stdout, seconds)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(path)],
        capture_output=True,
        text=True,
        timeout=CHILD_SECONDS,
        env=env,
        check=False,
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 0, f"child died ({done.returncode}): {done.stderr[-500:]}"
    return done.stdout.strip(), elapsed


def _deflate_repeated(head: bytes, unit: bytes, repeats: int, tail: bytes) -> bytes:
    """Raw deflate of head + unit * repeats + tail, compressing ``unit`` only once.

    A full flush resets the compressor, so the compressed form of ``unit`` is self-contained
    and byte-aligned: repeating those bytes is a valid stream that inflates to ``repeats`` copies.
    """
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    start = compressor.compress(head) + compressor.flush(zlib.Z_FULL_FLUSH)
    block = compressor.compress(unit) + compressor.flush(zlib.Z_FULL_FLUSH)
    end = compressor.compress(tail) + compressor.flush(zlib.Z_FINISH)
    return start + block * repeats + end


def _write_raw_zip(path: Path, members: list[tuple[str, bytes, int, int]]) -> None:
    """Write a zip from (name, raw deflate data, crc32, declared size); zip64 sizes when needed."""
    body, central = bytearray(), bytearray()
    for name, data, crc, size in members:
        encoded = name.encode()
        big = size >= 0xFFFFFFFF
        extra = struct.pack("<HHQ", 1, 8, size) if big else b""
        shown = 0xFFFFFFFF if big else size
        version = 45 if big else 20
        offset = len(body)
        body += struct.pack(
            "<IHHHHHIIIHH",
            0x04034B50,
            version,
            0,
            8,
            0,
            0x21,
            crc,
            len(data),
            shown,
            len(encoded),
            len(extra),
        )
        body += encoded + extra + data
        central += struct.pack(
            "<IHHHHHHIIIHHHHHII",
            0x02014B50,
            version,
            version,
            0,
            8,
            0,
            0x21,
            crc,
            len(data),
            shown,
            len(encoded),
            len(extra),
            0,
            0,
            0,
            0,
            offset,
        )
        central += encoded + extra
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(members), len(members), len(central), len(body), 0)
    path.write_bytes(bytes(body + central + end))


def _sheet_bomb(tmp_path: Path, unit: bytes, gigabytes: float, declared: str) -> Path:
    """A workbook whose sheet1.xml inflates to ``gigabytes`` GB of ``unit`` inside sheetData.

    ``declared``: "true" (the real size, zip64 when over 4 GiB), "small" (a lying size the
    first bytes match, CRC included) or "moderate" (a lie under the ratio and total limits).
    """
    small = _small_xlsx(tmp_path / "small.xlsx")
    members = []
    with zipfile.ZipFile(small) as old:
        for info in old.infolist():
            raw = old.read(info)
            if info.filename != SHEET_XML:
                compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
                members.append(
                    (info.filename, compressor.compress(raw) + compressor.flush(), zlib.crc32(raw), len(raw))
                )
                continue
            head = raw.split(b"<sheetData>")[0] + b"<sheetData>"
            tail = b"</sheetData></worksheet>"
            repeats = int(gigabytes * 1e9 // len(unit))
            data = _deflate_repeated(head, unit, repeats, tail)
            size = len(head) + len(unit) * repeats + len(tail)
            if declared == "true":
                # The CRC is checked only at the end of the stream; a reader that gets there has lost.
                members.append((info.filename, data, 0, size))
            else:
                shown = len(raw) if declared == "small" else 100 * len(data) // 1  # 100:1, under every limit
                shown = min(shown, 64 * 1024**2)
                prefix = (head + unit * (shown // len(unit) + 1))[:shown]
                members.append((info.filename, data, zlib.crc32(prefix), shown))
    path = tmp_path / f"bomb-{declared}.xlsx"
    _write_raw_zip(path, members)
    return path


ROWS_UNIT = b'<row r="2"><c r="A2"><v>1</v></c><c r="B2" t="inlineStr"><is><t>x</t></is></c></row>' * 12000
SPACE_UNIT = b" " * 1024**2


@pytest.mark.parametrize(
    ("unit", "gigabytes", "declared"),
    [
        (ROWS_UNIT, 2.0, "true"),
        (SPACE_UNIT, 6.0, "true"),
        (ROWS_UNIT, 2.0, "small"),
        (ROWS_UNIT, 2.0, "moderate"),
        (SPACE_UNIT, 6.0, "small"),
    ],
    ids=["rows-2GB", "spaces-6GB-zip64", "rows-lying-small", "rows-lying-moderate", "spaces-lying-small"],
)
def test_read_table_decompression_bomb_refused_in_bounded_memory(
    tmp_path: Path, unit: bytes, gigabytes: float, declared: str
) -> None:
    path = _sheet_bomb(tmp_path, unit, gigabytes, declared)
    assert path.stat().st_size < 40 * 1024**2
    out, seconds = read_in_capped_child(path)
    assert out.startswith("REFUSED "), out
    assert_one_line(out)
    assert seconds < CHILD_SECONDS


def _laughs(depth: int = 9) -> bytes:
    entities = b'<!ENTITY lol "lol">' + b"".join(
        b'<!ENTITY lol%d "%s">' % (i, (b"&lol%d;" % (i - 1) if i > 1 else b"&lol;") * 10)
        for i in range(1, depth + 1)
    )
    return b"<!DOCTYPE lolz [" + entities + b"]>"


_PADDINGS = {
    "none": b"",
    "spaces": b" " * 20_000,
    "comment": b"<!--" + b"x" * 20_000 + b"-->",
    "pi": b"<?pi " + b"y" * 20_000 + b"?>",
}


@pytest.mark.parametrize(
    ("member", "padding", "encoding"),
    [
        ("xl/workbook.xml", "none", "utf-8"),
        ("xl/workbook.xml", "comment", "utf-16"),
        (SHEET_XML, "none", "utf-8"),
        (SHEET_XML, "spaces", "utf-8"),
        (SHEET_XML, "comment", "utf-16"),
        (SHEET_XML, "pi", "utf-8"),
        ("xl/sharedStrings.xml", "spaces", "utf-16"),
        ("xl/sharedStrings.xml", "comment", "utf-8"),
        ("[Content_Types].xml", "pi", "utf-8"),
        ("xl/_rels/workbook.xml.rels", "spaces", "utf-8"),
    ],
)
def test_read_table_xml_entity_bomb_refused(tmp_path: Path, member: str, padding: str, encoding: str) -> None:
    """Billion laughs in a workbook part, also after a long prolog that hides it from a short peek."""
    small = _small_xlsx(tmp_path / "small.xlsx")
    path = tmp_path / "laughs.xlsx"
    with zipfile.ZipFile(small) as old, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as new:
        for info in old.infolist():
            data = old.read(info)
            if info.filename == member:
                body = re.sub(rb"^<\?xml[^>]*\?>\s*", b"", data)
                body = body.replace(b"<v>0</v>", b"<v>0</v>").replace(b">DID<", b">&lol9;<", 1)
                text = (
                    f'<?xml version="1.0" encoding="{encoding.upper()}"?>'.encode()
                    + _PADDINGS[padding]
                    + _laughs()
                    + body
                )
                data = text.decode("utf-8").encode(encoding) if encoding != "utf-8" else text
            new.writestr(info.filename, data)
    out, seconds = read_in_capped_child(path)
    assert out.startswith("REFUSED "), out
    assert "entity" in out or "DTD" in out, out
    assert seconds < 10


# --- size limits ------------------------------------------------------------------------------------------


class _ReadSpy:
    """Count the bytes read through every ``Path.open`` handle: proof of what the reader looked at."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.bytes_read = 0
        real_open = Path.open
        spy = self

        class Counted(io.BufferedReader):
            def read(self, size: int | None = -1, /) -> bytes:
                data = super().read(size)
                spy.bytes_read += len(data)
                return data

            def readinto(self, buffer: Any, /) -> int:
                count = super().readinto(buffer)
                spy.bytes_read += count or 0
                return count

        def open_counted(path: Path, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
            if mode == "rb":
                return Counted(io.FileIO(path, "rb"))
            return real_open(path, mode, *args, **kwargs)

        monkeypatch.setattr(Path, "open", open_counted)


@pytest.mark.parametrize("suffix", [".csv", ".xlsx"])
def test_read_table_file_over_one_gib_refused_without_reading(
    tmp_path: Path, suffix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sparse file one byte over the limit is refused from its size alone: no byte of it is read."""
    path = tmp_path / f"huge{suffix}"
    with path.open("wb") as handle:
        handle.truncate(MAX_FILE_BYTES + 1)
    spy = _ReadSpy(monkeypatch)
    with pytest.raises(InputError, match="larger than 1 GiB") as caught:
        read_table(path)
    assert spy.bytes_read == 0
    assert_one_line(str(caught.value))


def test_read_table_large_csv_within_limit_is_read_in_bounded_memory(tmp_path: Path) -> None:
    """A 200 MB sparse CSV (NUL bytes, a real header) is under the limit: read, then refused as binary.

    Run in a capped child: reading it must not need more than a few times its size.
    """
    path = tmp_path / "big.csv"
    with path.open("wb") as handle:
        handle.write(b"DID,Inbound Mode,Outbound Mode\r\n+918012345678,1,4\r\n")
        handle.truncate(200 * 1024**2)
    out, seconds = read_in_capped_child(path)
    assert out.startswith("REFUSED ") and "binary" in out, out
    assert seconds < CHILD_SECONDS


def test_read_table_text_over_its_limit_refused_without_reading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Delimited text has a lower limit than workbooks: refused after sniffing its first bytes, unread."""
    path = tmp_path / "huge.csv"
    with path.open("wb") as handle:
        handle.write(b"DID,Inbound Mode,Outbound Mode\r\n")
        handle.truncate(MAX_TEXT_BYTES + 1)
    spy = _ReadSpy(monkeypatch)
    with pytest.raises(InputError, match="MiB of text; split it") as caught:
        read_table(path)
    assert 0 < spy.bytes_read <= HEAD_BYTES  # the magic-number sniff, nothing more
    assert_one_line(str(caught.value))


def test_read_table_file_at_the_limit_boundary(tmp_path: Path) -> None:
    """Exactly MAX_FILE_BYTES is not refused for its size (the limit is 'larger than')."""
    path = tmp_path / "edge.xlsx"
    with path.open("wb") as handle:
        handle.write(b"not a workbook")
        handle.truncate(MAX_FILE_BYTES)
    # Content is then judged: NUL-filled .xlsx is not a workbook; in a capped child so the 1 GiB
    # read cannot take the test process with it.
    out, _seconds = read_in_capped_child(path)
    assert out.startswith("REFUSED ") and "larger than 1 GiB" not in out, out
