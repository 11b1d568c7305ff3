"""Read a carrier's spreadsheet (CSV or workbook) into a RawTable: every cell as the text the user sees.

The format is told by content, not trusted from the name: a zip holding a workbook, an OLE container
(.xls or an encrypted workbook) or delimited text. Workbooks go to calamine: .xlsx/.xlsm in this
process after the zip has been checked for bombs, .xls/.xlsb/.ods in a child process with a memory
cap and a timeout, because some such files make calamine abort the whole process.
"""

from __future__ import annotations

import codecs
import csv
import dataclasses
import hashlib
import io
import itertools
import posixpath
import re
import zipfile
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

import numpy as np
import numpy.typing as npt
import pandas as pd
from defusedxml import DefusedXmlException
from defusedxml import ElementTree as SafeET

from importer import fields
from importer._isolate import (
    REFUSE_PASSWORD,
    SheetGrid,
    find_header,
    is_blank,
    read_workbook,
    read_workbook_isolated,
)
from importer.errors import ImporterError, InputError, UnreadableFileError
from importer.model import RawTable, SourceInfo

__all__ = ["read_table"]

Matrix = npt.NDArray[np.object_]

SUPPORTED = ".xlsx, .xlsm, .xls, .xlsb, .ods, or delimited text (.csv, .tsv, .txt)"
MAX_FILE_BYTES = 1024**3
MAX_TEXT_BYTES = 256 * 1024**2
"""Delimited text is held in memory as one string per cell (about 9x the file size): 256 MiB is
over two million typical routing rows, more than an XLSX sheet can hold, and stays within a few GB."""
MAX_UNZIPPED_BYTES = 512 * 1024**2
MAX_ZIP_MEMBERS = 10_000
MAX_RATIO = 200
"""Deflate ratio above which a large zip member is taken for a bomb; real sheets stay far below."""
RATIO_CHECK_BYTES = 1024**2
PROLOG_CHUNK = 64 * 1024
MAX_WORKBOOK_XML_BYTES = 32 * 1024**2
DELIMITERS = (",", ";", "\t", "|")
SNIFF_CHARS = 64 * 1024
SNIFF_RECORDS = 50

_OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")
_ENCRYPTED_STREAM = "EncryptedPackage".encode("utf-16-le")
_BIFF_STARTS = (b"\x09\x00", b"\x09\x02", b"\x09\x04", b"\x09\x08")
_TEXT_SUFFIXES = frozenset({".csv", ".tsv", ".txt", ".tab"})
_WORKBOOK_SUFFIXES = frozenset({".xlsx", ".xlsm", ".xls", ".xlsb", ".ods"})
# cp1252 leaves five bytes undefined; latin-1 maps them to the C1 controls of the same value.
_CP1252_HOLES = {0xDC00 + b: b for b in (0x81, 0x8D, 0x8F, 0x90, 0x9D)}
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32-le", "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32-be", "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig", "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16-le", "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16-be", "utf-16"),
)


def read_table(path: Path, *, sheet: str | None = None, extra_headers: Mapping[str, str] = {}) -> RawTable:
    """Read a spreadsheet into a RawTable, every cell as text, rows numbered as Excel numbers them.

    Args:
        path: A .csv/.tsv/.txt (delimited), .xlsx, .xlsm, .xls, .xlsb or .ods file.
        sheet: The workbook sheet to read; None picks the first visible sheet whose header
            row names the fields.
        extra_headers: Header text -> field name mapped by the user; helps find the header row.

    Returns:
        The table, its headers and how it was read.

    Raises:
        InputError: The file or the sheet cannot be used (one line saying what to do).
        UnreadableFileError: The file cannot be read as a spreadsheet.
    """
    path = Path(path)
    extra_keys = frozenset(fields.header_key(h) for h in extra_headers)
    try:
        return _read(path, sheet, extra_keys)
    except ImporterError:
        raise
    except (KeyboardInterrupt, SystemExit):
        raise
    except MemoryError:
        raise UnreadableFileError(
            f"{path.name} is too large to read in memory; split it into smaller files"
        ) from None
    except BaseException as error:  # PanicException from calamine is a BaseException
        detail = " ".join(str(error).split())[:120] or type(error).__name__
        raise UnreadableFileError(
            f"{path.name} cannot be read ({detail}); open it in Excel and save as .xlsx or .csv"
        ) from None


def _read(path: Path, sheet: str | None, extra_keys: frozenset[str]) -> RawTable:
    if not path.is_file():
        raise InputError(f"{path} does not exist or is not a file; check the path")
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise InputError(f"{path.name} is larger than 1 GiB; split it into smaller files")
        data = path.read_bytes()
    except OSError as error:
        raise InputError(f"cannot open {path.name}: {error.strerror or error}; check the file") from None
    digest = hashlib.sha256(data).hexdigest()
    suffix = path.suffix.lower()
    if not data:
        raise UnreadableFileError(f"{path.name} is empty (0 bytes); export the spreadsheet again")
    if data.startswith(_ZIP_MAGICS):
        kind = _check_zip(path)
        fmt = "xlsm" if kind == "xlsx" and suffix == ".xlsm" else kind
        if kind == "xlsx":
            grid = read_workbook(path, sheet, extra_keys)
            _restore_error_cells(path, grid)
        else:
            grid = read_workbook_isolated(path, sheet, extra_keys)
        return _grid_table(grid, SourceInfo(path, fmt, digest, sheet=grid.sheet, header_row=grid.header_row))
    is_ole = data.startswith(_OLE_MAGIC)
    if is_ole and _ENCRYPTED_STREAM in data:
        raise UnreadableFileError(f"{path.name}: {REFUSE_PASSWORD}")
    # An OLE container (.xls, or an .xls under another name), or a bare BIFF stream of Excel 2-5
    # that calamine may refuse: either way only in the guarded child.
    if is_ole or (suffix == ".xls" and data.startswith(_BIFF_STARTS)):
        grid = read_workbook_isolated(path, sheet, extra_keys)
        return _grid_table(
            grid, SourceInfo(path, "xls", digest, sheet=grid.sheet, header_row=grid.header_row)
        )
    if suffix in _TEXT_SUFFIXES or suffix in (".xls", ""):
        if size > MAX_TEXT_BYTES:
            raise InputError(
                f"{path.name} is larger than {MAX_TEXT_BYTES // 1024**2} MiB of text; "
                "split it into files of under a million rows"
            )
        return _read_text(path, data, digest, extra_keys, strict_table=suffix not in (".csv", ".tsv"))
    if suffix in _WORKBOOK_SUFFIXES:
        raise UnreadableFileError(
            f"{path.name} is not a {suffix} workbook (its content is not a spreadsheet); "
            "open it in Excel and save as .xlsx"
        )
    raise UnreadableFileError(f"{path.name}: unsupported file type {suffix!r}; use {SUPPORTED}")


def _check_zip(path: Path) -> str:
    """Vet a zip before any XML parser sees it; return 'xlsx', 'xlsb' or 'ods'."""
    name = path.name
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            if not infos:
                raise UnreadableFileError(f"{name} is an empty zip archive, not a workbook; export it again")
            if len(infos) > MAX_ZIP_MEMBERS:
                raise UnreadableFileError(
                    f"{name} holds {len(infos)} zip members; refusing a suspicious archive"
                )
            total = sum(i.file_size for i in infos)
            if total > MAX_UNZIPPED_BYTES:
                raise UnreadableFileError(
                    f"{name} would expand to {total // 1024**2} MiB when unzipped "
                    f"(limit {MAX_UNZIPPED_BYTES // 1024**2} MiB); split the data or save it as .csv"
                )
            for info in infos:
                if info.file_size > RATIO_CHECK_BYTES and info.file_size > MAX_RATIO * max(
                    info.compress_size, 1
                ):
                    raise UnreadableFileError(
                        f"{name} looks like a zip bomb ({info.filename} compressed "
                        f"{info.file_size // max(info.compress_size, 1)}:1); refusing to open it"
                    )
            members = {i.filename.replace("\\", "/").lower(): i for i in infos}
            mimetype = members.get("mimetype")
            if mimetype is not None:
                with archive.open(mimetype) as handle:
                    if handle.read(128).startswith(b"application/vnd.oasis.opendocument.spreadsheet"):
                        return "ods"
            if "[content_types].xml" not in members:
                raise UnreadableFileError(
                    f"{name} is a zip archive, not an Excel workbook (no [Content_Types].xml); "
                    f"unzip it, or use {SUPPORTED}"
                )
            workbook = members.get("xl/workbook.xml")
            if workbook is None:
                if "xl/workbook.bin" in members:
                    return "xlsb"
                raise UnreadableFileError(
                    f"{name} is not an Excel workbook (no xl/workbook.xml); "
                    "open it in Excel and save as .xlsx"
                )
            for info in infos:
                if info.filename.lower().endswith((".xml", ".rels", ".vml")):
                    with archive.open(info) as handle:
                        if _prolog_declares_dtd(handle):
                            raise _xml_bomb(name)
            with archive.open(workbook) as handle:
                text = handle.read(MAX_WORKBOOK_XML_BYTES)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError, ValueError) as error:
        detail = " ".join(str(error).split())[:100]
        raise UnreadableFileError(
            f"{name} is a damaged or unsupported zip ({detail}); open it in Excel and save as .xlsx"
        ) from None
    try:
        root = SafeET.fromstring(text, forbid_dtd=True)
    except DefusedXmlException:
        raise _xml_bomb(name) from None
    except SafeET.ParseError:
        raise UnreadableFileError(
            f"{name} has a damaged workbook.xml; open it in Excel and save as .xlsx"
        ) from None
    if not any(el.tag == "sheet" or el.tag.endswith("}sheet") for el in root.iter()):
        raise UnreadableFileError(f"{name} has no sheets; open it in Excel, add the data and save again")
    return "xlsx"


_ERROR_TAG = re.compile(rb'<(?:[\w.-]+:)?c\s[^>]*?\bt="e"[^>]*>')
_CELL_REF = re.compile(rb'\br="([A-Z]{1,3})([0-9]{1,7})"')
_VALUE = re.compile(rb"<(?:[\w.-]+:)?v>([^<]{1,32})</")
_SCAN_CHUNK = 1024**2


def _restore_error_cells(path: Path, grid: SheetGrid) -> None:
    """Put Excel's error text (#N/A, #REF!, ...) back into cells calamine reads as empty.

    The user sees "#N/A" in Excel; an empty cell instead would be reported as a missing
    value, which sends them looking for the wrong problem.
    """
    try:
        found = _error_cells(path, grid.sheet)
    except Exception:  # the sheet itself was read; a failure here only leaves those cells empty
        return
    count = len(grid.columns[0]) if grid.columns else 0
    for (row, column), text in found.items():
        i = row - grid.header_row - 1
        j = column - grid.first_column
        if 0 <= i < count and 0 <= j < len(grid.columns) and grid.columns[j][i] == "":
            grid.columns[j][i] = text


def _error_cells(path: Path, sheet: str) -> dict[tuple[int, int], str]:
    """Return {(Excel row, 0-based column): error text} of a worksheet's error cells."""
    with zipfile.ZipFile(path) as archive:
        members = {i.filename.replace("\\", "/").lower(): i for i in archive.infolist()}
        part = _sheet_part(archive, members, sheet)
        if part is None:
            return {}
        with archive.open(part) as handle:
            tail = b""
            while chunk := handle.read(_SCAN_CHUNK):
                if b't="e"' in tail + chunk:
                    break
                tail = chunk[-8:]
            else:
                return {}
        text = archive.read(part)
    found: dict[tuple[int, int], str] = {}
    for match in _ERROR_TAG.finditer(text):
        ref = _CELL_REF.search(match.group(0))
        value = _VALUE.match(text, match.end()) or _VALUE.search(text, match.end(), match.end() + 4096)
        if ref is None or value is None:
            continue
        column = 0
        for letter in ref.group(1):
            column = column * 26 + letter - 64
        found[(int(ref.group(2)), column - 1)] = value.group(1).decode("ascii", "replace")
    return found


def _sheet_part(
    archive: zipfile.ZipFile, members: Mapping[str, zipfile.ZipInfo], sheet: str
) -> zipfile.ZipInfo | None:
    """Find the zip member holding the worksheet named ``sheet``."""
    workbook = members.get("xl/workbook.xml")
    rels = members.get("xl/_rels/workbook.xml.rels")
    if workbook is None or rels is None:
        return None
    rid = None
    for element in SafeET.fromstring(archive.read(workbook), forbid_dtd=True).iter():
        if element.tag.rsplit("}", 1)[-1] == "sheet" and element.get("name") == sheet:
            rid = next((v for k, v in element.attrib.items() if k.endswith("}id")), None)
    if rid is None:
        return None
    for element in SafeET.fromstring(archive.read(rels), forbid_dtd=True).iter():
        if element.get("Id") == rid:
            target = (element.get("Target") or "").replace("\\", "/")
            full = target.lstrip("/") if target.startswith("/") else f"xl/{target}"
            return members.get(posixpath.normpath(full).lower())
    return None


def _prolog_declares_dtd(handle: IO[bytes]) -> bool:
    """Tell whether an XML part declares a DTD anywhere before its root element.

    The whole prolog is scanned, not a fixed-size head: a long comment, processing
    instruction or run of spaces before ``<!DOCTYPE`` is legal XML and would hide it from a peek.
    Memory stays at one chunk; scanning stops at the root element.
    """
    pending = b""
    closing: bytes | None = None  # the end marker of the comment or PI being skipped
    first = True
    while True:
        chunk = handle.read(PROLOG_CHUNK)
        if first:
            first = False
            for bom in (codecs.BOM_UTF8, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE):
                chunk = chunk.removeprefix(bom)
        data = pending + chunk.replace(b"\x00", b"")  # the NULs of UTF-16 XML would hide the markers
        at_end = not chunk
        pos = 0
        while True:
            if closing is not None:
                end = data.find(closing, pos)
                if end < 0:
                    # Keep a tail that may hold the start of the end marker.
                    pending = data[max(pos, len(data) - len(closing) + 1) :]
                    break
                pos, closing = end + len(closing), None
                continue
            while pos < len(data) and data[pos] in b" \t\r\n":
                pos += 1
            head = data[pos : pos + 4]
            if len(head) < 4 and not at_end:
                pending = data[pos:]
                break
            if head.startswith(b"<?"):
                pos, closing = pos + 2, b"?>"
            elif head.startswith(b"<!--"):
                pos, closing = pos + 4, b"-->"
            else:
                # Only a DOCTYPE may start with "<!" here; anything else ends the prolog.
                return head.startswith(b"<!")
        if at_end:
            return False


def _xml_bomb(name: str) -> UnreadableFileError:
    return UnreadableFileError(
        f"{name} contains XML DTD/entity declarations (a possible XML bomb); refusing to read it"
    )


def _grid_table(grid: SheetGrid, source: SourceInfo) -> RawTable:
    """Build the RawTable of a workbook sheet: drop blank rows, number rows as Excel does."""
    columns = grid.columns
    count = len(columns[0]) if columns else 0
    matrix: Matrix = np.empty((count, len(columns)), dtype=object)
    for j, column in enumerate(columns):
        matrix[:, j] = column
    first = grid.header_row + 1
    numbers: Sequence[int] = range(first, first + count)
    keep = [not is_blank(row) for row in zip(*columns, strict=True)] if columns else []
    if not all(keep):
        numbers = list(itertools.compress(numbers, keep))
        matrix = matrix[np.array(keep, dtype=bool)]
    headers, frame = _frame(grid.header, matrix, numbers)
    # --map "C=field" names columns by the sheet's letters, so keep where the grid starts.
    return RawTable(dataclasses.replace(source, first_column=grid.first_column), headers, frame)


def _frame(
    header: Sequence[str], matrix: Matrix, numbers: Sequence[int]
) -> tuple[tuple[str, ...], pd.DataFrame]:
    """Make the frame (columns 0..n-1, object dtype of str, index = Excel row numbers)."""
    width = len(header)
    # A trailing column with a blank header and no values is Excel's leftover formatting, not data.
    while width and not header[width - 1].strip() and is_blank(matrix[:, width - 1]):
        width -= 1
    index = pd.Index(np.asarray(numbers, dtype=np.int64))
    # One object block, no copy: the cells stay the Python str objects the parser made.
    frame = pd.DataFrame(matrix[:, :width], index=index, columns=range(width), dtype=object, copy=False)
    return tuple(header[:width]), frame


def _decode_plan(data: bytes) -> tuple[str, str, bytes]:
    """Choose how to decode text bytes: (encoding recorded, codec used, bytes to decode)."""
    for bom, label, codec in _BOMS:
        if data.startswith(bom):
            return label, codec, data
    head = data[:4096]
    if head.count(0) > len(head) // 4 and len(head) >= 4:
        # No BOM but NUL-heavy: UTF-16 text puts the NULs of ASCII on one side.
        even = head[0::2].count(0)
        odd = head[1::2].count(0)
        codec = "utf-16-le" if odd > even else "utf-16-be"
        try:
            data.decode(codec)
        except UnicodeDecodeError:
            return "binary", "", data
        return codec, codec, data
    if data.isascii():
        return "utf-8", "utf-8", data
    try:
        data.decode("utf-8")
        return "utf-8", "utf-8", data
    except UnicodeDecodeError:
        pass
    try:
        data.decode("cp1252")
        return "cp1252", "cp1252", data
    except UnicodeDecodeError:
        text = data.decode("cp1252", errors="surrogateescape").translate(_CP1252_HOLES)
        return "cp1252", "utf-8", text.encode("utf-8")


def _sniff_delimiter(sample: str, preferred: str, extra_keys: frozenset[str]) -> tuple[str, int]:
    """Pick the delimiter that names header fields, else splits the top rows most consistently.

    Returns:
        The delimiter and the usual number of fields per row with it (1 when nothing splits).
    """
    truncated = not sample.endswith(("\n", "\r"))
    order = (preferred, *(d for d in DELIMITERS if d != preferred))
    best: tuple[tuple[int, int, int], str, int] | None = None
    for rank, delimiter in enumerate(order):
        try:
            records = [r for r in csv.reader(io.StringIO(sample, newline=""), delimiter=delimiter) if r]
        except csv.Error:
            continue
        if truncated and len(records) > 1:
            records = records[:-1]
        records = [r for r in records if not is_blank(r)][:SNIFF_RECORDS]
        if not records:
            continue
        index, matches = find_header(records, extra_keys)
        widths = Counter(len(r) for r in records[max(index, 0) :])
        usual, often = widths.most_common(1)[0]
        split_rows = often if usual > 1 else 0
        key = (matches if matches >= 2 else 0, split_rows, -rank)
        if best is None or key > best[0]:
            best = (key, delimiter, usual)
    if best is None or best[0][:2] == (0, 0):
        return preferred, 1  # nothing splits: one column, or all blank, under the usual delimiter
    return best[1], best[2]


def _read_text(
    path: Path, data: bytes, digest: str, extra_keys: frozenset[str], *, strict_table: bool
) -> RawTable:
    """Read delimited text: detect encoding and delimiter, number records as Excel rows."""
    name = path.name
    encoding, codec, payload = _decode_plan(data)
    if encoding == "binary" or (not codec):
        raise UnreadableFileError(f"{name} is binary, not a text table; use {SUPPORTED}")
    head = payload[: SNIFF_CHARS * 4].decode(codec, errors="ignore")[:SNIFF_CHARS]
    controls = sum(1 for char in head if char < " " and char not in "\t\n\r\f\v")
    if controls > len(head) // 10:
        raise UnreadableFileError(f"{name} is binary, not a text table; use {SUPPORTED}")
    if strict_table and head.lstrip()[:1] == "<":
        raise UnreadableFileError(
            f"{name} is HTML/XML, not a spreadsheet; open it in Excel and save as .xlsx"
        )
    preferred = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
    delimiter, usual = _sniff_delimiter(head, preferred, extra_keys)
    if usual < 2 and strict_table:
        raise UnreadableFileError(
            f"{name} is not a delimited table (no comma, semicolon, tab or pipe columns); use {SUPPORTED}"
        )
    stream = io.TextIOWrapper(io.BytesIO(payload), encoding=codec, newline="")
    reader = csv.reader(stream, delimiter=delimiter, strict=False)
    numbers: list[int] = []
    rows: list[list[str]] = []
    record = 0
    try:
        for record, row in enumerate(reader, start=1):
            if not row:
                continue
            first = row[0]
            # Most rows start with a value; only the others need the whole-row blank test.
            if (not first or first.isspace()) and is_blank(row):
                continue
            numbers.append(record)
            rows.append(row)
    except csv.Error as error:
        raise UnreadableFileError(
            f"{name}: row {record + 1} cannot be parsed ({error}); a quote is probably never closed"
        ) from None
    except UnicodeDecodeError:
        raise UnreadableFileError(
            f"{name} is not valid {encoding} text; save it again as UTF-8 CSV"
        ) from None
    if not rows:
        raise UnreadableFileError(f"{name} has no header row (the file is blank); export it again")
    index, _score = find_header(rows[: 4 * SNIFF_RECORDS], extra_keys)
    header = rows[index]
    data_rows = rows[index + 1 :]
    data_numbers = numbers[index + 1 :]
    del rows
    problems, data_rows = _square(header, data_rows, data_numbers)
    # Every row now has the header's width, so numpy makes one 2-D block in C.
    matrix: Matrix = (
        np.array(data_rows, dtype=object) if data_rows else np.empty((0, len(header)), dtype=object)
    )
    del data_rows
    headers, frame = _frame(header, matrix, data_numbers)
    source = SourceInfo(
        path, "csv", digest, encoding=encoding, delimiter=delimiter, header_row=numbers[index]
    )
    return RawTable(source, headers, frame, problems)


def _square(
    header: Sequence[str], rows: list[list[str]], numbers: Sequence[int]
) -> tuple[dict[int, str], list[list[str]]]:
    """Bring every row to the header's width; a row that does not fit is a row problem."""
    width = len(header)
    named = width
    while named and not header[named - 1].strip():
        named -= 1
    problems: dict[int, str] = {}
    for position, row in enumerate(rows):
        count = len(row)
        if count == width:
            continue
        if count > width:
            if is_blank(row[width:]):
                rows[position] = row[:width]  # stray trailing delimiters: harmless
                continue
            problems[numbers[position]] = (
                f"row has {count} fields but the header has {width} columns "
                "(an unquoted delimiter in a value?)"
            )
            rows[position] = row[:width]
            continue
        if count < named:
            problems[numbers[position]] = f"row has {count} fields but the header has {width} columns"
        rows[position] = [*row, *([""] * (width - count))]
    return problems, rows
