"""Read delimited text (CSV, TSV, ...): its encoding, its dialect, its records numbered as Excel rows.

Text that is neither UTF-8 nor marked by a BOM gets its code page from charset-normalizer,
looking only at the lines that hold non-ASCII bytes. The delimiter is the one that splits the
top rows into header fields. ``table.read_table`` turns the ``TextGrid`` into a RawTable.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from importer.errors import InputError, UnreadableFileError, shown
from importer.read.sniff import SUPPORTED
from importer.read.workbook import find_header, is_blank

__all__ = ["TextGrid", "check_encoding", "read_text"]

Matrix = npt.NDArray[np.object_]

DELIMITERS = (",", ";", "\t", "|")
SNIFF_CHARS = 64 * 1024
SNIFF_RECORDS = 50
# cp1252 leaves five bytes undefined; latin-1 maps them to the C1 controls of the same value.
_CP1252_HOLES = {0xDC00 + b: b for b in (0x81, 0x8D, 0x8F, 0x90, 0x9D)}
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32-le", "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32-be", "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig", "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16-le", "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16-be", "utf-16"),
)


@dataclass(frozen=True, slots=True)
class TextGrid:
    """Delimited text as read: the header, the data rows squared to its width, and how it was read."""

    header: list[str]
    matrix: Matrix
    """The data rows (one per non-blank record below the header), every row as wide as the header."""
    numbers: list[int]
    """The Excel row number (record number) of each data row."""
    header_row: int
    encoding: str
    encoding_chosen: str
    delimiter: str
    problems: dict[int, str] = field(default_factory=dict)
    """Rows whose field count does not fit the header, by Excel row number."""


def check_encoding(name: str) -> str:
    """Return the codec a ``--encoding`` value names.

    Raises:
        InputError: the name is not a text encoding Python knows.
    """
    hint = "use a text encoding such as utf-8, cp1252, cp1251, cp1253, cp1254 or iso-8859-7"
    try:
        codec = codecs.lookup(name.strip()).name
        "0123456789".encode(codec)  # LookupError for codecs that are not text encodings (base64)
    except (LookupError, ValueError):
        raise InputError(f"--encoding {shown(name)!r} is not a known text encoding; {hint}") from None
    return codec


def _decode_plan(data: bytes, given: str | None = None) -> tuple[str, str, bytes, str]:
    """Choose how to decode text bytes.

    Returns:
        The encoding recorded, the codec used, the bytes to decode and how the encoding was
        chosen ("" when the text is plain UTF-8 or ASCII).
    """
    if given is not None:
        if given == "utf-8" and data.startswith(codecs.BOM_UTF8):
            return "utf-8-sig", "utf-8-sig", data, "--encoding"
        return given, given, data, "--encoding"
    for bom, label, codec in _BOMS:
        if data.startswith(bom):
            return label, codec, data, "byte order mark"
    head = data[:4096]
    if head.count(0) > len(head) // 4 and len(head) >= 4:
        # No BOM but NUL-heavy: UTF-16 text puts the NULs of ASCII on one side.
        even = head[0::2].count(0)
        odd = head[1::2].count(0)
        codec = "utf-16-le" if odd > even else "utf-16-be"
        try:
            data.decode(codec)
        except UnicodeDecodeError:
            return "binary", "", data, ""
        return codec, codec, data, "detected"
    if data.isascii():
        return "utf-8", "utf-8", data, ""
    try:
        data.decode("utf-8")
        return "utf-8", "utf-8", data, ""
    except UnicodeDecodeError:
        pass
    for codec in _legacy_candidates(data):
        if codec == "cp1252" and not _decodes(data, codec):
            # cp1252 is the last resort and reads anything: its five undefined bytes as latin-1.
            return "cp1252", "utf-8", _cp1252_text(data).encode("utf-8"), "detected"
        if _decodes(data, codec):
            return codecs.lookup(codec).name, codec, data, "detected"
    raise AssertionError("unreachable: cp1252 ends the candidates")  # pragma: no cover


def _cp1252_text(data: bytes) -> str:
    return data.decode("cp1252", errors="surrogateescape").translate(_CP1252_HOLES)


_LEGACY_CODECS = (
    # Ordered by how often carriers' tools export them: a tie between candidates that read the
    # sample equally well goes to the earlier one (cp1252 first, as before detection existed).
    "cp1252", "cp1250", "cp1251", "cp1253", "cp1254", "cp1257", "cp1255", "cp1256", "cp1258",
    "iso8859_7", "iso8859_2", "iso8859_9", "iso8859_13", "iso8859_5", "koi8_r", "koi8_u",
    "cp874", "cp932", "gb18030", "big5", "cp949", "euc_jp",
)  # fmt: skip
_SIBLINGS = {
    # Pairs that differ in a few letters (Greek capitals with tonos sit elsewhere in iso8859_7):
    # charset-normalizer may rank them equal, so the one that reads more letters wins.
    "cp1253": ("iso8859_7",),
    "iso8859_7": ("cp1253",),
    "cp1250": ("iso8859_2",),
    "iso8859_2": ("cp1250",),
    "cp1254": ("iso8859_9",),
    "iso8859_9": ("cp1254",),
    "cp1257": ("iso8859_13",),
    "iso8859_13": ("cp1257",),
}
DETECT_SAMPLE_BYTES = 64 * 1024
"""How much of the text's non-ASCII lines charset-normalizer looks at."""
_NON_ASCII = re.compile(rb"[\x80-\xff]")


def _legacy_candidates(data: bytes) -> list[str]:
    """Rank the legacy codecs that may have written ``data`` (best first) with charset-normalizer.

    Only lines holding non-ASCII bytes are looked at: in a carrier's sheet they are the few
    names and notes among thousands of ASCII numbers, and they alone tell the encodings apart.
    """
    import charset_normalizer

    lines: list[bytes] = []
    size = 0
    found = _NON_ASCII.search(data)
    while found is not None and size < DETECT_SAMPLE_BYTES:
        start = data.rfind(b"\n", 0, found.start()) + 1
        end = data.find(b"\n", found.start())
        end = len(data) if end < 0 else end
        lines.append(data[start:end])
        size += end - start + 1
        found = _NON_ASCII.search(data, end)
    sample = b"\n".join(lines)[:DETECT_SAMPLE_BYTES]
    if not sample:
        return ["cp1252"]
    matches = list(
        charset_normalizer.from_bytes(
            sample, steps=1, chunk_size=len(sample), cp_isolation=list(_LEGACY_CODECS)
        )
    )
    if not matches:
        return ["cp1252"]
    best = matches[0]
    tied: list[str] = []
    for match in matches:
        if abs(match.chaos - best.chaos) < 0.01 and match.coherence == best.coherence:
            tied += [match.encoding, *match.could_be_from_charset]
    tied += _SIBLINGS.get(best.encoding, ())
    rank = {codec: i for i, codec in enumerate(_LEGACY_CODECS)}
    known = sorted({c for c in tied if c in rank}, key=rank.__getitem__)
    # A few lines give charset-normalizer little to go on, and then it ties; the tie goes to
    # the reading with the fewest implausible words, then the most letters, then the commoner codec.
    texts = {codec: sample.decode(codec, errors="replace") for codec in known}
    scored = sorted(known, key=lambda c: (_odd_words(texts[c]), -_letters(texts[c]), rank[c]))
    others = [m.encoding for m in matches if m.encoding not in scored]
    ranked = [*scored, *others, "cp1252"]
    # cp1252 drops out of charset-normalizer's list when a byte it leaves undefined occurs, and
    # a Cyrillic code page may then win on Western text ("cafй"): keep cp1252 when it reads better.
    # (Its five undefined bytes are left out of that judgment: they are junk in any reading.)
    if ranked[0] != "cp1252" and _odd_words(sample.decode(ranked[0], errors="replace")) > _odd_words(
        sample.decode("cp1252", errors="ignore")
    ):
        ranked.insert(0, "cp1252")
    return ranked


_WORD = re.compile(r"[^\s\d!-/:-@\[-`{-~]+")
"""A word: a run of anything but spaces, digits and ASCII punctuation (combining marks included)."""
_C1_CONTROL = re.compile("[\x80-\x9f]")
_TURKISH_AS_CP1252 = frozenset("ÐðÞþ")
"""What ğ and ş become when Turkish is read as cp1252; outside Icelandic, no language writes them."""


def _odd_words(text: str) -> int:
    """Count the words that a wrong code page makes and real text does not.

    Such a word mixes ASCII letters with another script ("cafй", or Thai marks after a "t"),
    is three or more Latin letters none of which is ASCII (Russian read as cp1250: "Ìîńęâŕ"),
    holds a byte the code page leaves undefined or reads as a C1 control, or holds the
    Icelandic letters Turkish turns into under cp1252 ("Þiþli" for "Şişli").
    """
    count = 0
    for word in _WORD.findall(text):
        if word.isascii():
            continue
        top = max(word)
        has_ascii = any(c.isascii() for c in word)
        if (
            (has_ascii and top >= "\u0370")
            or (not has_ascii and len(word) >= 3 and top < "\u0250")
            or "\ufffd" in word
            or _C1_CONTROL.search(word) is not None
            or not _TURKISH_AS_CP1252.isdisjoint(word)
        ):
            count += 1
    return count


def _letters(text: str) -> int:
    """Count the non-ASCII letters of a decoded sample (symbols and controls are not letters)."""
    return sum(1 for char in text if char >= "\x80" and char.isalpha())


def _decodes(data: bytes, codec: str) -> bool:
    """Tell whether the whole of ``data`` is valid in ``codec``, in chunks (no second copy)."""
    decoder = codecs.getincrementaldecoder(codec)()
    try:
        for start in range(0, len(data), 1024**2):
            decoder.decode(data[start : start + 1024**2])
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    return True


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


def read_text(
    path: Path,
    data: bytes,
    extra_keys: frozenset[str],
    *,
    strict_table: bool,
    codec: str | None = None,
) -> TextGrid:
    """Read delimited text: detect encoding and delimiter, number records as Excel rows."""
    name = path.name
    encoding, codec, payload, chosen = _decode_plan(data, codec)
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
    # Tuples, not the reader's lists: a tuple of strings leaves the garbage collector's lists at
    # its first collection, a list never does, so 180,000 listed rows made every full collection
    # (the whole process stopped, threads included) walk them, 100-200 ms each (issue 16).
    rows: list[Sequence[str]] = []
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
            rows.append(tuple(row))
    except csv.Error as error:
        raise UnreadableFileError(
            f"{name}: row {record + 1} cannot be parsed ({error}); a quote is probably never closed"
        ) from None
    except UnicodeDecodeError as error:
        fix = "check --encoding" if chosen == "--encoding" else "save it again as UTF-8 CSV"
        raise UnreadableFileError(
            f"{name} is not valid {encoding} text (byte {error.object[error.start]:#04x} "
            f"in row {record + 1}); {fix}"
        ) from None
    if not rows:
        raise UnreadableFileError(f"{name} has no header row (the file is blank); export it again")
    if len(rows) == 1 and sum(1 for cell in rows[0] if cell.strip()) == 1:
        # Not "the header is on row 1 but no data rows follow": there is no header either.
        cell = next(cell for cell in rows[0] if cell.strip()).strip()
        raise UnreadableFileError(
            f'{name} holds a single cell ("{shown(cell[:40])}"), not a table; give a header row naming the '
            "columns (e.g. DID, Inbound Mode, Outbound Mode) and one row per DID below it"
        )
    index, _score = find_header(rows[: 4 * SNIFF_RECORDS], extra_keys)
    header = list(rows[index])
    data_rows = rows[index + 1 :]
    data_numbers = numbers[index + 1 :]
    del rows
    problems, data_rows = _square(header, data_rows, data_numbers)
    # Every row now has the header's width, so numpy makes one 2-D block in C.
    matrix: Matrix = (
        np.array(data_rows, dtype=object) if data_rows else np.empty((0, len(header)), dtype=object)
    )
    del data_rows
    return TextGrid(header, matrix, data_numbers, numbers[index], encoding, chosen, delimiter, problems)


def _square(
    header: Sequence[str], rows: list[Sequence[str]], numbers: Sequence[int]
) -> tuple[dict[int, str], list[Sequence[str]]]:
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
        rows[position] = (*row, *("",) * (width - count))
    return problems, rows
