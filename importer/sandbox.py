"""Emulate the documented Vocobase VoiceLink API v2 on loopback, with deterministic fault injection.

The sandbox is the fake every apply-path test talks to, the engine of ``voicelink-import sandbox``
and the default target of the README's demo. It serves, under ``/api/v2`` with
``Authorization: Bearer <key>``:

- ``GET  /telephony/connections?provider=voicelink``
- ``GET  /voicelink/dids/purchased``  (page, per_page, search, status, client_id, connection_id)
- ``GET  /voicelink/bots``            (page, per_page, search, status, client_id, connection_id)
- ``POST /voicelink/sync``            (read-only here whatever ``import_dids`` says)
- ``POST /voicelink/call-routing`` and ``POST /voicelink/call-routing/{routing_id}``

and, outside ``/api/v2`` and without auth, ``GET /_sandbox/state``: the whole state as JSON.
The field rules (modes, which id each mode needs) come from ``importer.fields``.

Behaviour choices (where the API reference is unsure):

- Every other path or method under /api/v2 answers 404 NOT_FOUND, including the undocumented
  ``GET /voicelink/call-routing``: existing routing is read through ``POST /voicelink/sync``.
- Create accepts did_id, did_number or both; both must name the same DID (else 400). did_number
  must be a JSON string of ASCII digits, country code first, with no "+", spaces or dashes.
- An id field sent for a mode that does not use it is rejected (400), even as ``null``.
  An unknown field is rejected (400); so are did_id/did_number in an update body.
- Bot ids must name an existing bot with status 1 (else 400); SIP trunk ids are any positive
  integer (there is no trunk endpoint to check them against).
- Validation (400) runs before the DID lookup (404) and the one-routing-per-DID check
  (409 CONFLICT, message without the existing routing id). An update looks up its routing id
  (404) before validating the body. A routing id that is not an integer is 404.
- A validation message lists every problem found, each naming its field, joined by "; ".
- ``connection_id`` (or the legacy ``connectionId``) is read from the JSON body of a POST, else
  from the query string. An unknown or inactive connection id is 404 NOT_FOUND; with two active
  connections a request without one is 400 VALIDATION_ERROR naming connection_id.
- Inventory DIDs and bots belong to the first connection unless they carry a ``connection_id``;
  a DID or routing of another connection is 404 (the docs' "missing, or not yours").
- Paging: page >= 1 and per_page >= 1 (else 400); default per_page 15 (Laravel's); DIDs cap
  per_page at 100 silently, bots reject per_page > 1000. A page past the end is empty.
  ``search`` is a literal substring of did_number (DIDs) or a case-insensitive one of bot_name.
- With ``int_did_numbers`` (default on), every DID with an odd id has its did_number as a JSON
  integer in dids/purchased and in sync's dids, routing and readiness.remote_did.
- With ``lean_sync``, sync answers with empty ``dids[]``, ``bots[]`` and ``readiness[]``
  (``routing[]`` only), as an upstream that does not carry the lists might.
- Rate limit: a 60 s sliding window per key over every accepted /api/v2 request (GETs too, and
  injected faults). Requests with a bad key (401) and the limiter's own 429s do not count.
  ``Retry-After`` (only with ``retry_after``) is the whole seconds until the oldest counted
  request leaves the window; during an injected 429 burst it is 1.
- The 401 message never contains the key; a key in the query string or body is ignored.
- Faults (/api/v2 only; never /_sandbox/state): ``fail_rate`` answers 500 (or, for about a
  quarter of them, 503) INTERNAL_ERROR before anything is applied, on any endpoint.
  ``ambiguous_rate`` applies to routing creates/updates that succeed: the write is applied, then
  the answer is either a 500 or a dropped connection (headers then nothing; httpx raises
  ``RemoteProtocolError``). ``hang_rate`` handles the request (applying a write) and then holds
  the answer for ``hang_seconds`` on any endpoint. A burst 429 is one more 429 LIMIT_REACHED.
- In-process (``httpx.ASGITransport``) a dropped connection raises ``SandboxConnectionDropped``,
  a subclass of ``httpx.RemoteProtocolError``, so a client sees the same exception type as over TCP.
- State counts: requests by "METHOD /template" (every /api/v2 request, even 401/429/faulted);
  create attempts per DID for every authenticated create naming it (successful or not,
  including 429s and faults; keyed by the DID id, or "did_id=<v>"/"did_number=<v>" when the DID
  is unknown); writes applied per DID for creates and for updates that changed the record.

Inventory file format (JSON, the same as ``sample_data/inventory.json``): ``connections``
(connection_id/id, name, is_default), ``dids`` (id, did_id, did_number, client_id, status,
optional connection_id), ``bots`` (id, bot_name, client_id, websocket_url, status 0/1, optional
connection_id), ``routing`` (id, did_id and the routing fields, checked like a create body
except that inactive bots are allowed). Connection 1 is active; connection 2 only with
``two_connections``; any later one never.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hmac
import json
import logging
import math
import os
import re
import signal
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from importer._sandbox_faults import FaultInjector, FaultKind, FaultPlan
from importer.errors import InputError
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
    "SANDBOX_API_KEY",
    "Sandbox",
    "SandboxConfig",
    "SandboxConnectionDropped",
    "create_sandbox",
    "running_sandbox",
    "serve",
]

SANDBOX_API_KEY = "rg_test_sandbox_key_0000"
"""The sandbox's documented default key; it opens nothing outside the sandbox."""

API_PREFIX = "/api/v2"
STATE_PATH = "/_sandbox/state"
DEFAULT_INVENTORY = Path(__file__).resolve().parent.parent / "sample_data" / "inventory.json"
WINDOW_SECONDS = 60.0
DID_PAGE_MAX = 100
BOT_PAGE_MAX = 1000
DEFAULT_PER_PAGE = 15

_CONNECTION_KEYS = ("connection_id", "connectionId")
_CREATE_FIELDS = frozenset((*DID_FIELDS, *ROUTING_FIELDS, *_CONNECTION_KEYS))
_UPDATE_FIELDS = frozenset((*ROUTING_FIELDS, *_CONNECTION_KEYS))
_SYNC_FIELDS = frozenset(("import_dids", *_CONNECTION_KEYS))
# Which direction each mode id belongs to, derived from the one field spec.
_ID_DIRECTION: dict[str, Direction] = {
    m.requires: d for d, modes in MODES.items() for m in modes.values() if m.requires
}
_BOT_ID_FIELDS = frozenset(name for name in MODE_ID_FIELDS if "websocket_bot" in name)
_DIGITS = re.compile(r"[0-9]+")
_QUERY_INT = re.compile(r"[0-9]{1,9}")


class SandboxConnectionDropped(httpx.RemoteProtocolError):
    """Raised by the sandbox app to cut a connection after an applied write (in-process clients see it)."""


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
    """Sync answers with empty dids[], bots[] and readiness[]: routing[] only (tests the fallbacks)."""

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


class _ApiError(Exception):
    """An error answer in the documented envelope."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def _bad(message: str) -> _ApiError:
    return _ApiError(400, "VALIDATION_ERROR", message)


def _not_found(message: str) -> _ApiError:
    return _ApiError(404, "NOT_FOUND", message)


def _shown(value: object) -> str:
    """Render a rejected value briefly for a message."""
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _int(value: object) -> int | None:
    """Return value if it is a JSON integer (not a bool, float or string), else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _positive_int_problem(name: str, value: object) -> str | None:
    number = _int(value)
    if number is not None and number >= 1:
        return None
    return f"{name} must be a positive integer (got {_shown(value)})"


def check_routing(
    body: Mapping[str, object],
    *,
    allowed: frozenset[str],
    status_required: bool,
    bots: Mapping[int, Bot] | None,
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
        mode = _int(body.get(mode_field))
        if mode_field not in body:
            problems.append(f"{mode_field} is required")
        elif mode is not None and mode in MODES[direction]:
            modes[direction] = record[mode_field] = mode
        else:
            shown = _shown(body[mode_field])
            problems.append(f"{mode_field} must be one of {describe_modes(direction)} (got {shown})")
    if "status" in body or status_required:
        record["status"] = status = _int(body.get("status"))
        if "status" not in body:
            problems.append("status is required")
        elif status not in (0, 1):
            problems.append(f"status must be 0 (inactive) or 1 (active) (got {_shown(body['status'])})")
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
        elif problem := _positive_int_problem(name, body[name]) or _bot_problem(name, body[name], bots):
            problems.append(problem)
        else:
            record[name] = _int(body[name])
    if problems:
        return {}, problems
    return routing_body(record), []


def _bot_problem(name: str, value: object, bots: Mapping[int, Bot] | None) -> str | None:
    """Check a bot id against the bots (it must exist and be active); None when fine."""
    bot_id = _int(value)
    if bots is None or name not in _BOT_ID_FIELDS or bot_id is None:
        return None
    bot = bots.get(bot_id)
    if bot is None:
        return f"{name} {bot_id}: no such bot"
    return f"{name} {bot_id}: the bot is inactive" if bot.status != 1 else None


def _did_problems(body: Mapping[str, object]) -> list[str]:
    if not any(name in body for name in DID_FIELDS):
        return ["did_id or did_number is required"]
    problems: list[str] = []
    if "did_id" in body and (problem := _positive_int_problem("did_id", body["did_id"])):
        problems.append(problem)
    if "did_number" in body:
        number = body["did_number"]
        if not (isinstance(number, str) and _DIGITS.fullmatch(number)):
            problems.append(
                "did_number must be a string of digits, country code first, "
                f"with no '+', spaces or dashes (got {_shown(number)})"
            )
    return problems


def load_inventory(path: Path) -> Inventory:
    """Read an inventory JSON file (the format of sample_data/inventory.json).

    Args:
        path: The JSON file.

    Returns:
        The inventory.

    Raises:
        InputError: The file cannot be read or does not follow the format.
    """
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return _parse_inventory(raw)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        detail = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        raise InputError(f"sandbox inventory {path}: {detail}") from None


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
        if d.get("did_id", d["id"]) != d["id"] or _positive_int_problem("id", d["id"]):
            raise ValueError(f"DID {d['id']!r}: id and did_id must be the same positive integer")
        number = str(d["did_number"])
        if not _DIGITS.fullmatch(number):
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
        values, problems = check_routing(body, allowed=_UPDATE_FIELDS, status_required=False, bots=None)
        if r["did_id"] not in known_dids:
            problems.append(f"did_id {r['did_id']!r} is not in dids")
        unknown_bots = [body[n] for n in _BOT_ID_FIELDS if n in body and body[n] not in bot_map]
        problems += [f"bot {b!r} is not in bots" for b in unknown_bots]
        if problems:
            raise ValueError(f"routing {r.get('id')!r}: " + "; ".join(problems))
        routing.append(Routing(r["id"], r["did_id"], values))
    if len({r.did_id for r in routing}) != len(routing):
        raise ValueError("a DID has more than one routing record")
    return Inventory(connections, tuple(dids), bots, tuple(routing))


@dataclass(frozen=True, slots=True)
class _Call:
    """One authenticated /api/v2 request as a handler sees it."""

    path_params: Mapping[str, str]
    query: Mapping[str, str]
    body: object
    body_error: str | None


_Handler = Callable[[_Call], Any]


class _DroppedResponse(Response):
    """Send the status line and headers, then cut the connection: no complete response."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-type", b"application/json"), (b"content-length", b"1024")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        # Raising after the start makes uvicorn close the transport mid-response.
        raise SandboxConnectionDropped("sandbox fault: the connection was dropped before the response")


class _QuietDrops(logging.Filter):
    """Keep uvicorn from logging a traceback for every deliberately dropped connection."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, SandboxConnectionDropped)


class Sandbox:
    """One emulated VoiceLink account: inventory, routing, counters, faults.

    ``app`` is the Starlette ASGI app. Its state is guarded by one lock, so ``state_snapshot``
    can be called from any thread while the app serves.
    """

    def __init__(self, config: SandboxConfig, *, clock: Callable[[], float] = time.monotonic) -> None:
        """Build the emulator.

        Args:
            config: The options.
            clock: Monotonic seconds for the rate-limit window (tests pass a fake one).
        """
        self.config = config
        self._clock = clock
        inventory = load_inventory(config.inventory or DEFAULT_INVENTORY)
        self._connections = inventory.connections[: 2 if config.two_connections else 1]
        self._dids = {d.id: d for d in inventory.dids}
        self._did_by_number = {d.did_number: d for d in inventory.dids}
        self._bots = {b.id: b for b in inventory.bots}
        self._routing = {r.id: r for r in inventory.routing}
        self._routing_by_did = {r.did_id: r.id for r in inventory.routing}
        self._next_routing_id = max(self._routing, default=0) + 1
        self._lock = threading.RLock()  # re-entrant: _reply counts statuses with or without it held
        self._window: deque[float] = deque()  # only the one configured key authenticates
        self._request_counts: Counter[str] = Counter()
        self._status_counts: Counter[int | str] = Counter()  # 'dropped' for cut connections
        self._create_attempts: Counter[str] = Counter()
        self._writes_applied: Counter[str] = Counter()
        self._writes: list[dict[str, Any]] = []
        self._faults = FaultInjector(config)
        self._released = False
        api = [
            ("GET", "/telephony/connections", self._list_connections, False),
            ("GET", "/voicelink/dids/purchased", self._list_dids, False),
            ("GET", "/voicelink/bots", self._list_bots, False),
            ("POST", "/voicelink/sync", self._sync, False),
            ("POST", "/voicelink/call-routing", self._create_routing, True),
            ("POST", "/voicelink/call-routing/{routing_id}", self._update_routing, True),
        ]
        routes = [
            Route(API_PREFIX + path, self._endpoint(path, handler, write=write), methods=[method])
            for method, path, handler, write in api
        ]
        every = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
        routes.append(
            Route(API_PREFIX + "/{rest:path}", self._endpoint("/{unknown}", self._unknown), methods=every)
        )
        routes.append(Route(STATE_PATH, self._state_endpoint, methods=["GET"]))
        self.app = Starlette(routes=routes)

    # --- inspection -------------------------------------------------------------------------

    def state_snapshot(self) -> dict[str, Any]:
        """Return the whole state as plain JSON-ready data (the same as GET /_sandbox/state)."""
        with self._lock:
            return {
                "options": self.config.options(),
                "connections": [self._connection_item(c) for c in self._connections],
                "dids": [self._did_item(d, as_int=False) for d in self._dids.values()],
                "bots": [self._bot_item(b) for b in self._bots.values()],
                "routing": [
                    self._routing_item(self._routing[i], as_int=False) for i in sorted(self._routing)
                ],
                "request_counts": dict(sorted(self._request_counts.items())),
                "status_counts": {
                    str(k): v for k, v in sorted(self._status_counts.items(), key=lambda kv: str(kv[0]))
                },
                "create_attempts": dict(sorted(self._create_attempts.items())),
                "writes_applied": dict(sorted(self._writes_applied.items())),
                "writes": [dict(w) for w in self._writes],
                "faults": [dict(f) for f in self._faults.fired],
                "rate_limited": self._status_counts[429],
            }

    def write_state(self, path: Path) -> None:
        """Write ``state_snapshot()`` as JSON to ``path`` (atomically: a reader never sees half)."""
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.state_snapshot(), indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)

    def release_hangs(self) -> None:
        """End every hanging request now and stop hanging new ones (used when shutting down)."""
        self._released = True

    async def _state_endpoint(self, request: Request) -> Response:
        return JSONResponse(self.state_snapshot())

    # --- the request pipeline: latency, auth, rate limit, faults, handler ------------------

    def _endpoint(self, template: str, handler: _Handler, *, write: bool = False) -> Callable[..., Any]:
        async def endpoint(request: Request) -> Response:
            return await self._serve_api(request, template, handler, write)

        return endpoint

    async def _serve_api(self, request: Request, template: str, handler: _Handler, write: bool) -> Response:
        method, path = request.method, request.url.path
        with self._lock:
            self._request_counts[f"{method} {template}"] += 1
        if self.config.latency_ms:
            await asyncio.sleep(self.config.latency_ms / 1000)
        try:
            raw = await request.body()
        except ClientDisconnect:
            # The client went away (killed, timed out) before sending its body: nothing to apply.
            return Response(status_code=499)
        call = _parse_call(request, raw)
        key = _bearer(request)
        if key is None or not hmac.compare_digest(key.encode(), self.config.api_key.encode()):
            return self._reply(_ApiError(401, "UNAUTHORIZED", "missing or invalid API key"))
        with self._lock:
            if template == "/voicelink/call-routing" and isinstance(call.body, dict):
                self._create_attempts[self._did_key(call.body)] += 1
            wait = self._rate_limited()
            if wait is not None:
                return self._reply(
                    _ApiError(429, "LIMIT_REACHED", "rate limit reached; wait for the window"), wait
                )
            plan = self._faults.plan(method, path, _fault_key(call), write=write)
            if plan.spike:
                self._faults.record(FaultKind.LATENCY_SPIKE, method, path, plan)
        if plan.spike:
            await asyncio.sleep(self.config.spike_ms / 1000)
        with self._lock:
            early = self._early_fault(method, path, plan)
            if early is not None:
                return early
            try:
                status, data = 200, handler(call)
            except _ApiError as exc:
                status, data = exc.status, exc
            if write and status == 200 and plan.ambiguous is not None:
                self._faults.record(plan.ambiguous, method, path, plan)
                if plan.ambiguous is FaultKind.AMBIGUOUS_DROP:
                    self._status_counts["dropped"] += 1
                    return _DroppedResponse()
                return self._reply(_ApiError(500, "INTERNAL_ERROR", "internal error"))
            if plan.hang and not self._released:
                self._faults.record(FaultKind.HANG, method, path, plan)
        if plan.hang:
            await self._hang()
        return self._reply(data)

    def _early_fault(self, method: str, path: str, plan: FaultPlan) -> Response | None:
        """Answer a burst 429 or a failure before anything is applied."""
        if plan.burst:
            self._faults.record(FaultKind.BURST_429, method, path, plan)
            return self._reply(_ApiError(429, "LIMIT_REACHED", "rate limit reached; wait for the window"), 1)
        if plan.fail_status is not None:
            self._faults.record(FaultKind.FAIL, method, path, plan)
            return self._reply(_ApiError(plan.fail_status, "INTERNAL_ERROR", "internal error"))
        return None

    def _reply(self, data: object, retry_after: int | None = None) -> Response:
        """Wrap data (or an error) in the documented envelope and count its status."""
        if isinstance(data, _ApiError):
            status = data.status
            content: dict[str, Any] = {
                "success": False,
                "error": {"code": data.code, "message": data.message},
            }
        else:
            status, content = 200, {"success": True, "data": data}
        headers = (
            {"Retry-After": str(retry_after)} if retry_after is not None and self.config.retry_after else None
        )
        with self._lock:
            self._status_counts[status] += 1
        return JSONResponse(content, status_code=status, headers=headers)

    def _rate_limited(self) -> int | None:
        """Count a request in the key's window; return whole seconds to wait when over the limit."""
        now = self._clock()
        window = self._window
        while window and window[0] <= now - WINDOW_SECONDS:
            window.popleft()
        if len(window) >= self.config.requests_per_minute:
            return max(1, math.ceil(window[0] + WINDOW_SECONDS - now))
        window.append(now)
        return None

    async def _hang(self) -> None:
        end = time.monotonic() + self.config.hang_seconds
        while not self._released and (left := end - time.monotonic()) > 0:
            await asyncio.sleep(min(left, 0.05))

    # --- endpoint handlers (run under the lock; raise _ApiError for error answers) -----------

    def _unknown(self, call: _Call) -> Any:
        raise _not_found("no such endpoint in the VoiceLink API sandbox")

    def _list_connections(self, call: _Call) -> Any:
        provider = call.query.get("provider", "voicelink")
        return [self._connection_item(c) for c in self._connections] if provider == "voicelink" else []

    def _list_dids(self, call: _Call) -> Any:
        conn = self._connection(call)
        search = call.query.get("search", "")
        status = call.query.get("status")
        client_id = _query_int(call.query, "client_id", None)
        items = [
            self._did_item(d, as_int=True)
            for d in self._dids.values()
            if d.connection_id == conn.id
            and search in d.did_number
            and status in (None, d.status)
            and client_id in (None, d.client_id)
        ]
        return _page(items, call.query, limit=DID_PAGE_MAX, clamp=True)

    def _list_bots(self, call: _Call) -> Any:
        conn = self._connection(call)
        search = call.query.get("search", "").casefold()
        status = call.query.get("status")
        if status not in (None, "0", "1"):
            raise _bad(f"status must be 0 or 1 (got {_shown(status)})")
        client_id = _query_int(call.query, "client_id", None)
        items = [
            self._bot_item(b)
            for b in self._bots.values()
            if b.connection_id == conn.id
            and search in b.bot_name.casefold()
            and status in (None, str(b.status))
            and client_id in (None, b.client_id)
        ]
        return _page(items, call.query, limit=BOT_PAGE_MAX, clamp=False)

    def _sync(self, call: _Call) -> Any:
        body = _object_body(call, empty_ok=True)
        problems = [f"{name} is not a known field" for name in body if name not in _SYNC_FIELDS]
        if "import_dids" in body and not isinstance(body["import_dids"], bool):
            problems.append(f"import_dids must be true or false (got {_shown(body['import_dids'])})")
        if problems:
            raise _bad("; ".join(problems))
        conn = self._connection(call)
        dids = [d for d in self._dids.values() if d.connection_id == conn.id]
        routing = [self._routing[self._routing_by_did[d.id]] for d in dids if d.id in self._routing_by_did]
        if self.config.lean_sync:
            dids = []
        return {
            "clients": [],
            "dids": [
                {**self._did_item(d, as_int=True), "phone_number": "+" + d.did_number, "is_expired": False}
                for d in dids
            ],
            "available_dids": [],
            "bots": [
                self._bot_item(b)
                for b in self._bots.values()
                if b.connection_id == conn.id and not self.config.lean_sync
            ],
            "routing": [self._routing_item(r, as_int=True) for r in routing],
            "local_phone_numbers": [],
            "readiness": [self._readiness(d) for d in dids],
            "drift": [],
        }

    def _create_routing(self, call: _Call) -> Any:
        body = _object_body(call)
        conn = self._connection(call)
        values, problems = check_routing(body, allowed=_CREATE_FIELDS, status_required=False, bots=self._bots)
        problems = _did_problems(body) + problems
        if problems:
            raise _bad("; ".join(problems))
        did = self._resolve_did(body)
        if did.connection_id != conn.id:
            raise _not_found("no such DID on this connection")
        if did.id in self._routing_by_did:
            raise _ApiError(409, "CONFLICT", f"call routing already exists for DID {did.did_number}")
        record = Routing(self._next_routing_id, did.id, values)
        self._next_routing_id += 1
        self._routing[record.id] = record
        self._routing_by_did[did.id] = record.id
        self._log_write("create", record, changed=True)
        return {}

    def _update_routing(self, call: _Call) -> Any:
        conn = self._connection(call)
        text = call.path_params["routing_id"]
        current = self._routing.get(int(text)) if _QUERY_INT.fullmatch(text) else None
        if current is None or self._dids[current.did_id].connection_id != conn.id:
            raise _not_found(f"no call routing with id {text}")
        body = _object_body(call)
        values, problems = check_routing(body, allowed=_UPDATE_FIELDS, status_required=True, bots=self._bots)
        if problems:
            raise _bad("; ".join(problems))
        record = Routing(current.id, current.did_id, values)
        self._routing[record.id] = record
        self._log_write("update", record, changed=dict(record.values) != dict(current.values))
        return {}

    # --- helpers ---------------------------------------------------------------------------------

    def _connection(self, call: _Call) -> Connection:
        """Pick the connection a request names, or the only active one."""
        body = call.body if isinstance(call.body, dict) else {}
        given = {
            k: body[k] if k in body else call.query[k]
            for k in _CONNECTION_KEYS
            if k in body or k in call.query
        }
        if len(set(map(str, given.values()))) > 1:
            raise _bad("connection_id and connectionId name different connections")
        if not given:
            if len(self._connections) > 1:
                raise _bad("connection_id is required: several VoiceLink connections are active")
            return self._connections[0]
        value = next(iter(given.values()))
        for conn in self._connections:
            if value == conn.id:
                return conn
        if not isinstance(value, str):
            raise _bad(f"connection_id must be a UUID string (got {_shown(value)})")
        raise _not_found("connection_id: no active VoiceLink connection with this id")

    def _resolve_did(self, body: Mapping[str, object]) -> Did:
        did_id, number = _int(body.get("did_id")), body.get("did_number")
        by_id = self._dids.get(did_id) if did_id is not None else None
        by_number = self._did_by_number.get(number) if isinstance(number, str) else None
        if "did_id" in body and "did_number" in body and by_id is not by_number:
            if by_id is None and by_number is None:
                raise _not_found("no such DID")
            raise _bad("did_id and did_number name different DIDs")
        did = by_id or by_number
        if did is None:
            raise _not_found("no such DID")
        return did

    def _did_key(self, body: Mapping[str, object]) -> str:
        """Name the DID a create body refers to, for create_attempts."""
        with contextlib.suppress(_ApiError):
            return str(self._resolve_did(body).id)
        for name in DID_FIELDS:
            if name in body:
                return f"{name}={_shown(body[name])}"
        return "(no DID)"

    def _log_write(self, op: str, record: Routing, *, changed: bool) -> None:
        self._writes.append({"op": op, "routing_id": record.id, "did_id": record.did_id, "changed": changed})
        if changed:
            self._writes_applied[str(record.did_id)] += 1

    def _readiness(self, did: Did) -> dict[str, Any]:
        routing_id = self._routing_by_did.get(did.id)
        record = self._routing[routing_id] if routing_id is not None else None
        bot_ids = (
            [record.values[n] for n in sorted(_BOT_ID_FIELDS, reverse=True) if n in record.values]
            if record
            else []
        )
        bot = self._bots.get(bot_ids[0]) if bot_ids else None
        if record is None:
            state, issues, actions = (
                "ROUTING_MISSING",
                ["ROUTING_MISSING"],
                [("create_routing", "Create call routing")],
            )
        elif bot is None:
            state, issues, actions = "NO_BOT", ["NO_BOT"], [("attach_bot", "Route calls to a WebSocket bot")]
        else:
            state, issues, actions = "READY", [], []
        return {
            "key": did.did_number,
            "phone_number": "+" + did.did_number,
            "state": state,
            "issues": issues,
            "remote_did": self._did_item(did, as_int=True),
            "local_phone_number": None,
            "routing": self._routing_item(record, as_int=True) if record else None,
            "bot": self._bot_item(bot) if bot else None,
            "actions": [code for code, _ in actions],
            "action_items": [{"code": code, "label": label} for code, label in actions],
        }

    def _number(self, did: Did, *, as_int: bool) -> str | int:
        # The upstream API sometimes sends did_number as a JSON integer; odd ids emulate that.
        return (
            int(did.did_number) if as_int and self.config.int_did_numbers and did.id % 2 else did.did_number
        )

    def _did_item(self, did: Did, *, as_int: bool) -> dict[str, Any]:
        number = self._number(did, as_int=as_int)
        return {
            "id": did.id,
            "did_id": did.id,
            "did_number": number,
            "client_id": did.client_id,
            "status": did.status,
        }

    def _routing_item(self, record: Routing, *, as_int: bool) -> dict[str, Any]:
        number = self._number(self._dids[record.did_id], as_int=as_int)
        fields = {name: record.values.get(name) for name in ROUTING_FIELDS}
        return {"id": record.id, "did_id": record.did_id, "did_number": number, **fields}

    @staticmethod
    def _bot_item(bot: Bot) -> dict[str, Any]:
        return {k: v for k, v in asdict(bot).items() if k != "connection_id"}

    @staticmethod
    def _connection_item(conn: Connection) -> dict[str, Any]:
        return {
            "connection_id": conn.id,
            "id": conn.id,
            "name": conn.name,
            "status": "ACTIVE",
            "is_default": conn.is_default,
        }


def _parse_call(request: Request, raw: bytes) -> _Call:
    body: object = None
    error = None
    if raw.strip():
        try:
            body = json.loads(raw)
        except ValueError:
            error = "the body is not valid JSON"
    return _Call(dict(request.path_params), dict(request.query_params), body, error)


def _bearer(request: Request) -> str | None:
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    return key.strip() if scheme.lower() == "bearer" and key.strip() else None


def _fault_key(call: _Call) -> str:
    """Identify a request for fault decisions: its DID, routing id or query."""
    if "routing_id" in call.path_params:
        return f"routing_id={call.path_params['routing_id']}"
    if isinstance(call.body, dict):
        named = [f"{n}={call.body[n]}" for n in DID_FIELDS if n in call.body]
        if named:
            return ",".join(named)
    return "&".join(f"{k}={v}" for k, v in sorted(call.query.items()))


def _object_body(call: _Call, *, empty_ok: bool = False) -> dict[str, object]:
    if call.body_error:
        raise _bad(call.body_error)
    if call.body is None and empty_ok:
        return {}
    if not isinstance(call.body, dict):
        raise _bad("the body must be a JSON object")
    return call.body


def _query_int(
    query: Mapping[str, str], name: str, default: int | None, limit: int | None = None
) -> int | None:
    text = query.get(name)
    if text is None:
        return default
    if not _QUERY_INT.fullmatch(text) or int(text) < 1:
        raise _bad(f"{name} must be a whole number of at least 1 (got {_shown(text)})")
    if limit is not None and int(text) > limit:
        raise _bad(f"{name} must be at most {limit} (got {text})")
    return int(text)


def _page(
    items: list[dict[str, Any]], query: Mapping[str, str], *, limit: int, clamp: bool
) -> dict[str, Any]:
    """Slice a list into a Laravel page object."""
    page = _query_int(query, "page", 1) or 1
    per_page = _query_int(query, "per_page", DEFAULT_PER_PAGE, None if clamp else limit) or DEFAULT_PER_PAGE
    per_page = min(per_page, limit)
    start = (page - 1) * per_page
    return {
        "current_page": page,
        "data": items[start : start + per_page],
        "last_page": max(1, math.ceil(len(items) / per_page)),
        "per_page": per_page,
        "total": len(items),
    }


def create_sandbox(config: SandboxConfig) -> Sandbox:
    """Build a sandbox (its ``app`` serves in-process through ``httpx.ASGITransport``).

    Args:
        config: The options.

    Returns:
        The emulator.

    Raises:
        InputError: The inventory file cannot be used.
    """
    return Sandbox(config)


class _Server(uvicorn.Server):
    """uvicorn, with Ctrl-C/SIGTERM ending ``serve`` normally and cutting hanging requests short."""

    def __init__(self, config: uvicorn.Config, sandbox: Sandbox) -> None:
        super().__init__(config)
        self._sandbox = sandbox

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # uvicorn re-raises the captured signal after shutdown, which would kill the process on
        # SIGTERM before serve() writes the state file; handle the signals without re-raising.
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._sandbox.release_hangs()
        super().handle_exit(sig, frame)


def _server(sandbox: Sandbox) -> _Server:
    log_config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    log_config["filters"] = {"sandbox_drops": {"()": _QuietDrops}}
    for handler in log_config["handlers"].values():
        handler["filters"] = ["sandbox_drops"]
    config = uvicorn.Config(
        sandbox.app, lifespan="off", ws="none", access_log=False, log_level="warning", log_config=log_config
    )
    return _Server(config, sandbox)


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family)
    except OSError as exc:
        raise InputError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def _base_url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}{API_PREFIX}"


@contextlib.contextmanager
def running_sandbox(
    config: SandboxConfig, host: str = "127.0.0.1", port: int = 0
) -> Iterator[tuple[str, Sandbox]]:
    """Serve a sandbox over real TCP in a background thread for the duration of a ``with``.

    Args:
        config: The options.
        host: The address to listen on (loopback by default).
        port: The port; 0 picks a free one.

    Yields:
        The base URL (ending in /api/v2) and the sandbox, for state inspection.
    """
    sandbox = create_sandbox(config)
    sock = _listen(host, port)
    server = _server(sandbox)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="voicelink-sandbox", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        if not server.started:
            raise RuntimeError("the sandbox server did not start")
        yield _base_url(sock), sandbox
    finally:
        sandbox.release_hangs()
        server.should_exit = True
        thread.join(5)
        if thread.is_alive():
            server.force_exit = True
            thread.join(5)
        sock.close()


def serve(
    config: SandboxConfig,
    host: str = "127.0.0.1",
    port: int = 8765,
    state_out: Path | None = None,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve a sandbox until Ctrl-C or SIGTERM, then write its state.

    Args:
        config: The options.
        host: The address to listen on.
        port: The port (0 picks a free one; ``on_ready`` tells which).
        state_out: Where to write the final state as JSON on shutdown, if anywhere.
        on_ready: Called once with the base URL (ending in /api/v2) when it accepts connections.

    Raises:
        InputError: The inventory cannot be used or the address cannot be listened on.
    """
    sandbox = create_sandbox(config)
    sock = _listen(host, port)
    server = _server(sandbox)
    try:
        if on_ready is not None:
            on_ready(_base_url(sock))  # the socket already listens: early clients wait in the backlog
        server.run(sockets=[sock])
    finally:
        sock.close()
        if state_out is not None:
            sandbox.write_state(state_out)
