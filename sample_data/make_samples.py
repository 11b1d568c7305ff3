"""Generate the sample carrier sheets carrier_routing.xlsx and carrier_routing.csv, deterministically.

Both files hold the same rows (against ``inventory.json``): valid rows in many realistic
spellings, updates of existing routing, one row identical to existing routing, and exactly one
of each common mistake, each explained in its "Notes" cell. The XLSX has a "Notes" sheet first
and two title rows above the header; the CSV uses another dialect (semicolons, UTF-8 with BOM,
CRLF) and other header spellings, with the header on line 1.

The source of truth is the package data in ``importer/data/`` (the demo and the sandbox read it
from the installed package); this folder holds copies for users browsing the repository, and a
test checks they are equal.

    python sample_data/make_samples.py            # write both into importer/data, copy all here
    python sample_data/make_samples.py --expected # also print each row's intended outcome
"""

from __future__ import annotations

import csv
import io
import shutil
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import xlsxwriter

HERE = Path(__file__).resolve().parent
DATA = HERE.parent / "importer" / "data"
"""The package data: the one source of truth for the sample files."""
INVENTORY_NAME = "inventory.json"
XLSX_NAME = "carrier_routing.xlsx"
CSV_NAME = "carrier_routing.csv"
SHEET = "DID Routing"
TITLE = "Acme Telecom - VoiceLink migration batch 7"
XLSX_HEADER_ROW = 3
"""Excel row of the XLSX header: a title row and a blank row sit above it."""
CSV_HEADER_ROW = 1

Cell = str | int

# Logical column -> (XLSX header, CSV header). Customer, Site and Notes are no routing fields:
# the importer must carry them through untouched.
COLUMNS: dict[str, tuple[str, str]] = {
    "customer": ("Customer", "Customer"),
    "site": ("Site", "Site"),
    "number": ("Phone Number", "DID Number"),
    "did_id": ("DID ID", "DID Ref"),
    "inbound": ("Inbound Mode", "Inbound"),
    "in_bot": ("Inbound Bot ID", "Inbound Bot"),
    "in_trunk": ("Inbound SIP Trunk", "Inbound Trunk"),
    "outbound": ("Outbound Mode", "Outbound"),
    "out_bot": ("Outbound Bot ID", "Outbound Bot"),
    "out_trunk": ("Outbound SIP Trunk", "Outbound Trunk"),
    "status": ("Status", "Active"),
    "notes": ("Notes", "Notes"),
}


@dataclass(frozen=True, slots=True)
class Row:
    """One sample row: its cells (an int is a numeric cell in the XLSX) and what should become of it."""

    cells: dict[str, Cell]
    expected: str


def _row(expected: str, **cells: Cell) -> Row:
    return Row(cells, expected)


BLANK = Row({}, "blank row: ignored (not in the table, no outcome)")

ROWS: tuple[Row, ...] = (
    _row(
        "succeeded/update DID 812 (routing 5001: inbound 1 -> 3 with bot 93)",
        customer="Bharat Logistics", site="Bengaluru HQ", number=918011223344,
        inbound="WebSocket bot", in_bot=93, outbound="only-answer", status="active",
    ),
    _row(
        "unchanged DID 813 (identical to routing 5002)",
        customer="Bharat Logistics", site="Bengaluru HQ", number="+91 80 1122 4455",
        inbound="bot", in_bot=93, outbound="bot", out_bot=94, status="1",
    ),
    _row(
        "succeeded/update DID 814 (routing 5003: outbound trunk 7 -> 8)",
        customer="Bharat Logistics", site="Whitefield", number="+91 80 1122 5566",
        inbound="SIP", in_trunk=7, outbound="SIP", out_trunk=8, status="yes",
    ),
    _row(
        "succeeded/create DID 815 (modes given as numbers, blank status = active)",
        customer="Nimbus Retail", site="Koramangala", number="918011226677",
        inbound=1, outbound=4,
    ),
    _row(
        "succeeded/create DID 816",
        customer="Nimbus Retail", site="Indiranagar", number="+91-80-1122-7788",
        inbound="mobile", outbound="WebSocket bot", out_bot=94, status="active",
    ),
    _row(
        "succeeded/create DID 902",
        customer="Sierra Health", site="San Francisco", number="+1 (415) 555-2601",
        inbound="WebSocket bot", in_bot=93, outbound="only-answer", status="active",
    ),
    _row(
        "succeeded/update DID 901 (routing 5004: status 0 -> 1)",
        customer="Sierra Health", site="San Francisco", number="+1 415 555 2600",
        inbound="mobile", outbound="only answer", status="active",
    ),
    _row(
        "succeeded/create DID 817 (by DID ID only)",
        customer="Nimbus Retail", site="Jayanagar", did_id=817,
        inbound="voice bot", in_bot=93, outbound="SIP", out_trunk=7, status="active",
    ),
    _row(
        "failed no_country_code (with --default-region IN: succeeded/create DID 818)",
        customer="Nimbus Retail", site="Jayanagar", number="080 1123 0010",
        inbound="mobile", outbound="only-answer", status="active",
        notes="National number without the country code (needs --default-region IN)",
    ),
    _row(
        "failed scientific_notation",
        customer="Nimbus Retail", site="HSR Layout", number="9.18011E+11",
        inbound="mobile", outbound="only-answer", status="active",
        notes="Number mangled by Excel into scientific notation",
    ),
    _row(
        "failed: missing inbound bot id for WebSocket bot (DID 819)",
        customer="Orbit Finance", site="Pune", number="+91 80 1123 1121",
        inbound="WebSocket bot", outbound="only-answer", status="active",
        notes="Inbound WebSocket bot without a bot id",
    ),
    _row(
        "failed: inbound bot id given for mode 1 mobile, which uses none (DID 820)",
        customer="Orbit Finance", site="Pune", number="+91 80 1123 2232",
        inbound="mobile", in_bot=93, outbound="only-answer", status="active",
        notes="Bot id given for a mode that does not use one",
    ),
    _row(
        "failed: bad inbound mode 'voicemail' (DID 821)",
        customer="Orbit Finance", site="Pune", number="+91 80 1123 3343",
        inbound="voicemail", outbound="only-answer", status="active",
        notes="Unknown mode",
    ),
    BLANK,
    _row(
        "failed: non-integer inbound SIP trunk id 12.5 (DID 822)",
        customer="Orbit Finance", site="Mumbai", number="+91 80 1123 4454",
        inbound="SIP", in_trunk="12.5", outbound="only-answer", status="active",
        notes="Trunk id that is not a whole number",
    ),
    _row(
        "failed duplicate: same DID 816 as the Indiranagar row above, another spelling",
        customer="Nimbus Retail", site="Indiranagar", number="918011227788",
        inbound="mobile", outbound="only-answer", status="active",
        notes="Duplicate: same DID as the Indiranagar row above, spelled differently",
    ),
    _row(
        "valid locally; failed at resolve: bot 95 is inactive (DID 823)",
        customer="Orbit Finance", site="Mumbai", number="+91 80 1123 5565",
        inbound="WebSocket bot", in_bot=95, outbound="only-answer", status="active",
        notes="Bot 95 is retired (inactive): valid here, rejected when checked against the account",
    ),
    _row(
        "valid locally; failed at resolve: DID 918011990000 not in the inventory",
        customer="Orbit Finance", site="Mumbai", number="+91 80 1199 0000",
        inbound="mobile", outbound="only-answer", status="active",
        notes="Number not purchased on this account",
    ),
    _row(
        "failed: bad status 'maybe' (DID 824)",
        customer="Orbit Finance", site="Nashik", number="+91 80 1123 6676",
        inbound="mobile", outbound="only-answer", status="maybe",
        notes="Status that is neither active nor inactive",
    ),
    _row(
        "succeeded/create DID 825",
        customer="Orbit Finance", site="Pune", number="918011237787",
        inbound="phone", outbound="ws bot", out_bot=94, status="true",
    ),
    _row(
        "succeeded/create DID 903 (status inactive)",
        customer="Sierra Health", site="Oakland", number="+1 415-555-2602",
        inbound="sip trunk", in_trunk=7, outbound="answer only", status="inactive",
    ),
    _row(
        "succeeded/create DID 826 (modes, ids and status as numbers; status 0)",
        customer="Orbit Finance", site="Pune", number="+918011238898",
        inbound=3, in_bot=94, outbound=3, out_bot=94, status=0,
    ),
    _row(
        "succeeded/create DID 827",
        customer="Müller Logistik GmbH", site="Bengaluru; Electronic City", number="0091 80 1124 0009",
        inbound="WebSocket", in_bot=93, outbound="Trunk", out_trunk=9, status="Active",
    ),
    _row(
        "succeeded/create DID 904",
        customer="Sierra Health", site="Oakland", number="+1.415.555.2603",
        inbound="Mobile", outbound="Only-Answer",
    ),
)  # fmt: skip

NOTES_TEXT = (
    "Acme Telecom - Carrier Services",
    "Date: 14 March 2025",
    "Contact: Priya Raman, migration desk, priya.raman@acme-telecom.example, +91 80 4000 1234",
    "",
    f'The sheet "{SHEET}" lists the DIDs of VoiceLink migration batch 7, one row per number, with the '
    "call routing each number should get on the customer's VoiceLink account.",
    "Customer, Site and Notes are our own columns; please keep them as they are.",
    "Rows with a note show a problem we have seen in earlier batches, kept on purpose for testing.",
)

_FIXED_DATE = datetime(2025, 3, 14)
_WIDTHS = {"customer": 22, "site": 24, "number": 20, "inbound": 16, "outbound": 16, "notes": 70}


def expected_outcomes() -> list[tuple[int, int, str]]:
    """Return (XLSX Excel row, CSV line, intended outcome) for every sample row."""
    first_xlsx, first_csv = XLSX_HEADER_ROW + 1, CSV_HEADER_ROW + 1
    return [(first_xlsx + i, first_csv + i, row.expected) for i, row in enumerate(ROWS)]


def write_xlsx(path: Path) -> None:
    """Write the carrier workbook: a "Notes" sheet, then the routing sheet with title rows."""
    book = xlsxwriter.Workbook(str(path))
    try:
        book.set_properties({"title": TITLE, "author": "Acme Telecom", "created": _FIXED_DATE})
        bold = book.add_format({"bold": True})
        title = book.add_format({"bold": True, "font_size": 14})
        digits = book.add_format({"num_format": "0"})
        notes = book.add_worksheet("Notes")
        notes.set_column(0, 0, 110)
        for r, text in enumerate(NOTES_TEXT):
            if text:
                notes.write_string(r, 0, text, title if r == 0 else None)
        sheet = book.add_worksheet(SHEET)
        sheet.write_string(0, 0, TITLE, title)
        header = XLSX_HEADER_ROW - 1
        for c, (name, (heading, _)) in enumerate(COLUMNS.items()):
            sheet.set_column(c, c, _WIDTHS.get(name, 14))
            sheet.write_string(header, c, heading, bold)
        for r, row in enumerate(ROWS, start=header + 1):
            for c, name in enumerate(COLUMNS):
                value = row.cells.get(name, "")
                if isinstance(value, int):
                    # A numeric cell, as carriers' exports often have; "0" shows every digit.
                    sheet.write_number(r, c, value, digits)
                elif value:
                    sheet.write_string(r, c, value)
        sheet.freeze_panes(XLSX_HEADER_ROW, 0)
        sheet.activate()
    finally:
        book.close()


def csv_text() -> str:
    """Return the CSV variant: semicolons, CRLF, CSV header spellings, every cell as text."""
    out = io.StringIO()
    writer = csv.writer(out, delimiter=";", lineterminator="\r\n")
    writer.writerow(csv_heading for _, csv_heading in COLUMNS.values())
    for row in ROWS:
        writer.writerow(str(row.cells.get(name, "")) for name in COLUMNS)
    return out.getvalue()


def write_csv(path: Path) -> None:
    """Write the CSV variant as UTF-8 with a BOM (what Excel's "CSV UTF-8" export writes)."""
    path.write_bytes(csv_text().encode("utf-8-sig"))


def main(argv: list[str]) -> int:
    """Write both sample files into the package data and copy them (and the inventory) here.

    With --expected, also print the intended outcomes.
    """
    write_xlsx(DATA / XLSX_NAME)
    write_csv(DATA / CSV_NAME)
    for name in (XLSX_NAME, CSV_NAME, INVENTORY_NAME):
        shutil.copyfile(DATA / name, HERE / name)
    if "--expected" in argv:
        print("xlsx row | csv line | intended outcome")
        for xlsx_row, csv_line, expected in expected_outcomes():
            print(f"{xlsx_row:8} | {csv_line:8} | {expected}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
