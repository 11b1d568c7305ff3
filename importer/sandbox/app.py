"""The sandbox's ASGI app: routes, the request pipeline (auth, rate limit, faults), the handlers.

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
- State counts: ``request_counts`` by "METHOD /template", e.g. "GET /voicelink/dids/purchased"
  (every /api/v2 request, even 401/429/faulted);
  create attempts per DID for every authenticated create naming it (successful or not,
  including 429s and faults; keyed by the DID id, or "did_id=<v>"/"did_number=<v>" when the DID
  is unknown); writes applied per DID for creates and for updates that changed the record.
- With ``lean_sync``, sync answers routing only: ``dids``, ``bots`` and ``readiness`` are empty
  lists, so a client must read the paged lists for them (how a client's fallback is tested).

The account's records and counters live in ``state``, the body rules in ``rules``, the fault
decisions in ``faults``; serving over loopback TCP is ``server``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import math
import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from importer.fields import DID_FIELDS
from importer.sandbox.faults import FaultInjector, FaultKind, FaultPlan
from importer.sandbox.rules import (
    CONNECTION_KEYS,
    CREATE_FIELDS,
    SYNC_FIELDS,
    UPDATE_FIELDS,
    ApiError,
    bad,
    check_routing,
    did_problems,
    not_found,
    shown,
)
from importer.sandbox.state import Account, Connection, Did, SandboxConfig, load_inventory

__all__ = ["API_PREFIX", "STATE_PATH", "Sandbox", "SandboxConnectionDropped", "create_sandbox"]

API_PREFIX = "/api/v2"
STATE_PATH = "/_sandbox/state"
WINDOW_SECONDS = 60.0
DID_PAGE_MAX = 100
BOT_PAGE_MAX = 1000
DEFAULT_PER_PAGE = 15
_QUERY_INT = re.compile(r"[0-9]{1,9}")


class SandboxConnectionDropped(httpx.RemoteProtocolError):
    """Raised by the sandbox app to cut a connection after an applied write (in-process clients see it)."""


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
        self._account = Account(
            load_inventory(config.inventory),
            two_connections=config.two_connections,
            int_did_numbers=config.int_did_numbers,
        )
        self._did_lists: dict[tuple[str, str | None, int | None], list[Did]] = {}
        self._lock = threading.RLock()  # re-entrant: _reply counts statuses with or without it held
        self._window: deque[float] = deque()  # only the one configured key authenticates
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
                **self._account.snapshot(),
                "faults": [dict(f) for f in self._faults.fired],
                "rate_limited": self._account.status_counts[429],
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
            self._account.request_counts[f"{method} {template}"] += 1
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
            return self._reply(ApiError(401, "UNAUTHORIZED", "missing or invalid API key"))
        with self._lock:
            if template == "/voicelink/call-routing" and isinstance(call.body, dict):
                self._account.create_attempts[self._account.did_key(call.body)] += 1
            wait = self._rate_limited()
            if wait is not None:
                return self._reply(
                    ApiError(429, "LIMIT_REACHED", "rate limit reached; wait for the window"), wait
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
            except ApiError as exc:
                status, data = exc.status, exc
            if write and status == 200 and plan.ambiguous is not None:
                self._faults.record(plan.ambiguous, method, path, plan)
                if plan.ambiguous is FaultKind.AMBIGUOUS_DROP:
                    self._account.status_counts["dropped"] += 1
                    return _DroppedResponse()
                return self._reply(ApiError(500, "INTERNAL_ERROR", "internal error"))
            if plan.hang and not self._released:
                self._faults.record(FaultKind.HANG, method, path, plan)
        if plan.hang:
            await self._hang()
        return self._reply(data)

    def _early_fault(self, method: str, path: str, plan: FaultPlan) -> Response | None:
        """Answer a burst 429 or a failure before anything is applied."""
        if plan.burst:
            self._faults.record(FaultKind.BURST_429, method, path, plan)
            return self._reply(ApiError(429, "LIMIT_REACHED", "rate limit reached; wait for the window"), 1)
        if plan.fail_status is not None:
            self._faults.record(FaultKind.FAIL, method, path, plan)
            return self._reply(ApiError(plan.fail_status, "INTERNAL_ERROR", "internal error"))
        return None

    def _reply(self, data: object, retry_after: int | None = None) -> Response:
        """Wrap data (or an error) in the documented envelope and count its status."""
        if isinstance(data, ApiError):
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
            self._account.status_counts[status] += 1
        # orjson: a 100,000-DID sync answer is about 50 MB, rendered several times faster than
        # with json (same compact JSON: UTF-8, no NaN in what the sandbox holds).
        return Response(
            orjson.dumps(content), status_code=status, headers=headers, media_type="application/json"
        )

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

    # --- endpoint handlers (run under the lock; raise ApiError for error answers) ------------

    def _unknown(self, call: _Call) -> Any:
        raise not_found("no such endpoint in the VoiceLink API sandbox")

    def _list_connections(self, call: _Call) -> Any:
        provider = call.query.get("provider", "voicelink")
        account = self._account
        return [account.connection_item(c) for c in account.connections] if provider == "voicelink" else []

    def _list_dids(self, call: _Call) -> Any:
        conn = self._connection(call)
        # A literal substring of the canonical did_number (no "+", no normalising), as documented.
        search = call.query.get("search", "")
        status = call.query.get("status")
        client_id = _query_int(call.query, "client_id", None)
        key = (conn.id, status, client_id)
        matches = self._did_lists.get(key) if not search else None
        if matches is None:
            matches = [
                d
                for d in self._account.dids.values()
                if d.connection_id == conn.id
                and search in d.did_number
                and status in (None, d.status)
                and client_id in (None, d.client_id)
            ]
            if not search:
                # DIDs are frozen and the inventory is fixed for the sandbox's life, so a listing
                # is filtered once, not once per page (a 100,000-DID account read in 1,000 pages).
                self._did_lists[key] = matches
        page = _page(matches, call.query, limit=DID_PAGE_MAX, clamp=True)
        page["data"] = [self._account.did_item(d, as_int=True) for d in page["data"]]
        return page

    def _list_bots(self, call: _Call) -> Any:
        conn = self._connection(call)
        search = call.query.get("search", "").casefold()
        status = call.query.get("status")
        if status not in (None, "0", "1"):
            raise bad(f"status must be 0 or 1 (got {shown(status)})")
        client_id = _query_int(call.query, "client_id", None)
        items = [
            self._account.bot_item(b)
            for b in self._account.bots.values()
            if b.connection_id == conn.id
            and search in b.bot_name.casefold()
            and status in (None, str(b.status))
            and client_id in (None, b.client_id)
        ]
        return _page(items, call.query, limit=BOT_PAGE_MAX, clamp=False)

    def _sync(self, call: _Call) -> Any:
        body = _object_body(call, empty_ok=True)
        problems = [f"{name} is not a known field" for name in body if name not in SYNC_FIELDS]
        if "import_dids" in body and not isinstance(body["import_dids"], bool):
            problems.append(f"import_dids must be true or false (got {shown(body['import_dids'])})")
        if problems:
            raise bad("; ".join(problems))
        conn = self._connection(call)
        account = self._account
        dids = [d for d in account.dids.values() if d.connection_id == conn.id]
        routing = [
            account.routing[account.routing_by_did[d.id]] for d in dids if d.id in account.routing_by_did
        ]
        # Lean: routing only, as a sync that does not carry the lists would answer.
        listed = [] if self.config.lean_sync else dids
        # Each DID's item appears twice (dids[] and readiness[].remote_did): rendered once.
        items = [account.did_item(d, as_int=True) for d in listed]
        return {
            "clients": [],
            "dids": [
                {**item, "phone_number": "+" + d.did_number, "is_expired": False}
                for d, item in zip(listed, items, strict=True)
            ],
            "available_dids": [],
            "bots": [
                account.bot_item(b)
                for b in account.bots.values()
                if b.connection_id == conn.id and not self.config.lean_sync
            ],
            "routing": [account.routing_item(r, as_int=True) for r in routing],
            "local_phone_numbers": [],
            "readiness": [account.readiness(d, item) for d, item in zip(listed, items, strict=True)],
            "drift": [],
        }

    def _create_routing(self, call: _Call) -> Any:
        body = _object_body(call)
        conn = self._connection(call)
        account = self._account
        values, problems = check_routing(
            body, allowed=CREATE_FIELDS, status_required=False, bots=account.bots
        )
        problems = did_problems(body) + problems
        if problems:
            raise bad("; ".join(problems))
        did = account.resolve_did(body)
        if did.connection_id != conn.id:
            raise not_found("no such DID on this connection")
        if did.id in account.routing_by_did:
            raise ApiError(409, "CONFLICT", f"call routing already exists for DID {did.did_number}")
        account.create(did, values)
        return {}

    def _update_routing(self, call: _Call) -> Any:
        conn = self._connection(call)
        account = self._account
        text = call.path_params["routing_id"]
        current = account.routing.get(int(text)) if _QUERY_INT.fullmatch(text) else None
        if current is None or account.dids[current.did_id].connection_id != conn.id:
            raise not_found(f"no call routing with id {text}")
        body = _object_body(call)
        values, problems = check_routing(body, allowed=UPDATE_FIELDS, status_required=True, bots=account.bots)
        if problems:
            raise bad("; ".join(problems))
        account.update(current, values)
        return {}

    def _connection(self, call: _Call) -> Connection:
        """Pick the connection a request names, or the only active one."""
        body = call.body if isinstance(call.body, dict) else {}
        given = {
            k: body[k] if k in body else call.query[k]
            for k in CONNECTION_KEYS
            if k in body or k in call.query
        }
        if len(set(map(str, given.values()))) > 1:
            raise bad("connection_id and connectionId name different connections")
        connections = self._account.connections
        if not given:
            if len(connections) > 1:
                raise bad("connection_id is required: several VoiceLink connections are active")
            return connections[0]
        value = next(iter(given.values()))
        for conn in connections:
            if value == conn.id:
                return conn
        if not isinstance(value, str):
            raise bad(f"connection_id must be a UUID string (got {shown(value)})")
        raise not_found("connection_id: no active VoiceLink connection with this id")


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
        raise bad(call.body_error)
    if call.body is None and empty_ok:
        return {}
    if not isinstance(call.body, dict):
        raise bad("the body must be a JSON object")
    return call.body


def _query_int(
    query: Mapping[str, str], name: str, default: int | None, limit: int | None = None
) -> int | None:
    text = query.get(name)
    if text is None:
        return default
    if not _QUERY_INT.fullmatch(text) or int(text) < 1:
        raise bad(f"{name} must be a whole number of at least 1 (got {shown(text)})")
    if limit is not None and int(text) > limit:
        raise bad(f"{name} must be at most {limit} (got {text})")
    return int(text)


def _page(items: Sequence[Any], query: Mapping[str, str], *, limit: int, clamp: bool) -> dict[str, Any]:
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
