"""Validate every row of a table with pandera: all of a row's problems at once.

The rules come from ``fields.py``. Each cell is parsed once (with a cache per distinct
value, so a million-row file costs one parse per distinct value), and a pandera schema
built from the field spec checks the parsed columns. ``validate(lazy=True)`` gathers every
failure; the failure cases become ``RowIssue`` values with messages that name the column
(as the user wrote it) and the value. Rows are never dropped silently: each input row is
either in ``ValidationReport.valid`` or has at least one issue.
"""

from __future__ import annotations

import functools
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import cast, overload

import numpy as np
import numpy.typing as npt
import pandas as pd
import pandera.pandas as pa
import phonenumbers

from importer.errors import InputError, shown
from importer.fields import (
    DID_FIELDS,
    DIRECTION_OF,
    FIELD_BY_NAME,
    FIELD_NAMES,
    FIELDS,
    MODE_FIELD,
    MODE_ID_FIELDS,
    MODE_INDEX,
    MODES,
    STATUS_VALUES,
    Direction,
    Kind,
    closest_header,
    describe_modes,
    header_key,
    match_header,
)
from importer.model import RawTable, RoutingRow, RowIssue, ValidationReport
from importer.read.xlsx import EXCEL_ERRORS, UNSAVED_FORMULA, column_letters

__all__ = ["PhoneNormaliser", "map_columns", "parse_column_map", "validate_table"]

# Characters that sneak in from copy and paste and are invisible in Excel.
_INVISIBLE = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff"), None)
# At most 19 digits: every id fits in 63 bits, and int() of thousands of digits would raise.
_INT_TEXT = re.compile(r"\+?(\d{1,19})(?:\.0*)?")
_SCIENTIFIC = re.compile(r"[+-]?\d+(?:[.,]\d*)?[eE][+-]?\d+")
_PHONE_SEPARATORS = re.compile(r"[\s\-().\u00a0/]+")
_MAX_ID = 2**63 - 1


def clean_text(value: str) -> str:
    """Trim whitespace (including no-break spaces) and invisible characters from a cell."""
    return value.translate(_INVISIBLE).strip()


def parse_positive_int(text: str) -> int | None:
    """Return the positive integer a cell holds ('93', '93.0'), or None."""
    m = _INT_TEXT.fullmatch(text)
    if m is None:
        return None
    value = int(m.group(1))
    return value if 0 < value <= _MAX_ID else None


def describe_bad_int(text: str) -> str:
    """Say why a cell is not a positive whole number."""
    if len(text) > 19 and text.lstrip("+-").isdigit():
        return "is too large to be an id"
    try:
        number = float(text.replace(",", "."))
    except ValueError:
        return "is not a number"
    if number != number or number in (float("inf"), float("-inf")):
        return "is not a finite number"
    if number != int(number):
        return "is not a whole number"
    if number <= 0:
        return "must be 1 or more"
    return "is not a plain whole number (write it without exponent or separators)"


def parse_mode(direction: Direction, text: str) -> int | None:
    """Return the mode number a cell names in ``direction`` (number or label), or None."""
    m = _INT_TEXT.fullmatch(text)
    if m is not None:
        number = int(m.group(1))
        return number if number in MODES[direction] else None
    return MODE_INDEX[direction].get(header_key(text))


def parse_status(text: str) -> int | None:
    """Return 1 or 0 for a status cell (blank is 1), or None when it is not a status."""
    if text == "":
        return 1
    m = _INT_TEXT.fullmatch(text)
    key = m.group(1).lstrip("0") or "0" if m is not None else text.casefold()
    return STATUS_VALUES.get(key)


def parse_uuid(text: str) -> str | None:
    """Return the canonical form of a UUID cell, or None."""
    try:
        return str(uuid.UUID(text))
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class PhoneResult:
    """A normalised number (country code + number, digits only) or why there is none."""

    number: str | None
    problem: str
    kind: str


_PLAIN_INTERNATIONAL = re.compile(r"\+?([1-9]\d{6,16})")
# An extension after the number, as people and phonenumbers write it: "ext. 12", "x12", ";ext=12".
_EXTENSION = re.compile(
    r"(?P<ext>(?:;\s*ext\s*=|[\s,]*(?:ext(?:ension)?\.?|x|#))\s*:?\s*\d{1,7})\s*\Z", re.IGNORECASE
)

# The number types phonenumbers' validity check tries, in its order (fixed line and mobile last).
_NUMBER_TYPES = (
    "premium_rate",
    "toll_free",
    "shared_cost",
    "voip",
    "personal_number",
    "pager",
    "uan",
    "voicemail",
    "fixed_line",
    "mobile",
)


@dataclass(frozen=True, slots=True)
class _RegionPatterns:
    """One region's valid national numbers, as one pattern per national length.

    phonenumbers calls a national number valid when it matches the general description and
    one number type (each with its own lengths); here each length gets one alternation of the
    types that allow it, behind a lookahead for the general pattern, so validity costs a dict
    lookup and one ``fullmatch`` instead of up to eleven. Each pattern is compiled on first use:
    the 25 regions of +1 take ~60 ms to compile, and a file of US numbers needs only the US one.
    """

    leading_digits: re.Pattern[str] | None
    sources: Mapping[int, str]
    compiled: dict[int, re.Pattern[str]]
    """The patterns compiled so far, by length (filled by ``valid``)."""

    def valid(self, national: str) -> bool:
        pattern = self.compiled.get(len(national))
        if pattern is None:
            source = self.sources.get(len(national))
            if source is None:
                return False
            pattern = self.compiled[len(national)] = re.compile(source)
        return pattern.fullmatch(national) is not None


def _region_patterns(meta: phonenumbers.PhoneMetadata) -> _RegionPatterns:
    general = meta.general_desc
    types = [getattr(meta, name) for name in _NUMBER_TYPES]
    if meta.same_mobile_and_fixed_line_pattern:
        types = types[:-1]  # phonenumbers then never tries the mobile pattern on its own
    sources: dict[int, str] = {}
    if general is not None and general.national_number_pattern:
        for length in sorted(set(general.possible_length or ())):
            branches = [
                f"(?:{desc.national_number_pattern})"
                for desc in types
                if desc is not None
                and desc.national_number_pattern
                and (not desc.possible_length or length in desc.possible_length)
            ]
            if branches:
                sources[length] = rf"(?=(?:{general.national_number_pattern})\Z)(?:{'|'.join(branches)})"
    leading = re.compile(meta.leading_digits) if meta.leading_digits else None
    return _RegionPatterns(leading, sources, {})


@dataclass(frozen=True, slots=True)
class _CountryRule:
    """What phonenumbers' metadata says about one country code, for the fast path."""

    national_prefix: re.Pattern[str] | None
    regions: tuple[_RegionPatterns, ...]
    first: Mapping[int, re.Pattern[str]] | None
    """The compiled patterns by length of the region that claims a valid number first (the only
    region, or a first one without leading digits: US for +1, GB for +44): the fast path's
    shortcut. A miss (or a length not compiled yet) goes through ``valid``."""

    def valid(self, national: str) -> bool:
        """Say whether ``phonenumbers.is_valid_number`` holds for this code and national number."""
        if len(self.regions) == 1:
            return self.regions[0].valid(national)
        # As phonenumbers picks the region: the first whose leading digits match decides; a
        # region without leading digits claims the number when the number is valid there.
        for region in self.regions:
            if region.leading_digits is not None:
                if region.leading_digits.match(national):
                    return region.valid(national)
            elif region.valid(national):
                return True
        return False


@functools.cache
def _country_rule(code: int) -> _CountryRule | None:
    """Compile a country code's rule from phonenumbers' metadata (once per process: it is constant)."""
    regions = phonenumbers.COUNTRY_CODE_TO_REGION_CODE.get(code)
    if not regions:
        return None
    metas = [phonenumbers.PhoneMetadata.metadata_for_region_or_calling_code(code, r) for r in regions]
    if len(metas) > 1:
        metas = [phonenumbers.PhoneMetadata.metadata_for_region(r) for r in regions]
    main = metas[0]
    if main is None or main.general_desc is None:
        return None
    prefix = main.national_prefix_for_parsing or main.national_prefix
    patterns = tuple(_region_patterns(m) for m in metas if m is not None)
    return _CountryRule(
        re.compile(prefix) if prefix else None,
        patterns,
        patterns[0].compiled if len(patterns) == 1 or patterns[0].leading_digits is None else None,
    )


@functools.cache
def _region_rule(region: str) -> tuple[int, str | None, _RegionPatterns]:
    """A region's country code, national prefix and valid national numbers."""
    meta = phonenumbers.PhoneMetadata.metadata_for_region(region)
    assert meta is not None and meta.country_code is not None
    return meta.country_code, meta.national_prefix, _region_patterns(meta)


SUGGESTED_REGIONS: tuple[str, ...] = (
    "US",
    "CA",
    "GB",
    "IN",
    "AU",
    "DE",
    "FR",
    "IT",
    "ES",
    "NL",
    "IE",
    "BR",
    "MX",
    "SG",
    "AE",
    "ZA",
    "NZ",
    "PH",
)
"""Regions whose national numbers a missing-country-code message suggests, in this order."""


def national_readings(digits: str, limit: int = 3) -> list[tuple[str, str]]:
    """List (region, +international form) for the regions in which ``digits`` is a valid national number.

    Only the regions of ``SUGGESTED_REGIONS`` are tried (a random string of ten digits is a
    valid number somewhere in dozens of countries; these are where carrier sheets come from).
    A leading national prefix (the 0 of a London 020 ...) is dropped before the check.
    """
    out: list[tuple[str, str]] = []
    for region in SUGGESTED_REGIONS:
        code, prefix, patterns = _region_rule(region)
        national = digits[len(prefix) :] if prefix and digits.startswith(prefix) else digits
        rule = _country_rule(code)
        if not national or not patterns.valid(national) or rule is None or not rule.valid(national):
            continue
        # Built, not parsed: a parse costs most of the time of a suggestion.
        zeros = len(national) - len(national.lstrip("0"))
        number = phonenumbers.PhoneNumber(
            country_code=code,
            national_number=int(national),
            italian_leading_zero=True if zeros else None,
            number_of_leading_zeros=min(zeros, len(national) - 1) if zeros > 1 else None,
        )
        # Spaces, not the dashes of the US style: the form a sheet's cell is easiest to fix with.
        text = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.INTERNATIONAL)
        out.append((region, text.replace("-", " ")))
        if len(out) == limit:
            break
    return out


def _suggest_country_code(digits: str) -> str:
    """Say which country codes would make ``digits`` a valid number, or '' when none would."""
    readings = national_readings(digits)
    if not readings:
        return ""
    (region, first), others = readings[0], readings[1:]
    more = f" ({', '.join(f'{r}: {number}' for r, number in others)})" if others else ""
    article = "an" if region[0] in "AEFHILMNORSX" else "a"  # as the letters are read: an IN, a US
    return (
        f"if it is {article} {region} number add the country code: {first}{more}, "
        f"or pass --default-region {region}"
    )


def _describe_code(code: int) -> str:
    regions = [r for r in phonenumbers.COUNTRY_CODE_TO_REGION_CODE.get(code, ()) if r != "001"]
    return f"+{code} ({', '.join(regions[:3])})" if regions else f"+{code}"


class PhoneNormaliser:
    """Normalise phone cells to the API's form with the phonenumbers library, with a cache.

    A number is accepted only when phonenumbers calls it *valid* for the country its code
    names (a possible length is not enough: 4805550123, a US number without its +1, has a
    possible length for Poland's +48). Most carrier sheets hold plain international numbers
    ("+918012345678" or "918012345678"). For those, a fast path reads the country code and
    checks the national number against phonenumbers' own metadata patterns, compiled on first
    use, and gives the same answer as a full ``phonenumbers.parse`` plus
    ``is_valid_number`` at a fraction of the cost; it steps aside (to the full parse) whenever
    the national part could start with a national prefix or is not valid.
    ``tests/test_validate.py`` checks the two agree across every country code.
    """

    def __init__(self, default_region: str | None = None) -> None:
        self.default_region = default_region
        self._heads: dict[str, tuple[int, _CountryRule | None]] = {}

    def __call__(self, text: str) -> PhoneResult:
        """Normalise one cleaned, non-empty cell."""
        number = self.quick(text)
        if number is not None:
            return PhoneResult(number, "", "")
        return self.normalise(text)

    def quick(self, text: str) -> str | None:
        """Return the number of a cleaned cell the fast path can read, or None to ask ``normalise``.

        Besides plain digits, this reads numbers written with separators ("+44 20 7946 0123",
        "0044-20-...") by compacting them exactly as ``normalise`` does before its full parse.
        """
        if self.default_region is None or text.startswith("+"):
            m = _PLAIN_INTERNATIONAL.fullmatch(text)
            if m is not None:
                return self._fast(m.group(1))
        compact = _PHONE_SEPARATORS.sub("", text)
        if compact.startswith("00"):
            compact = "+" + compact[2:]
        if compact != text and (self.default_region is None or compact.startswith("+")):
            m = _PLAIN_INTERNATIONAL.fullmatch(compact)
            if m is not None:
                return self._fast(m.group(1))
        return None

    def _head(self, head: str) -> tuple[int, _CountryRule | None]:
        """Return the country code's length and rule for a number's first three digits."""
        for size in (1, 2, 3):
            code = int(head[:size])
            if code in phonenumbers.COUNTRY_CODE_TO_REGION_CODE:
                return size, _country_rule(code)
        return 0, None

    def _fast(self, digits: str) -> str | None:
        # The first three digits decide the country code: look them up once per distinct head.
        head = digits[:3]
        try:
            size, rule = self._heads[head]
        except KeyError:
            size, rule = self._heads[head] = self._head(head)
        if rule is None:
            return None
        national = digits[size:]
        if rule.national_prefix is not None and rule.national_prefix.match(national):
            return None
        first = rule.first
        if first is not None:  # the common case of _CountryRule.valid, inlined: once per number
            pattern = first.get(len(national))
            if pattern is not None and pattern.fullmatch(national):
                return digits
        return digits if rule.valid(national) else None

    def normalise(self, text: str) -> PhoneResult:
        """Normalise one cleaned, non-empty cell with a full phonenumbers parse."""
        if _SCIENTIFIC.fullmatch(text):
            return PhoneResult(
                None,
                "is in scientific notation, so Excel has lost digits: format the column as Text "
                "in Excel, type the numbers again and export again",
                "scientific_notation",
            )
        extension = _EXTENSION.search(text)
        if extension is not None and any(c.isdigit() for c in text[: extension.start()]):
            written = extension.group("ext").strip(" ,")
            return PhoneResult(
                None, f"has an extension, but DIDs have no extension: remove '{written}'", "extension"
            )
        if any(c.isalpha() for c in text):
            return PhoneResult(None, "contains letters; write the number with digits only", "bad_number")
        compact = _PHONE_SEPARATORS.sub("", text)
        if compact.startswith("00"):
            compact = "+" + compact[2:]
        if compact.startswith("+"):
            return self._parse(compact, None) or self._invalid_international(compact)
        if self.default_region is not None:
            # The region's national reading first; a number that is already valid with its
            # country code is taken as it is and never gets the region's code in front.
            found = self._parse(compact, self.default_region)
            if found is None and not compact.startswith("0"):
                found = self._parse("+" + compact, None)
            return found or PhoneResult(
                None,
                f"is not a valid number of region {self.default_region} (nor with a country code)",
                "bad_number",
            )
        if not compact.startswith("0"):
            found = self._parse("+" + compact, None)
            if found is not None:
                return found
        return self._missing_country_code(compact)

    @staticmethod
    def _parse(candidate: str, region: str | None) -> PhoneResult | None:
        """Return the E.164 digits of a valid number (or why it has an extension), else None."""
        try:
            parsed = phonenumbers.parse(candidate, region)
        except phonenumbers.NumberParseException:
            return None
        if parsed.extension:  # a spelling of an extension that _EXTENSION does not know
            return PhoneResult(None, "has an extension, but DIDs have no extension: remove it", "extension")
        if not phonenumbers.is_valid_number(parsed):
            return None
        e164 = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
        return PhoneResult(e164.lstrip("+"), "", "")

    @staticmethod
    def _invalid_international(compact: str) -> PhoneResult:
        try:
            code = phonenumbers.parse(compact, None).country_code
        except phonenumbers.NumberParseException:
            return PhoneResult(None, "is not a valid phone number", "bad_number")
        return PhoneResult(None, f"is not a valid number of {_describe_code(code or 0)}", "bad_number")

    @staticmethod
    def _missing_country_code(compact: str) -> PhoneResult:
        digits = compact.lstrip("+")
        suggestion = _suggest_country_code(digits) if digits.isdigit() else ""
        if compact.startswith("0"):
            return PhoneResult(
                None,
                f"is a national number (no country code): {suggestion}"
                if suggestion
                else "is not an international number: add the country code (e.g. +91 80 1234 5678), "
                "or pass --default-region to read national numbers",
                "no_country_code",
            )
        if suggestion:
            return PhoneResult(None, f"is not a valid number of any country; {suggestion}", "no_country_code")
        return PhoneResult(
            None,
            "is not a valid number of any country: check the digits and write it with its country "
            "code (e.g. +91 80 1234 5678)",
            "bad_number",
        )


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
    raise InputError(
        f'{option} names the column "{name}", which is not in the file; columns found: {columns}'
    )


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
            if header_key(first) == header_key(header):  # the same header twice: only letters tell them apart
                first_name = column_letters(first_column + mapping[matched])
                name = column_letters(first_column + pos)
                raise InputError(
                    f'columns {first_name} "{first}" and {name} "{header}" both mean {matched}; pick one '
                    f'with --map "{name}={matched}" or leave one out with --ignore-column "{first_name}"'
                )
            raise InputError(
                f'columns "{first}" and "{header}" both mean {matched}; pick one with '
                f'--map "{header}={matched}" or leave one out with --ignore-column "{first}"'
            )
        mapping[matched] = pos
    found = ", ".join(f'"{h}"' for h in headers if h.strip()) or "none"
    missing: list[str] = []
    if not any(f in mapping for f in DID_FIELDS):
        missing.append("did_number (or did_id)")
    missing += [MODE_FIELD[d] for d in Direction if MODE_FIELD[d] not in mapping]
    if missing:
        hints = []
        for name in missing:
            wanted = name.split(" ")[0]
            unused = [h for i, h in enumerate(headers) if i not in mapping.values() and i not in ignored]
            near = closest_header(wanted, unused)
            if near is not None:
                hints.append(f'"{near}" looks like {wanted}: add --map "{near}={wanted}"')
        hint = ("; " + "; ".join(hints)) if hints else ""
        raise InputError(f"missing required column {', '.join(missing)}; columns found: {found}{hint}")
    return mapping


@dataclass(frozen=True, slots=True)
class _Parsed:
    """Every field column, cleaned and parsed (None where a cell does not parse)."""

    clean: pd.DataFrame
    values: dict[str, pd.Series]
    phone: dict[int, PhoneResult]
    """Why each non-empty phone cell that did not parse failed, by Excel row (the others are fine)."""
    duplicate_of: dict[str, pd.Series]
    """For did_number and did_id: the Excel row of the first occurrence, for each later row."""
    blank: dict[str, pd.Series]
    """True where a field's cell is empty (computed once: each costs a pass over the column)."""
    parsed_ok: dict[str, pd.Series]
    """True where a field's cell parsed (computed once, as ``blank``)."""


def _parse_series(series: pd.Series, fn: Callable[[str], object]) -> pd.Series:
    """Apply ``fn`` once per distinct value of a text column."""
    seen: dict[object, object] = {}
    out = []
    for v in series.tolist():
        try:
            out.append(seen[v])
        except KeyError:
            seen[v] = result = fn(v)
            out.append(result)
    # dtype object keeps ints as ints next to None (pandas would make them floats)
    return pd.Series(out, index=series.index, dtype=object)


def _parse_phones(column: pd.Series, normaliser: PhoneNormaliser) -> tuple[pd.Series, dict[int, PhoneResult]]:
    """Normalise a phone column: the numbers (None when blank or bad) and why the bad ones failed."""
    quick = normaliser.quick
    numbers: list[str | None] = []
    problems: dict[int, PhoneResult] = {}
    # Phone cells are nearly all distinct, so no cache; the fast path needs no result object.
    for row, text in zip(column.index.tolist(), column.tolist(), strict=True):
        number = quick(text) if text else None
        if number is None and text:
            result = normaliser.normalise(text)
            number = result.number
            if number is None:
                problems[row] = result
        numbers.append(number)
    return pd.Series(numbers, index=column.index, dtype=object), problems


def _parse(clean: pd.DataFrame, normaliser: PhoneNormaliser) -> _Parsed:
    values: dict[str, pd.Series] = {}
    problems: dict[int, PhoneResult] = {}
    for f in FIELDS:
        col = clean[f.name]
        if f.kind is Kind.INT_ID:
            values[f.name] = _parse_series(col, parse_positive_int)
        elif f.kind is Kind.PHONE:
            values[f.name], problems = _parse_phones(col, normaliser)
        elif f.kind is Kind.MODE:
            direction = DIRECTION_OF[f.name]
            values[f.name] = _parse_series(col, lambda t, d=direction: parse_mode(d, t))  # type: ignore[misc]
        elif f.kind is Kind.STATUS:
            values[f.name] = _parse_series(col, parse_status)
        else:
            values[f.name] = _parse_series(col, lambda t: parse_uuid(t) if t else None)
    duplicate_of = {name: _first_occurrence(values[name]) for name in DID_FIELDS}
    blank = {name: clean[name] == "" for name in FIELD_NAMES}
    parsed_ok = {name: values[name].notna() for name in FIELD_NAMES}
    return _Parsed(clean, values, problems, duplicate_of, blank, parsed_ok)


def _modes_needing(id_field: str) -> tuple[Direction, set[int]]:
    for direction, modes in MODES.items():
        numbers = {m.number for m in modes.values() if m.requires == id_field}
        if numbers:
            return direction, numbers
    raise KeyError(id_field)  # pragma: no cover - fields.py defines every id field with a mode


def _first_occurrence(keys: pd.Series) -> pd.Series:
    """For each row whose key appeared on an earlier row, the Excel row of the first one."""
    # Hash codes in C, then the first position of each code: no per-cell Python and no sort of
    # the keys themselves (a groupby on a million distinct strings costs seconds).
    codes, _ = pd.factorize(keys.to_numpy(dtype=object))  # missing keys get -1
    positions = np.flatnonzero(codes >= 0)
    present = codes[positions]
    _, first_index = np.unique(present, return_index=True)
    first = positions[first_index][present]
    later = first != positions
    rows = keys.index.to_numpy()
    return pd.Series(rows[first[later]], index=pd.Index(rows[positions[later]]), dtype="int64")


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
    compact = _PHONE_SEPARATORS.sub("", text)
    return bool(_PHONE_LIKE.fullmatch(compact.replace("00", "+", 1) if compact.startswith("00") else compact))


def wrong_matches(parsed: _Parsed, auto: Sequence[str]) -> dict[str, str]:
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


def _check(ok: pd.Series, name: str) -> pa.Check:
    """A check whose answer was computed from the parsed columns (True where the cell is fine)."""
    # ignore_na=False: cells are never null, and pandera's null scan per check costs a full pass.
    return pa.Check(lambda _obj: ok, name=name, ignore_na=False)


def build_schema(parsed: _Parsed, wrong: Mapping[str, str] | None = None) -> pa.DataFrameSchema:
    """Build the pandera schema for one table from the field spec.

    Column checks test each cell's parse; dataframe-wide checks test the rules that span
    columns (a DID on every row, the id each mode needs, ids for unused modes, duplicates).
    A column in ``wrong`` (see ``wrong_matches``) fails each cell that does not parse as a column
    that is not its field, instead of with a message about the value.
    """
    clean, values, blank = parsed.clean, parsed.values, parsed.blank
    columns: dict[str, pa.Column] = {}
    for f in FIELDS:
        checks: list[pa.Check] = []
        parsed_ok = parsed.parsed_ok[f.name]
        if wrong and f.name in wrong:
            # Its few values that parse are taken as they are; the others get one reason that
            # names the column instead of one per value.
            checks.append(_check(parsed_ok | blank[f.name], "wrong_column"))
            if f.kind is Kind.MODE:
                checks.append(_check(~blank[f.name], "mode_required"))
        elif f.kind is Kind.PHONE:
            scientific = [row for row, r in parsed.phone.items() if r.kind == "scientific_notation"]
            sci = pd.Series(clean.index.isin(scientific), index=clean.index)
            checks.append(_check(~sci, "scientific_notation"))
            checks.append(_check(parsed_ok | blank[f.name] | sci, "phone_number"))
        elif f.kind is Kind.MODE:
            checks.append(_check(~blank[f.name], "mode_required"))
            checks.append(_check(parsed_ok | blank[f.name], "mode"))
        elif f.kind is Kind.STATUS:
            checks.append(_check(parsed_ok, "status"))
        else:
            name = "positive_integer" if f.kind is Kind.INT_ID else "uuid"
            checks.append(_check(parsed_ok | blank[f.name], name))
        # nullable=True: cleaned cells are always str, so pandera's null scan could never fail.
        columns[f.name] = pa.Column(object, checks=checks, nullable=True)

    frame_checks = [_check(~(blank["did_id"] & blank["did_number"]), "did_missing")]
    for id_field in MODE_ID_FIELDS:
        direction, numbers = _modes_needing(id_field)
        mode = values[MODE_FIELD[direction]]
        uses = mode.isin(numbers)
        known_mode = parsed.parsed_ok[MODE_FIELD[direction]]
        frame_checks.append(_check(~(uses & blank[id_field]), f"mode_id_missing:{id_field}"))
        frame_checks.append(_check(~(~blank[id_field] & known_mode & ~uses), f"mode_id_unused:{id_field}"))
    duplicate = clean.index.isin(parsed.duplicate_of["did_number"].index) | clean.index.isin(
        parsed.duplicate_of["did_id"].index
    )
    frame_checks.append(_check(pd.Series(~duplicate, index=clean.index), "duplicate_did"))
    return pa.DataFrameSchema(columns, checks=frame_checks, strict=True, coerce=False)


class _Messages:
    """Turn pandera failure cases into RowIssues that name the user's column and value."""

    def __init__(
        self, table: RawTable, mapping: Mapping[str, int], parsed: _Parsed, wrong: Mapping[str, str]
    ) -> None:
        self.table = table
        self.mapping = mapping
        self.parsed = parsed
        self.wrong = wrong
        self.dup_number = parsed.duplicate_of["did_number"]
        self.dup_id = parsed.duplicate_of["did_id"]
        # Plain arrays and one index lookup per row: DataFrame.at costs ~10 us a call, and a
        # large file can have tens of thousands of failing rows.
        self._raw = {field: table.frame[pos].to_numpy() for field, pos in mapping.items()}
        self._raw_position = table.frame.index.get_loc
        self._clean = {name: parsed.clean[name].to_numpy() for name in MODE_FIELD.values()}
        self._values = {name: parsed.values[name].to_numpy() for name in MODE_FIELD.values()}
        self._clean_position = parsed.clean.index.get_loc

    def header(self, field: str) -> str:
        pos = self.mapping.get(field)
        return shown(self.table.headers[pos]) if pos is not None else field

    def raw(self, row: int, field: str) -> str:
        cells = self._raw.get(field)
        return str(cells[self._raw_position(row)]) if cells is not None else ""

    def note(self, row: int, field: str) -> str:
        """What the reader knows of an empty cell (e.g. that it is merged), as "; ..." or ""."""
        pos = self.mapping.get(field)
        note = self.table.cell_notes.get((row, pos)) if pos is not None and self.table.cell_notes else None
        return f"; {note}" if note else ""

    def issue(self, row: int, check: str) -> list[RowIssue]:
        if ":" in check:
            check, id_field = check.split(":", 1)
            direction, _ = _modes_needing(id_field)
            mode_field = MODE_FIELD[direction]
            at = self._clean_position(row)
            mode_text = str(self._clean[mode_field][at])
            mode = cast("int | None", self._values[mode_field][at])
            label = MODES[direction][mode].label if mode is not None else mode_text
            if check == "mode_id_missing":
                present = id_field in self.mapping
                where = (
                    f'"{self.header(id_field)}" is empty' if present else f"the file has no {id_field} column"
                )
                return [
                    RowIssue(
                        row,
                        self.header(id_field),
                        "",
                        f'"{self.header(mode_field)}" is "{mode_text}" ({label}), which needs '
                        f"{id_field}, but {where}{self.note(row, id_field)}",
                        "missing_mode_id",
                    )
                ]
            return [
                RowIssue(
                    row,
                    self.header(id_field),
                    self.raw(row, id_field),
                    f'"{self.header(id_field)}" is "{self.raw(row, id_field)}" but '
                    f'"{self.header(mode_field)}" '
                    f'is "{mode_text}" ({label}), which does not use {id_field}: clear it or change the mode',
                    "id_for_unused_mode",
                )
            ]
        if check == "did_missing":
            return [
                RowIssue(
                    row,
                    self.header("did_number"),
                    "",
                    # A formula never calculated is not a missing DID: say what the cell holds.
                    note[2:]
                    if UNSAVED_FORMULA in (note := self.note(row, "did_number") or self.note(row, "did_id"))
                    else f'no DID: fill in "{self.header("did_number")}" or "{self.header("did_id")}"{note}',
                    "missing_did",
                )
            ]
        if check == "duplicate_did":
            issues = []
            for field, firsts in (("did_number", self.dup_number), ("did_id", self.dup_id)):
                if row in firsts.index:
                    issues.append(
                        RowIssue(
                            row,
                            self.header(field),
                            self.raw(row, field),
                            f'"{self.header(field)}": "{self.raw(row, field)}" is a duplicate of '
                            f"{self.table.row_name(cast(int, firsts.at[row]))}",
                            "duplicate",
                        )
                    )
            return issues
        raise KeyError(check)  # pragma: no cover - every dataframe check is handled above

    def column_issue(self, row: int, field: str, check: str) -> RowIssue:
        header = self.header(field)
        value = self.raw(row, field)
        text = clean_text(value)
        quoted = f'"{header}": "{value}"'
        if check == "wrong_column":
            return RowIssue(
                row, header, value, wrong_column_text(header, field, self.wrong[field]), "wrong_column"
            )
        excel_error = EXCEL_ERRORS.get(text)
        if excel_error is not None:
            return RowIssue(
                row,
                header,
                value,
                f'"{header}": the cell holds the Excel error {text} ({excel_error}); fix it in the sheet',
                "excel_error",
            )
        if check == "scientific_notation" or check == "phone_number":
            result = self.parsed.phone.get(row)
            problem = result.problem if result is not None else "is not a phone number"
            kind = result.kind if result is not None else "bad_number"
            return RowIssue(row, header, value, f"{quoted} {problem}", kind)
        if check == "mode_required":
            direction = DIRECTION_OF[field]
            return RowIssue(
                row,
                header,
                value,
                f'"{header}" is empty: give the {direction.value} mode ({describe_modes(direction)})'
                f"{self.note(row, field)}",
                "missing_mode",
            )
        if check == "mode":
            direction = DIRECTION_OF[field]
            return RowIssue(
                row,
                header,
                value,
                f"{quoted} is not an {direction.value} mode; use one of {describe_modes(direction)}",
                "bad_mode",
            )
        if check == "status":
            return RowIssue(
                row,
                header,
                value,
                f"{quoted} is not a status; use active/inactive, 1/0, yes/no, y/n or true/false",
                "bad_status",
            )
        if check == "uuid":
            return RowIssue(row, header, value, f"{quoted} is not a connection UUID", "bad_uuid")
        return RowIssue(
            row, header, value, f"{quoted} {describe_bad_int(text)}; ids are positive whole numbers", "bad_id"
        )


def wrong_column_text(header: str, field: str, values: str) -> str:
    """The reason of a row whose value sits in a column that does not look like its field."""
    kind = FIELD_BY_NAME[field].kind
    accepted = f"modes are {describe_modes(DIRECTION_OF[field])}" if kind is Kind.MODE else _ACCEPTED[kind]
    return (
        f'column "{header}" does not look like {field} (values {values}; {accepted}): leave it out '
        f'with --ignore-column "{header}", or if it is {field} confirm with --map "{header}={field}"'
    )


def _clean_cells(cells: list[object]) -> list[str]:
    """Clean a column's cells; ASCII text only needs its whitespace trimmed."""
    # The invisible characters clean_text removes are all non-ASCII, and str.strip returns the
    # very same object when there is nothing to trim: most cells cost one check and no copy.
    return [v.strip() if type(v) is str and v.isascii() else clean_text(str(v)) for v in cells]


_PROTECTED = re.compile(r'="(.*)"|\'(.*)', re.DOTALL)


def _unprotect(cells: list[str]) -> list[str]:
    """Read ``="918012345678"`` and ``'918012345678`` as the value they protect from Excel.

    Both are how people keep Excel from turning a long number into 9.18E+11 in a CSV. The
    results keep the cell as typed; only the parsed value loses the wrapper. A column with
    neither character anywhere (nearly all) costs one join and two C-speed character searches.
    """
    joined = "".join(cells)
    if "=" not in joined and "'" not in joined:
        return cells
    out = []
    for cell in cells:
        m = _PROTECTED.fullmatch(cell) if cell[:1] in ("=", "'") else None
        out.append(clean_text(m.group(1) if m.group(1) is not None else m.group(2)) if m else cell)
    return out


def _clean_frame(table: RawTable, mapping: Mapping[str, int], rows: pd.Index) -> pd.DataFrame:
    whole = len(rows) == len(table.frame)  # no ragged rows left out: no reindexing needed
    data: dict[str, list[str]] = {}
    for name in FIELD_NAMES:
        pos = mapping.get(name)
        if pos is None:
            data[name] = [""] * len(rows)
        else:
            column = table.frame[pos]
            data[name] = _unprotect(_clean_cells(column.tolist() if whole else column.loc[rows].tolist()))
    return pd.DataFrame(data, index=rows, dtype=object)


def validate_table(
    table: RawTable,
    *,
    column_map: Mapping[str, str] | None = None,
    default_region: str | None = None,
    ignore_columns: Sequence[str] = (),
) -> ValidationReport:
    """Validate every row of ``table``; return the valid rows and every problem.

    Args:
        table: the table as read.
        column_map: ``--map`` entries, header text (or column letter) -> field name.
        default_region: ISO region (e.g. "IN") used to read national numbers.
        ignore_columns: ``--ignore-column`` entries (header text or letter) left out of matching.

    Returns:
        A report in which each input row is either valid or has at least one issue.

    Raises:
        InputError: the columns cannot be mapped, or the region is unknown.
    """
    if default_region is not None:
        default_region = default_region.strip().upper()
        # "UK" is what people write; ISO 3166 (and phonenumbers) call the United Kingdom GB.
        default_region = {"UK": "GB"}.get(default_region, default_region)
        if default_region not in phonenumbers.SUPPORTED_REGIONS:
            raise InputError(
                f'--default-region "{default_region}" is not a known region code (e.g. IN, US, GB)'
            )
    mapping = map_columns(
        table.headers, column_map or {}, ignore_columns, first_column=table.source.first_column
    )
    issues: list[RowIssue] = [
        RowIssue(row, "", "", problem, "ragged_row") for row, problem in sorted(table.row_problems.items())
    ]
    rows = table.frame.index[~table.frame.index.isin(list(table.row_problems))]
    clean = _clean_frame(table, mapping, rows)
    parsed = _parse(clean, PhoneNormaliser(default_region))
    chosen = set((column_map or {}).values())
    wrong = wrong_matches(parsed, [f for f in mapping if f not in chosen])
    schema = build_schema(parsed, wrong)
    failures: pd.DataFrame | None = None
    try:
        schema.validate(clean, lazy=True)
    except pa.errors.SchemaErrors as exc:
        failures = exc.failure_cases
    if failures is not None and len(failures):
        messages = _Messages(table, mapping, parsed, wrong)
        # pandera reports a dataframe-wide check once per column: keep one per (row, check). A
        # column check is kept per column too, so two bad ids (or two empty modes) of one row
        # are two problems, each naming its own column.
        failures = failures.assign(
            _column=failures["column"].where(failures["schema_context"] == "Column", "")
        ).drop_duplicates(["index", "check", "schema_context", "_column"])
        for index, context, column, check in zip(
            failures["index"].tolist(),
            failures["schema_context"].tolist(),
            failures["column"].tolist(),
            failures["check"].tolist(),
            strict=True,
        ):
            if context == "Column":
                issues.append(messages.column_issue(int(index), str(column), str(check)))
            else:
                issues.extend(messages.issue(int(index), str(check)))
    headers = tuple(map(shown, table.headers))  # as issues name them
    issues.sort(key=lambda i: (i.row, _column_order(mapping, headers, i.column)))
    failed = rows.isin(list({i.row for i in issues}))
    valid = _LazyRows(parsed.values, rows.to_numpy()[~failed])
    notes = tuple(
        f'column "{table.headers[mapping[f]]}" was matched to {f} by its header, but its values '
        f"({values}) do not look like {f}: its rows failed; leave it out with "
        f'--ignore-column "{table.headers[mapping[f]]}" or map the right column with --map'
        for f, values in wrong.items()
    )
    return ValidationReport(
        table=table, valid=valid, issues=tuple(issues), mapping=dict(mapping), notes=notes
    )


def _column_order(mapping: Mapping[str, int], headers: tuple[str, ...], column: str) -> int:
    try:
        return headers.index(column)
    except ValueError:
        return len(headers) + (FIELD_NAMES.index(column) if column in FIELD_NAMES else 0)


class _LazyRows(Sequence[RoutingRow]):
    """The valid rows as RoutingRow values, built when first read."""

    def __init__(self, values: dict[str, pd.Series], rows: npt.NDArray[np.int64]) -> None:
        # Only the parsed values are kept (not the cleaned frame): a validate-only run holds
        # them while it writes, and never builds the rows.
        self._values: dict[str, pd.Series] | None = values
        self._numbers = rows
        self._rows: list[RoutingRow] | None = None

    def _built(self) -> list[RoutingRow]:
        if self._rows is None:
            assert self._values is not None
            self._rows = _valid_rows(self._values, self._numbers.tolist())
            self._values = None
        return self._rows

    def __len__(self) -> int:
        return len(self._numbers)

    @overload
    def __getitem__(self, index: int) -> RoutingRow: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[RoutingRow]: ...
    def __getitem__(self, index: int | slice) -> RoutingRow | Sequence[RoutingRow]:
        return self._built()[index]

    def __repr__(self) -> str:
        return f"<{len(self)} valid rows>"


def _valid_rows(values: dict[str, pd.Series], rows: list[int]) -> list[RoutingRow]:
    if not rows:
        return []
    cols = {name: values[name].loc[rows].tolist() for name in FIELD_NAMES}
    out: list[RoutingRow] = []
    for i, row in enumerate(rows):
        inbound = cols["for_inbound_call"][i]
        outbound = cols["for_outbound_call"][i]
        needed = {f: cols[f][i] for f in MODE_ID_FIELDS if f in _required_ids(int(inbound), int(outbound))}
        out.append(
            RoutingRow(
                row=int(row),
                did_id=cols["did_id"][i],
                did_number=cols["did_number"][i],
                for_inbound_call=int(inbound),
                for_outbound_call=int(outbound),
                status=int(cols["status"][i]),
                connection_id=cols["connection_id"][i],
                **needed,
            )
        )
    return out


_REQUIRED_IDS: dict[tuple[int, int], frozenset[str]] = {
    (i.number, o.number): frozenset(n for n in (i.requires, o.requires) if n is not None)
    for i in MODES[Direction.INBOUND].values()
    for o in MODES[Direction.OUTBOUND].values()
}


def _required_ids(inbound: int, outbound: int) -> frozenset[str]:
    return _REQUIRED_IDS[(inbound, outbound)]
