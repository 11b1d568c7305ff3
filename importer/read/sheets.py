"""Which sheets of a workbook to read: every sheet is surveyed, and none is chosen silently.

A sheet *matches* when its header row names at least two fields. One matching sheet (beside
stale or unrelated ones) is read as before; several matching sheets are never chosen between
silently: the reader stops with ``SheetChoiceNeeded`` (the candidates as data, for a CLI line or
a picker) unless the user names sheets (``--sheet``, repeatable) or asks for all (``--all-sheets``).

Free of pandas: the capped child process of ``isolated`` reads workbooks with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from importer.errors import InputError
from importer.words import Surface, render_template

__all__ = ["SheetChoiceNeeded", "SheetInfo", "choose_sheets", "resolve_sheet", "sheet_notes"]


@dataclass(frozen=True, slots=True)
class SheetInfo:
    """One visible worksheet of a workbook, as the reader found it."""

    name: str
    rows: int
    """Its non-blank rows below the header row."""
    matches: bool
    """Whether its header row names the fields (at least two)."""


def _listed(sheets: Sequence[SheetInfo]) -> str:
    return ", ".join(f'"{s.name}" ({s.rows} {"row" if s.rows == 1 else "rows"})' for s in sheets)


class SheetChoiceNeeded(InputError):
    """Several sheets name the fields and none was chosen: the user must say which.

    ``sheets`` is every visible sheet and ``candidates`` the matching ones with rows, with their
    row counts (a picker shows them); the message is the CLI's one line.
    """

    def __init__(self, file_name: str, sheets: Sequence[SheetInfo]) -> None:
        self.sheets = tuple(sheets)
        self.candidates = tuple(s for s in self.sheets if s.matches and s.rows)
        super().__init__(
            f"{file_name} has {len(self.candidates)} sheets with the columns: {_listed(self.candidates)}; "
            "choose with --sheet NAME (repeatable) or read them all with --all-sheets"
        )


def resolve_sheet(wanted: str, names: Sequence[str]) -> str | None:
    """Find the sheet the user named, forgiving case and surrounding spaces when that names one."""
    if wanted in names:
        return wanted
    folded = [n for n in names if n.strip().casefold() == wanted.strip().casefold()]
    return folded[0] if len(folded) == 1 else None


def choose_sheets(
    file_name: str, sheets: Sequence[SheetInfo], *, all_sheets: bool = False
) -> tuple[str, ...]:
    """Choose the sheets to read when the user named none (the rule the CLI, library and web share).

    Args:
        file_name: The workbook's name, for the message.
        sheets: Every visible worksheet, in workbook order.
        all_sheets: Read every matching sheet (``--all-sheets``).

    Returns:
        The sheets to read, in workbook order: the one matching sheet that has rows, every
        matching sheet (``all_sheets``), or, when no sheet matches, the first non-empty sheet.
        Empty when no sheet has data.

    Raises:
        SheetChoiceNeeded: More than one matching sheet has rows and ``all_sheets`` is off.
    """
    matching = [s for s in sheets if s.matches]
    with_rows = [s for s in matching if s.rows]
    if all_sheets and matching:
        return tuple(s.name for s in (with_rows or matching))
    if len(with_rows) > 1:
        raise SheetChoiceNeeded(file_name, sheets)
    if with_rows or matching:
        return ((with_rows or matching)[0].name,)
    # No header names the fields: the first sheet with anything in it (validation says what is missing).
    return next(((s.name,) for s in sheets if s.rows), next(((s.name,) for s in sheets), ()))


def sheet_notes(
    sheets: Sequence[SheetInfo], read: Sequence[str], surface: Surface = Surface.CLI
) -> list[str]:
    """Say which sheets of a workbook were read and which were not, and why (for the summary).

    Args:
        sheets: Every visible sheet (``RawTable.sheets``).
        read: The sheets read (``RawTable.sheets_read``).
        surface: Whose control the advice names (the CLI's flags, the page's sheet choice).

    Returns:
        One note, or none when the workbook has a single sheet.
    """
    if len(sheets) + len(set(read) - {s.name for s in sheets}) < 2:
        return []
    known = {s.name: s for s in sheets}
    taken = ", ".join(
        f'"{name}" ({known[name].rows} {"row" if known[name].rows == 1 else "rows"})'
        if name in known
        else f'"{name}"'
        for name in read
    )
    note = f"read {'sheet' if len(read) == 1 else f'{len(read)} sheets as one table:'} {taken}"
    left: list[str] = []
    for sheet in sheets:
        if sheet.name in read:
            continue
        counted = f"{sheet.rows} {'row' if sheet.rows == 1 else 'rows'}"
        if not sheet.rows and not sheet.matches:
            why = "empty"
        elif sheet.matches:
            why = render_template(f"{counted} with the columns: {{read_other_sheets}}", {}, surface)
        else:
            why = f"{counted}, its headers do not name the fields"
        left.append(f'"{sheet.name}" ({why})')
    return [f"{note}; not read: {', '.join(left)}" if left else note]
