"""The emulated account: its options, its inventory, and the in-memory state requests change.

Inventory file format (JSON, the same as the packaged ``importer/data/inventory.json``):
``connections`` (connection_id/id, name, is_default), ``dids`` (id, did_id, did_number,
client_id, status, optional connection_id), ``bots`` (id, bot_name, client_id, websocket_url,
status 0/1, optional connection_id), ``routing`` (id, did_id and the routing fields, checked like
a create body except that inactive bots are allowed). Connection 1 is active; connection 2 only
with ``two_connections``; any later one never.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from importer.errors import InputError
from importer.fields import DID_FIELDS, ROUTING_FIELDS
from importer.sandbox.rules import (
    BOT_ID_FIELDS,
    DIGITS,
    UPDATE_FIELDS,
    ApiError,
    as_int,
    bad,
    check_routing,
    not_found,
    positive_int_problem,
    shown,
)

__all__ = [
    "DEFAULT_INVENTORY",
    "SANDBOX_API_KEY",
    "Account",
    "Bot",
    "Connection",
    "Did",
    "Inventory",
    "Routing",
    "SandboxConfig",
    "load_inventory",
]

SANDBOX_API_KEY = "rg_test_sandbox_key_0000"
"""The sandbox's documented default key; it opens nothing outside the sandbox."""

_BOT_ID_ORDER = tuple(sorted(BOT_ID_FIELDS, reverse=True))
"""The bot id fields in the order readiness looks at them (sorted once, not per DID)."""

DEFAULT_INVENTORY = "inventory.json"
"""The packaged inventory (in ``importer.data``) a sandbox serves unless given another."""


@dataclass(frozen=True, slots=True)
class SandboxConfig:
    """Everything a sandbox instance does; rates are probabilities in [0, 1]."""

    api_key: str = field(default=SANDBOX_API_KEY, repr=False)
    requests_per_minute: int = 60
    retry_after: bool = False
    latency_ms: int = 0
    fail_rate: float = 0.0
    ambiguous_rate: float = 0.0
    hang_rate: float = 0.0
    hang_seconds: float = 30.0
    burst_rate: float = 0.0
    burst_length: int = 5
    two_connections: bool = False
    int_did_numbers: bool = True
    inventory: Path | None = None
    seed: int = 0
    spike_rate: float = 0.0
    """Share of /api/v2 requests that get ``spike_ms`` of extra latency."""
    spike_ms: int = 1000
    lean_sync: bool = False
    """Answer sync with routing only: empty ``dids``, ``bots`` and ``readiness`` (tests clients' fallback)."""

    def __post_init__(self) -> None:
        problems = [f"{name} must be between 0 and 1" for name, rate in self._rates() if not 0 <= rate <= 1]
        if not self.api_key:
            problems.append("the API key must not be empty")
        if self.requests_per_minute < 1:
            problems.append("requests_per_minute must be at least 1")
        if self.burst_length < 1:
            problems.append("burst_length must be at least 1")
        if min(self.latency_ms, self.spike_ms) < 0 or not 0 <= self.hang_seconds < math.inf:
            problems.append("latency_ms, spike_ms and hang_seconds must be finite and not negative")
        if problems:
            raise InputError("sandbox options: " + "; ".join(problems))

    def _rates(self) -> tuple[tuple[str, float], ...]:
        return (
            ("fail_rate", self.fail_rate),
            ("ambiguous_rate", self.ambiguous_rate),
            ("hang_rate", self.hang_rate),
            ("burst_rate", self.burst_rate),
            ("spike_rate", self.spike_rate),
        )

    def options(self) -> dict[str, Any]:
        """Return the options as JSON-ready values, without the key."""
        out = {f: getattr(self, f) for f in self.__dataclass_fields__ if f != "api_key"}
        out["inventory"] = str(self.inventory) if self.inventory else None
        return out


@dataclass(frozen=True, slots=True)
class Connection:
    """One VoiceLink connection of the partner."""

    id: str
    name: str
    is_default: bool


@dataclass(frozen=True, slots=True)
class Did:
    """One purchased DID."""

    id: int
    did_number: str
    client_id: int
    status: str
    connection_id: str


@dataclass(frozen=True, slots=True)
class Bot:
    """One WebSocket bot."""

    id: int
    bot_name: str
    client_id: int
    websocket_url: str
    status: int
    connection_id: str


@dataclass(frozen=True, slots=True)
class Routing:
    """One DID's routing record: the modes, the ids those modes use, status."""

    id: int
    did_id: int
    values: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class Inventory:
    """What the emulated account holds at start."""

    connections: tuple[Connection, ...]
    dids: tuple[Did, ...]
    bots: tuple[Bot, ...]
    routing: tuple[Routing, ...]


def load_inventory(path: Path | None = None) -> Inventory:
    """Read an inventory JSON file (the format described in this module's docstring).

    Args:
        path: The JSON file, or None for the inventory packaged with the importer.

    Returns:
        The inventory.

    Raises:
        InputError: The file cannot be read or does not follow the format.
    """
    # importlib.resources, not a path next to the source: an installed wheel has no repository.
    source = resources.files("importer.data").joinpath(DEFAULT_INVENTORY) if path is None else path
    try:
        raw = json.loads(source.read_text(encoding="utf-8"))
        return _parse_inventory(raw)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        detail = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        raise InputError(f"sandbox inventory {path or DEFAULT_INVENTORY}: {detail}") from None


def _parse_inventory(raw: Any) -> Inventory:
    connections = tuple(
        Connection(str(c["connection_id"]), str(c["name"]), bool(c.get("is_default", False)))
        for c in raw["connections"]
    )
    if not connections:
        raise ValueError("it lists no connection")
    first = connections[0].id
    dids = []
    for d in raw["dids"]:
        if d.get("did_id", d["id"]) != d["id"] or positive_int_problem("id", d["id"]):
            raise ValueError(f"DID {d['id']!r}: id and did_id must be the same positive integer")
        number = str(d["did_number"])
        if not DIGITS.fullmatch(number):
            raise ValueError(f"DID {d['id']}: did_number {number!r} is not digits only")
        dids.append(
            Did(d["id"], number, int(d["client_id"]), str(d["status"]), d.get("connection_id", first))
        )
    bots = tuple(
        Bot(
            b["id"],
            str(b["bot_name"]),
            int(b["client_id"]),
            str(b.get("websocket_url", "")),
            int(b["status"]),
            b.get("connection_id", first),
        )
        for b in raw["bots"]
    )
    bot_map = {b.id: b for b in bots}
    known_dids = {d.id for d in dids}
    routing = []
    for r in raw["routing"]:
        body = {k: v for k, v in r.items() if k not in ("id", "did_id")}
        values, problems = check_routing(body, allowed=UPDATE_FIELDS, status_required=False, bots=None)
        if r["did_id"] not in known_dids:
            problems.append(f"did_id {r['did_id']!r} is not in dids")
        unknown_bots = [body[n] for n in BOT_ID_FIELDS if n in body and body[n] not in bot_map]
        problems += [f"bot {b!r} is not in bots" for b in unknown_bots]
        if problems:
            raise ValueError(f"routing {r.get('id')!r}: " + "; ".join(problems))
        routing.append(Routing(r["id"], r["did_id"], values))
    if len({r.did_id for r in routing}) != len(routing):
        raise ValueError("a DID has more than one routing record")
    return Inventory(connections, tuple(dids), bots, tuple(routing))


class Account:
    """The emulated account's records and the counters requests leave behind.

    Not thread-safe by itself: the sandbox calls it under its own lock.
    """

    def __init__(self, inventory: Inventory, *, two_connections: bool, int_did_numbers: bool) -> None:
        """Start from an inventory.

        Args:
            inventory: The records at start.
            two_connections: Whether the inventory's second connection is active too.
            int_did_numbers: Whether odd DID ids send did_number as a JSON integer on the wire.
        """
        self.connections = inventory.connections[: 2 if two_connections else 1]
        self.dids = {d.id: d for d in inventory.dids}
        self.did_by_number = {d.did_number: d for d in inventory.dids}
        self.bots = {b.id: b for b in inventory.bots}
        self.routing = {r.id: r for r in inventory.routing}
        self.routing_by_did = {r.did_id: r.id for r in inventory.routing}
        self._next_routing_id = max(self.routing, default=0) + 1
        self._int_did_numbers = int_did_numbers
        self.request_counts: Counter[str] = Counter()
        self.status_counts: Counter[int | str] = Counter()  # 'dropped' for cut connections
        self.create_attempts: Counter[str] = Counter()
        self.writes_applied: Counter[str] = Counter()
        self.writes: list[dict[str, Any]] = []

    # --- changes ---------------------------------------------------------------------------------

    def create(self, did: Did, values: dict[str, int]) -> Routing:
        """Store a new routing record for a DID that has none."""
        record = Routing(self._next_routing_id, did.id, values)
        self._next_routing_id += 1
        self.routing[record.id] = record
        self.routing_by_did[did.id] = record.id
        self._log_write("create", record, changed=True)
        return record

    def update(self, current: Routing, values: dict[str, int]) -> Routing:
        """Replace a routing record's values (counted as applied only when they changed)."""
        record = Routing(current.id, current.did_id, values)
        self.routing[record.id] = record
        self._log_write("update", record, changed=dict(record.values) != dict(current.values))
        return record

    def _log_write(self, op: str, record: Routing, *, changed: bool) -> None:
        self.writes.append({"op": op, "routing_id": record.id, "did_id": record.did_id, "changed": changed})
        if changed:
            self.writes_applied[str(record.did_id)] += 1

    # --- look-ups --------------------------------------------------------------------------------

    def resolve_did(self, body: Mapping[str, object]) -> Did:
        """Find the DID a create body names by did_id, did_number or both (which must agree)."""
        did_id, number = as_int(body.get("did_id")), body.get("did_number")
        by_id = self.dids.get(did_id) if did_id is not None else None
        by_number = self.did_by_number.get(number) if isinstance(number, str) else None
        if "did_id" in body and "did_number" in body and by_id is not by_number:
            if by_id is None and by_number is None:
                raise not_found("no such DID")
            raise bad("did_id and did_number name different DIDs")
        did = by_id or by_number
        if did is None:
            raise not_found("no such DID")
        return did

    def did_key(self, body: Mapping[str, object]) -> str:
        """Name the DID a create body refers to, for create_attempts."""
        with contextlib.suppress(ApiError):
            return str(self.resolve_did(body).id)
        for name in DID_FIELDS:
            if name in body:
                return f"{name}={shown(body[name])}"
        return "(no DID)"

    # --- JSON items, as the API sends them (as_int: the wire's integer did_number quirk) ----------

    def number(self, did: Did, *, as_int: bool) -> str | int:
        """Return a DID's number, as a JSON integer for odd ids on the wire when configured."""
        # The upstream API sometimes sends did_number as a JSON integer; odd ids emulate that.
        return int(did.did_number) if as_int and self._int_did_numbers and did.id % 2 else did.did_number

    def did_item(self, did: Did, *, as_int: bool) -> dict[str, Any]:
        """Render a DID as a list item."""
        return {
            "id": did.id,
            "did_id": did.id,
            "did_number": self.number(did, as_int=as_int),
            "client_id": did.client_id,
            "status": did.status,
        }

    def routing_item(self, record: Routing, *, as_int: bool) -> dict[str, Any]:
        """Render a routing record with every routing field (null when unused)."""
        number = self.number(self.dids[record.did_id], as_int=as_int)
        fields = {name: record.values.get(name) for name in ROUTING_FIELDS}
        return {"id": record.id, "did_id": record.did_id, "did_number": number, **fields}

    @staticmethod
    def bot_item(bot: Bot) -> dict[str, Any]:
        """Render a bot as a list item."""
        return {k: v for k, v in asdict(bot).items() if k != "connection_id"}

    @staticmethod
    def connection_item(conn: Connection) -> dict[str, Any]:
        """Render a connection as the connections list shows it."""
        return {
            "connection_id": conn.id,
            "id": conn.id,
            "name": conn.name,
            "status": "ACTIVE",
            "is_default": conn.is_default,
        }

    def readiness(self, did: Did, item: dict[str, Any] | None = None) -> dict[str, Any]:
        """Render sync's readiness entry for a DID: routed to a bot, routed otherwise, or unrouted.

        ``item`` is the DID's ``did_item(did, as_int=True)`` when the caller has it already
        (sync renders every DID twice: in ``dids`` and here).
        """
        routing_id = self.routing_by_did.get(did.id)
        record = self.routing[routing_id] if routing_id is not None else None
        bot_ids = [record.values[n] for n in _BOT_ID_ORDER if n in record.values] if record else []
        bot = self.bots.get(bot_ids[0]) if bot_ids else None
        # Literal lists per state (fresh each call): sync renders this for every DID of the account.
        if record is None:
            state, issues, codes = "ROUTING_MISSING", ["ROUTING_MISSING"], ["create_routing"]
            items = [{"code": "create_routing", "label": "Create call routing"}]
        elif bot is None:
            state, issues, codes = "NO_BOT", ["NO_BOT"], ["attach_bot"]
            items = [{"code": "attach_bot", "label": "Route calls to a WebSocket bot"}]
        else:
            state, issues, codes, items = "READY", [], [], []
        return {
            "key": did.did_number,
            "phone_number": "+" + did.did_number,
            "state": state,
            "issues": issues,
            "remote_did": self.did_item(did, as_int=True) if item is None else item,
            "local_phone_number": None,
            "routing": self.routing_item(record, as_int=True) if record else None,
            "bot": self.bot_item(bot) if bot else None,
            "actions": codes,
            "action_items": items,
        }

    def snapshot(self) -> dict[str, Any]:
        """Return the records and counters as JSON-ready data (numbers always as strings)."""
        return {
            "connections": [self.connection_item(c) for c in self.connections],
            "dids": [self.did_item(d, as_int=False) for d in self.dids.values()],
            "bots": [self.bot_item(b) for b in self.bots.values()],
            "routing": [self.routing_item(self.routing[i], as_int=False) for i in sorted(self.routing)],
            "request_counts": dict(sorted(self.request_counts.items())),
            "status_counts": {
                str(k): v for k, v in sorted(self.status_counts.items(), key=lambda kv: str(kv[0]))
            },
            "create_attempts": dict(sorted(self.create_attempts.items())),
            "writes_applied": dict(sorted(self.writes_applied.items())),
            "writes": [dict(w) for w in self.writes],
        }
