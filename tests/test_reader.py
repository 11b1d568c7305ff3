"""The spreadsheet reader on real files written into tmp_path: CSV, XLSX and ODS, good and hostile."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import resource
import time
import zipfile
from pathlib import Path
from typing import Any

import openpyxl
import pytest
from helpers import hidden_book

from importer.display import render
from importer.errors import InputError, UnreadableFileError
from importer.read.isolated import read_workbook_isolated
from importer.read.table import read_table
from importer.read.workbook import float_text

HEADER = ["DID Number", "Inbound Mode", "Outbound Mode", "Inbound Bot ID"]
ROWS = [["+918012345678", "3", "4", "93"], ["0801234567", "mobile", "only-answer", ""]]


def _csv_text(rows: list[list[str]], delimiter: str = ",") -> str:
    return "".join(delimiter.join(row) + "\r\n" for row in rows)


def _cells(table_frame: object) -> list[list[str]]:
    return [list(row) for row in table_frame.itertuples(index=False)]  # type: ignore[attr-defined]


def _assert_one_line(error: BaseException) -> None:
    text = str(error)
    assert "\n" not in text and "\r" not in text
    assert 10 < len(text) < 300


def _write_xlsx(path: Path, sheets: list[tuple[str, list[list[object]], str]]) -> Path:
    """Write a workbook with openpyxl: (title, rows, sheet_state) per sheet."""
    book = openpyxl.Workbook()
    book.remove(book.active)
    for title, rows, state in sheets:
        sheet = book.create_sheet(title)
        sheet.sheet_state = state
        for row in rows:
            sheet.append(row)
    book.save(path)
    return path


@pytest.mark.parametrize(
    ("encoding", "bom", "recorded"),
    [
        ("utf-8", b"", "utf-8"),
        ("utf-8", b"\xef\xbb\xbf", "utf-8-sig"),
        ("utf-16-le", b"\xff\xfe", "utf-16-le"),
        ("utf-16-be", b"\xfe\xff", "utf-16-be"),
        ("cp1252", b"", "cp1252"),
    ],
)
def test_read_table_csv_encodings(tmp_path: Path, encoding: str, bom: bytes, recorded: str) -> None:
    rows = [[*HEADER, "Notes"], [*ROWS[0], "Café €5"], [*ROWS[1], "Señor"]]
    path = tmp_path / "dids.csv"
    path.write_bytes(bom + _csv_text(rows).encode(encoding))
    table = read_table(path)
    assert table.source.encoding == recorded
    assert table.headers == tuple(rows[0])
    assert _cells(table.frame) == rows[1:]
    assert list(table.frame.index) == [2, 3]


def test_read_table_csv_latin1_bytes_cp1252_leaves_undefined(tmp_path: Path) -> None:
    """Bytes cp1252 does not define (0x81) decode as latin-1 rather than failing the file."""
    path = tmp_path / "old.csv"
    path.write_bytes(b"DID Number;Inbound Mode;Outbound Mode\r\n918012345678;3;caf\xe9\x81\r\n")
    table = read_table(path)
    assert table.source.encoding == "cp1252"
    assert table.source.delimiter == ";"
    assert _cells(table.frame) == [["918012345678", "3", "café\x81"]]


@pytest.mark.parametrize(
    ("delimiter", "suffix"), [(",", ".csv"), (";", ".csv"), ("\t", ".tsv"), ("|", ".txt")]
)
def test_read_table_csv_delimiters(tmp_path: Path, delimiter: str, suffix: str) -> None:
    path = tmp_path / f"dids{suffix}"
    rows = [HEADER, ["918012345678", "3", "4", "93,5" if delimiter != "," else "93"]]
    path.write_text(_csv_text(rows, delimiter), encoding="utf-8")
    table = read_table(path)
    assert table.source.delimiter == delimiter
    assert table.source.format == "csv"
    assert _cells(table.frame) == rows[1:]


@pytest.mark.parametrize(
    ("text", "index", "first_column"),
    [
        ('DID,Inbound Mode,Outbound Mode\n"9180\n12",3,4\n918099,2,2\n', [2, 3], ["9180\n12", "918099"]),
        ("DID,Inbound Mode,Outbound Mode\n\n918011,3,4\n,,\n \n918022,2,2\n", [3, 6], ["918011", "918022"]),
        ("\n\nDID,Inbound Mode,Outbound Mode\n918011,3,4\n", [4], ["918011"]),
        ('DID,Inbound Mode,Outbound Mode\r918011,"a\rb",4\r918022,2,2', [2, 3], ["918011", "918022"]),
    ],
    ids=["embedded-newline", "blank-lines", "leading-blank-lines", "cr-only"],
)
def test_read_table_csv_row_numbers_count_records(
    tmp_path: Path, text: str, index: list[int], first_column: list[str]
) -> None:
    """Rows are numbered as Excel shows them: by record, blank records counted but dropped."""
    path = tmp_path / "dids.csv"
    path.write_text(text, encoding="utf-8", newline="")
    table = read_table(path)
    assert list(table.frame.index) == index
    assert list(table.frame[0]) == first_column


def test_read_table_csv_ragged_rows_fail_only_their_row(tmp_path: Path) -> None:
    path = tmp_path / "ragged.csv"
    path.write_text(
        "DID,Inbound Mode,Outbound Mode\n"
        "918011,3,4\n"
        "918022,3\n"  # short
        "918033,3,4,oops\n"  # an extra value
        "918044,3,4,,\n"  # extra trailing empty fields are harmless
        "918055,3,4\n",
        encoding="utf-8",
    )
    table = read_table(path)
    assert set(table.row_problems) == {3, 4}
    assert "2 fields" in table.row_problems[3]
    assert "4 fields" in table.row_problems[4]
    assert list(table.frame.index) == [2, 3, 4, 5, 6]
    assert table.frame.shape == (5, 3)
    assert list(table.frame.loc[3]) == ["918022", "3", ""]


def test_read_table_csv_title_rows_above_header(tmp_path: Path) -> None:
    path = tmp_path / "report.csv"
    path.write_text(
        "Carrier X DID export,,\nGenerated 2024-01-31,,\n\nPhone Number,Inbound,Outbound\n918011,3,4\n",
        encoding="utf-8",
    )
    table = read_table(path)
    assert table.source.header_row == 4
    assert table.headers == ("Phone Number", "Inbound", "Outbound")
    assert list(table.frame.index) == [5]


def test_read_table_extra_headers_help_find_the_header(tmp_path: Path) -> None:
    path = tmp_path / "custom.csv"
    path.write_text("Export,,\nNumero,Modo Entrada,Modo Salida\n918011,3,4\n", encoding="utf-8")
    assert read_table(path).source.header_row == 1  # nothing names a field: the first row
    mapped = read_table(path, extra_headers={"Numero": "did_number", "Modo Entrada": "for_inbound_call"})
    assert mapped.source.header_row == 2
    assert list(mapped.frame.index) == [3]


def test_read_table_csv_keeps_text_verbatim(tmp_path: Path) -> None:
    path = tmp_path / "text.csv"
    path.write_text(
        "DID,DID ID,Inbound Mode,Outbound Mode\n+918012345678,00093, 3 ,9.18012E+11\n", encoding="utf-8"
    )
    table = read_table(path)
    assert _cells(table.frame) == [["+918012345678", "00093", " 3 ", "9.18012E+11"]]
    assert all(isinstance(v, str) for v in table.frame.to_numpy().ravel())
    assert table.frame.dtypes.tolist() == [object] * 4


def test_read_table_csv_nul_bytes_do_not_crash(tmp_path: Path) -> None:
    path = tmp_path / "nul.csv"
    path.write_bytes(b"DID,Inbound Mode,Outbound Mode\n9180\x0012,3,4\n")
    assert _cells(read_table(path).frame) == [["9180\x0012", "3", "4"]]


def test_read_table_headers_blank_duplicate_and_trailing_empty_columns(tmp_path: Path) -> None:
    path = tmp_path / "headers.csv"
    path.write_text("DID,,DID,Inbound Mode,,\n918011,x,918012,3,,\n918022,,,3,,\n", encoding="utf-8")
    table = read_table(path)
    assert table.headers == ("DID", "", "DID", "Inbound Mode")
    assert table.frame.shape == (2, 4)
    assert list(table.frame.columns) == [0, 1, 2, 3]


def test_read_table_source_records_sha256(tmp_path: Path) -> None:
    path = tmp_path / "dids.csv"
    path.write_text(_csv_text([HEADER, *ROWS]), encoding="utf-8")
    table = read_table(path)
    assert table.source.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert table.source.path == path


def _carrier_workbook(path: Path) -> Path:
    notes = [["How to use this file"], ["Fill the DIDs sheet"]]
    hidden = [["DID Number", "Inbound Mode", "Outbound Mode"], ["111", "1", "4"]]
    dids: list[list[object]] = [
        ["Carrier X: DID routing export"],
        [None],
        ["DID No", "DID ID", "Inbound Routing", "Outbound Routing", "Inbound Bot ID", "Rate", "Note"],
        [918012345678, 93.0, "WebSocket bot", "only-answer", 93, 12.5, "0080"],
        ["+918012345679", 812, 3, 4, "00093", 3.10101195608231e17, "9.18012E+11"],
        [None, None, None, None, None, None, None],
        [918012345680, 813.0, True, dt.date(2024, 1, 31), dt.datetime(2024, 1, 31, 10, 15), None, " x "],
    ]
    return _write_xlsx(
        path, [("Notes", notes, "visible"), ("Old", hidden, "hidden"), ("DIDs", dids, "visible")]
    )


def test_read_table_xlsx_picks_the_sheet_with_the_header(tmp_path: Path) -> None:
    table = read_table(_carrier_workbook(tmp_path / "carrier.xlsx"))
    assert table.source.sheet == "DIDs"
    assert table.source.format == "xlsx"
    assert table.source.header_row == 3
    assert table.headers[:3] == ("DID No", "DID ID", "Inbound Routing")
    assert list(table.frame.index) == [4, 5, 7]


def test_read_table_xlsx_cells_read_as_the_user_sees_them(tmp_path: Path) -> None:
    table = read_table(_carrier_workbook(tmp_path / "carrier.xlsx"))
    assert _cells(table.frame) == [
        ["918012345678", "93", "WebSocket bot", "only-answer", "93", "12.5", "0080"],
        ["+918012345679", "812", "3", "4", "00093", "3.10101195608231E+17", "9.18012E+11"],
        ["918012345680", "813", "TRUE", "2024-01-31", "2024-01-31 10:15:00", "", " x "],
    ]


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (918012345678.0, "918012345678"),
        (93.0, "93"),
        (-7.0, "-7"),
        (12.5, "12.5"),
        (0.1, "0.1"),
        (999999999999999.0, "999999999999999"),
        (3.10101195608231e17, "3.10101195608231E+17"),
        (1e15, "1E+15"),
        (1.5e-7, "1.5e-07"),
        (0.1 + 0.2, "0.3"),
        (45296.57291666666, "45296.5729166667"),
        (-1234.5678, "-1234.5678"),
    ],
)
def test_float_text_integral_digits_and_excel_scientific(value: float, text: str) -> None:
    assert float_text(value) == text


@pytest.mark.parametrize(
    ("sheet", "expected"), [("Old", "111"), ("Notes", "Fill the DIDs sheet"), ("dids", "918012345678")]
)
def test_read_table_xlsx_sheet_option_selects_by_name(tmp_path: Path, sheet: str, expected: str) -> None:
    """--sheet reads the named sheet, hidden or not; case is forgiven when unambiguous."""
    table = read_table(_carrier_workbook(tmp_path / "carrier.xlsx"), sheets=sheet)
    assert table.frame.iloc[0, 0] == expected


def test_read_table_xlsx_unknown_sheet_lists_the_sheets(tmp_path: Path) -> None:
    with pytest.raises(InputError) as caught:
        read_table(_carrier_workbook(tmp_path / "carrier.xlsx"), sheets="Routing")
    assert "'Notes', 'Old', 'DIDs'" in str(caught.value)
    _assert_one_line(caught.value)


def test_read_table_xlsx_without_matching_header_falls_back_to_first_sheet(tmp_path: Path) -> None:
    path = _write_xlsx(
        tmp_path / "plain.xlsx",
        [("Blank", [], "visible"), ("Data", [["a", "b"], [1, 2]], "visible"), ("More", [["c"]], "visible")],
    )
    table = read_table(path)
    assert table.source.sheet == "Data"
    assert table.headers == ("a", "b")
    assert _cells(table.frame) == [["1", "2"]]


def test_read_table_xlsx_data_not_at_a1(tmp_path: Path) -> None:
    book = openpyxl.Workbook()
    sheet = book.active
    sheet["C4"], sheet["D4"], sheet["E4"] = "DID", "Inbound Mode", "Outbound Mode"
    sheet["C5"], sheet["D5"], sheet["E5"] = "918011", 3, 4
    book.save(tmp_path / "offset.xlsx")
    table = read_table(tmp_path / "offset.xlsx")
    assert table.source.header_row == 4
    assert list(table.frame.index) == [5]
    assert _cells(table.frame) == [["918011", "3", "4"]]


def test_read_table_xlsx_error_cells_keep_their_text(tmp_path: Path) -> None:
    import xlsxwriter

    path = tmp_path / "errors.xlsx"
    book = xlsxwriter.Workbook(path)
    sheet = book.add_worksheet("DIDs")
    sheet.write_row(0, 0, ["DID", "Inbound Mode", "Outbound Mode"])
    sheet.write_formula(1, 0, "=NA()", None, "#N/A")
    sheet.write_row(1, 1, [3, 4])
    sheet.write_row(2, 0, ["918011", 3])
    sheet.write_formula(2, 2, "=1/0", None, "#DIV/0!")
    book.close()
    assert _cells(read_table(path).frame) == [["#N/A", "3", "4"], ["918011", "3", "#DIV/0!"]]


def _rewrite_member(source: Path, target: Path, member: str, transform: object) -> Path:
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as new:
        for info in old.infolist():
            data = old.read(info)
            if info.filename == member:
                data = transform(data)  # type: ignore[operator]
            new.writestr(info.filename, data)
    return target


def test_read_table_xlsx_huge_declared_dimension_reads_fast(tmp_path: Path) -> None:
    small = _write_xlsx(tmp_path / "small.xlsx", [("DIDs", [HEADER, ROWS[0]], "visible")])
    path = _rewrite_member(
        small,
        tmp_path / "huge_dim.xlsx",
        "xl/worksheets/sheet1.xml",
        lambda xml: re.sub(rb'<dimension ref="[^"]*"', b'<dimension ref="A1:XFD1048576"', xml),
    )
    with zipfile.ZipFile(path) as archive:
        assert b"A1:XFD1048576" in archive.read("xl/worksheets/sheet1.xml")
    before = _max_rss_mib()
    started = time.monotonic()
    table = read_table(path)
    # Sized by the claimed dimension, the grid would be 17 billion cells: no memory, or no end.
    assert _max_rss_mib() - before < 100
    assert time.monotonic() - started < 60, "the reader walked the claimed dimension"
    assert table.frame.shape == (1, 4)


_BILLION_LAUGHS = (
    b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
    b'<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">'
    b'<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>'
)


@pytest.mark.parametrize("member", ["xl/workbook.xml", "xl/worksheets/sheet1.xml"])
def test_read_table_xlsx_xml_entity_bomb_refused(tmp_path: Path, member: str) -> None:
    small = _write_xlsx(tmp_path / "small.xlsx", [("DIDs", [HEADER, ROWS[0]], "visible")])
    path = _rewrite_member(
        small,
        tmp_path / "bomb.xlsx",
        member,
        lambda xml: _BILLION_LAUGHS + re.sub(rb"^<\?xml[^>]*\?>", b"", xml),
    )
    with pytest.raises(UnreadableFileError, match="entity") as caught:
        read_table(path)
    _assert_one_line(caught.value)


def _max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.parametrize("kind", ["ratio", "members"])
def test_read_table_zip_bomb_refused_quickly(
    tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    small = _write_xlsx(tmp_path / "small.xlsx", [("DIDs", [HEADER, ROWS[0]], "visible")])
    path = tmp_path / "bomb.xlsx"
    with zipfile.ZipFile(small) as old, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as new:
        for info in old.infolist():
            new.writestr(info.filename, old.read(info))
        if kind == "ratio":
            new.writestr("xl/media/zeros.bin", b"\0" * (64 * 1024**2))
        else:
            for number in range(10_001):
                new.writestr(f"xl/junk/{number}.xml", b"")
    opened: list[str] = []
    real_open = zipfile.ZipFile.open

    def spy(archive: zipfile.ZipFile, member: str | zipfile.ZipInfo, *args: Any, **kwargs: Any) -> Any:
        opened.append(member if isinstance(member, str) else member.filename)
        return real_open(archive, member, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "open", spy)  # ZipFile.read opens through it too
    before = _max_rss_mib()
    with pytest.raises(UnreadableFileError, match=r"zip bomb|suspicious") as caught:
        read_table(path)
    # Refused from the archive's directory: the bomb's members were never decompressed.
    assert not [name for name in opened if name.startswith(("xl/media/", "xl/junk/"))], opened
    assert _max_rss_mib() - before < 100
    _assert_one_line(caught.value)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        (
            "locked.xlsx",
            b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\0" * 600 + "EncryptedPackage".encode("utf-16-le"),
            "password-protected",
        ),
        ("empty.xlsx", b"", "empty"),
        ("blank.csv", b"\r\n,,\r\n   \r\n", "no header row"),
        ("data.json", b'{"did": "918011"}', "unsupported file type"),
        ("notes.txt", b"just some words\nand more words\n", "not a delimited table"),
        ("page.xls", b"<html><body><table><tr><td>1</td></tr></table></body></html>", "HTML"),
        ("fake.xlsx", b"this is not a workbook at all", "not a .xlsx workbook"),
        ("binary.csv", b"\x00\x01\x02\x03" * 2000, "binary"),
    ],
)
def test_read_table_refuses_unusable_files_in_one_line(
    tmp_path: Path, name: str, content: bytes, message: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(InputError, match=message) as caught:
        read_table(path)
    _assert_one_line(caught.value)


def test_read_table_refuses_plain_zip_and_missing_file(tmp_path: Path) -> None:
    archive = tmp_path / "dids.zip"
    with zipfile.ZipFile(archive, "w") as new:
        new.writestr("dids.csv", "DID,Inbound Mode\n1,2\n")
    with pytest.raises(UnreadableFileError, match="not an Excel workbook"):
        read_table(archive)
    with pytest.raises(InputError, match="does not exist"):
        read_table(tmp_path / "missing.csv")


def test_read_table_xls_named_text_is_read_as_delimited(tmp_path: Path) -> None:
    """Old 'export to Excel' buttons write tab-separated text under an .xls name."""
    path = tmp_path / "export.xls"
    path.write_text(_csv_text([HEADER, *ROWS], "\t"), encoding="utf-8")
    table = read_table(path)
    assert table.source.format == "csv"
    assert table.source.delimiter == "\t"
    assert _cells(table.frame) == ROWS


_ODS_CONTENT = """<?xml version="1.0" encoding="UTF-8"?>
<office:document-content xmlns:office="urn:oasis:names:tc:opendocument:xmlns:office:1.0"
 xmlns:table="urn:oasis:names:tc:opendocument:xmlns:table:1.0"
 xmlns:text="urn:oasis:names:tc:opendocument:xmlns:text:1.0" office:version="1.2">
<office:body><office:spreadsheet>
<table:table table:name="Readme"><table:table-row><table:table-cell office:value-type="string">
<text:p>Notes only</text:p></table:table-cell></table:table-row></table:table>
<table:table table:name="DIDs">
<table:table-row>{header}</table:table-row>
<table:table-row>
<table:table-cell office:value-type="float" office:value="918012345678"><text:p>918012345678</text:p>
</table:table-cell>
<table:table-cell office:value-type="string"><text:p>3</text:p></table:table-cell>
<table:table-cell office:value-type="float" office:value="4"><text:p>4</text:p></table:table-cell>
</table:table-row>
</table:table></office:spreadsheet></office:body></office:document-content>"""

_ODS_MANIFEST = """<?xml version="1.0" encoding="UTF-8"?>
<manifest:manifest xmlns:manifest="urn:oasis:names:tc:opendocument:xmlns:manifest:1.0" manifest:version="1.2">
<manifest:file-entry manifest:full-path="/"
 manifest:media-type="application/vnd.oasis.opendocument.spreadsheet"/>
<manifest:file-entry manifest:full-path="content.xml" manifest:media-type="text/xml"/>
</manifest:manifest>"""


def _write_ods(path: Path) -> Path:
    header = "".join(
        f'<table:table-cell office:value-type="string"><text:p>{h}</text:p></table:table-cell>'
        for h in ("DID Number", "Inbound Mode", "Outbound Mode")
    )
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("mimetype", "application/vnd.oasis.opendocument.spreadsheet", zipfile.ZIP_STORED)
        # calamine wants no whitespace between ODS elements, as office suites write them.
        content = re.sub(r">\s+<", "><", _ODS_CONTENT.format(header=header))
        archive.writestr("content.xml", content, zipfile.ZIP_DEFLATED)
        archive.writestr("META-INF/manifest.xml", _ODS_MANIFEST, zipfile.ZIP_DEFLATED)
    return path


@pytest.mark.slow
def test_read_table_ods_read_in_a_child_process(tmp_path: Path) -> None:
    table = read_table(_write_ods(tmp_path / "dids.ods"))
    assert table.source.format == "ods"
    assert table.source.sheet == "DIDs"
    assert table.headers == ("DID Number", "Inbound Mode", "Outbound Mode")
    assert _cells(table.frame) == [["918012345678", "3", "4"]]
    assert list(table.frame.index) == [2]


@pytest.mark.slow
def test_read_table_ods_unknown_sheet_refused_from_the_child(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="'Readme', 'DIDs'") as caught:
        read_table(_write_ods(tmp_path / "dids.ods"), sheets="Nope")
    _assert_one_line(caught.value)


def test_read_workbook_isolated_timeout_is_a_clean_refusal(tmp_path: Path) -> None:
    path = _write_ods(tmp_path / "dids.ods")
    with pytest.raises(UnreadableFileError, match="could not be read safely") as caught:
        read_workbook_isolated(path, (), frozenset(), timeout=0.01)
    _assert_one_line(caught.value)


# --- legacy encodings ----------------------------------------------------------------------------

_LEGACY_SHEETS = {
    "greek": (
        ["Πελάτης", "Πόλη"],
        [
            ("Γεώργιος Παπαδόπουλος", "Αθήνα"),
            ("Μαρία Ιωάννου", "Θεσσαλονίκη"),
            ("Νίκος Κωνσταντίνου", "Πάτρα"),
            ("Ελένη Δημητρίου", "Ηράκλειο"),
            ("Άννα Ξυδάκη", "Ύδρα"),
            ("Όλγα Έλληνα", "Ίος"),
        ],
    ),
    "cyrillic": (
        ["Клиент", "Город"],
        [
            ("Иван Петров", "Москва"),
            ("Ольга Смирнова", "Санкт-Петербург"),
            ("Сергей Кузнецов", "Новосибирск"),
            ("Анна Попова", "Екатеринбург"),
        ],
    ),
    "turkish": (
        ["Müşteri", "Şehir"],
        [
            ("Ayşe Yılmaz", "İstanbul"),
            ("Mehmet Öztürk", "Ankara"),
            ("Gülşen Çelik", "İzmir"),
            ("Oğuz Doğan", "Şanlıurfa"),
        ],
    ),
    "western": (
        ["Client", "Ville"],
        [("Hélène Dupré", "Orléans"), ("François Lefèvre", "Besançon"), ("Zoë Müller", "Genève")],
    ),
}


def _legacy_rows(language: str) -> list[list[str]]:
    extra, people = _LEGACY_SHEETS[language]
    rows = [[*HEADER[:3], *extra]]
    rows += [[f"+3021055{i:05d}", "3", "4", name, city] for i, (name, city) in enumerate(people)]
    return rows


@pytest.mark.parametrize(
    ("language", "written", "recorded"),
    [
        ("greek", "cp1253", "cp1253"),
        ("greek", "iso-8859-7", "iso8859-7"),
        ("cyrillic", "cp1251", "cp1251"),
        ("turkish", "cp1254", "cp1254"),
        ("western", "cp1252", "cp1252"),
    ],
)
def test_read_table_csv_legacy_encoding_detected(
    tmp_path: Path, language: str, written: str, recorded: str
) -> None:
    """Greek, Cyrillic and Turkish exports read as their letters, not as cp1252 mojibake."""
    rows = _legacy_rows(language)
    path = tmp_path / f"{language}.csv"
    path.write_bytes(_csv_text(rows).encode(written))
    table = read_table(path)
    assert (table.source.encoding, table.source.encoding_chosen) == (recorded, "detected")
    assert table.headers == tuple(rows[0])
    assert _cells(table.frame) == rows[1:]  # the phone digits too, exactly


def test_read_table_csv_legacy_detection_sees_past_ascii_rows(tmp_path: Path) -> None:
    """Thousands of ASCII rows before the first name do not hide the encoding."""
    rows = _legacy_rows("cyrillic")
    filler = [[f"+7495{i:07d}", "3", "4", "", ""] for i in range(20_000)]
    path = tmp_path / "late.csv"
    path.write_bytes(_csv_text([rows[0], *filler, *rows[1:]]).encode("cp1251"))
    table = read_table(path)
    assert table.source.encoding == "cp1251"
    assert _cells(table.frame)[-4:] == rows[1:]
    assert _cells(table.frame)[0][0] == "+74950000000"


def test_read_table_csv_encoding_given_wins(tmp_path: Path) -> None:
    rows = _legacy_rows("greek")
    path = tmp_path / "greek.csv"
    path.write_bytes(_csv_text(rows).encode("cp1253"))
    table = read_table(path, encoding="cp1252")
    assert (table.source.encoding, table.source.encoding_chosen) == ("cp1252", "--encoding")
    assert table.frame.iloc[0, 3] == rows[1][3].encode("cp1253").decode("cp1252")
    assert table.frame.iloc[0, 0] == rows[1][0]


@pytest.mark.parametrize("name", ["klingon", "base64", "rot13", "DID\nNumber"])
def test_read_table_csv_encoding_unknown_is_one_line(tmp_path: Path, name: str) -> None:
    path = tmp_path / "dids.csv"
    path.write_text(_csv_text([HEADER, *ROWS]), encoding="utf-8")
    with pytest.raises(InputError, match="is not a known text encoding") as caught:
        read_table(path, encoding=name)
    _assert_one_line(caught.value)


def test_read_table_csv_encoding_given_that_does_not_fit_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "dids.csv"
    path.write_bytes(_csv_text(_legacy_rows("greek")).encode("cp1253"))
    with pytest.raises(UnreadableFileError, match=r"not valid utf-8 text .*check --encoding") as caught:
        read_table(path, encoding="utf-8")
    _assert_one_line(caught.value)


# --- what calamine does not say: hidden rows and columns, merged cells ---------------------------


def test_read_table_xlsx_hidden_rows_and_columns(tmp_path: Path) -> None:
    table = read_table(hidden_book(tmp_path / "hidden.xlsx"))
    assert table.hidden_rows == (5, 9, 12)
    assert table.hidden_columns == (3,)
    assert list(table.frame.index) == list(range(2, 14))  # hidden rows are still read


def test_read_table_xlsx_merged_cells_noted(tmp_path: Path) -> None:
    table = read_table(hidden_book(tmp_path / "merged.xlsx"))
    assert table.frame.loc[7, 2] == "" and table.frame.loc[6, 2] == "4"
    assert table.cell_notes == {
        (7, 2): "cell C7 is part of the merged range C6:C8; Excel keeps the value only in C6",
        (8, 2): "cell C8 is part of the merged range C6:C8; Excel keeps the value only in C6",
    }


def test_read_table_xlsx_marks_follow_an_offset_sheet(tmp_path: Path) -> None:
    """A table starting at column C and row 4: rows, columns and letters stay the sheet's."""
    book = openpyxl.Workbook()
    sheet = book.active
    sheet["C1"] = "Routing export"
    for r, row in enumerate([[*HEADER[:3], "Notes"], ["918011", 3, 4, "x"], ["918012", 3, None, "y"]], 4):
        for c, value in enumerate(row, 3):
            sheet.cell(r, c, value)
    sheet.row_dimensions[6].hidden = True
    sheet.row_dimensions[2].hidden = True  # above the header: not a table row
    sheet.column_dimensions["F"].hidden = True
    sheet.merge_cells("E5:E6")
    path = tmp_path / "offset.xlsx"
    book.save(path)
    table = read_table(path)
    assert (table.source.header_row, table.source.first_column) == (4, 2)
    assert table.hidden_rows == (6,) and table.hidden_columns == (3,)
    assert table.cell_notes == {
        (6, 2): "cell E6 is part of the merged range E5:E6; Excel keeps the value only in E5"
    }


def test_read_table_xlsx_plain_sheet_has_no_marks(tmp_path: Path) -> None:
    table = read_table(_write_xlsx(tmp_path / "plain.xlsx", [("DIDs", [HEADER, *ROWS], "visible")]))
    assert (table.hidden_rows, table.hidden_columns, dict(table.cell_notes)) == ((), (), {})


@pytest.mark.parametrize(
    ("text", "written"),
    [
        ("Müller GmbH Straße 5", "cp1252"),
        ("Éé été", "cp1252"),
        ("«Ça va?» – Ó", "cp1252"),
        ("Åsa Øberg Ærø", "cp1252"),
        ("Москва", "cp1251"),
        ("Ул. Ленина 5", "cp1251"),
        ("Łukasz Wójcik Łódź", "cp1250"),
        ("Αθήνα", "cp1253"),
    ],
)
def test_read_table_csv_one_line_of_legacy_text(tmp_path: Path, text: str, written: str) -> None:
    """With one name to go on, a reading full of impossible words (Ìîńęâŕ, t + Thai marks) loses."""
    path = tmp_path / "one.csv"
    path.write_bytes(_csv_text([[*HEADER[:3], "Name"], ["+918012345678", "3", "4", text]]).encode(written))
    table = read_table(path)
    assert table.source.encoding == written
    assert table.frame.iloc[0, 3] == text


def test_read_table_xlsx_marks_in_single_quoted_xml(tmp_path: Path) -> None:
    """XML may quote attributes with apostrophes; the marks are found all the same."""

    def requote(data: bytes) -> bytes:
        for attribute in (b"hidden", b"ref", b"r", b"min", b"max"):
            data = re.sub(rb"\b(" + attribute + rb')="([^"]*)"', rb"\1='\2'", data)
        return data

    source = hidden_book(tmp_path / "double.xlsx")
    path = _rewrite_member(source, tmp_path / "single.xlsx", "xl/worksheets/sheet1.xml", requote)
    assert b"hidden='1'" in zipfile.ZipFile(path).read("xl/worksheets/sheet1.xml")
    table = read_table(path)
    assert table.hidden_rows == (5, 9, 12) and table.hidden_columns == (3,)
    assert set(table.cell_notes) == {(7, 2), (8, 2)}


@pytest.mark.parametrize(
    ("code", "text", "shown"),
    [
        ("dd/mm/yyyy", "2024-01-05", "05/01/2024"),
        ("m/d/yyyy", "2024-01-05", "1/5/2024"),
        ("d-mmm-yy", "2024-01-05", "5-Jan-24"),
        ("dddd, mmmm d, yyyy", "2024-01-05", "Friday, January 5, 2024"),
        ("[$-409]mmm d, yyyy", "2024-01-05", "Jan 5, 2024"),
        ('"Date: "dd.mm.yyyy', "2024-01-05", "Date: 05.01.2024"),
        ("yyyy\\-mm\\-dd", "2021-01-02", "2021-01-02"),
        ("[Red]dd/mm/yy;@", "2024-01-05", "05/01/24"),
        ("yyyy-mm-dd h:mm:ss", "2024-01-31 10:15:00", "2024-01-31 10:15:00"),
        ("yyyy-mm-dd hh:mm:ss.000", "2024-01-05 13:45:00.123", "2024-01-05 13:45:00.123"),
        ("h:mm AM/PM", "2024-01-05 13:45:00", "1:45 PM"),
        ("h:mm:ss AM/PM", "09:30:00", "9:30:00 AM"),
        ("mm:ss", "2024-01-05 00:03:07", "03:07"),
        ("0%", "0.25", "25%"),
        ("0.00%", "0.1234", "12.34%"),
        ("0.0%", "1", "100.0%"),
        ("[h]:mm:ss", "255:10:10", None),  # elapsed time: calamine's text already reads so
        ("dd/mm/yyyy", "not a date", None),
        ("General", "0.25", None),
        ("0.00", "1.5", None),
        ("#,##0", "918012345678", None),
        ("@", "x", None),
    ],
)
def test_display_render_number_formats(code: str, text: str, shown: str | None) -> None:
    assert render(code, text) == shown


def test_read_table_xlsx_number_formats_leave_phone_digits_alone(tmp_path: Path) -> None:
    """A numeric DID column with a thousands format still reads as its exact digits; text cells as typed."""
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.append([*HEADER[:3], "Rate", "Due"])
    sheet.append([918012345678, 3, 4, "n/a", "n/a"])
    sheet.append([918012345679, 3, 4, 0.5, dt.date(2024, 1, 5)])
    for cell, code in (
        ("A2", "#,##0"),
        ("A3", "#,##0"),
        ("D3", "0%"),
        ("E2", "dd/mm/yyyy"),
        ("E3", "dd/mm/yyyy"),
    ):
        sheet[cell].number_format = code
    book.save(tmp_path / "formats.xlsx")
    assert _cells(read_table(tmp_path / "formats.xlsx").frame) == [
        ["918012345678", "3", "4", "n/a", "n/a"],
        ["918012345679", "3", "4", "50%", "05/01/2024"],
    ]
