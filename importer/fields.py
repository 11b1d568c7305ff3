"""The one source of truth for the VoiceLink call-routing fields.

Names, header aliases, mode numbers and labels, which id each mode needs and the
defaults are defined here once. The pandera schema (``validate.py``), the template
(``template.py``), the sandbox's rules (``importer/sandbox/rules.py``) and the README's
column table all derive from this module; ``tests/test_fields.py`` checks that they agree.
"""

from __future__ import annotations

import difflib
import enum
import re
from dataclasses import dataclass


class Kind(enum.Enum):
    """How a field's cell text is parsed."""

    INT_ID = "positive integer"
    PHONE = "phone number"
    MODE = "mode"
    STATUS = "status"
    UUID = "UUID"


class Direction(enum.Enum):
    """Which leg of a call a mode applies to."""

    INBOUND = "inbound"
    OUTBOUND = "outbound"


@dataclass(frozen=True, slots=True)
class Mode:
    """One routing mode of one direction."""

    number: int
    label: str
    aliases: tuple[str, ...]
    requires: str | None
    """The id field this mode needs, or None when it needs none."""


@dataclass(frozen=True, slots=True)
class Field:
    """One call-routing field as the API and the spreadsheet know it."""

    name: str
    kind: Kind
    title: str
    description: str
    aliases: tuple[str, ...]
    required: str
    """'always', 'did' (did_id or did_number), 'mode' (when a mode needs it) or 'optional'."""
    example: str
    default: int | None = None


INBOUND_MODES: dict[int, Mode] = {
    1: Mode(1, "mobile", ("mobile", "mobile phone", "phone", "cell"), None),
    2: Mode(2, "SIP", ("sip", "sip trunk", "trunk"), "inbound_sip_trunk_id"),
    3: Mode(
        3,
        "WebSocket bot",
        ("websocket bot", "bot", "websocket", "ws bot", "voice bot", "ai bot"),
        "inbound_websocket_bot_id",
    ),
}

OUTBOUND_MODES: dict[int, Mode] = {
    2: Mode(2, "SIP", ("sip", "sip trunk", "trunk"), "outbound_sip_trunk_id"),
    3: Mode(
        3,
        "WebSocket bot",
        ("websocket bot", "bot", "websocket", "ws bot", "voice bot", "ai bot"),
        "outbound_websocket_bot_id",
    ),
    4: Mode(4, "only-answer", ("only-answer", "only answer", "answer only", "answer-only"), None),
}

MODES: dict[Direction, dict[int, Mode]] = {
    Direction.INBOUND: INBOUND_MODES,
    Direction.OUTBOUND: OUTBOUND_MODES,
}

MODE_FIELD: dict[Direction, str] = {
    Direction.INBOUND: "for_inbound_call",
    Direction.OUTBOUND: "for_outbound_call",
}
DIRECTION_OF: dict[str, Direction] = {name: direction for direction, name in MODE_FIELD.items()}
"""The direction a mode field sets: for_inbound_call -> INBOUND."""

STATUS_VALUES: dict[str, int] = {
    "1": 1,
    "active": 1,
    "yes": 1,
    "y": 1,
    "true": 1,
    "enabled": 1,
    "0": 0,
    "inactive": 0,
    "no": 0,
    "n": 0,
    "false": 0,
    "disabled": 0,
}
"""Status cell texts, case-folded: what carriers write for on and off."""
STATUS_LABELS: dict[int, str] = {1: "active", 0: "inactive"}
DEFAULT_STATUS = 1

# Aliases are spellings that mean the field in a carrier's export and little else. Left out on
# purpose, because they commonly mean something else: "State" (a US state or province, not a
# status), "Connection" (a connection type or name, not a VoiceLink UUID), "Inbound SIP" and
# "Outbound SIP" (a SIP URI or host, not a trunk id), "Number ID" and "Inventory ID" (a carrier's
# or billing system's own record id: matched as did_id it would route another DID). A column
# that still matches wrongly is caught by its values (see ``validate.WRONG_MATCH_SHARE``).
FIELDS: tuple[Field, ...] = (
    Field(
        "did_id",
        Kind.INT_ID,
        "DID ID",
        "The DID's id in your VoiceLink inventory (the id from the purchased-DIDs list). "
        "Give this or did_number, or both.",
        ("DID ID", "DIDID", "DID Ref"),
        "did",
        "812",
    ),
    Field(
        "did_number",
        Kind.PHONE,
        "DID Number",
        "The phone number with its country code, e.g. +91 80 1234 5678 or 918012345678. "
        "Format the column as Text so that Excel keeps every digit.",
        (
            "DID",
            "DID Number",
            "DID No",
            "Phone Number",
            "Phone",
            "Phone No",
            "Number",
            "Telephone Number",
            "Telephone",
            "TN",
            "MSISDN",
            "E164",
            "E.164",
        ),
        "did",
        "918012345678",
    ),
    Field(
        "for_inbound_call",
        Kind.MODE,
        "Inbound Mode",
        "Where inbound calls go: 1 mobile, 2 SIP, 3 WebSocket bot (number or label).",
        ("Inbound Mode", "Inbound", "Inbound Routing", "Inbound Call", "Inbound Type", "For Inbound"),
        "always",
        "WebSocket bot",
    ),
    Field(
        "for_outbound_call",
        Kind.MODE,
        "Outbound Mode",
        "How outbound calls are placed: 2 SIP, 3 WebSocket bot, 4 only-answer (number or label).",
        (
            "Outbound Mode",
            "Outbound",
            "Outbound Routing",
            "Outbound Call",
            "Outbound Type",
            "For Outbound",
        ),
        "always",
        "only-answer",
    ),
    Field(
        "inbound_websocket_bot_id",
        Kind.INT_ID,
        "Inbound Bot ID",
        "The WebSocket bot for inbound calls. Required when Inbound Mode is 3 (WebSocket bot), "
        "and must be empty otherwise.",
        (
            "Inbound Bot ID",
            "Inbound Bot",
            "Inbound WebSocket Bot",
            "Inbound WebSocket Bot ID",
            "Inbound WS Bot ID",
        ),
        "mode",
        "93",
    ),
    Field(
        "inbound_sip_trunk_id",
        Kind.INT_ID,
        "Inbound SIP Trunk ID",
        "The SIP trunk for inbound calls. Required when Inbound Mode is 2 (SIP), "
        "and must be empty otherwise.",
        ("Inbound SIP Trunk", "Inbound SIP Trunk ID", "Inbound Trunk", "Inbound Trunk ID"),
        "mode",
        "7",
    ),
    Field(
        "outbound_websocket_bot_id",
        Kind.INT_ID,
        "Outbound Bot ID",
        "The WebSocket bot for outbound calls. Required when Outbound Mode is 3 (WebSocket bot), "
        "and must be empty otherwise.",
        (
            "Outbound Bot ID",
            "Outbound Bot",
            "Outbound WebSocket Bot",
            "Outbound WebSocket Bot ID",
            "Outbound WS Bot ID",
        ),
        "mode",
        "93",
    ),
    Field(
        "outbound_sip_trunk_id",
        Kind.INT_ID,
        "Outbound SIP Trunk ID",
        "The SIP trunk for outbound calls. Required when Outbound Mode is 2 (SIP), "
        "and must be empty otherwise.",
        (
            "Outbound SIP Trunk",
            "Outbound SIP Trunk ID",
            "Outbound Trunk",
            "Outbound Trunk ID",
        ),
        "mode",
        "7",
    ),
    Field(
        "status",
        Kind.STATUS,
        "Status",
        "1/active/yes/y/true/enabled or 0/inactive/no/n/false/disabled (any case). Blank means 1 (active).",
        ("Status", "Active", "Enabled", "Routing Status"),
        "optional",
        "active",
        DEFAULT_STATUS,
    ),
    Field(
        "connection_id",
        Kind.UUID,
        "Connection ID",
        "One run serves one connection: blank, or that connection's UUID, uses it; a row naming "
        "another connection fails (import it in a run of its own with --connection-id).",
        ("Connection ID", "Connection UUID", "VoiceLink Connection"),
        "optional",
        "",
    ),
)

FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in FIELDS)
FIELD_BY_NAME: dict[str, Field] = {f.name: f for f in FIELDS}
DID_FIELDS: tuple[str, ...] = ("did_id", "did_number")
MODE_ID_FIELDS: tuple[str, ...] = tuple(
    m.requires for modes in MODES.values() for m in modes.values() if m.requires
)
ROUTING_FIELDS: tuple[str, ...] = (
    "for_inbound_call",
    "for_outbound_call",
    *MODE_ID_FIELDS,
    "status",
)
"""The fields of a routing record that an update replaces (the DID is not part of it)."""

_NON_ALNUM = re.compile(r"[^0-9a-z]+")


def header_key(text: str) -> str:
    """Fold a header or label for matching: lower case, letters and digits only."""
    return _NON_ALNUM.sub("", text.casefold())


def _build_header_index() -> dict[str, str]:
    index: dict[str, str] = {}
    for f in FIELDS:
        for spelling in (f.name, f.title, *f.aliases):
            key = header_key(spelling)
            owner = index.setdefault(key, f.name)
            if owner != f.name:  # pragma: no cover - caught by tests/test_fields.py
                raise AssertionError(f"alias {spelling!r} claimed by {owner} and {f.name}")
    return index


HEADER_INDEX: dict[str, str] = _build_header_index()


def match_header(text: str) -> str | None:
    """Return the field a header names, or None when it names no field."""
    return HEADER_INDEX.get(header_key(text))


def closest_header(wanted: str, found: list[str]) -> str | None:
    """Return the header in ``found`` that looks most like field ``wanted``, if any is close."""
    spellings = [header_key(s) for s in (wanted, FIELD_BY_NAME[wanted].title, *FIELD_BY_NAME[wanted].aliases)]
    best: tuple[float, str] | None = None
    for header in found:
        key = header_key(header)
        if not key:
            continue
        score = max(difflib.SequenceMatcher(None, key, s).ratio() for s in spellings)
        if score >= 0.6 and (best is None or score > best[0]):
            best = (score, header)
    return best[1] if best else None


def _build_mode_index() -> dict[Direction, dict[str, int]]:
    out: dict[Direction, dict[str, int]] = {}
    for direction, modes in MODES.items():
        index: dict[str, int] = {}
        for mode in modes.values():
            for spelling in (str(mode.number), mode.label, *mode.aliases):
                index[header_key(spelling)] = mode.number
        out[direction] = index
    return out


MODE_INDEX: dict[Direction, dict[str, int]] = _build_mode_index()


def mode_labels(direction: Direction) -> list[str]:
    """Labels of a direction's modes, in mode order (used for dropdowns and docs)."""
    return [m.label for m in MODES[direction].values()]


def describe_modes(direction: Direction) -> str:
    """Return e.g. '1 mobile, 2 SIP, 3 WebSocket bot'."""
    return ", ".join(f"{m.number} {m.label}" for m in MODES[direction].values())


def required_id(direction: Direction, mode: int) -> str | None:
    """Return the id field that ``mode`` needs in ``direction``, or None."""
    return MODES[direction][mode].requires


def routing_body(record: dict[str, int | None]) -> dict[str, int]:
    """Build the API body for a routing record: the modes, the one id each mode needs, status.

    Ids for modes that do not use them are left out, never sent as null, as the
    API reference advises.
    """
    inbound = record["for_inbound_call"]
    outbound = record["for_outbound_call"]
    if inbound is None or outbound is None:
        raise ValueError("a routing record needs both modes")
    body: dict[str, int] = {"for_inbound_call": inbound, "for_outbound_call": outbound}
    for direction, mode in ((Direction.INBOUND, inbound), (Direction.OUTBOUND, outbound)):
        need = required_id(direction, mode)
        if need is not None:
            value = record.get(need)
            if value is None:
                raise ValueError(f"mode {mode} needs {need}")
            body[need] = value
    status = record.get("status")
    body["status"] = DEFAULT_STATUS if status is None else status
    return body


REQUIRED_TEXT: dict[str, str] = {
    "always": "yes",
    "did": "did_id or did_number",
    "mode": "when its mode needs it",
    "optional": "no",
}
"""How each ``Field.required`` value reads in the README and the template's instructions."""


def columns_markdown() -> str:
    """Render the README's column table from the spec."""
    lines = [
        "| column | also accepted as | required | what it holds |",
        "|---|---|---|---|",
    ]
    for f in FIELDS:
        aliases = ", ".join(f'"{a}"' for a in f.aliases)
        lines.append(f"| `{f.name}` | {aliases} | {REQUIRED_TEXT[f.required]} | {f.description} |")
    return "\n".join(lines)


def modes_markdown() -> str:
    """Render the README's table of modes and the id each one needs, from the spec."""
    lines = ["| direction | number | label (also accepted) | needs |", "|---|---|---|---|"]
    for direction, modes in MODES.items():
        for mode in modes.values():
            aliases = ", ".join(f'"{a}"' for a in mode.aliases if a.casefold() != mode.label.casefold())
            need = f"`{mode.requires}`" if mode.requires else "no id"
            lines.append(f"| {direction.value} | {mode.number} | {mode.label} ({aliases}) | {need} |")
    return "\n".join(lines)
