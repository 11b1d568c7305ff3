"""The emulated API's validation rules: which bodies it accepts and the error answers it gives.

Everything about modes and ids derives from ``importer.fields``, so the sandbox cannot drift from
the template and the pandera schema. Pure functions: no state, no HTTP.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Protocol

from importer.fields import (
    DID_FIELDS,
    MODE_FIELD,
    MODE_ID_FIELDS,
    MODES,
    ROUTING_FIELDS,
    Direction,
    describe_modes,
    routing_body,
)

__all__ = [
    "BOT_ID_FIELDS",
    "CONNECTION_KEYS",
    "CREATE_FIELDS",
    "DIGITS",
    "SYNC_FIELDS",
    "UPDATE_FIELDS",
    "ApiError",
    "BotStatus",
    "as_int",
    "bad",
    "check_routing",
    "did_problems",
    "not_found",
    "positive_int_problem",
    "shown",
]

CONNECTION_KEYS = ("connection_id", "connectionId")
CREATE_FIELDS = frozenset((*DID_FIELDS, *ROUTING_FIELDS, *CONNECTION_KEYS))
UPDATE_FIELDS = frozenset((*ROUTING_FIELDS, *CONNECTION_KEYS))
SYNC_FIELDS = frozenset(("import_dids", *CONNECTION_KEYS))
# Which direction each mode id belongs to, derived from the one field spec.
_ID_DIRECTION: dict[str, Direction] = {
    m.requires: d for d, modes in MODES.items() for m in modes.values() if m.requires
}
BOT_ID_FIELDS = frozenset(name for name in MODE_ID_FIELDS if "websocket_bot" in name)
DIGITS = re.compile(r"[0-9]+")


class ApiError(Exception):
    """An error answer in the documented envelope."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def bad(message: str) -> ApiError:
    """Return a 400 VALIDATION_ERROR answer."""
    return ApiError(400, "VALIDATION_ERROR", message)


def not_found(message: str) -> ApiError:
    """Return a 404 NOT_FOUND answer."""
    return ApiError(404, "NOT_FOUND", message)


class BotStatus(Protocol):
    """What the rules need of a bot: whether it is active (status 1)."""

    @property
    def status(self) -> int: ...


def shown(value: object) -> str:
    """Render a rejected value briefly for a message."""
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def as_int(value: object) -> int | None:
    """Return value if it is a JSON integer (not a bool, float or string), else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def positive_int_problem(name: str, value: object) -> str | None:
    """Describe why value is not a positive JSON integer; None when it is one."""
    number = as_int(value)
    if number is not None and number >= 1:
        return None
    return f"{name} must be a positive integer (got {shown(value)})"


def check_routing(
    body: Mapping[str, object],
    *,
    allowed: frozenset[str],
    status_required: bool,
    bots: Mapping[int, BotStatus] | None,
) -> tuple[dict[str, int], list[str]]:
    """Check a routing body field by field as the API does.

    Args:
        body: The JSON object sent.
        allowed: The field names this endpoint accepts.
        status_required: True for updates (status is required there).
        bots: Bots to check bot ids against (id must exist and be active), or None to skip.

    Returns:
        The record to store (modes, the ids the modes use, status) and the problems found;
        the record is only meaningful when there are no problems.
    """
    problems = [f"{name} is not a known field" for name in body if name not in allowed]
    record: dict[str, int | None] = {}
    modes: dict[Direction, int] = {}
    for direction, mode_field in MODE_FIELD.items():
        mode = as_int(body.get(mode_field))
        if mode_field not in body:
            problems.append(f"{mode_field} is required")
        elif mode is not None and mode in MODES[direction]:
            modes[direction] = record[mode_field] = mode
        else:
            text = shown(body[mode_field])
            problems.append(f"{mode_field} must be one of {describe_modes(direction)} (got {text})")
    if "status" in body or status_required:
        record["status"] = status = as_int(body.get("status"))
        if "status" not in body:
            problems.append("status is required")
        elif status not in (0, 1):
            problems.append(f"status must be 0 (inactive) or 1 (active) (got {shown(body['status'])})")
    for name in MODE_ID_FIELDS:
        direction = _ID_DIRECTION[name]
        if direction not in modes:
            continue  # the mode itself is wrong, so whether this id belongs is undecidable
        mode = modes[direction]
        label = f"{MODE_FIELD[direction]} is {mode} ({MODES[direction][mode].label})"
        needed = MODES[direction][mode].requires == name
        if not needed:
            if name in body:
                problems.append(f"{name} must be left out when {label}")
        elif name not in body:
            problems.append(f"{name} is required when {label}")
        elif problem := positive_int_problem(name, body[name]) or _bot_problem(name, body[name], bots):
            problems.append(problem)
        else:
            record[name] = as_int(body[name])
    if problems:
        return {}, problems
    return routing_body(record), []


def _bot_problem(name: str, value: object, bots: Mapping[int, BotStatus] | None) -> str | None:
    """Check a bot id against the bots (it must exist and be active); None when fine."""
    bot_id = as_int(value)
    if bots is None or name not in BOT_ID_FIELDS or bot_id is None:
        return None
    bot = bots.get(bot_id)
    if bot is None:
        return f"{name} {bot_id}: no such bot"
    return f"{name} {bot_id}: the bot is inactive" if bot.status != 1 else None


def did_problems(body: Mapping[str, object]) -> list[str]:
    """Check how a create body names its DID (did_id, did_number or both)."""
    if not any(name in body for name in DID_FIELDS):
        return ["did_id or did_number is required"]
    problems: list[str] = []
    if "did_id" in body and (problem := positive_int_problem("did_id", body["did_id"])):
        problems.append(problem)
    if "did_number" in body:
        number = body["did_number"]
        if not (isinstance(number, str) and DIGITS.fullmatch(number)):
            problems.append(
                "did_number must be a string of digits, country code first, "
                f"with no '+', spaces or dashes (got {shown(number)})"
            )
    return problems
