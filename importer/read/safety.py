"""Vet a workbook's zip before any XML parser sees it: zip bombs, XML bombs, damaged or foreign archives."""

from __future__ import annotations

import codecs
import zipfile
from pathlib import Path
from typing import IO

from defusedxml import DefusedXmlException
from defusedxml import ElementTree as SafeET

from importer.errors import UnreadableFileError
from importer.read.sniff import SUPPORTED

__all__ = ["MAX_UNZIPPED_BYTES", "MAX_WORKBOOK_XML_BYTES", "check_zip"]

MAX_UNZIPPED_BYTES = 512 * 1024**2
MAX_ZIP_MEMBERS = 10_000
MAX_RATIO = 200
"""Deflate ratio above which a large zip member is taken for a bomb; real sheets stay far below."""
RATIO_CHECK_BYTES = 1024**2
PROLOG_CHUNK = 64 * 1024
MAX_WORKBOOK_XML_BYTES = 32 * 1024**2


def check_zip(path: Path) -> str:
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
                        if prolog_declares_dtd(handle):
                            raise xml_bomb(name)
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
        raise xml_bomb(name) from None
    except SafeET.ParseError:
        raise UnreadableFileError(
            f"{name} has a damaged workbook.xml; open it in Excel and save as .xlsx"
        ) from None
    if not any(el.tag == "sheet" or el.tag.endswith("}sheet") for el in root.iter()):
        raise UnreadableFileError(f"{name} has no sheets; open it in Excel, add the data and save again")
    return "xlsx"


def prolog_declares_dtd(handle: IO[bytes]) -> bool:
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


def xml_bomb(name: str) -> UnreadableFileError:
    return UnreadableFileError(
        f"{name} contains XML DTD/entity declarations (a possible XML bomb); refusing to read it"
    )
