"""Show a workbook cell as Excel displays it, for the number formats that change what a cell reads.

calamine gives a date cell as a date (read here as ISO text, "2024-01-05") and a percent cell as
its number (0.25); Excel shows them through the cell's number format ("05/01/2024", "25%"). The
results carry the user's columns as the sheet shows them, so ``.xlsx`` cells whose style has an
explicit date, time or percent format are rendered with it. Formats that depend on the reader's
locale (Excel's default short date, id 14) stay ISO: no one rendering of them is right.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping

__all__ = ["format_kind", "render", "renderable_formats"]

_BUILTIN = {
    9: "0%",
    10: "0.00%",
    15: "d-mmm-yy",
    16: "d-mmm",
    17: "mmm-yy",
    18: "h:mm AM/PM",
    19: "h:mm:ss AM/PM",
    20: "h:mm",
    21: "h:mm:ss",
    45: "mm:ss",
}
"""Excel's built-in number formats that read the same in every locale (14 and 22 do not)."""

_MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]
_DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
_PERCENT = re.compile(r"[#,]*0(?:\.(0+))?%")
_TOKEN = re.compile(
    r'"(?P<quoted>[^"]*)"?|\\(?P<escaped>.)|\[(?P<bracket>[^\]]*)\]|_(?P<space>.)|\*(?P<fill>.)'
    r"|(?P<ampm>AM/PM|am/pm|A/P|a/p)|(?P<part>[yY]+|[mM]+|[dD]+|[hH]+|[sS]+)|(?P<fraction>\.0+)"
    r"|(?P<letter>[A-Za-z])|(?P<other>.)",
    re.DOTALL,
)


def renderable_formats(codes: Mapping[int, str], styles: list[int]) -> dict[int, str]:
    """Pick the cell styles whose number format this module renders.

    Args:
        codes: The workbook's own format codes by number-format id.
        styles: The number-format id of each cell style (``cellXfs``), by style index.

    Returns:
        Style index -> format code, for date, time and percent formats only.
    """
    out: dict[int, str] = {}
    for index, number_format in enumerate(styles):
        code = codes.get(number_format) or _BUILTIN.get(number_format)
        if code is not None and format_kind(code) is not None:
            out[index] = code
    return out


def _first_section(code: str) -> str:
    """The format's first section (the one for positive numbers and dates)."""
    in_quote = False
    for i, char in enumerate(code):
        if char == '"':
            in_quote = not in_quote
        elif char == ";" and not in_quote:
            return code[:i]
    return code


def format_kind(code: str) -> str | None:
    """Say whether a format code is a date/time ("date") or percent ("percent") format we render."""
    section = _first_section(code)
    bare = re.sub(r'"[^"]*"|\\.|\[[^\]]*\]|_.|\*.', "", section)
    if _PERCENT.fullmatch(bare.strip()):
        return "percent"
    bare = re.sub(r"(?<=[sS])\.0+", "", bare)  # fractions of a second, not a number format
    if re.search(r"\[[hms]+\]", section, re.I) or re.search(r"[0#?]", bare):
        return None  # elapsed time, or a number format
    if re.search(r"[ydhms]", bare, re.I):
        return "date"
    return None


def render(code: str, text: str) -> str | None:
    """Render a cell's text (ISO date/time or a number, as the reader has it) with a format code.

    Returns:
        The text Excel shows, or None when this cell or format is not one rendered here.
    """
    kind = format_kind(code)
    if kind == "percent":
        try:
            number = float(text)
        except ValueError:
            return None
        match = _PERCENT.fullmatch(re.sub(r'"[^"]*"|\\.|\[[^\]]*\]|_.|\*.', "", _first_section(code)).strip())
        places = len(match.group(1) or "") if match else 0
        grouping = "," if "," in code else ""
        return f"{number * 100:{grouping}.{places}f}%"
    if kind == "date":
        moment = _moment(text)
        return _render_date(_first_section(code), moment) if moment is not None else None
    return None


def _moment(text: str) -> dt.datetime | None:
    try:
        return dt.datetime.fromisoformat(text)
    except ValueError:
        pass
    try:
        clock = dt.time.fromisoformat(text)
    except ValueError:
        return None
    return dt.datetime.combine(dt.date(1899, 12, 31), clock)


def _render_date(section: str, moment: dt.datetime) -> str | None:
    tokens: list[tuple[str, str]] = []
    twelve_hour = False
    for match in _TOKEN.finditer(section):
        kind = match.lastgroup or "other"
        value = match.group(kind) or ""
        if kind == "bracket":
            if value.startswith("$") and "-" in value and len(value.split("-")[0]) > 1:
                tokens.append(("literal", value[1:].split("-")[0]))  # a currency symbol
            continue  # a locale or a colour
        if kind == "letter":
            return None  # an era, a Buddhist year, "General": not rendered here
        if kind == "ampm":
            twelve_hour = True
        tokens.append((kind, value))
    parts = [i for i, (kind, _) in enumerate(tokens) if kind == "part"]
    out: list[str] = []
    for position, (kind, value) in enumerate(tokens):
        if kind in ("quoted", "escaped", "literal", "other"):
            out.append(value)
        elif kind == "space":
            out.append(" ")
        elif kind == "ampm":
            upper = moment.hour >= 12
            out.append(("PM" if upper else "AM") if len(value) > 3 else ("P" if upper else "A"))
            if value.islower():
                out[-1] = out[-1].lower()
        elif kind == "fraction":
            digits = f"{moment.microsecond:06d}"[: len(value) - 1]
            out.append("." + digits)
        elif kind == "part":
            out.append(_part(value.lower(), moment, twelve_hour, _is_minute(tokens, parts, position)))
    return "".join(out)


def _is_minute(tokens: list[tuple[str, str]], parts: list[int], position: int) -> bool:
    """Tell whether an m/mm token means minutes: right after an hour or right before seconds."""
    if not tokens[position][1].lower().startswith("m") or len(tokens[position][1]) > 2:
        return False
    at = parts.index(position)
    before = tokens[parts[at - 1]][1].lower() if at > 0 else ""
    after = tokens[parts[at + 1]][1].lower() if at + 1 < len(parts) else ""
    return before.startswith("h") or after.startswith("s")


def _part(token: str, moment: dt.datetime, twelve_hour: bool, minute: bool) -> str:
    letter, size = token[0], len(token)
    if letter == "y":
        return f"{moment.year % 100:02d}" if size <= 2 else f"{moment.year:04d}"
    if letter == "m" and minute:
        return f"{moment.minute:02d}" if size == 2 else str(moment.minute)
    if letter == "m":
        if size >= 5:
            return _MONTHS[moment.month - 1][0]
        if size == 4:
            return _MONTHS[moment.month - 1]
        if size == 3:
            return _MONTHS[moment.month - 1][:3]
        return f"{moment.month:02d}" if size == 2 else str(moment.month)
    if letter == "d":
        if size >= 4:
            return _DAYS[moment.weekday()]
        if size == 3:
            return _DAYS[moment.weekday()][:3]
        return f"{moment.day:02d}" if size == 2 else str(moment.day)
    if letter == "h":
        hour = (moment.hour % 12 or 12) if twelve_hour else moment.hour
        return f"{hour:02d}" if size >= 2 else str(hour)
    return f"{moment.second:02d}" if size >= 2 else str(moment.second)
