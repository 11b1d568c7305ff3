"""Columns: match the input's headers to fields (``--map``, ``--ignore-column``) and find wrong matches."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from importer.errors import InputError
from importer.fields import (
    DID_FIELDS,
    DIRECTION_OF,
    FIELD_BY_NAME,
    FIELD_NAMES,
    MODE_FIELD,
    Direction,
    Kind,
    closest_header,
    describe_modes,
    header_key,
    match_header,
)
from importer.read.reader import column_letters
from importer.validate.cells import Parsed
from importer.validate.phones import PHONE_SEPARATORS
from importer.words import Surface, WordedInputError, render_template, worded

__all__ = ["map_columns", "parse_column_map", "wrong_column_params", "wrong_matches"]


def parse_column_map(pairs: list[str] | tuple[str, ...]) -> dict[str, str]:
    """Parse ``--map "Header Text=field"`` options into {header text or column letter: field}.

    Raises:
        InputError: a pair without '=' or naming an unknown field.
    """
    out: dict[str, str] = {}
    for pair in pairs:
        header, sep, field = pair.rpartition("=")
        field = field.strip()
        if not sep or not header.strip():
            raise InputError(f'--map "{pair}" must look like "Header Text=field" or "C=field"')
        if field not in FIELD_BY_NAME:
            raise InputError(f'--map "{pair}": unknown field "{field}"; fields are: {", ".join(FIELD_NAMES)}')
        if out.get(header.strip(), field) != field:
            raise InputError(
                f'--map gives "{header.strip()}" two fields ({out[header.strip()]} and {field}); keep one'
            )
        out[header.strip()] = field
    return out


_LETTERS = re.compile(r"[A-Za-z]{1,3}")


def _letter_position(text: str) -> int | None:
    """Return the 0-based column a letter names ("C" -> 2, "AA" -> 26), or None."""
    if not _LETTERS.fullmatch(text):
        return None
    position = 0
    for char in text.upper():
        position = position * 26 + ord(char) - ord("A") + 1
    return position - 1


def _column_position(name: str, headers: tuple[str, ...], first_column: int, option: str) -> int:
    """Find the column a --map or --ignore-column names: by its header text, else by its letter.

    Raises:
        InputError: no such column, or a header text that several columns share.
    """
    key = header_key(name)
    found = [pos for pos, header in enumerate(headers) if key and header_key(header) == key]
    if len(found) == 1:
        return found[0]
    letters = [column_letters(first_column + pos) for pos in range(len(headers))]
    if len(found) > 1:
        where = ", ".join(letters[pos] for pos in found)
        raise InputError(
            f'{option} "{name}": columns {where} all have this header; '
            f'name one by its letter, e.g. "{letters[found[0]]}"'
        )
    position = _letter_position(name)
    if position is not None and 0 <= position - first_column < len(headers):
        return position - first_column
    columns = ", ".join(f'{letters[pos]} "{h}"' for pos, h in enumerate(headers)) or "none"
    where = '"{name}", which is not in the file; columns found: {columns}'
    if option == "--map":
        raise worded("{map_option} names the column " + where, name=name, columns=columns)
    raise InputError(f"{option} names the column " + where.format(name=name, columns=columns))


def map_columns(
    headers: tuple[str, ...],
    column_map: Mapping[str, str],
    ignore: Sequence[str] = (),
    *,
    first_column: int = 0,
) -> dict[str, int]:
    """Match the input's headers to fields; return {field: column position}.

    Args:
        headers: The input's header texts, in column order.
        column_map: ``--map`` entries: header text (or column letter) -> field. They win over
            header matching: a column mapped to a field is that field, and another column whose
            header also names the field is left out.
        ignore: ``--ignore-column`` entries (header text or letter): columns left out of matching.
        first_column: The 0-based sheet column of ``headers[0]`` (for letters).

    Raises:
        InputError: a --map or --ignore-column column that is not in the file, one field or
            column mapped twice, two columns whose headers name one field, or a required column
            that is missing (naming the columns found and the closest match).
    """
    ignored = {_column_position(name, headers, first_column, "--ignore-column") for name in ignore}
    mapping: dict[str, int] = {}
    mapped_by: dict[str, str] = {}
    for name, field in column_map.items():
        pos = _column_position(name, headers, first_column, "--map")
        if pos in ignored:
            raise InputError(f'--map "{name}={field}" names a column that --ignore-column leaves out')
        if field in mapping and mapping[field] != pos:
            raise InputError(f'--map gives {field} twice ("{mapped_by[field]}" and "{name}"); keep one')
        other = next((f for f, p in mapping.items() if p == pos and f != field), None)
        if other is not None:
            raise InputError(f'--map gives the column "{name}" two fields ({other} and {field}); keep one')
        mapping[field] = pos
        mapped_by[field] = name
    taken = set(mapping.values())
    for pos, header in enumerate(headers):
        if pos in ignored or pos in taken:
            continue
        matched = match_header(header)
        if matched is None or matched in mapped_by:
            continue
        if matched in mapping:
            first = headers[mapping[matched]]
            raise worded(
                'columns "{first}" and "{header}" both mean {field}; {pick_one}',
                first=first,
                header=header,
                field=matched,
            )
        mapping[matched] = pos
    found = ", ".join(f'"{h}"' for h in headers if h.strip()) or "none"
    missing: list[str] = []
    if not any(f in mapping for f in DID_FIELDS):
        missing.append("did_number (or did_id)")
    missing += [MODE_FIELD[d] for d in Direction if MODE_FIELD[d] not in mapping]
    if missing:
        nearest: list[dict[str, str]] = []
        for name in missing:
            wanted = name.split(" ")[0]
            unused = [h for i, h in enumerate(headers) if i not in mapping.values() and i not in ignored]
            near = closest_header(wanted, unused)
            if near is not None:
                nearest.append({"near": near, "field": wanted})
        texts = {}
        for surface in Surface:
            hints = [render_template('"{near}" looks like {field}: {map_pick}', p, surface) for p in nearest]
            hint = ("; " + "; ".join(hints)) if hints else ""
            texts[surface] = f"missing required column {', '.join(missing)}; columns found: {found}{hint}"
        raise WordedInputError(texts)
    return mapping


WRONG_MATCH_SHARE = 0.2
"""A column matched by its header (not by ``--map``) whose non-empty cells fit its field less often
than this (with at least 3 cells and 2 different misfits) is taken for a wrong match (a "State"
column of NY, CA matched to status): its rows whose value does not fit fail with one reason that
names the column and the fix, and the report carries a note, instead of one "is not a status" per
value. The column is not dropped silently: a status column in another vocabulary (On/Off) would
turn every row active."""

_PHONE_LIKE = re.compile(r"\+?\d{6,17}")

_ACCEPTED: dict[Kind, str] = {
    Kind.PHONE: "a DID is a phone number",
    Kind.INT_ID: "ids are positive whole numbers",
    Kind.STATUS: "a status is active/inactive, 1/0, yes/no, y/n or true/false",
    Kind.UUID: "a connection id is a UUID",
}


def _fits(name: str, text: str) -> bool:
    """Say whether a cell that did not parse still looks like its field's kind of value."""
    if FIELD_BY_NAME[name].kind is not Kind.PHONE:
        return False
    # A national or mistyped number is still a phone number: its own message says what to fix.
    compact = PHONE_SEPARATORS.sub("", text)
    return bool(_PHONE_LIKE.fullmatch(compact.replace("00", "+", 1) if compact.startswith("00") else compact))


def wrong_matches(parsed: Parsed, auto: Sequence[str]) -> dict[str, str]:
    """Find the header-matched fields whose column's values mostly do not fit the field.

    Args:
        parsed: The parsed table.
        auto: The fields matched by their header (a ``--map`` is taken at its word).

    Returns:
        {field: up to three of its values that do not fit, quoted and comma-separated}.
    """
    out: dict[str, str] = {}
    for name in auto:
        text = parsed.clean[name]
        filled = ~parsed.blank[name]
        count = int(filled.sum())
        if not count:
            continue
        bad = filled & ~parsed.parsed_ok[name]
        failing = int(bad.sum())
        if failing <= count * (1 - WRONG_MATCH_SHARE):
            continue  # the common case: one cheap count and no per-cell work
        values = text[bad].tolist()
        fit = {t: _fits(name, t) for t in dict.fromkeys(values)}
        fitting = count - failing + sum(fit[t] for t in values)
        misfits = [t for t, ok in fit.items() if not ok]
        # A few cells, or one value over and over (a typo copied down), get their own messages.
        if fitting < count * WRONG_MATCH_SHARE and count >= 3 and len(misfits) >= 2:
            out[name] = ", ".join(f'"{t}"' for t in misfits[:3])
    return out


def wrong_column_params(header: str, field: str, values: str) -> dict[str, str]:
    """The params of a row whose value sits in a column that does not look like its field."""
    kind = FIELD_BY_NAME[field].kind
    accepted = f"modes are {describe_modes(DIRECTION_OF[field])}" if kind is Kind.MODE else _ACCEPTED[kind]
    return {"field": field, "values": values, "accepted": accepted}
