"""Tell a file's format by its first bytes, not by its name: one sniffer for the reader and for uploads.

A zip may hold a workbook (.xlsx/.xlsm/.xlsb/.ods: ``safety.check_zip`` tells which), an OLE
container is an .xls or an encrypted workbook, a bare BIFF stream is an Excel 2-5 .xls, and
anything else named like text is read as delimited text.
"""

from __future__ import annotations

import enum
from pathlib import Path

from importer.errors import InputError, UnreadableFileError

__all__ = ["HEAD_BYTES", "MAX_FILE_BYTES", "MAX_TEXT_BYTES", "SUPPORTED", "Format", "read_head", "sniff"]

SUPPORTED = ".xlsx, .xlsm, .xls, .xlsb, .ods, or delimited text (.csv, .tsv, .txt)"
MAX_FILE_BYTES = 1024**3
MAX_TEXT_BYTES = 256 * 1024**2
"""Delimited text is held in memory as one string per cell (about 9x the file size): 256 MiB is
over two million typical routing rows, more than an XLSX sheet can hold, and stays within a few GB."""
HEAD_BYTES = 8
"""How much of a file the sniffer needs: the longest magic number."""

OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")
BIFF_STARTS = (b"\x09\x00", b"\x09\x02", b"\x09\x04", b"\x09\x08")
TEXT_SUFFIXES = frozenset({".csv", ".tsv", ".txt", ".tab"})
WORKBOOK_SUFFIXES = frozenset({".xlsx", ".xlsm", ".xls", ".xlsb", ".ods"})


class Format(enum.Enum):
    """What a file's first bytes (and, for text, its name) say it is."""

    ZIP = "zip"
    """A zip archive: a workbook if its members say so."""
    OLE = "ole"
    """An OLE container: an .xls, or a workbook encrypted with a password."""
    BIFF = "biff"
    """A bare BIFF stream of Excel 2-5 named .xls."""
    TEXT = "text"
    """Delimited text (or something to be judged as text)."""


def sniff(head: bytes, name: str) -> Format:
    """Tell a file's format from its first ``HEAD_BYTES`` bytes and its name.

    Args:
        head: The file's first bytes (at least ``HEAD_BYTES`` when the file is that long).
        name: The file's name, as the user gave it (only its suffix is looked at).

    Raises:
        UnreadableFileError: The file is empty, or neither a workbook nor named like text.
    """
    suffix = Path(name).suffix.lower()
    if not head:
        raise UnreadableFileError(f"{Path(name).name} is empty (0 bytes); export the spreadsheet again")
    if head.startswith(ZIP_MAGICS):
        return Format.ZIP
    if head.startswith(OLE_MAGIC):
        return Format.OLE
    if suffix == ".xls" and head.startswith(BIFF_STARTS):
        return Format.BIFF
    if suffix in TEXT_SUFFIXES or suffix in (".xls", ""):
        return Format.TEXT
    if suffix in WORKBOOK_SUFFIXES:
        raise UnreadableFileError(
            f"{Path(name).name} is not a {suffix} workbook (its content is not a spreadsheet); "
            "open it in Excel and save as .xlsx"
        )
    raise UnreadableFileError(f"{Path(name).name}: unsupported file type {suffix!r}; use {SUPPORTED}")


def read_head(path: Path) -> tuple[Format, int]:
    """Open ``path`` only to sniff its format; refuse it by its size before anything more is read.

    Returns:
        The format and the file's size in bytes.

    Raises:
        InputError: The file is missing, cannot be opened, or is larger than its format's limit.
        UnreadableFileError: As for ``sniff``.
    """
    if not path.is_file():
        raise InputError(f"{path} does not exist or is not a file; check the path")
    try:
        with path.open("rb") as handle:
            size = path.stat().st_size
            if size > MAX_FILE_BYTES:
                raise InputError(f"{path.name} is larger than 1 GiB; split it into smaller files")
            head = handle.read(HEAD_BYTES)
    except OSError as error:
        raise InputError(f"cannot open {path.name}: {error.strerror or error}; check the file") from None
    kind = sniff(head, path.name)
    if kind is Format.TEXT and size > MAX_TEXT_BYTES:
        raise InputError(
            f"{path.name} is larger than {MAX_TEXT_BYTES // 1024**2} MiB of text; "
            "split it into files of under a million rows"
        )
    return kind, size
