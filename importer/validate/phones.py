"""Phone numbers: parse a DID cell to E.164 with phonenumbers, fast, and say why one is not a number.

Country codes, regions and their national numbers come from phonenumbers' metadata; a
number without its country code gets a suggestion of the regions where it would be valid.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import phonenumbers

from importer.words import IssueKind

__all__ = ["PHONE_SEPARATORS", "PhoneNormaliser", "PhoneResult", "national_readings"]

SCIENTIFIC = re.compile(r"[+-]?\d+(?:[.,]\d*)?[eE][+-]?\d+")
# A whole number as pandas writes it into a float column (918040000040.0), or a real decimal.
_DECIMAL = re.compile(r"\+?(\d{6,19})\.(\d+)")
PHONE_SEPARATORS = re.compile(r"[\s\-().\u00a0/]+")


@dataclass(frozen=True, slots=True)
class PhoneResult:
    """A normalised number (country code + number, digits only) or why there is none."""

    number: str | None
    kind: IssueKind | None = None
    """Why there is no number (None when there is one)."""
    params: Mapping[str, str] = field(default_factory=dict, hash=False)
    """The issue's params besides column and value (``variant``, ``region``, ...)."""


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


def _suggest_country_code(digits: str) -> dict[str, str] | None:
    """The params of a suggestion of the country codes that would make ``digits`` valid, or None."""
    readings = national_readings(digits)
    if not readings:
        return None
    (region, first), others = readings[0], readings[1:]
    more = f" ({', '.join(f'{r}: {number}' for r, number in others)})" if others else ""
    article = "an" if region[0] in "AEFHILMNORSX" else "a"  # as the letters are read: an IN, a US
    return {"article": article, "region": region, "suggested": first, "more": more}


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
            return PhoneResult(number)
        return self.normalise(text)

    def quick(self, text: str) -> str | None:
        """Return the number of a cleaned cell the fast path can read, or None to ask ``normalise``.

        Besides plain digits, this reads numbers written with separators ("+44 20 7946 0123",
        "0044-20-...") by compacting them exactly as ``normalise`` does before its full parse.
        """
        if "." in text and _DECIMAL.fullmatch(text):
            return None  # compacting would keep the fraction's digits: ``normalise`` reads it
        if self.default_region is None or text.startswith("+"):
            m = _PLAIN_INTERNATIONAL.fullmatch(text)
            if m is not None:
                return self._fast(m.group(1))
        compact = PHONE_SEPARATORS.sub("", text)
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
        if SCIENTIFIC.fullmatch(text):
            return PhoneResult(None, IssueKind.SCIENTIFIC_NOTATION)
        decimal = _DECIMAL.fullmatch(text)
        if decimal is not None:
            # What pandas writes for a number column with a blank: 918040000040.0 is the whole
            # number 918040000040; a fraction is no phone number (and its digits no suggestion).
            if decimal.group(2).strip("0"):
                return PhoneResult(None, IssueKind.DECIMAL_NUMBER, {"expected": "a DID is a phone number"})
            text = decimal.group(1)
            whole = self.quick(text)
            if whole is not None:
                return PhoneResult(whole)
        extension = _EXTENSION.search(text)
        if extension is not None and any(c.isdigit() for c in text[: extension.start()]):
            written = extension.group("ext").strip(" ,")
            return PhoneResult(None, IssueKind.EXTENSION, {"written": f"'{written}'"})
        if any(c.isalpha() for c in text):
            return PhoneResult(None, IssueKind.BAD_NUMBER, {"variant": "letters"})
        compact = PHONE_SEPARATORS.sub("", text)
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
                None, IssueKind.BAD_NUMBER, {"variant": "region", "region": self.default_region}
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
            return PhoneResult(None, IssueKind.EXTENSION, {"written": "it"})
        if not phonenumbers.is_valid_number(parsed):
            return None
        e164 = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
        return PhoneResult(e164.lstrip("+"))

    @staticmethod
    def _invalid_international(compact: str) -> PhoneResult:
        try:
            code = phonenumbers.parse(compact, None).country_code
        except phonenumbers.NumberParseException:
            return PhoneResult(None, IssueKind.BAD_NUMBER, {"variant": "unparsable"})
        return PhoneResult(
            None, IssueKind.BAD_NUMBER, {"variant": "country", "country": _describe_code(code or 0)}
        )

    @staticmethod
    def _missing_country_code(compact: str) -> PhoneResult:
        digits = compact.lstrip("+")
        suggestion = _suggest_country_code(digits) if digits.isdigit() else None
        if compact.startswith("0"):
            if suggestion is None:
                return PhoneResult(None, IssueKind.NO_COUNTRY_CODE, {"variant": "national_unknown"})
            return PhoneResult(None, IssueKind.NO_COUNTRY_CODE, {"variant": "national", **suggestion})
        if suggestion is not None:
            return PhoneResult(None, IssueKind.NO_COUNTRY_CODE, {"variant": "anywhere", **suggestion})
        return PhoneResult(None, IssueKind.BAD_NUMBER, {"variant": "anywhere"})
