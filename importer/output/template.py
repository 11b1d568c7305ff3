"""Generate the blank routing templates (XLSX and CSV) from the field spec in ``fields.py``.

The files are byte-for-byte deterministic (fixed document dates; xlsxwriter fixes the zip
member times), so the copies kept in ``templates/`` can be checked against this module.
Regenerate them with ``python -m importer.output.template templates``.
"""

from __future__ import annotations

import csv
import io
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import xlsxwriter

from importer.fields import (
    DID_FIELDS,
    FIELD_BY_NAME,
    FIELD_NAMES,
    FIELDS,
    MODE_FIELD,
    MODE_ID_FIELDS,
    MODE_INDEX,
    MODES,
    REQUIRED_TEXT,
    STATUS_LABELS,
    STATUS_VALUES,
    Field,
    describe_modes,
    header_key,
    mode_labels,
    required_id,
)

TEMPLATE_FILES: dict[str, str] = {
    "xlsx": "voicelink-routing-template.xlsx",
    "csv": "voicelink-routing-template.csv",
}
ROUTING_SHEET = "Routing"
INSTRUCTIONS_SHEET = "Instructions"
CSV_LINE_END = "\r\n"
"""RFC 4180 line ends: what Excel writes and expects."""

_FIXED_DATE = datetime(2024, 1, 1)
_LAST_ROW = 1_048_575
_INPUT_TITLE_MAX = 32
_INPUT_MESSAGE_MAX = 255


def template_csv_text() -> str:
    """Return the CSV template: one header line of the canonical field names, CRLF-terminated.

    Returns:
        The text to write (with ``newline=""`` so the CRLF is kept).
    """
    out = io.StringIO()
    csv.writer(out, lineterminator=CSV_LINE_END).writerow(FIELD_NAMES)
    return out.getvalue()


def write_template_xlsx(path: Path) -> None:
    """Write the XLSX template: an empty "Routing" sheet with help and dropdowns, and "Instructions".

    Args:
        path: The workbook to write (overwritten).
    """
    book = xlsxwriter.Workbook(str(path))
    try:
        book.set_properties(
            {
                "title": "VoiceLink call routing import template",
                "author": "voicelink-import",
                "created": _FIXED_DATE,
            }
        )
        formats = {
            "bold": book.add_format({"bold": True}),
            "header": book.add_format({"bold": True, "bg_color": "#DDEBF7", "border": 1}),
            "text": book.add_format({"num_format": "@"}),
            "wrap": book.add_format({"text_wrap": True, "valign": "top"}),
            "title": book.add_format({"bold": True, "font_size": 14}),
        }
        _write_routing_sheet(book.add_worksheet(ROUTING_SHEET), formats)
        _write_instructions_sheet(book.add_worksheet(INSTRUCTIONS_SHEET), formats)
    finally:
        book.close()


def write_templates(folder: Path) -> list[Path]:
    """Write both templates into ``folder`` under their ``TEMPLATE_FILES`` names.

    Args:
        folder: An existing folder.

    Returns:
        The paths written, XLSX first.
    """
    xlsx_path = folder / TEMPLATE_FILES["xlsx"]
    csv_path = folder / TEMPLATE_FILES["csv"]
    write_template_xlsx(xlsx_path)
    with csv_path.open("w", encoding="utf-8", newline="") as fh:
        fh.write(template_csv_text())
    return [xlsx_path, csv_path]


def _write_routing_sheet(sheet: Any, formats: dict[str, Any]) -> None:
    mode_column = {name: direction for direction, name in MODE_FIELD.items()}
    for c, f in enumerate(FIELDS):
        # The did_number column is Text so Excel keeps every digit of a typed number.
        column_format = formats["text"] if f.name == "did_number" else None
        sheet.set_column(c, c, max(len(f.name) + 4, 16), column_format)
        sheet.write_string(0, c, f.name, formats["header"])
        sheet.data_validation(0, c, 0, c, {"validate": "any", **_help(f.title, f.description)})
        if f.name in mode_column:
            direction = mode_column[f.name]
            _dropdown(
                sheet, c, mode_labels(direction), f, f"Choose or type one of: {describe_modes(direction)}."
            )
        elif f.name == "status":
            _dropdown(sheet, c, list(STATUS_LABELS.values()), f, f.description)
    sheet.freeze_panes(1, 0)
    sheet.activate()


def _dropdown(sheet: Any, col: int, labels: list[str], f: Field, message: str) -> None:
    """Add a list validation below the header; a warning, not a stop, so numbers can still be typed."""
    sheet.data_validation(
        1,
        col,
        _LAST_ROW,
        col,
        {
            "validate": "list",
            "source": labels,
            "error_type": "warning",
            "error_title": _clip(f"Unusual {f.title}", _INPUT_TITLE_MAX),
            "error_message": _clip(f"{message} Keep this value anyway?", _INPUT_MESSAGE_MAX),
            **_help(f.title, message),
        },
    )


def _help(title: str, message: str) -> dict[str, str]:
    return {
        "input_title": _clip(title, _INPUT_TITLE_MAX),
        "input_message": _clip(message, _INPUT_MESSAGE_MAX),
    }


def _clip(text: str, limit: int) -> str:
    """Fit ``text`` in an Excel prompt limit, cutting at a word with an ellipsis when it is too long."""
    if len(text) <= limit:
        return text
    return text[: limit - 1].rsplit(" ", 1)[0] + "…"


def _write_instructions_sheet(sheet: Any, formats: dict[str, Any]) -> None:
    widths = (26, 22, 44, 22, 70, 18)
    for c, width in enumerate(widths):
        sheet.set_column(c, c, width, formats["wrap"])
    row = 0

    def line(*cells: str, fmt: Any = None) -> None:
        nonlocal row
        for c, text in enumerate(cells):
            if text:
                sheet.write_string(row, c, text, fmt)
        row += 1

    line("How to fill in the VoiceLink call routing template", fmt=formats["title"])
    line(
        f'One row per DID on the "{ROUTING_SHEET}" sheet, below the header row. Keep the headers as they '
        "are (other columns are allowed and carried through untouched). Each DID needs "
        f"{' or '.join(DID_FIELDS)}; the modes decide which id column must be filled in."
    )
    row += 1
    line("Columns", fmt=formats["bold"])
    line(
        "Column",
        "Title",
        "Also accepted headers",
        "Required",
        "Description",
        "Example",
        fmt=formats["header"],
    )
    for f in FIELDS:
        line(f.name, f.title, ", ".join(f.aliases), REQUIRED_TEXT[f.required], f.description, f.example)

    row += 1
    line("Which id each mode needs", fmt=formats["bold"])
    line("Mode column", "Mode", "Also accepted spellings", "Needs", fmt=formats["header"])
    for direction, modes in MODES.items():
        mode_field = FIELD_BY_NAME[MODE_FIELD[direction]]
        for mode in modes.values():
            needs = (
                f"{mode.requires} ({FIELD_BY_NAME[mode.requires].title})"
                if mode.requires
                else "no id (leave the id columns of this direction empty)"
            )
            line(mode_field.name, f"{mode.number} {mode.label}", ", ".join(mode.aliases), needs)

    row += 1
    line("Status values", fmt=formats["bold"])
    for number, label in STATUS_LABELS.items():
        spellings = ", ".join(text for text, value in STATUS_VALUES.items() if value == number)
        line(label, spellings)

    row += 1
    line("Example row", fmt=formats["bold"])
    line(*FIELD_NAMES, fmt=formats["header"])
    example = _example_row()
    line(*(example[name] for name in FIELD_NAMES))
    row += 1
    line(
        "Tip: number columns lose digits and leading zeros in Excel; the did_number column of the "
        f'"{ROUTING_SHEET}" sheet is formatted as Text for that reason.'
    )


def _example_row() -> dict[str, str]:
    """Return a consistent example row: the fields' examples, keeping only the ids the example modes need."""
    row = {f.name: f.example for f in FIELDS}
    # One DID reference is enough; two unrelated examples could read as a conflict.
    row["did_id"] = ""
    needed = {
        required_id(direction, MODE_INDEX[direction][header_key(row[name])])
        for direction, name in MODE_FIELD.items()
    }
    for name in MODE_ID_FIELDS:
        if name not in needed:
            row[name] = ""
    return row


def main(argv: list[str] | None = None) -> int:
    """Write both templates into the folder given as the only argument (default: templates)."""
    args = sys.argv[1:] if argv is None else argv
    folder = Path(args[0] if args else "templates")
    for path in write_templates(folder):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
