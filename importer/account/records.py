"""The API's records (connections, DIDs, bots, routing) and decoding its answers into them.

Response shapes are parsed defensively (see the API reference §5): lists may sit at
``data.data``, ``data.data.data`` or ``data`` (or be a bare list), pagination metadata may be
missing, ids may be strings of digits and ``did_number`` may be a JSON number. An item that
cannot be used is skipped with one line in the caller's ``warnings`` (the run summary shows them).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, NamedTuple, TypeGuard

from importer.errors import ApiError
from importer.fields import ROUTING_FIELDS

__all__ = [
    "Bot",
    "Connection",
    "Did",
    "DidPage",
    "DidSearch",
    "Routing",
    "SyncState",
    "as_int",
    "decode_bot",
    "decode_connections",
    "decode_did",
    "decode_routings",
    "decode_sync",
    "find_list",
    "is_object",
    "number_key",
    "objects",
]


@dataclass(frozen=True, slots=True)
class Connection:
    """One VoiceLink connection of the partner account."""

    connection_id: str
    name: str
    status: str
    is_default: bool


class Did(NamedTuple):
    """One purchased DID; ``did_number`` is always text (country code + number, as the API sent it).

    Named tuples, as ``Routing``: a large account's sync carries 100,000 of each, made faster than
    frozen dataclasses and as immutable.
    """

    did_id: int
    did_number: str
    status: str


@dataclass(frozen=True, slots=True)
class Bot:
    """One WebSocket bot."""

    bot_id: int
    name: str
    active: bool


class Routing(NamedTuple):
    """One existing call-routing record; ``record`` has every field of ``fields.ROUTING_FIELDS``."""

    routing_id: int
    did_id: int | None
    did_number: str | None
    record: Mapping[str, int | None]


@dataclass(frozen=True, slots=True)
class SyncState:
    """What one read-only sync answered: the lists it carried, each item parsed or skipped."""

    dids: tuple[Did, ...]
    """Empty when sync sent no ``dids[]`` (or an empty one): the DID list must then be read."""
    bots: tuple[Bot, ...]
    routing: tuple[Routing, ...]


@dataclass(frozen=True, slots=True)
class DidPage:
    """One page of the purchased-DIDs list."""

    page: int
    dids: tuple[Did, ...]
    last_page: int | None
    """The list's page count from the pagination metadata (``last_page``, else ``total``/``per_page``)."""
    last: bool
    """True when no page follows this one."""
    total: int | None = None
    """How many DIDs the whole list holds, when the metadata reports it (``total``)."""


@dataclass(frozen=True, slots=True)
class DidSearch:
    """The DIDs a search for one number found, exact matches only."""

    matches: tuple[Did, ...]
    conclusive: bool
    """False when the answer cannot prove the number is absent: the server ignored ``search``
    (it sent numbers that do not contain the one asked for) or more pages of results follow."""


def is_object(value: object) -> TypeGuard[Mapping[str, Any]]:
    """``isinstance(value, Mapping)``, quick for what JSON gives (a dict, or None).

    Asked a few times per DID of a 100,000-DID answer: the ABC's own check is slow for the
    common None (a missing ``raw`` or ``routing``), so a dict and None are answered first.
    """
    return isinstance(value, dict) or (value is not None and isinstance(value, Mapping))


def objects(items: Sequence[object], where: str, warnings: list[str]) -> list[Mapping[str, Any]]:
    """The items that are JSON objects; a warning for each one that is not."""
    out: list[Mapping[str, Any]] = []
    for item in items:
        if is_object(item):
            out.append(item)
        else:
            warnings.append(f"{where}: a non-object item was ignored")
    return out


def decode_did(item: Mapping[str, Any], where: str, warnings: list[str], *, need_number: bool) -> Did | None:
    """A Did from a list or sync item (its ``raw`` upstream object fills gaps); None if unusable."""
    raw = item.get("raw")
    fields: Mapping[str, Any] = {**raw, **item} if is_object(raw) else item
    did_id = first_int(fields, ("did_id", "id"))
    if did_id is None:
        warnings.append(f"{where}: a DID without a usable id was ignored: {brief(item)}")
        return None
    number = _did_number(fields) or ""
    if need_number and not number:
        warnings.append(f"{where}: DID {did_id} without a number was ignored")
        return None
    return Did(did_id=did_id, did_number=number, status=as_text(fields.get("status")))


def decode_bot(item: Mapping[str, Any], where: str, warnings: list[str]) -> Bot | None:
    """A Bot from a list or sync item; a bot without a status counts as active (the API's default)."""
    bot_id = first_int(item, ("id", "bot_id"))
    if bot_id is None:
        warnings.append(f"{where}: a bot without a usable id was ignored: {brief(item)}")
        return None
    flag = _as_flag(item.get("status")) if "status" in item else True
    return Bot(bot_id=bot_id, name=as_text(item.get("bot_name", item.get("name"))), active=flag is True)


def decode_routings(data: Mapping[str, Any], warnings: list[str]) -> list[Routing]:
    """Routing records of a sync answer: ``routing[]``, completed and extended by readiness."""
    out: dict[int, Routing] = {}
    for item in nested_list(data.get("routing")):
        if is_object(item):
            made = _decode_routing(item, None, warnings)
            if made is not None:
                out.setdefault(made.routing_id, made)
    added: dict[int, Routing] = {}
    for entry in nested_list(data.get("readiness")):
        if not is_object(entry) or not is_object(entry.get("routing")):
            continue
        # A record routing[] already has whole needs no second parse (100k-DID accounts).
        known = out.get(first_int(entry["routing"], ("routing_id", "id")) or 0)
        if known is not None and known.did_id is not None and known.did_number is not None:
            continue
        hint = _decode_routing(entry["routing"], entry, warnings)
        if hint is None:
            continue
        made = out.get(hint.routing_id)
        if made is None:
            added.setdefault(hint.routing_id, hint)
        elif made.did_id is None or made.did_number is None:
            out[hint.routing_id] = Routing(
                made.routing_id,
                made.did_id if made.did_id is not None else hint.did_id,
                made.did_number if made.did_number is not None else hint.did_number,
                made.record,
            )
    return [*out.values(), *(r for rid, r in added.items() if rid not in out)]


def _decode_routing(
    item: Mapping[str, Any], entry: Mapping[str, Any] | None, warnings: list[str]
) -> Routing | None:
    """Build a Routing from a routing item (and, for readiness, its entry); None if unusable."""
    raw = item.get("raw")
    fields: dict[str, Any] = {**raw, **item} if is_object(raw) else dict(item)
    routing_id = as_int(fields.get("routing_id"))
    if routing_id is None:
        routing_id = as_int(fields.get("id"))
    if routing_id is None:
        warnings.append(f"a routing record without a usable id was ignored: {brief(item)}")
        return None
    did_id = as_int(fields.get("did_id"))
    did_number = _did_number(fields)
    nested = fields.get("did")
    if isinstance(nested, Mapping):
        did_id = did_id if did_id is not None else as_int(nested.get("did_id", nested.get("id")))
        did_number = did_number or _did_number(nested)
    if entry is not None:
        remote = entry.get("remote_did")
        if isinstance(remote, Mapping):
            did_id = did_id if did_id is not None else as_int(remote.get("did_id", remote.get("id")))
            did_number = did_number or _did_number(remote)
        if not did_number and entry.get("key") is not None:
            did_number = as_text(entry.get("key")) or None
    record: dict[str, int | None] = {}
    for name in ROUTING_FIELDS:
        value = fields.get(name)
        record[name] = _as_flag_int(value) if name == "status" else as_int(value)
    return Routing(routing_id, did_id, did_number or None, MappingProxyType(record))


# -- parsing helpers ------------------------------------------------------------------

_DIGITS = re.compile(r"[0-9]+")


_EXACT_FLOAT = 2**53
"""Integral floats below this are exact; past it a float is not the number the server wrote (a
parser reads an integer past 64 bits as a float): never taken for an id."""


def as_int(value: object) -> int | None:
    """Read an id-like value: an int, an exact integral float or a string of digits; else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() and abs(value) < _EXACT_FLOAT else None
    if isinstance(value, str):
        text = value.strip()
        if _DIGITS.fullmatch(text):
            return int(text)
        if text.endswith(".0") and _DIGITS.fullmatch(text[:-2]):
            return int(text[:-2])
    return None


def as_text(value: object) -> str:
    return "" if value is None else str(value).strip()


def _as_flag(value: object) -> bool | None:
    """Read 1/"1"/true/"active" as True, 0/"0"/false/"inactive" as False, else None."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return {1: True, 0: False}.get(int(value)) if float(value).is_integer() else None
    if isinstance(value, str):
        return {"1": True, "true": True, "active": True, "0": False, "false": False, "inactive": False}.get(
            value.strip().casefold()
        )
    return None


def _as_flag_int(value: object) -> int | None:
    flag = _as_flag(value)
    return None if flag is None else int(flag)


def _did_number(item: Mapping[str, Any]) -> str | None:
    """The DID number as text; the API sometimes sends it as a JSON number."""
    value = item.get("did_number")
    if type(value) is str:  # the usual case first: one check, not three
        text = value.strip()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        number = as_int(value)
        return None if number is None else str(number)
    else:
        text = as_text(value)
    if text:
        return text
    phone = as_text(item.get("phone_number"))
    return phone.lstrip("+") or None


def first_int(item: Mapping[str, Any], keys: Sequence[str]) -> int | None:
    """The first of ``keys`` whose value is a usable integer id."""
    for key in keys:
        value = as_int(item.get(key))
        if value is not None:
            return value
    return None


_NOT_DIGITS = re.compile(r"[^0-9]+")
_ASCII_NOT_DIGITS = {code: None for code in range(128) if not 48 <= code <= 57}
"""str.translate's table that drops every ASCII character but 0-9."""


def number_key(text: str) -> str:
    """A DID number as digits only, the form numbers are compared in ("+91 80-11" -> "918011")."""
    # Called for every row and every DID read (100,000s a run), so no generator over the
    # characters: the API's numbers are digits already, a row's "+91..." is one translate.
    # Only ASCII 0-9 are kept (not "²" or "٣", which str.isdigit also calls digits).
    if text.isascii():
        return text if text.isdigit() else text.translate(_ASCII_NOT_DIGITS)
    return _NOT_DIGITS.sub("", text)


def nested_list(value: object) -> list[object]:
    """A sync list: a bare array, or one at ``data``/``data.data`` of an object; else empty."""
    if isinstance(value, list):
        return value
    found = find_list(value) if isinstance(value, Mapping) else None
    return found[0] if found is not None else []


def sync_holder(payload: object) -> Mapping[str, Any] | None:
    """Find the object holding a sync answer's lists (at the top, ``data`` or ``data.data``)."""
    holder = payload
    for _ in range(3):
        if not isinstance(holder, Mapping):
            return None
        if any(key in holder for key in ("dids", "bots", "routing", "readiness")):
            return holder
        holder = holder.get("data")
    return None


def find_list(payload: object) -> tuple[list[object], Mapping[str, Any]] | None:
    """Find the item list at data.data, data.data.data or data (or a bare list).

    Returns:
        The list and the pagination metadata next to it (from its holder and a ``meta``
        object there), or None when there is no list.
    """
    if isinstance(payload, list):
        return payload, {}
    if not isinstance(payload, Mapping):
        return None
    holder: Mapping[str, Any] = payload
    for _ in range(3):
        inner = holder.get("data")
        if isinstance(inner, list):
            meta = holder.get("meta")
            return inner, {**holder, **meta} if isinstance(meta, Mapping) else holder
        if not isinstance(inner, Mapping):
            return None
        holder = inner
    return None


def created_id(payload: object) -> int | None:
    holder = payload
    for _ in range(3):
        if not isinstance(holder, Mapping):
            return None
        for key in ("routing_id", "id"):
            value = as_int(holder.get(key))
            if value is not None and key in holder:
                return value
        holder = holder.get("data")
    return None


def error_of(payload: object) -> tuple[str | None, str]:
    """Return the error code and message of an error envelope (or a looser error body)."""
    if not isinstance(payload, Mapping):
        return None, ""
    error = payload.get("error")
    if isinstance(error, Mapping):
        code = error.get("code")
        return (None if code is None else str(code)), as_text(error.get("message"))
    if isinstance(error, str):
        return None, error
    return None, as_text(payload.get("message"))


def brief(item: Mapping[str, Any]) -> str:
    """An item quoted on one short line, for a warning."""
    return one_line(json.dumps(item, default=str))[:120]


def one_line(text: str) -> str:
    """Text with its runs of whitespace (newlines too) made one space."""
    return " ".join(text.split())


def decode_connections(payload: object, warnings: list[str]) -> list[Connection]:
    """The connections of a ``GET /telephony/connections`` answer, in its order.

    Raises:
        ApiError: the answer holds no list of connections.
    """
    found = find_list(payload)
    if found is None:
        raise ApiError("GET /telephony/connections: the response holds no list of connections")
    out: list[Connection] = []
    for item in found[0]:
        if not isinstance(item, Mapping):
            continue
        cid = item.get("connection_id", item.get("id"))
        if cid is None or str(cid).strip() == "":
            warnings.append("a connection without an id was ignored")
            continue
        out.append(
            Connection(
                connection_id=str(cid).strip(),
                name=as_text(item.get("name")),
                status=as_text(item.get("status")),
                is_default=_as_flag(item.get("is_default")) is True,
            )
        )
    return out


def decode_sync(data: Mapping[str, Any], warnings: list[str]) -> SyncState:
    """The DIDs, bots and routing records of a sync answer's lists (a missing list is empty)."""
    where = "POST /voicelink/sync"
    dids: dict[int, Did] = {}
    for item in objects(nested_list(data.get("dids")), f"{where} dids[]", warnings):
        did = decode_did(item, f"{where} dids[]", warnings, need_number=True)
        if did is not None:
            dids.setdefault(did.did_id, did)
    bots: dict[int, Bot] = {}
    for item in objects(nested_list(data.get("bots")), f"{where} bots[]", warnings):
        bot = decode_bot(item, f"{where} bots[]", warnings)
        if bot is not None:
            bots.setdefault(bot.bot_id, bot)
    return SyncState(tuple(dids.values()), tuple(bots.values()), tuple(decode_routings(data, warnings)))
