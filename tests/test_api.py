"""The VoiceLink API client against the sandbox (in-process and over TCP) and odd response shapes.

The sandbox is the fake for everything it emits. ``httpx.MockTransport`` handlers stand in only
for shapes and statuses the sandbox does not produce but the API reference says the real API
may send (bare lists, deeper nesting, missing pagination metadata, Retry-After values, 422).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from importer.account import client as client_module
from importer.account.client import VoiceLinkClient, WriteResult, _retry_after
from importer.account.inventory import DidIndex, read_all_dids
from importer.account.limiter import RateLimiter
from importer.account.paginate import read_bots
from importer.account.records import Bot, Did
from importer.account.retry import backoff_delay
from importer.errors import ApiError, AuthError
from importer.fields import ROUTING_FIELDS
from importer.sandbox import SANDBOX_API_KEY, Sandbox, SandboxConfig, create_sandbox, running_sandbox

BASE = "http://voicelink.test/api/v2"
KEY = "rg_live_S3cr3tK3yV4lue9876"
CONN_1 = "3f6c2a9e-5b1d-4c8e-9a7f-1e2d3c4b5a60"
CONN_2 = "8b0e4d2c-7a19-4f3b-b6c5-0d9e8f7a6b51"

Handler = Callable[[httpx.Request], httpx.Response]
T = TypeVar("T")


def _run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def _mock_client(handler: Handler, **kwargs: Any) -> VoiceLinkClient:
    kwargs.setdefault("limiter", RateLimiter(10_000))
    kwargs.setdefault("backoff", 0.0)
    return VoiceLinkClient(BASE, KEY, transport=httpx.MockTransport(handler), **kwargs)


def _sandbox_client(sandbox: Sandbox, **kwargs: Any) -> VoiceLinkClient:
    kwargs.setdefault("limiter", RateLimiter(10_000))
    kwargs.setdefault("backoff", 0.0)
    return VoiceLinkClient(
        "http://sandbox.test/api/v2",
        SANDBOX_API_KEY,
        transport=httpx.ASGITransport(app=sandbox.app),
        **kwargs,
    )


async def _all_dids(client: VoiceLinkClient) -> list[Did]:
    """Every DID of the account through the one page walker (export's read), in the API's order."""
    index = DidIndex()
    await read_all_dids(client, index)
    return list(index.by_id.values())


def _ok(data: object, status: int = 200, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, json={"success": True, "data": data}, headers=headers)


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(
        status, json={"success": False, "error": {"code": code, "message": message}}, headers=headers
    )


def _inventory(tmp_path: Path, dids: int) -> Path:
    path = tmp_path / "inventory.json"
    path.write_text(
        json.dumps(
            {
                "connections": [{"connection_id": CONN_1, "name": "primary", "is_default": True}],
                "dids": [
                    {
                        "id": 1000 + i,
                        "did_id": 1000 + i,
                        "did_number": f"9180{i:08d}",
                        "client_id": 415,
                        "status": "active",
                    }
                    for i in range(dids)
                ],
                "bots": [
                    {"id": 93, "bot_name": "bot", "client_id": 415, "websocket_url": "wss://x", "status": 1}
                ],
                "routing": [],
            }
        )
    )
    return path


# -- against the sandbox, in-process -------------------------------------------------------


def test_client_reads_the_sandbox_inventory() -> None:
    sandbox = create_sandbox(SandboxConfig())
    state = sandbox.state_snapshot()

    async def main() -> tuple[list[Any], list[Did], list[Bot]]:
        async with _sandbox_client(sandbox) as client:
            return await client.list_connections(), await _all_dids(client), await read_bots(client)

    connections, dids, bots = _run(main())
    assert [(c.connection_id, c.status, c.is_default) for c in connections] == [(CONN_1, "ACTIVE", True)]
    assert [(d.did_id, d.did_number, d.status) for d in dids] == [
        (d["id"], d["did_number"], d["status"]) for d in state["dids"]
    ]
    assert all(isinstance(d.did_number, str) for d in dids)  # odd ids arrive as JSON numbers
    assert {b.bot_id: b.active for b in bots} == {93: True, 94: True, 95: False}


def test_client_reads_every_page_of_a_long_list(tmp_path: Path) -> None:
    sandbox = create_sandbox(SandboxConfig(inventory=_inventory(tmp_path, 250)))

    async def main() -> tuple[list[Did], int]:
        async with _sandbox_client(sandbox) as client:
            return await _all_dids(client), client.request_count

    dids, requests = _run(main())
    assert [d.did_id for d in dids] == list(range(1000, 1250))
    assert requests == 3
    assert sandbox.state_snapshot()["request_counts"] == {"GET /voicelink/dids/purchased": 3}


def test_client_read_routing_matches_the_sandbox() -> None:
    sandbox = create_sandbox(SandboxConfig())
    state = sandbox.state_snapshot()

    routing = _run(_with(sandbox, lambda c: c.read_routing()))
    numbers = {d["id"]: d["did_number"] for d in state["dids"]}
    assert sorted(r.routing_id for r in routing) == sorted(r["id"] for r in state["routing"])
    for r in routing:
        expected = next(s for s in state["routing"] if s["id"] == r.routing_id)
        assert r.did_id == expected["did_id"]
        assert r.did_number == numbers[expected["did_id"]]
        assert tuple(r.record) == ROUTING_FIELDS
        assert dict(r.record) == {name: expected.get(name) for name in ROUTING_FIELDS}


async def _with(sandbox: Sandbox, call: Callable[[VoiceLinkClient], Awaitable[T]], **kwargs: Any) -> T:
    async with _sandbox_client(sandbox, **kwargs) as client:
        return await call(client)


def test_client_writes_and_classifies_sandbox_answers() -> None:
    sandbox = create_sandbox(SandboxConfig())
    free = next(
        d
        for d in sandbox.state_snapshot()["dids"]
        if d["id"] not in {r["did_id"] for r in sandbox.state_snapshot()["routing"]}
    )
    body = {
        "did_id": free["id"],
        "for_inbound_call": 1,
        "for_outbound_call": 3,
        "outbound_websocket_bot_id": 93,
    }

    async def main() -> tuple[list[WriteResult], int]:
        async with _sandbox_client(sandbox) as client:
            created = await client.create_routing(body)
            again = await client.create_routing(body)
            routing = {r.did_id: r for r in await client.read_routing()}
            rid = routing[free["id"]].routing_id
            update = {"for_inbound_call": 1, "for_outbound_call": 4, "status": 0}
            updated = await client.update_routing(rid, update)
            missing = await client.update_routing(999_999, update)
            invalid = await client.create_routing(
                {"did_id": free["id"], "for_inbound_call": 3, "for_outbound_call": 4}
            )
            return [created, again, updated, missing, invalid], client.request_count

    (created, again, updated, missing, invalid), requests = _run(main())
    assert (created.ok, created.known, created.http_status, created.attempts) == (True, True, 200, 1)
    assert (again.ok, again.known, again.http_status, again.error_code) == (False, True, 409, "CONFLICT")
    assert again.message == f"call routing already exists for DID {free['did_number']}"
    assert (updated.ok, updated.http_status) == (True, 200)
    assert (missing.ok, missing.known, missing.http_status, missing.error_code) == (
        False,
        True,
        404,
        "NOT_FOUND",
    )
    assert (invalid.ok, invalid.known, invalid.http_status, invalid.error_code) == (
        False,
        True,
        400,
        "VALIDATION_ERROR",
    )
    assert "inbound_websocket_bot_id" in invalid.message
    assert requests == 6
    final = next(r for r in sandbox.state_snapshot()["routing"] if r["did_id"] == free["id"])
    assert (final["for_outbound_call"], final["status"]) == (4, 0)


def test_client_sends_the_connection_id_on_every_request() -> None:
    sandbox = create_sandbox(SandboxConfig(two_connections=True))
    free = 815  # a DID of connection 1 without routing

    async def without() -> str:
        async with _sandbox_client(sandbox) as client:
            assert len(await client.list_connections()) == 2  # the pre-flight needs no connection
            with pytest.raises(ApiError) as caught:
                await _all_dids(client)
            return str(caught.value)

    async def chosen() -> tuple[int, int, bool]:
        async with _sandbox_client(sandbox, connection_id=CONN_1) as client:
            dids = await _all_dids(client)
            bots = await read_bots(client)
            routing = await client.read_routing()
            made = await client.create_routing(
                {"did_id": free, "for_inbound_call": 1, "for_outbound_call": 4}
            )
            return len(dids) + len(bots), len(routing), made.ok

    message = _run(without())
    assert "HTTP 400 VALIDATION_ERROR" in message and "connection_id is required" in message
    assert _run(chosen())[2] is True


# -- the rate limit --------------------------------------------------------------------------


def _scaled_sandbox(config: SandboxConfig, window: float) -> Sandbox:
    """A sandbox whose 60 s window lasts ``window`` real seconds."""
    scale = 60.0 / window
    return Sandbox(config, clock=lambda: time.monotonic() * scale)


@pytest.mark.parametrize("latency_ms", [0, 15])
def test_client_at_the_sandbox_limit_meets_no_429(latency_ms: int) -> None:
    """60 requests by 12 workers through one limiter set to the sandbox's numbers: zero 429s."""
    sandbox = _scaled_sandbox(SandboxConfig(requests_per_minute=20, latency_ms=latency_ms), window=0.25)
    limiter = RateLimiter(20, window=0.25)

    async def main() -> int:
        async with _sandbox_client(sandbox, limiter=limiter, max_connections=12) as client:
            jobs = [lambda: read_bots(client), lambda: _all_dids(client), client.read_routing] * 20

            async def worker() -> None:
                while jobs:
                    await jobs.pop()()

            await asyncio.gather(*(worker() for _ in range(12)))
            return client.request_count

    assert _run(main()) == 60
    state = sandbox.state_snapshot()
    assert state["rate_limited"] == 0
    assert sum(state["request_counts"].values()) == 60


def test_client_recovers_from_a_429_without_retry_after() -> None:
    """A client that overruns the sandbox pauses until its window frees and re-sends."""
    sandbox = _scaled_sandbox(SandboxConfig(requests_per_minute=3), window=0.3)
    limiter = RateLimiter(1000, window=0.3)  # deliberately looser than the server

    async def main() -> tuple[list[int], int]:
        async with _sandbox_client(sandbox, limiter=limiter) as client:
            bots = await asyncio.gather(*(read_bots(client) for _ in range(6)))
            return [len(b) for b in bots], client.request_count

    counts, requests = _run(main())
    assert counts == [3] * 6
    assert sandbox.state_snapshot()["rate_limited"] >= 1
    assert requests == 6 + sandbox.state_snapshot()["rate_limited"]


def test_client_honours_retry_after_and_counts_attempts() -> None:
    calls: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(time.monotonic())
        if len(calls) == 1:
            return _error(429, "LIMIT_REACHED", "slow down", headers={"Retry-After": "0.3"})
        return _ok({})

    async def main() -> WriteResult:
        async with _mock_client(handler) as client:
            return await client.create_routing({"did_id": 812, "for_inbound_call": 1, "for_outbound_call": 4})

    result = _run(main())
    assert (result.ok, result.attempts) == (True, 2)
    assert calls[1] - calls[0] >= 0.29


def test_client_gives_up_on_429_after_the_cap() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return _error(429, "LIMIT_REACHED", "rate limit", headers={"Retry-After": "0"})

    async def main() -> tuple[WriteResult, str, int]:
        async with _mock_client(handler, max_rate_retries=2) as client:
            write = await client.create_routing({"did_id": 812})
            with pytest.raises(ApiError) as caught:
                await read_bots(client)
            return write, str(caught.value), client.request_count

    write, read_error, requests = _run(main())
    assert (write.ok, write.known, write.http_status, write.error_code, write.attempts) == (
        False,
        True,
        429,
        "LIMIT_REACHED",
        3,
    )
    assert "HTTP 429 LIMIT_REACHED" in read_error
    assert requests == 6


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("7", 7.0),
        ("0.5", 0.5),
        ("-3", 0.0),
        ("soon", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),  # a date in the past: no wait
    ],
)
def test_client_retry_after_parsing(header: str | None, expected: float | None) -> None:
    assert _retry_after(header) == expected


# -- retries, and what writes never do ------------------------------------------------------------


def test_client_retries_reads_on_server_errors_then_succeeds() -> None:
    answers = [_error(503, "INTERNAL_ERROR", "busy"), httpx.ConnectError("refused"), _ok([{"id": 93}])]

    def handler(request: httpx.Request) -> httpx.Response:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def main() -> tuple[list[Bot], int]:
        async with _mock_client(handler) as client:
            return await read_bots(client), client.request_count

    assert _run(main()) == ([Bot(93, "", True)], 3)


def test_client_read_backoff_grows(monkeypatch: pytest.MonkeyPatch) -> None:
    times: list[float] = []
    delays: list[float] = []

    def spy(attempt: int, base: float, rng: random.Random | None = None) -> float:
        delays.append(backoff_delay(attempt, base, rng))
        return delays[-1]

    monkeypatch.setattr(client_module, "backoff_delay", spy)

    def handler(request: httpx.Request) -> httpx.Response:
        times.append(time.monotonic())
        return _error(500, "INTERNAL_ERROR", "boom")

    async def main() -> str:
        async with _mock_client(handler, backoff=0.1) as client:
            with pytest.raises(ApiError) as caught:
                await _all_dids(client)
            return str(caught.value)

    message = _run(main())
    assert (
        message
        == "GET /voicelink/dids/purchased page 1 failed after 3 attempt(s): HTTP 500 INTERNAL_ERROR: boom"
    )
    # The waits chosen grow (base 0.1 s, doubled, jitter in [0.5, 1)); each was really waited.
    assert len(delays) == 2 and 0.05 <= delays[0] < 0.1 <= delays[1] < 0.2
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps[0] >= delays[0] - 0.01 and gaps[1] >= delays[1] - 0.01  # a timer may fire a tick early


@pytest.mark.parametrize(
    ("fault", "status", "text"),
    [
        (_error(500, "INTERNAL_ERROR", "internal error"), 500, "internal error"),
        (_error(503, "INTERNAL_ERROR", "unavailable"), 503, "unavailable"),
        (httpx.Response(502, text="<html>Bad gateway</html>"), 502, "Bad gateway"),  # an excerpt, no tags
        (httpx.ReadTimeout("slow"), None, "no response: timed out after 30 s"),
        (httpx.RemoteProtocolError("gone"), None, "no response: connection lost (RemoteProtocolError)"),
        (httpx.ConnectError("refused"), None, "no response: could not connect"),
        (httpx.Response(302, headers={"Location": "/x"}), 302, "Found"),
    ],
)
def test_client_never_resends_a_write_with_unknown_outcome(
    fault: httpx.Response | Exception, status: int | None, text: str
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if isinstance(fault, Exception):
            raise fault
        return fault

    async def main() -> tuple[WriteResult, int]:
        async with _mock_client(handler) as client:
            return await client.update_routing(5001, {"for_inbound_call": 1}), client.request_count

    result, requests = _run(main())
    assert requests == 1
    assert result == WriteResult(status, False, False, result.error_code, text, 1)


@pytest.mark.parametrize(
    ("status", "code", "message"),
    [
        (400, "VALIDATION_ERROR", "outbound_websocket_bot_id must be a positive integer"),
        (404, "NOT_FOUND", "no such DID"),
        (409, "CONFLICT", "call routing already exists for DID 918011223344"),
        (422, "UNPROCESSABLE", "bot 95 is inactive"),
    ],
)
def test_client_write_rejections_are_known_with_the_message_verbatim(
    status: int, code: str, message: str
) -> None:
    async def main() -> WriteResult:
        async with _mock_client(lambda r: _error(status, code, message)) as client:
            return await client.create_routing({"did_id": 812})

    assert _run(main()) == WriteResult(status, False, True, code, message, 1)


@pytest.mark.parametrize(
    ("answer", "ok", "routing_id"),
    [
        (_ok({}), True, None),
        (_ok({"id": 77}), True, 77),
        (_ok({"data": {"routing_id": "78"}}), True, 78),
        (httpx.Response(201, text=""), True, None),
        (httpx.Response(200, json={"success": False, "error": {"code": "X", "message": "no"}}), False, None),
    ],
)
def test_client_write_success_shapes(answer: httpx.Response, ok: bool, routing_id: int | None) -> None:
    async def main() -> WriteResult:
        async with _mock_client(lambda r: answer) as client:
            return await client.create_routing({"did_id": 812})

    result = _run(main())
    assert (result.ok, result.known, result.routing_id) == (ok, True, routing_id)


# -- over real TCP: timeouts, dropped connections, server errors ----------------------------------


def _tcp(base_url: str, **kwargs: Any) -> VoiceLinkClient:
    kwargs.setdefault("limiter", RateLimiter(10_000))
    kwargs.setdefault("backoff", 0.0)
    return VoiceLinkClient(base_url, SANDBOX_API_KEY, **kwargs)


def test_client_over_tcp_timeouts_make_reads_fail_and_writes_unknown() -> None:
    config = SandboxConfig(hang_rate=1.0, hang_seconds=3.0)
    with running_sandbox(config) as (base_url, sandbox):

        async def main() -> tuple[str, WriteResult, int]:
            async with _tcp(base_url, timeout=0.25) as client:
                with pytest.raises(ApiError) as caught:
                    await read_bots(client)
                write = await client.create_routing(
                    {"did_id": 815, "for_inbound_call": 1, "for_outbound_call": 4}
                )
                return str(caught.value), write, client.request_count

        read_error, write, requests = _run(main())
        state = sandbox.state_snapshot()
    assert (
        read_error
        == "GET /voicelink/bots page 1 failed after 3 attempt(s): no response: timed out after 0.25 s"
    )
    assert (write.http_status, write.ok, write.known, write.attempts) == (None, False, False, 1)
    assert requests == 4
    assert state["create_attempts"] == {"815": 1}
    assert state["writes_applied"] == {"815": 1}  # applied although the client never heard back


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_client_over_tcp_lost_answers_after_applied_writes_are_unknown(seed: int) -> None:
    config = SandboxConfig(ambiguous_rate=1.0, seed=seed)
    with running_sandbox(config) as (base_url, sandbox):

        async def main() -> WriteResult:
            async with _tcp(base_url) as client:
                return await client.create_routing(
                    {"did_id": 815, "for_inbound_call": 1, "for_outbound_call": 4}
                )

        result = _run(main())
        state = sandbox.state_snapshot()
    assert (result.ok, result.known, result.attempts) == (False, False, 1)
    assert result.http_status in (500, None)
    assert state["create_attempts"] == {"815": 1} and state["writes_applied"] == {"815": 1}


def test_client_over_tcp_failing_server_reads_three_times_writes_once() -> None:
    with running_sandbox(SandboxConfig(fail_rate=1.0)) as (base_url, sandbox):

        async def main() -> tuple[str, WriteResult]:
            async with _tcp(base_url) as client:
                with pytest.raises(ApiError) as caught:
                    await client.read_routing()
                return str(caught.value), await client.update_routing(5001, {"for_inbound_call": 1})

        read_error, write = _run(main())
        counts = sandbox.state_snapshot()["request_counts"]
    assert read_error.startswith("POST /voicelink/sync failed after 3 attempt(s): HTTP 50")
    assert (write.ok, write.known, write.error_code) == (False, False, "INTERNAL_ERROR")
    assert counts == {"POST /voicelink/sync": 3, "POST /voicelink/call-routing/{routing_id}": 1}


def test_client_over_tcp_server_gone_is_one_line_api_error() -> None:
    with running_sandbox(SandboxConfig()) as (base_url, _):
        pass  # the server is stopped again: nothing listens on that port now

    async def main() -> str:
        async with _tcp(base_url, timeout=1.0) as client:
            with pytest.raises(ApiError) as caught:
                await client.list_connections()
            return str(caught.value)

    assert _run(main()) == (
        "GET /telephony/connections failed after 3 attempt(s): no response: could not connect"
    )


# -- defensive parsing --------------------------------------------------------------------------


def _paged(
    items: list[dict[str, Any]], shape: Callable[[list[dict[str, Any]], int, int, int], object]
) -> tuple[Handler, list[dict[str, str]]]:
    """Serve ``items`` in pages wrapped by ``shape(page_items, page, per_page, total)``."""
    seen: list[dict[str, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        query = dict(request.url.params)
        seen.append(query)
        page, per_page = int(query["page"]), int(query["per_page"])
        chunk = items[(page - 1) * per_page : page * per_page]
        return httpx.Response(200, json=shape(chunk, page, per_page, len(items)))

    return handler, seen


def _did_items(n: int) -> list[dict[str, Any]]:
    return [{"id": 2000 + i, "did_number": 918000000000 + i, "status": "active"} for i in range(n)]


SHAPES: dict[str, Callable[[list[dict[str, Any]], int, int, int], object]] = {
    "data.data with last_page": lambda c, p, pp, t: {
        "success": True,
        "data": {"data": c, "current_page": p, "last_page": -(-t // pp), "per_page": pp},
    },
    "data.data without metadata": lambda c, p, pp, t: {"success": True, "data": {"data": c}},
    "data.data.data": lambda c, p, pp, t: {"success": True, "data": {"data": {"data": c, "total": t}}},
    "data as a list": lambda c, p, pp, t: {"success": True, "data": c},
    "bare list": lambda c, p, pp, t: c,
    "meta object": lambda c, p, pp, t: {"data": c, "meta": {"last_page": -(-t // pp)}},
}


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize(("count", "pages"), [(0, 1), (99, 1), (100, 2), (250, 3)])
def test_client_pages_through_every_list_shape(shape: str, count: int, pages: int) -> None:
    handler, seen = _paged(_did_items(count), SHAPES[shape])

    async def main() -> list[Did]:
        async with _mock_client(handler) as client:
            return await _all_dids(client)

    dids = _run(main())
    assert [d.did_id for d in dids] == [2000 + i for i in range(count)]
    assert all(d.did_number == str(918000000000 + d.did_id - 2000) for d in dids)
    # With metadata an exact multiple of per_page needs no probe for an empty page.
    exact = count == 100 and shape in ("data.data with last_page", "data.data.data", "meta object")
    assert len(seen) == (1 if exact else pages)
    assert all(q["per_page"] == "100" for q in seen)


def test_client_stops_when_the_server_ignores_paging() -> None:
    items = _did_items(150)
    requests: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(str(request.url))
        return _ok({"data": items[:100]})  # the same full page whatever page is asked

    async def main() -> list[Did]:
        async with _mock_client(handler) as client:
            return await _all_dids(client)

    assert len(_run(main())) == 100
    assert len(requests) == 2


def test_client_stops_when_per_page_is_ignored() -> None:
    requests: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(str(request.url))
        return _ok(_did_items(250))  # everything at once, no metadata

    async def main() -> list[Did]:
        async with _mock_client(handler) as client:
            return await _all_dids(client)

    assert len(_run(main())) == 250
    assert len(requests) == 1


def test_client_page_cap_raises() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        page = int(request.url.params["page"])
        return _ok({"data": [{"id": page * 1000 + i, "did_number": "1"} for i in range(100)]})

    async def main() -> str:
        async with _mock_client(handler, max_pages=4) as client:
            with pytest.raises(ApiError) as caught:
                await _all_dids(client)
            return str(caught.value)

    assert "more than 4 pages" in _run(main())


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        (
            {"id": 812, "did_id": 812, "did_number": "918011223344", "status": "active"},
            Did(812, "918011223344", "active"),
        ),
        ({"did_id": "813", "did_number": 918011224455}, Did(813, "918011224455", "")),
        ({"id": 814.0, "did_number": " 918011225566 "}, Did(814, "918011225566", "")),
        ({"id": 815, "phone_number": "+918011226677"}, Did(815, "918011226677", "")),
        ({"did_id": 816, "id": 9, "did_number": "1"}, Did(816, "1", "")),  # did_id wins over id
        ({"id": "abc", "did_number": "1"}, None),
        ({"did_number": "1"}, None),
    ],
)
def test_client_parses_did_items(item: dict[str, Any], expected: Did | None) -> None:
    async def main() -> tuple[list[Did], list[str]]:
        async with _mock_client(lambda r: _ok({"data": [item]})) as client:
            return await _all_dids(client), client.warnings

    dids, warnings = _run(main())
    assert dids == ([] if expected is None else [expected])
    assert len(warnings) == (1 if expected is None else 0)


@pytest.mark.parametrize(
    ("status", "active"),
    [
        (1, True),
        ("1", True),
        (True, True),
        ("active", True),
        ("Active", True),
        (0, False),
        ("0", False),
        (False, False),
        ("inactive", False),
        (None, False),
        ("weird", False),
    ],
)
def test_client_parses_bot_status(status: object, active: bool) -> None:
    async def main() -> list[Bot]:
        item = {"id": "93", "bot_name": "Support", "status": status}
        async with _mock_client(lambda r: _ok({"data": [item]})) as client:
            return await read_bots(client)

    assert _run(main()) == [Bot(93, "Support", active)]


def test_client_bot_without_status_is_active_and_bots_ask_for_big_pages() -> None:
    handler, seen = _paged([{"bot_id": 7, "name": "x"}], lambda c, p, pp, t: {"data": {"data": c}})

    async def main() -> list[Bot]:
        async with _mock_client(handler) as client:
            return await read_bots(client)

    assert _run(main()) == [Bot(7, "x", True)]
    assert seen[0]["per_page"] == "1000"


READY_ROUTING = {"id": 5001, "for_inbound_call": 1, "for_outbound_call": 4, "status": 1}


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (  # routing[] complete
            {"routing": [{**READY_ROUTING, "did_id": 812, "did_number": 918011223344}], "readiness": []},
            [(5001, 812, "918011223344")],
        ),
        (  # no routing[]: readiness fallback, DID from remote_did and key
            {
                "readiness": [
                    {"key": "918011223344", "routing": READY_ROUTING, "remote_did": {"id": 812}},
                    {"key": "918011224455", "routing": None, "remote_did": {"id": 813}},
                ]
            },
            [(5001, 812, "918011223344")],
        ),
        (  # routing[] without the DID: filled from readiness; readiness-only records added
            {
                "routing": [{**READY_ROUTING, "routing_id": 5001}],
                "readiness": [
                    {"key": "918011223344", "routing": READY_ROUTING, "remote_did": {"did_id": "812"}},
                    {"key": "918011229999", "routing": {**READY_ROUTING, "id": 5009}, "remote_did": None},
                ],
            },
            [(5001, 812, "918011223344"), (5009, None, "918011229999")],
        ),
        (  # nested one level deeper, values as text, in a raw object
            {"data": {"routing": [{"raw": {**READY_ROUTING, "status": "active"}, "did": {"did_id": 812}}]}},
            [(5001, 812, None)],
        ),
        ({"routing": [{"for_inbound_call": 1}]}, []),  # no id: skipped with a warning
    ],
)
def test_client_parses_routing_shapes(
    data: dict[str, Any], expected: list[tuple[int, int | None, str | None]]
) -> None:
    requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return _ok(data)

    async def main() -> list[Any]:
        async with _mock_client(handler) as client:
            return await client.read_routing()

    routing = _run(main())
    assert [(r.routing_id, r.did_id, r.did_number) for r in routing] == expected
    for r in routing:
        assert dict(r.record) == {name: READY_ROUTING.get(name) for name in ROUTING_FIELDS}
    assert (requests[0].method, requests[0].url.path) == ("POST", "/api/v2/voicelink/sync")
    assert json.loads(requests[0].content) == {"import_dids": False}


def test_client_sync_without_routing_or_readiness_raises() -> None:
    async def main() -> str:
        async with _mock_client(lambda r: _ok({"clients": []})) as client:
            with pytest.raises(ApiError) as caught:
                await client.read_routing()
            return str(caught.value)

    assert "neither routing[] nor readiness[]" in _run(main())


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(200, text="<html>maintenance</html>"),
        _error(400, "VALIDATION_ERROR", "per_page too big"),
    ],
)
def test_client_unusable_read_answers_raise(answer: httpx.Response) -> None:
    async def main() -> str:
        async with _mock_client(lambda r: answer) as client:
            with pytest.raises(ApiError) as caught:
                await read_bots(client)
            return str(caught.value)

    message = _run(main())
    assert message.startswith("GET /voicelink/bots page 1")
    assert "\n" not in message


# -- what goes on the wire, and the key ------------------------------------------------------------


def test_client_puts_the_connection_in_query_or_body_and_the_key_only_in_the_header() -> None:
    requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        if request.url.path.endswith("/sync"):
            return _ok({"routing": []})
        return _ok({"data": []})

    async def main() -> None:
        async with _mock_client(handler) as client:
            await client.list_connections()
            client.connection_id = CONN_1
            await _all_dids(client)
            await client.read_routing()
            await client.create_routing({"did_id": 812})
            await client.update_routing(5001, {"status": 1, "connection_id": CONN_2})

    _run(main())
    seen = [
        (r.method, r.url.path, dict(r.url.params), json.loads(r.content) if r.content else None)
        for r in requests
    ]
    assert seen == [
        ("GET", "/api/v2/telephony/connections", {"provider": "voicelink"}, None),
        (
            "GET",
            "/api/v2/voicelink/dids/purchased",
            {"page": "1", "per_page": "100", "connection_id": CONN_1},
            None,
        ),
        ("POST", "/api/v2/voicelink/sync", {}, {"import_dids": False, "connection_id": CONN_1}),
        ("POST", "/api/v2/voicelink/call-routing", {}, {"did_id": 812, "connection_id": CONN_1}),
        (
            "POST",
            "/api/v2/voicelink/call-routing/5001",
            {},
            {"status": 1, "connection_id": CONN_2},
        ),  # the row's own
    ]
    for r in requests:
        assert r.headers["Authorization"] == f"Bearer {KEY}"
        assert KEY not in str(r.url) and KEY.encode() not in r.content


@pytest.mark.parametrize(
    ("status", "code", "message", "expected"),
    [
        (401, "UNAUTHORIZED", "invalid API key", "the API rejected the API key (HTTP 401 UNAUTHORIZED)"),
        (403, "FORBIDDEN", "credits exhausted", "the API refused access (HTTP 403 FORBIDDEN)"),
        (401, "UNAUTHORIZED", f"invalid key {KEY}", "the API rejected the API key (HTTP 401 UNAUTHORIZED)"),
    ],
)
def test_client_auth_failures_abort_without_leaking_the_key(
    status: int, code: str, message: str, expected: str
) -> None:
    async def main() -> list[str]:
        texts: list[str] = []
        async with _mock_client(lambda r: _error(status, code, message)) as client:
            texts.append(repr(client))
            calls: list[Callable[[], Awaitable[object]]] = [
                client.list_connections,
                lambda: _all_dids(client),
                lambda: read_bots(client),
                client.read_routing,
                lambda: client.create_routing({"did_id": 1}),
                lambda: client.update_routing(1, {}),
            ]
            for call in calls:
                with pytest.raises(AuthError) as caught:
                    await call()
                texts += [str(caught.value), repr(caught.value)]
        return texts

    texts = _run(main())
    assert all(KEY not in t and KEY[8:] not in t for t in texts)
    assert all(expected in t for t in texts[1::2])
    assert all("\n" not in t for t in texts)


def test_client_messages_never_carry_the_key() -> None:
    """Every text the client produces, over a mix of failures, is free of the key."""
    answers = [
        _error(400, "VALIDATION_ERROR", f"bad body, your key is {KEY}"),
        httpx.Response(500, text=f"Traceback ... Authorization: Bearer {KEY}"),
        httpx.ReadTimeout(f"timeout talking with {KEY}"),
    ]

    def handler(request: httpx.Request) -> httpx.Response:
        answer = answers.pop(0) if answers else _error(404, "NOT_FOUND", f"nothing for {KEY}")
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def main() -> list[str]:
        texts: list[str] = []
        async with _mock_client(handler) as client:
            for _ in range(3):
                texts.append(repr(await client.create_routing({"did_id": 812})))
            with pytest.raises(ApiError) as caught:
                await _all_dids(client)
            texts += [str(caught.value), repr(client), repr(client.warnings)]
        return texts

    texts = _run(main())
    assert len(texts) == 6
    assert all(KEY not in t for t in texts), texts
    assert "[API key]" in texts[0] and "[API key]" in texts[3]


@pytest.mark.parametrize("bad_key", ["", "rg_live_abc def", "rg_live_ü", "rg_live_x\n"])
def test_client_rejects_unsendable_keys_without_echoing_them(bad_key: str) -> None:
    with pytest.raises(AuthError) as caught:
        VoiceLinkClient(BASE, bad_key, limiter=RateLimiter(60))
    assert bad_key.strip() == "" or bad_key not in str(caught.value)
