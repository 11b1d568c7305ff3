"""The async client for the few Vocobase API v2 endpoints the importer uses: HTTP, pauses, errors.

Every request goes through one shared :class:`~importer.account.limiter.RateLimiter`. The rules
of what is retried are deliberately narrow:

- a 429 means the request was not applied: pause every worker, then send it again;
- reads (GETs and the read-only sync) are retried on 5xx, timeouts and dropped
  connections, at most three attempts (``retry.py``, the one policy), then
  :class:`~importer.errors.ApiError`;
- writes are never re-sent after a 5xx or a lost response: the result says the outcome
  is unknown (``WriteResult.known`` is False) and the caller settles it by re-reading;
- 401/403 on any request raise :class:`~importer.errors.AuthError`.

Answers are decoded into records by ``records.py``; lists of more than one page are walked by
``paginate.py``. The API key lives only in the ``Authorization`` header; it is masked in any
text this module produces.
"""

from __future__ import annotations

import asyncio
import email.utils
import html
import random
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import httpx
import orjson

from importer.account.limiter import RateLimiter
from importer.account.records import (
    Connection,
    Did,
    DidSearch,
    Routing,
    SyncState,
    as_int,
    created_id,
    decode_connections,
    decode_did,
    decode_routings,
    decode_sync,
    error_of,
    find_list,
    number_key,
    objects,
    one_line,
    sync_holder,
)
from importer.account.retry import MAX_ATTEMPTS, backoff_delay
from importer.collector import collector_paused
from importer.errors import ApiError, AuthError

__all__ = ["DID_PAGE_SIZE", "VoiceLinkClient", "WriteResult"]

DID_PAGE_SIZE = 100
READ_ATTEMPTS = MAX_ATTEMPTS
MAX_RETRY_AFTER = 600.0
"""A Retry-After longer than this is cut to it; the next 429 pauses again if needed."""

_MESSAGE_LIMIT = 300
_EXCERPT_LIMIT = 80
"""An answer that is not JSON (a web page) is quoted this short, on one line."""


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
        self.on_sent: Callable[[], None] | None = None
        """Called when a request has been written and its answer is awaited (None: not watched)."""
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
        payload = await self.read(
            "GET", "telephony/connections", params={"provider": "voicelink"}, scoped=False, first=True
        )
        return decode_connections(payload, self.warnings)

    async def read_routing(self, *, attempts: int = READ_ATTEMPTS) -> list[Routing]:
        """Read the existing call routing through the read-only sync.

        Routing records come from ``routing[]``; the per-DID ``readiness[].routing`` fills in
        their DID when ``routing[]`` lacks it and adds records ``routing[]`` does not list.

        Args:
            attempts: Tries before giving up (``retry.SETTLE_ATTEMPTS`` for the re-reads that
                settle unknown outcomes).

        Returns:
            One entry per routing record, each once.
        """
        return decode_routings(await self._sync(attempts), self.warnings)

    async def _sync(self, attempts: int = READ_ATTEMPTS) -> Mapping[str, Any]:
        """One read-only sync; the object holding its lists.

        Raises:
            ApiError: the answer holds no routing (never read as "no routing": the plan would
                create over existing records).
        """
        payload = await self.read("POST", "voicelink/sync", body={"import_dids": False}, attempts=attempts)
        data = sync_holder(payload)
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
        data = await self._sync()
        with collector_paused():
            return decode_sync(data, self.warnings)

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
        payload = await self.read("GET", path, params=params)
        found = find_list(payload)
        where = f"GET /{path} search"
        if found is None:
            raise ApiError(f"{where}: the response holds no list")
        items, meta = found
        matches: dict[int, Did] = {}
        ignored_search = False
        for item in objects(items, where, self.warnings):
            did = decode_did(item, where, self.warnings, need_number=False)
            if did is None:
                continue
            key = number_key(did.did_number)
            if key == wanted:
                matches.setdefault(did.did_id, did)
            elif wanted not in key:
                ignored_search = True
        last_page = as_int(meta.get("last_page"))
        size = as_int(meta.get("per_page")) or DID_PAGE_SIZE
        more = last_page > 1 if last_page is not None else len(items) >= size
        return DidSearch(tuple(matches.values()), bool(matches) or not (ignored_search or more))

    @property
    def max_pages(self) -> int:
        """Pages read from one list before giving up."""
        return self._max_pages

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
                    method,
                    path,
                    params=dict(params) if params else None,
                    json=body,
                    extensions={"trace": self._trace} if self.on_sent else None,
                )
            except httpx.TimeoutException:
                return _Reply(None, None, None, f"no response: timed out after {self._timeout:g} s", None)
            except httpx.ConnectError:
                return _Reply(None, None, None, "no response: could not connect", None)
            except httpx.RequestError as exc:
                return _Reply(None, None, None, f"no response: connection lost ({type(exc).__name__})", None)
            finally:
                self._limiter.release(slot)
        payload = _json_of(response)
        code, message = error_of(payload)
        if payload is None:
            # Not JSON (a web page, a proxy's error): a short excerpt, not the whole page.
            message = _excerpt(response.text)
            if not message and response.status_code >= 300:
                message = response.reason_phrase
        elif not message and response.status_code >= 300:
            message = one_line(response.text)[:_MESSAGE_LIMIT] or response.reason_phrase
        return _Reply(
            response.status_code,
            payload,
            code,
            self._mask(message),
            _retry_after(response.headers.get("Retry-After")),
        )

    async def _trace(self, event: str, _info: Mapping[str, Any]) -> None:
        """httpcore's trace: tell ``on_sent`` once a request is written and the answer awaited."""
        if event.endswith("receive_response_headers.started") and self.on_sent is not None:
            self.on_sent()

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
                message = one_line(reply.message)
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

    async def read(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        body: Mapping[str, object] | None = None,
        scoped: bool = True,
        first: bool = False,
        attempts: int = READ_ATTEMPTS,
    ) -> object:
        """Send a read, retrying server errors and lost responses; return the JSON body.

        ``first`` marks a run's first request: a 404 or an answer that is not JSON there most
        likely means the base URL is not the API's root, and the error says so. ``attempts``
        is how many times a transient failure is tried (``retry.py`` says how long to wait).
        """
        if method == "GET":
            params = self._scoped_params(params, scoped)
        elif body is not None:
            body = self._scoped_body(body)
        where = f"{method} /{path}" + (f" page {params['page']}" if params and "page" in params else "")
        sent = 0
        for attempt in range(1, attempts + 1):
            reply, n = await self._send(method, path, params, body)
            sent += n
            transient = reply.status is None or reply.status >= 500
            if transient and attempt < attempts:
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
                    f"{where} failed after {sent} attempt(s): {status}{code}: {one_line(text)}{hint}"
                )
            if isinstance(reply.payload, Mapping) and reply.payload.get("success") is False:
                code = f" {reply.error_code}" if reply.error_code else ""
                raise ApiError(f"{where} failed: {status}{code}: {one_line(reply.message)}")
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
            return WriteResult(status, True, True, None, "", attempts, created_id(reply.payload))
        # 4xx (including a 429 that outlasted the re-sends) means not applied; anything else
        # (5xx, an unexpected redirect) may or may not have been.
        known = 400 <= status < 500
        return WriteResult(status, False, known, reply.error_code, reply.message, attempts)


# -- reading answers that are not the API's records ------------------------------------


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


_TITLE = re.compile(r"<title[^>]*>(.*?)</title", re.IGNORECASE | re.DOTALL)
_HIDDEN = re.compile(r"<(script|style|head)\b.*?</\1\s*>", re.IGNORECASE | re.DOTALL)
_TAG = re.compile(r"<[^>]*>")


_LARGE_ANSWER = 1 << 20
"""Bytes past which an answer is parsed with the cycle collector paused (a sync of a large account)."""


def _json_of(response: httpx.Response) -> object:
    """The answer's JSON, or None when it is not JSON.

    orjson parses UTF-8 JSON several times faster than ``json`` (a 100,000-DID sync answer is
    about 50 MB); an answer it refuses (another encoding, NaN, an integer past 64 bits) gets
    httpx's own reading, which accepts those, before it is called not JSON.
    """
    content = response.content
    try:
        with collector_paused(len(content) > _LARGE_ANSWER):
            return orjson.loads(content)
    except orjson.JSONDecodeError:
        pass
    try:
        return response.json()
    except (ValueError, UnicodeDecodeError):
        return None


def _excerpt(text: str) -> str:
    """Quote a body that is not JSON in one short line: an HTML page's title, else its first text."""
    head = text[:65_536]  # a page can be megabytes; its title and first words come early
    title = _TITLE.search(head)
    found = one_line(html.unescape(_TAG.sub(" ", title.group(1)))) if title else ""
    if not found:
        found = one_line(html.unescape(_TAG.sub(" ", _HIDDEN.sub(" ", head))))
    return found if len(found) <= _EXCERPT_LIMIT else found[: _EXCERPT_LIMIT - 1].rstrip() + "…"
