"""An async client for the few Vocobase API v2 endpoints the importer uses.

Every request goes through one shared :class:`~importer.account.limiter.RateLimiter`. The rules
of what is retried are deliberately narrow:

- a 429 means the request was not applied: pause every worker, then send it again;
- reads (GETs and the read-only sync) are retried on 5xx, timeouts and dropped
  connections, at most three attempts, then :class:`~importer.errors.ApiError`;
- writes are never re-sent after a 5xx or a lost response: the result says the outcome
  is unknown (``WriteResult.known`` is False) and the caller settles it by re-reading;
- 401/403 on any request raise :class:`~importer.errors.AuthError`.

Response shapes are parsed defensively (see the API reference §5): lists may sit at
``data.data``, ``data.data.data`` or ``data``, pagination metadata may be missing, ids
may be strings of digits and ``did_number`` may be a JSON number.

The API key lives only in the ``Authorization`` header; it is masked in any text this
module produces.
"""

from __future__ import annotations

import asyncio
import email.utils
import html
import json
import math
import random
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType, TracebackType
from typing import Any

import httpx

from importer.account.limiter import RateLimiter
from importer.account.retry import MAX_ATTEMPTS, backoff_delay
from importer.errors import ApiError, AuthError
from importer.fields import ROUTING_FIELDS

__all__ = [
    "Bot",
    "Connection",
    "Did",
    "DidPage",
    "DidSearch",
    "Routing",
    "SyncState",
    "VoiceLinkClient",
    "WriteResult",
    "number_key",
]

DID_PAGE_SIZE = 100
BOT_PAGE_SIZE = 1000  # the documented maximum for /voicelink/bots
READ_ATTEMPTS = MAX_ATTEMPTS
MAX_RETRY_AFTER = 600.0
"""A Retry-After longer than this is cut to it; the next 429 pauses again if needed."""

_MESSAGE_LIMIT = 300
_EXCERPT_LIMIT = 80
"""An answer that is not JSON (a web page) is quoted this short, on one line."""


@dataclass(frozen=True, slots=True)
class Connection:
    """One VoiceLink connection of the partner account."""

    connection_id: str
    name: str
    status: str
    is_default: bool


@dataclass(frozen=True, slots=True)
class Did:
    """One purchased DID; ``did_number`` is always text (country code + number, as the API sent it)."""

    did_id: int
    did_number: str
    status: str


@dataclass(frozen=True, slots=True)
class Bot:
    """One WebSocket bot."""

    bot_id: int
    name: str
    active: bool


@dataclass(frozen=True, slots=True)
class Routing:
    """One existing call-routing record; ``record`` has every field of ``fields.ROUTING_FIELDS``."""

    routing_id: int
    did_id: int | None
    did_number: str | None
    record: Mapping[str, int | None]


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What came of one create or update."""

    http_status: int | None
    """None when no response arrived (timeout, dropped connection)."""
    ok: bool
    known: bool
    """False when the outcome is unknown (timeout, connection error, 5xx): re-read state before re-sending."""
    error_code: str | None
    message: str
    """The API's error message verbatim when it sent one."""
    attempts: int
    routing_id: int | None = None
    """The routing id if the response carried one (the docs' example returns ``{}``)."""


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


@dataclass(frozen=True, slots=True)
class DidSearch:
    """The DIDs a search for one number found, exact matches only."""

    matches: tuple[Did, ...]
    conclusive: bool
    """False when the answer cannot prove the number is absent: the server ignored ``search``
    (it sent numbers that do not contain the one asked for) or more pages of results follow."""


@dataclass(frozen=True, slots=True)
class _Reply:
    """One HTTP exchange as the client saw it."""

    status: int | None
    payload: object
    """The parsed JSON body, or None."""
    error_code: str | None
    message: str
    retry_after: float | None


class VoiceLinkClient:
    """Talk to the VoiceLink endpoints of the Vocobase API v2 for one run."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        limiter: RateLimiter,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float = 30.0,
        connection_id: str | None = None,
        max_connections: int = 8,
        backoff: float = 1.0,
        max_rate_retries: int = 6,
        max_pages: int = 10_000,
    ) -> None:
        """Create a client.

        Args:
            base_url: The API root, e.g. ``https://api.vocobase.com/api/v2``.
            api_key: The partner's key; sent only in the Authorization header.
            limiter: The run's shared rate limiter.
            transport: An httpx transport to use instead of the network (tests, the sandbox).
            timeout: Seconds to wait for connect, send, response and a pooled connection.
            connection_id: The VoiceLink connection to send on every request; settable later.
            max_connections: Requests in flight at most (and the keep-alive pool size).
            backoff: Base delay in seconds between read retries; 0 turns the waits off.
            max_rate_retries: How often one request is re-sent after a 429.
            max_pages: Pages read from one list before giving up.
        """
        if not api_key or not api_key.isascii() or not api_key.isprintable() or " " in api_key:
            raise AuthError("the API key is empty or contains characters that cannot be sent")
        self.base_url = base_url.rstrip("/")
        self.connection_id = connection_id
        self.request_count = 0
        self.warnings: list[str] = []
        """Items the parsers had to skip, one line each, for the run summary."""
        self._key = api_key
        self._limiter = limiter
        self._backoff = backoff
        self._max_rate_retries = max_rate_retries
        self._max_pages = max_pages
        self._timeout = timeout
        self._rng = random.Random()
        # httpx ignores `limits` when a transport is given, so the in-flight cap is ours too.
        self._gate = asyncio.Semaphore(max_connections)
        self._http = httpx.AsyncClient(
            base_url=self.base_url + "/",
            headers={"Authorization": f"Bearer {api_key}", "Accept": "application/json"},
            transport=transport,
            timeout=timeout,
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        )

    def __repr__(self) -> str:
        return f"VoiceLinkClient(base_url={self.base_url!r}, connection_id={self.connection_id!r})"

    async def __aenter__(self) -> VoiceLinkClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    # -- public endpoints -------------------------------------------------------------

    async def list_connections(self) -> list[Connection]:
        """List the partner's VoiceLink connections (the pre-flight; sends no connection_id).

        Returns:
            Every connection the API listed, in its order.
        """
        payload = await self._read(
            "GET", "telephony/connections", params={"provider": "voicelink"}, scoped=False, first=True
        )
        found = _find_list(payload)
        if found is None:
            raise ApiError("GET /telephony/connections: the response holds no list of connections")
        out: list[Connection] = []
        for item in found[0]:
            if not isinstance(item, Mapping):
                continue
            cid = item.get("connection_id", item.get("id"))
            if cid is None or str(cid).strip() == "":
                self.warnings.append("a connection without an id was ignored")
                continue
            out.append(
                Connection(
                    connection_id=str(cid).strip(),
                    name=_as_text(item.get("name")),
                    status=_as_text(item.get("status")),
                    is_default=_as_flag(item.get("is_default")) is True,
                )
            )
        return out

    async def list_dids(self) -> list[Did]:
        """Read every page of the purchased DIDs.

        Returns:
            The DIDs, each once, in the API's order.
        """
        path = "voicelink/dids/purchased"
        items = await self._list_all(path, DID_PAGE_SIZE, ("did_id", "id"))
        return [
            did for item in items if (did := self._did(item, f"GET /{path}", need_number=False)) is not None
        ]

    async def list_bots(self) -> list[Bot]:
        """Read every page of the WebSocket bots.

        Returns:
            The bots, each once; a bot without a status counts as active (the API's default).
        """
        items = await self._list_all("voicelink/bots", BOT_PAGE_SIZE, ("id", "bot_id"))
        parsed = (self._bot(item, "GET /voicelink/bots") for item in items)
        return [bot for bot in parsed if bot is not None]

    async def read_routing(self) -> list[Routing]:
        """Read the existing call routing through the read-only sync.

        Routing records come from ``routing[]``; the per-DID ``readiness[].routing`` fills in
        their DID when ``routing[]`` lacks it and adds records ``routing[]`` does not list.

        Returns:
            One entry per routing record, each once.
        """
        return self._routings_from(await self._sync())

    async def _sync(self) -> Mapping[str, Any]:
        """One read-only sync; the object holding its lists.

        Raises:
            ApiError: the answer holds no routing (never read as "no routing": the plan would
                create over existing records).
        """
        payload = await self._read("POST", "voicelink/sync", body={"import_dids": False})
        data = _sync_holder(payload)
        if data is None or ("routing" not in data and "readiness" not in data):
            raise ApiError("POST /voicelink/sync: the response holds neither routing[] nor readiness[]")
        return data

    async def read_sync(self) -> SyncState:
        """Read DIDs, bots and routing in one read-only sync, parsed as defensively as the lists.

        Each list may be a bare array or sit under ``data``/``data.data`` of its key; did_number
        may be a JSON number; an item without a usable id (or a DID without a number) is
        skipped with a line in ``warnings``.

        Returns:
            The DIDs, bots and routing records sync carried (a missing list is empty).
        """
        where = "POST /voicelink/sync"
        data = await self._sync()
        dids: dict[int, Did] = {}
        for item in self._objects(_nested_list(data.get("dids")), f"{where} dids[]"):
            did = self._did(item, f"{where} dids[]", need_number=True)
            if did is not None:
                dids.setdefault(did.did_id, did)
        bots: dict[int, Bot] = {}
        for item in self._objects(_nested_list(data.get("bots")), f"{where} bots[]"):
            bot = self._bot(item, f"{where} bots[]")
            if bot is not None:
                bots.setdefault(bot.bot_id, bot)
        return SyncState(tuple(dids.values()), tuple(bots.values()), tuple(self._routings_from(data)))

    async def read_did_page(self, page: int, per_page: int = DID_PAGE_SIZE) -> DidPage:
        """Read one page of the purchased DIDs; its metadata tells how many pages there are.

        Args:
            page: The page number, from 1.
            per_page: The page size asked for (the server may send fewer).

        Returns:
            The page's DIDs (items without a usable id skipped with a warning) and whether it is the last.
        """
        path = "voicelink/dids/purchased"
        payload = await self._read("GET", path, params={"page": page, "per_page": per_page})
        found = _find_list(payload)
        if found is None:
            raise ApiError(f"GET /{path} page {page}: the response holds no list")
        items, meta = found
        where = f"GET /{path} page {page}"
        dids = tuple(
            did
            for item in self._objects(items, where)
            if (did := self._did(item, where, need_number=False)) is not None
        )
        size = _as_int(meta.get("per_page")) or per_page
        total = _as_int(meta.get("total"))
        last_page = _as_int(meta.get("last_page"))
        if last_page is None and total is not None and size > 0:
            last_page = max(1, math.ceil(total / size))
        current = _as_int(meta.get("current_page"))
        last = (
            not items
            or (current is not None and current != page)
            or (last_page is not None and page >= last_page)
            or (last_page is None and len(items) != size)
        )
        return DidPage(page, dids, last_page, last)

    async def find_dids(self, number: str) -> DidSearch:
        """Look one number up with the DID list's search parameter; keep exact matches only.

        Both sides are compared as digits only ("+91 80-1122" and 91801122 are the same number),
        so a search that also returns longer numbers containing this one never resolves to them.

        Args:
            number: The DID number, country code first.

        Returns:
            The exact matches and whether their absence would prove the number is not there.
        """
        wanted = number_key(number)
        if not wanted:
            return DidSearch((), True)
        path = "voicelink/dids/purchased"
        params: dict[str, str | int] = {"search": wanted, "page": 1, "per_page": DID_PAGE_SIZE}
        payload = await self._read("GET", path, params=params)
        found = _find_list(payload)
        where = f"GET /{path} search"
        if found is None:
            raise ApiError(f"{where}: the response holds no list")
        items, meta = found
        matches: dict[int, Did] = {}
        ignored_search = False
        for item in self._objects(items, where):
            did = self._did(item, where, need_number=False)
            if did is None:
                continue
            key = number_key(did.did_number)
            if key == wanted:
                matches.setdefault(did.did_id, did)
            elif wanted not in key:
                ignored_search = True
        last_page = _as_int(meta.get("last_page"))
        size = _as_int(meta.get("per_page")) or DID_PAGE_SIZE
        more = last_page > 1 if last_page is not None else len(items) >= size
        return DidSearch(tuple(matches.values()), bool(matches) or not (ignored_search or more))

    @property
    def max_pages(self) -> int:
        """Pages read from one list before giving up."""
        return self._max_pages

    def _objects(self, items: Sequence[object], where: str) -> list[Mapping[str, Any]]:
        """The items that are JSON objects; a warning for each one that is not."""
        out: list[Mapping[str, Any]] = []
        for item in items:
            if isinstance(item, Mapping):
                out.append(item)
            else:
                self.warnings.append(f"{where}: a non-object item was ignored")
        return out

    def _did(self, item: Mapping[str, Any], where: str, *, need_number: bool) -> Did | None:
        """A Did from a list or sync item (its ``raw`` upstream object fills gaps); None if unusable."""
        raw = item.get("raw")
        fields: Mapping[str, Any] = {**raw, **item} if isinstance(raw, Mapping) else item
        did_id = _first_int(fields, ("did_id", "id"))
        if did_id is None:
            self.warnings.append(f"{where}: a DID without a usable id was ignored: {_brief(item)}")
            return None
        number = _did_number(fields) or ""
        if need_number and not number:
            self.warnings.append(f"{where}: DID {did_id} without a number was ignored")
            return None
        return Did(did_id=did_id, did_number=number, status=_as_text(fields.get("status")))

    def _bot(self, item: Mapping[str, Any], where: str) -> Bot | None:
        """A Bot from a list or sync item; a bot without a status counts as active (the API's default)."""
        bot_id = _first_int(item, ("id", "bot_id"))
        if bot_id is None:
            self.warnings.append(f"{where}: a bot without a usable id was ignored: {_brief(item)}")
            return None
        flag = _as_flag(item.get("status")) if "status" in item else True
        return Bot(bot_id=bot_id, name=_as_text(item.get("bot_name", item.get("name"))), active=flag is True)

    def _routings_from(self, data: Mapping[str, Any]) -> list[Routing]:
        """Routing records of a sync answer: ``routing[]``, completed and extended by readiness."""
        out: dict[int, Routing] = {}
        for item in _nested_list(data.get("routing")):
            if isinstance(item, Mapping):
                made = self._routing(item, None)
                if made is not None:
                    out.setdefault(made.routing_id, made)
        added: dict[int, Routing] = {}
        for entry in _nested_list(data.get("readiness")):
            if not isinstance(entry, Mapping) or not isinstance(entry.get("routing"), Mapping):
                continue
            # A record routing[] already has whole needs no second parse (100k-DID accounts).
            known = out.get(_first_int(entry["routing"], ("routing_id", "id")) or 0)
            if known is not None and known.did_id is not None and known.did_number is not None:
                continue
            hint = self._routing(entry["routing"], entry)
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

    async def create_routing(self, body: Mapping[str, object]) -> WriteResult:
        """Create a routing record; never re-sent except after a 429.

        Args:
            body: The create body (one of did_id/did_number, the modes, their ids, status).

        Returns:
            The outcome; ``known`` is False when the API may or may not have applied it.
        """
        return await self._write("voicelink/call-routing", body)

    async def update_routing(self, routing_id: int, body: Mapping[str, object]) -> WriteResult:
        """Replace a routing record; never re-sent except after a 429.

        Args:
            routing_id: The record to replace.
            body: The full record (modes, their ids, status).

        Returns:
            The outcome; ``known`` is False when the API may or may not have applied it.
        """
        return await self._write(f"voicelink/call-routing/{int(routing_id)}", body)

    # -- the exchange -----------------------------------------------------------------

    def _mask(self, text: str) -> str:
        """Hide the key in text that came from elsewhere (a server could echo it)."""
        return text.replace(self._key, "[API key]") if self._key in text else text

    async def _send_once(
        self,
        method: str,
        path: str,
        params: Mapping[str, str | int] | None,
        body: Mapping[str, object] | None,
    ) -> _Reply:
        """Send one request through the limiter and describe what came back."""
        async with self._gate:
            slot = await self._limiter.acquire()
            try:
                self.request_count += 1
                response = await self._http.request(
                    method, path, params=dict(params) if params else None, json=body
                )
            except httpx.TimeoutException:
                return _Reply(None, None, None, f"no response: timed out after {self._timeout:g} s", None)
            except httpx.ConnectError:
                return _Reply(None, None, None, "no response: could not connect", None)
            except httpx.RequestError as exc:
                return _Reply(None, None, None, f"no response: connection lost ({type(exc).__name__})", None)
            finally:
                self._limiter.release(slot)
        payload: object = None
        try:
            payload = response.json()
        except (ValueError, UnicodeDecodeError):
            payload = None
        code, message = _error_of(payload)
        if payload is None:
            # Not JSON (a web page, a proxy's error): a short excerpt, not the whole page.
            message = _excerpt(response.text)
            if not message and response.status_code >= 300:
                message = response.reason_phrase
        elif not message and response.status_code >= 300:
            message = _one_line(response.text)[:_MESSAGE_LIMIT] or response.reason_phrase
        return _Reply(
            response.status_code,
            payload,
            code,
            self._mask(message),
            _retry_after(response.headers.get("Retry-After")),
        )

    async def _send(
        self,
        method: str,
        path: str,
        params: Mapping[str, str | int] | None,
        body: Mapping[str, object] | None,
    ) -> tuple[_Reply, int]:
        """Send a request, re-sending it after each 429; raise on 401/403.

        Returns:
            The last reply and how many times the request was sent.
        """
        attempts = 0
        while True:
            reply = await self._send_once(method, path, params, body)
            attempts += 1
            if reply.status in (401, 403):
                what = "rejected the API key" if reply.status == 401 else "refused access"
                detail = f" {reply.error_code}" if reply.error_code else ""
                message = _one_line(reply.message)
                raise AuthError(
                    f"the API {what} (HTTP {reply.status}{detail}) on {method} /{path}: {message}"
                )
            if reply.status == 429 and attempts <= self._max_rate_retries:
                pause = None if reply.retry_after is None else min(reply.retry_after, MAX_RETRY_AFTER)
                self._limiter.pause(pause)
                continue
            return reply, attempts

    def _scoped_params(self, params: Mapping[str, str | int] | None, scoped: bool) -> dict[str, str | int]:
        out = dict(params or {})
        if scoped and self.connection_id is not None:
            out.setdefault("connection_id", self.connection_id)
        return out

    def _scoped_body(self, body: Mapping[str, object]) -> dict[str, object]:
        out = dict(body)
        # A row may name its own connection; otherwise the run's connection applies.
        if self.connection_id is not None and "connection_id" not in out and "connectionId" not in out:
            out["connection_id"] = self.connection_id
        return out

    async def _read(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        body: Mapping[str, object] | None = None,
        scoped: bool = True,
        first: bool = False,
    ) -> object:
        """Send a read, retrying server errors and lost responses; return the JSON body.

        ``first`` marks a run's first request: a 404 or an answer that is not JSON there most
        likely means the base URL is not the API's root, and the error says so.
        """
        if method == "GET":
            params = self._scoped_params(params, scoped)
        elif body is not None:
            body = self._scoped_body(body)
        where = f"{method} /{path}" + (f" page {params['page']}" if params and "page" in params else "")
        sent = 0
        for attempt in range(1, READ_ATTEMPTS + 1):
            reply, n = await self._send(method, path, params, body)
            sent += n
            transient = reply.status is None or reply.status >= 500
            if transient and attempt < READ_ATTEMPTS:
                await asyncio.sleep(backoff_delay(attempt, self._backoff, self._rng))
                continue
            status = "no response" if reply.status is None else f"HTTP {reply.status}"
            # A web page with 200, or a 404, on the first call: not the API's root. (A 5xx is not.)
            wrong_root = first and (
                reply.status == 404 or (reply.payload is None and 200 <= (reply.status or 0) < 300)
            )
            hint = self._base_url_hint() if wrong_root else ""
            if reply.status is None or not 200 <= reply.status < 300:
                code = f" {reply.error_code}" if reply.error_code else ""
                text = reply.message.removeprefix("no response: ")
                raise ApiError(
                    f"{where} failed after {sent} attempt(s): {status}{code}: {_one_line(text)}{hint}"
                )
            if isinstance(reply.payload, Mapping) and reply.payload.get("success") is False:
                code = f" {reply.error_code}" if reply.error_code else ""
                raise ApiError(f"{where} failed: {status}{code}: {_one_line(reply.message)}")
            if reply.payload is None:
                excerpt = f": {reply.message}" if reply.message else ""
                raise ApiError(f"{where}: the response is not JSON ({status}){excerpt}{hint}")
            return reply.payload
        raise AssertionError("unreachable")  # pragma: no cover

    def _base_url_hint(self) -> str:
        return f"; check --base-url: {self._mask(self.base_url)} must be the API root, ending in /api/v2"

    async def _write(self, path: str, body: Mapping[str, object]) -> WriteResult:
        """Send a write once (plus 429 re-sends) and classify the outcome."""
        reply, attempts = await self._send("POST", path, None, self._scoped_body(body))
        status = reply.status
        if status is None:
            return WriteResult(None, False, False, None, reply.message, attempts)
        if 200 <= status < 300:
            if isinstance(reply.payload, Mapping) and reply.payload.get("success") is False:
                return WriteResult(status, False, True, reply.error_code, reply.message, attempts)
            return WriteResult(status, True, True, None, "", attempts, _created_id(reply.payload))
        # 4xx (including a 429 that outlasted the re-sends) means not applied; anything else
        # (5xx, an unexpected redirect) may or may not have been.
        known = 400 <= status < 500
        return WriteResult(status, False, known, reply.error_code, reply.message, attempts)

    async def _list_all(self, path: str, per_page: int, id_keys: Sequence[str]) -> list[Mapping[str, Any]]:
        """Read every page of a list endpoint; return its items, each once."""
        out: list[Mapping[str, Any]] = []
        seen: set[object] = set()
        for page in range(1, self._max_pages + 1):
            payload = await self._read("GET", path, params={"page": page, "per_page": per_page})
            found = _find_list(payload)
            if found is None:
                raise ApiError(f"GET /{path} page {page}: the response holds no list")
            items, meta = found
            new = 0
            for item in items:
                if not isinstance(item, Mapping):
                    self.warnings.append(f"GET /{path} page {page}: a non-object item was ignored")
                    continue
                key = _identity(item, id_keys)
                if key not in seen:
                    seen.add(key)
                    out.append(item)
                    new += 1
            # A page with nothing new means the server ignores `page`: stop instead of looping.
            if not items or new == 0:
                return out
            last_page = _as_int(meta.get("last_page"))
            total = _as_int(meta.get("total"))
            current = _as_int(meta.get("current_page"))
            size = _as_int(meta.get("per_page")) or per_page
            if current is not None and current != page:
                return out
            if last_page is not None:
                if page >= last_page:
                    return out
            elif total is not None:
                if len(out) >= total:
                    return out
            elif len(items) != size:
                # Shorter: the last page. Longer: the server ignored per_page and sent everything.
                return out
        raise ApiError(
            f"GET /{path}: more than {self._max_pages} pages; stopping rather than reading forever"
        )

    def _routing(self, item: Mapping[str, Any], entry: Mapping[str, Any] | None) -> Routing | None:
        """Build a Routing from a routing item (and, for readiness, its entry); None if unusable."""
        raw = item.get("raw")
        fields: dict[str, Any] = {**raw, **item} if isinstance(raw, Mapping) else dict(item)
        routing_id = _as_int(fields.get("routing_id"))
        if routing_id is None:
            routing_id = _as_int(fields.get("id"))
        if routing_id is None:
            self.warnings.append(f"a routing record without a usable id was ignored: {_brief(item)}")
            return None
        did_id = _as_int(fields.get("did_id"))
        did_number = _did_number(fields)
        nested = fields.get("did")
        if isinstance(nested, Mapping):
            did_id = did_id if did_id is not None else _as_int(nested.get("did_id", nested.get("id")))
            did_number = did_number or _did_number(nested)
        if entry is not None:
            remote = entry.get("remote_did")
            if isinstance(remote, Mapping):
                did_id = did_id if did_id is not None else _as_int(remote.get("did_id", remote.get("id")))
                did_number = did_number or _did_number(remote)
            if not did_number and entry.get("key") is not None:
                did_number = _as_text(entry.get("key")) or None
        record: dict[str, int | None] = {}
        for name in ROUTING_FIELDS:
            value = fields.get(name)
            record[name] = _as_flag_int(value) if name == "status" else _as_int(value)
        return Routing(routing_id, did_id, did_number or None, MappingProxyType(record))


# -- parsing helpers ------------------------------------------------------------------

_DIGITS = re.compile(r"[0-9]+")


def _as_int(value: object) -> int | None:
    """Read an id-like value: an int, an integral float or a string of digits; else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    if isinstance(value, str):
        text = value.strip()
        if _DIGITS.fullmatch(text):
            return int(text)
        if text.endswith(".0") and _DIGITS.fullmatch(text[:-2]):
            return int(text[:-2])
    return None


def _as_text(value: object) -> str:
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
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = _as_int(value)
        return None if number is None else str(number)
    text = _as_text(value)
    if text:
        return text
    phone = _as_text(item.get("phone_number"))
    return phone.lstrip("+") or None


def _first_int(item: Mapping[str, Any], keys: Sequence[str]) -> int | None:
    """The first of ``keys`` whose value is a usable integer id."""
    for key in keys:
        value = _as_int(item.get(key))
        if value is not None:
            return value
    return None


def _identity(item: Mapping[str, Any], id_keys: Sequence[str]) -> object:
    value = _first_int(item, id_keys)
    return ("id", value) if value is not None else json.dumps(item, sort_keys=True, default=str)


def number_key(text: str) -> str:
    """A DID number as digits only, the form numbers are compared in ("+91 80-11" -> "918011")."""
    return "".join(ch for ch in text if ch.isascii() and ch.isdigit())


def _nested_list(value: object) -> list[object]:
    """A sync list: a bare array, or one at ``data``/``data.data`` of an object; else empty."""
    if isinstance(value, list):
        return value
    found = _find_list(value) if isinstance(value, Mapping) else None
    return found[0] if found is not None else []


def _sync_holder(payload: object) -> Mapping[str, Any] | None:
    """Find the object holding a sync answer's lists (at the top, ``data`` or ``data.data``)."""
    holder = payload
    for _ in range(3):
        if not isinstance(holder, Mapping):
            return None
        if any(key in holder for key in ("dids", "bots", "routing", "readiness")):
            return holder
        holder = holder.get("data")
    return None


def _find_list(payload: object) -> tuple[list[object], Mapping[str, Any]] | None:
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


def _created_id(payload: object) -> int | None:
    holder = payload
    for _ in range(3):
        if not isinstance(holder, Mapping):
            return None
        for key in ("routing_id", "id"):
            value = _as_int(holder.get(key))
            if value is not None and key in holder:
                return value
        holder = holder.get("data")
    return None


def _error_of(payload: object) -> tuple[str | None, str]:
    """Return the error code and message of an error envelope (or a looser error body)."""
    if not isinstance(payload, Mapping):
        return None, ""
    error = payload.get("error")
    if isinstance(error, Mapping):
        code = error.get("code")
        return (None if code is None else str(code)), _as_text(error.get("message"))
    if isinstance(error, str):
        return None, error
    return None, _as_text(payload.get("message"))


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (seconds or an HTTP date); None if absent or unreadable."""
    if value is None:
        return None
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _one_line(text: str) -> str:
    return " ".join(text.split())


_TITLE = re.compile(r"<title[^>]*>(.*?)</title", re.IGNORECASE | re.DOTALL)
_HIDDEN = re.compile(r"<(script|style|head)\b.*?</\1\s*>", re.IGNORECASE | re.DOTALL)
_TAG = re.compile(r"<[^>]*>")


def _excerpt(text: str) -> str:
    """Quote a body that is not JSON in one short line: an HTML page's title, else its first text."""
    head = text[:65_536]  # a page can be megabytes; its title and first words come early
    title = _TITLE.search(head)
    found = _one_line(html.unescape(_TAG.sub(" ", title.group(1)))) if title else ""
    if not found:
        found = _one_line(html.unescape(_TAG.sub(" ", _HIDDEN.sub(" ", head))))
    return found if len(found) <= _EXCERPT_LIMIT else found[: _EXCERPT_LIMIT - 1].rstrip() + "…"


def _brief(item: Mapping[str, Any]) -> str:
    return _one_line(json.dumps(item, default=str))[:120]
