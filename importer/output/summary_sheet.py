"""Write the Summary sheet of a results workbook: the input, the run, rows by status and reason, notes."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from importer.model import MACHINE_LINES, RawTable, RowIssue, RunInfo, Status
from importer.output.sheet import _LONE_SURROGATE, _Column, _fit_cell
from importer.read.xlsx import describe_hidden

if TYPE_CHECKING:
    # Only a type here: results.py imports this module to write its Summary sheet.
    from importer.output.results import OutcomeColumns


def _summary_items(
    table: RawTable,
    outcomes: OutcomeColumns,
    issues: Sequence[RowIssue],
    info: RunInfo,
    columns: list[_Column],
    errors_left_out: int,
) -> list[tuple[str, str | int | None]]:
    """List the Summary sheet's lines; a line whose value is None is a section title."""
    src = table.source
    delimiter = {"\t": "tab", " ": "space"}.get(src.delimiter or "", src.delimiter or "")
    items: list[tuple[str, str | int | None]] = [
        ("Input", None),
        ("file", info.facts.file or src.path.name),
        ("path", str(src.path)),
        ("sha256", src.sha256),
        ("format", src.format),
        ("sheet", src.sheet or ""),
        (
            "encoding",
            f"{src.encoding} ({src.encoding_chosen})" if src.encoding_chosen else src.encoding or "",
        ),
        ("delimiter", delimiter),
        ("header row", src.header_row),
        ("rows read", table.row_count),
        *describe_hidden(table),
        ("Run", None),
        ("command", info.command),
        ("started", info.started),
        ("finished", info.finished),
    ]
    items += [(f"option {name}", value) for name, value in info.options.items()]
    items += [(name, value) for name, value in info.audit.items()]
    by_status = Counter(outcomes.status)
    items.append(("Rows by status", None))
    items += [(info.status_labels.get(status, status.value), by_status[status]) for status in Status]
    items.append(("Rows by reason", None))
    by_reason = Counter(outcomes.reason_kind)
    by_reason.pop("", None)
    items += sorted(by_reason.items())
    items.append(("Problems by kind", None))
    items += sorted(Counter(i.kind for i in issues).items())
    truncated = sum(c.truncated for c in columns)
    notes: list[tuple[str, str | int | None]] = [("note", note) for note in info.notes]
    if truncated:
        notes.append(("cells truncated", f"{truncated} cells over Excel's limit were cut, marked at the end"))
    if errors_left_out:
        notes.append(("problems left out", f"{errors_left_out} problems did not fit in the Errors sheet"))
    if notes:
        items += [("Notes", None), *notes]
    if not info.facts.machine:  # a service's workbook leaves its server: none of its paths, user, host
        items = [(name, value) for name, value in items if name not in MACHINE_LINES]
    return items


def _write_summary(sheet: Any, items: list[tuple[str, str | int | None]], bold: Any) -> None:
    sheet.set_column(0, 0, 24)
    sheet.set_column(1, 1, 70)
    for r, (name, value) in enumerate(items):
        if value is None:
            sheet.write_string(r, 0, name, bold)
            continue
        sheet.write_string(r, 0, name)
        if isinstance(value, int):
            sheet.write_number(r, 1, value)
        else:
            sheet.write_string(r, 1, _fit_cell(_LONE_SURROGATE.sub("\ufffd", value)))
