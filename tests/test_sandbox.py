"""The VoiceLink sandbox: documented behaviour, validation, limits, faults, state; in-process and over TCP."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from importer.errors import InputError
from importer.fields import ROUTING_FIELDS
from importer.sandbox import (
    SANDBOX_API_KEY,
    Sandbox,
    SandboxConfig,
    SandboxConnectionDropped,
    create_sandbox,
    running_sandbox,
)

pytestmark = pytest.mark.anyio

AUTH = {"Authorization": f"Bearer {SANDBOX_API_KEY}"}
PRIMARY = "3f6c2a9e-5b1d-4c8e-9a7f-1e2d3c4b5a60"
SECONDARY = "8b0e4d2c-7a19-4f3b-b6c5-0d9e8f7a6b51"
FREE_DIDS = list(range(815, 836))
"""DIDs of sample_data/inventory.json without routing."""
WAYS = ["asgi", "tcp"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@contextlib.asynccontextmanager
async def api(config: SandboxConfig, way: str = "asgi") -> AsyncIterator[tuple[httpx.AsyncClient, Sandbox]]:
    """Talk to a fresh sandbox in-process (ASGITransport) or over real loopback TCP (uvicorn)."""
    if way == "asgi":
        sandbox = create_sandbox(config)
        transport = httpx.ASGITransport(app=sandbox.app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://sandbox/api/v2", headers=AUTH
        ) as c:
            yield c, sandbox
        return
    with running_sandbox(config) as (url, sandbox):
        async with httpx.AsyncClient(base_url=url, headers=AUTH) as client:
            yield client, sandbox


def create_body(did: int, **extra: Any) -> dict[str, Any]:
    return {"did_id": did, "for_inbound_call": 1, "for_outbound_call": 4, **extra}


def routing_of(sandbox: Sandbox, did: int) -> dict[str, Any] | None:
    return next((r for r in sandbox.state_snapshot()["routing"] if r["did_id"] == did), None)


def error_of(response: httpx.Response) -> tuple[int, str, str]:
    body = response.json()
    assert body["success"] is False
    return response.status_code, body["error"]["code"], body["error"]["message"]


# --- reads -------------------------------------------------------------------------------------


@pytest.mark.parametrize("way", WAYS)
async def test_sandbox_lists_connections_dids_and_bots(way: str) -> None:
    async with api(SandboxConfig(), way) as (client, _):
        conns = (await client.get("/telephony/connections", params={"provider": "voicelink"})).json()
        dids = (await client.get("/voicelink/dids/purchased", params={"per_page": 100})).json()
        bots = (await client.get("/voicelink/bots")).json()
    assert conns == {
        "success": True,
        "data": [
            {
                "connection_id": PRIMARY,
                "id": PRIMARY,
                "name": "VoiceLink India (primary)",
                "status": "ACTIVE",
                "is_default": True,
            }
        ],
    }
    page = dids["data"]
    assert (page["current_page"], page["last_page"], page["per_page"], page["total"]) == (1, 1, 100, 30)
    assert page["data"][0] == {
        "id": 812,
        "did_id": 812,
        "did_number": "918011223344",
        "client_id": 415,
        "status": "active",
    }
    assert [(b["id"], b["status"]) for b in bots["data"]["data"]] == [(93, 1), (94, 1), (95, 0)]


@pytest.mark.parametrize(
    ("params", "ids", "last_page", "per_page"),
    [
        ({"per_page": 10, "page": 2}, list(range(822, 832)), 3, 10),
        ({"per_page": 500}, [*range(812, 836), *range(901, 907)], 1, 100),
        ({"search": "1415555260"}, list(range(901, 907)), 1, 15),
        ({"page": 9}, [], 2, 15),
        ({"client_id": 999}, [], 1, 15),
    ],
)
async def test_sandbox_dids_page_and_search(
    params: dict[str, Any], ids: list[int], last_page: int, per_page: int
) -> None:
    async with api(SandboxConfig()) as (client, _):
        page = (await client.get("/voicelink/dids/purchased", params=params)).json()["data"]
    assert [d["id"] for d in page["data"]] == ids
    assert (page["last_page"], page["per_page"]) == (last_page, per_page)


@pytest.mark.parametrize(
    ("path", "params", "field"),
    [
        ("/voicelink/dids/purchased", {"page": 0}, "page"),
        ("/voicelink/dids/purchased", {"per_page": "ten"}, "per_page"),
        ("/voicelink/dids/purchased", {"per_page": "-1"}, "per_page"),
        ("/voicelink/bots", {"per_page": 1001}, "per_page"),
        ("/voicelink/bots", {"status": 2}, "status"),
    ],
)
async def test_sandbox_rejects_bad_paging(path: str, params: dict[str, Any], field: str) -> None:
    async with api(SandboxConfig()) as (client, _):
        status, code, message = error_of(await client.get(path, params=params))
    assert (status, code) == (400, "VALIDATION_ERROR")
    assert field in message


async def test_sandbox_bots_accept_per_page_1000_and_filter_status() -> None:
    async with api(SandboxConfig()) as (client, _):
        page = (await client.get("/voicelink/bots", params={"per_page": 1000, "status": 1})).json()["data"]
    assert (page["per_page"], [b["id"] for b in page["data"]]) == (1000, [93, 94])


@pytest.mark.parametrize("int_numbers", [True, False])
async def test_sandbox_did_number_is_an_integer_for_odd_ids_when_on(int_numbers: bool) -> None:
    async with api(SandboxConfig(int_did_numbers=int_numbers)) as (client, sandbox):
        listed = (await client.get("/voicelink/dids/purchased", params={"per_page": 100})).json()["data"][
            "data"
        ]
        synced = (await client.post("/voicelink/sync", json={"import_dids": False})).json()["data"]
    numbers = {d["id"]: d["did_number"] for d in listed}
    assert numbers[812] == "918011223344"
    assert numbers[813] == (918011224455 if int_numbers else "918011224455")
    assert {d["id"]: d["did_number"] for d in synced["dids"]} == numbers
    assert {r["did_id"]: r["did_number"] for r in synced["routing"]}[813] == numbers[813]
    # The state keeps the canonical string whatever the wire says.
    assert routing_of(sandbox, 813) is not None and routing_of(sandbox, 813)["did_number"] == "918011224455"  # type: ignore[index]


@pytest.mark.parametrize("import_dids", [False, True, None])
async def test_sandbox_sync_reports_routing_and_readiness_read_only(import_dids: bool | None) -> None:
    body = {} if import_dids is None else {"import_dids": import_dids}
    async with api(SandboxConfig()) as (client, sandbox):
        before = sandbox.state_snapshot()["routing"]
        data = (await client.post("/voicelink/sync", json=body)).json()["data"]
        assert sandbox.state_snapshot()["routing"] == before
    assert set(data) == {
        "clients",
        "dids",
        "available_dids",
        "bots",
        "routing",
        "local_phone_numbers",
        "readiness",
        "drift",
    }
    assert data["dids"][0] | {"phone_number": "+918011223344", "is_expired": False} == data["dids"][0]
    assert [r["id"] for r in data["routing"]] == [5001, 5002, 5003, 5004]
    assert all(set(ROUTING_FIELDS) <= set(r) for r in data["routing"])
    assert (
        data["routing"][2]["inbound_sip_trunk_id"] == 7 and data["routing"][0]["inbound_sip_trunk_id"] is None
    )
    readiness = {r["key"]: r for r in data["readiness"]}
    assert len(readiness) == 30
    assert readiness["918011224455"]["state"] == "READY" and readiness["918011224455"]["bot"]["id"] == 94
    assert readiness["918011226677"]["issues"] == ["ROUTING_MISSING"]
    assert readiness["918011226677"]["routing"] is None
    assert readiness["918011223344"]["routing"]["id"] == 5001


# --- writes and their validation ------------------------------------------------------------------

CREATE_CASES: list[tuple[str, dict[str, Any], int, str, str]] = [
    ("valid by id", create_body(815), 200, "", ""),
    ("valid by number", {**create_body(815), "did_id": None} | {"did_number": "918011226677"}, 200, "", ""),
    ("both agree", create_body(815, did_number="918011226677"), 200, "", ""),
    ("both disagree", create_body(815, did_number="918011227788"), 400, "VALIDATION_ERROR", "did_number"),
    ("no DID", {"for_inbound_call": 1, "for_outbound_call": 4}, 400, "VALIDATION_ERROR", "did_id"),
    ("did zero", create_body(0), 400, "VALIDATION_ERROR", "did_id"),
    ("did negative", create_body(-815), 400, "VALIDATION_ERROR", "did_id"),
    ("did fraction", create_body(12.5), 400, "VALIDATION_ERROR", "did_id"),  # type: ignore[arg-type]
    ("did string", create_body("815"), 400, "VALIDATION_ERROR", "did_id"),  # type: ignore[arg-type]
    ("did bool", create_body(True), 400, "VALIDATION_ERROR", "did_id"),
    (
        "number with plus",
        {**create_body(1), "did_id": None} | {"did_number": "+918011226677"},
        400,
        "VALIDATION_ERROR",
        "did_number",
    ),
    (
        "number as int",
        {**create_body(1), "did_id": None} | {"did_number": 918011226677},
        400,
        "VALIDATION_ERROR",
        "did_number",
    ),
    ("inbound zero", create_body(815, for_inbound_call=0), 400, "VALIDATION_ERROR", "for_inbound_call"),
    ("inbound 4", create_body(815, for_inbound_call=4), 400, "VALIDATION_ERROR", "for_inbound_call"),
    ("outbound 1", create_body(815, for_outbound_call=1), 400, "VALIDATION_ERROR", "for_outbound_call"),
    ("outbound float", create_body(815, for_outbound_call=4.0), 400, "VALIDATION_ERROR", "for_outbound_call"),
    ("outbound text", create_body(815, for_outbound_call="4"), 400, "VALIDATION_ERROR", "for_outbound_call"),
    (
        "bot id missing",
        create_body(815, for_inbound_call=3),
        400,
        "VALIDATION_ERROR",
        "inbound_websocket_bot_id",
    ),
    (
        "id for unused mode",
        create_body(815, inbound_websocket_bot_id=93),
        400,
        "VALIDATION_ERROR",
        "inbound_websocket_bot_id",
    ),
    (
        "null id for unused mode",
        create_body(815, outbound_sip_trunk_id=None),
        400,
        "VALIDATION_ERROR",
        "outbound_sip_trunk_id",
    ),
    (
        "inactive bot",
        create_body(815, for_outbound_call=3, outbound_websocket_bot_id=95),
        400,
        "VALIDATION_ERROR",
        "outbound_websocket_bot_id",
    ),
    (
        "unknown bot",
        create_body(815, for_outbound_call=3, outbound_websocket_bot_id=999),
        400,
        "VALIDATION_ERROR",
        "outbound_websocket_bot_id",
    ),
    (
        "trunk zero",
        create_body(815, for_inbound_call=2, inbound_sip_trunk_id=0),
        400,
        "VALIDATION_ERROR",
        "inbound_sip_trunk_id",
    ),
    ("status 2", create_body(815, status=2), 400, "VALIDATION_ERROR", "status"),
    ("status text", create_body(815, status="1"), 400, "VALIDATION_ERROR", "status"),
    ("unknown field", create_body(815, colour="red"), 400, "VALIDATION_ERROR", "colour"),
    ("unknown DID id", create_body(99999), 404, "NOT_FOUND", "DID"),
    (
        "unknown DID number",
        {"did_number": "919999999999", **create_body(1)} | {"did_id": None},
        404,
        "NOT_FOUND",
        "DID",
    ),
    ("routing exists", create_body(812), 409, "CONFLICT", "already exists"),
]


def _clean(body: dict[str, Any]) -> dict[str, Any]:
    """Drop did_id set to None by the table's shorthand (None means 'not sent' there)."""
    return {k: v for k, v in body.items() if not (k == "did_id" and v is None)}


@pytest.mark.parametrize(
    ("name", "body", "status", "code", "field"), CREATE_CASES, ids=[c[0] for c in CREATE_CASES]
)
async def test_sandbox_create_validates_as_documented(
    name: str, body: dict[str, Any], status: int, code: str, field: str
) -> None:
    async with api(SandboxConfig()) as (client, sandbox):
        response = await client.post("/voicelink/call-routing", json=_clean(body))
    assert response.status_code == status
    if status == 200:
        assert response.json() == {"success": True, "data": {}}
        assert routing_of(sandbox, 815) == {
            "id": 5005,
            "did_id": 815,
            "did_number": "918011226677",
            **dict.fromkeys(ROUTING_FIELDS),
            "for_inbound_call": 1,
            "for_outbound_call": 4,
            "status": 1,
        }
        return
    _, got_code, message = error_of(response)
    assert got_code == code
    assert field in message
    assert len(sandbox.state_snapshot()["routing"]) == 4


async def test_sandbox_create_validation_table_over_tcp() -> None:
    """The same table over real HTTP, on one server: the failing cases change nothing, so order is free."""
    async with api(SandboxConfig(), "tcp") as (client, sandbox):
        for name, body, status, code, field in [c for c in CREATE_CASES if c[2] != 200] + [CREATE_CASES[0]]:
            response = await client.post("/voicelink/call-routing", json=_clean(body))
            assert response.status_code == status, name
            if status != 200:
                _, got_code, message = error_of(response)
                assert (got_code, field in message) == (code, True), name
    assert routing_of(sandbox, 815) is not None and len(sandbox.state_snapshot()["routing"]) == 5


@pytest.mark.parametrize("raw", [b"NaN", b"Infinity", b"-Infinity", b"1e400"])
async def test_sandbox_rejects_non_finite_numbers(raw: bytes) -> None:
    body = b'{"did_id":815,"for_inbound_call":1,"for_outbound_call":2,"outbound_sip_trunk_id":' + raw + b"}"
    async with api(SandboxConfig()) as (client, _):
        status, code, message = error_of(await client.post("/voicelink/call-routing", content=body))
    assert (status, code) == (400, "VALIDATION_ERROR") and "outbound_sip_trunk_id" in message


@pytest.mark.parametrize("content", [b"{not json", b"[1, 2]", b""])
async def test_sandbox_rejects_a_body_that_is_not_an_object(content: bytes) -> None:
    async with api(SandboxConfig()) as (client, _):
        status, code, _message = error_of(await client.post("/voicelink/call-routing", content=content))
    assert (status, code) == (400, "VALIDATION_ERROR")


UPDATE_CASES: list[tuple[str, str, dict[str, Any], int, str]] = [
    ("to only-answer", "5003", {"for_inbound_call": 1, "for_outbound_call": 4, "status": 0}, 200, ""),
    ("missing status", "5003", {"for_inbound_call": 1, "for_outbound_call": 4}, 400, "status"),
    ("missing inbound", "5003", {"for_outbound_call": 4, "status": 1}, 400, "for_inbound_call"),
    (
        "DID in body",
        "5003",
        {"did_id": 814, "for_inbound_call": 1, "for_outbound_call": 4, "status": 1},
        400,
        "did_id",
    ),
    ("unknown id", "999999", {"for_inbound_call": 1, "for_outbound_call": 4, "status": 1}, 404, "999999"),
    ("id not a number", "abc", {"for_inbound_call": 1, "for_outbound_call": 4, "status": 1}, 404, "abc"),
]


@pytest.mark.parametrize(
    ("name", "rid", "body", "status", "field"), UPDATE_CASES, ids=[c[0] for c in UPDATE_CASES]
)
async def test_sandbox_update_replaces_the_record(
    name: str, rid: str, body: dict[str, Any], status: int, field: str
) -> None:
    async with api(SandboxConfig()) as (client, sandbox):
        response = await client.post(f"/voicelink/call-routing/{rid}", json=body)
    assert response.status_code == status
    state = sandbox.state_snapshot()
    if status == 200:
        # The update replaced the record: the SIP trunk ids it did not resend are gone.
        assert routing_of(sandbox, 814) == {
            "id": 5003,
            "did_id": 814,
            "did_number": "918011225566",
            **dict.fromkeys(ROUTING_FIELDS),
            "for_inbound_call": 1,
            "for_outbound_call": 4,
            "status": 0,
        }
        assert state["writes_applied"] == {"814": 1}
        return
    _, code, message = error_of(response)
    assert (code, field in message) == ("NOT_FOUND" if status == 404 else "VALIDATION_ERROR", True)
    assert state["writes"] == []


async def test_sandbox_update_without_change_is_not_a_write_applied() -> None:
    same = {"for_inbound_call": 1, "for_outbound_call": 4, "status": 1}
    async with api(SandboxConfig()) as (client, sandbox):
        assert (await client.post("/voicelink/call-routing/5001", json=same)).json() == {
            "success": True,
            "data": {},
        }
    state = sandbox.state_snapshot()
    assert state["writes"] == [{"op": "update", "routing_id": 5001, "did_id": 812, "changed": False}]
    assert state["writes_applied"] == {}


async def test_sandbox_counts_create_attempts_and_writes_per_did() -> None:
    async with api(SandboxConfig()) as (client, sandbox):
        await client.post("/voicelink/call-routing", json=create_body(815))
        await client.post("/voicelink/call-routing", json=create_body(815))  # 409
        await client.post(
            "/voicelink/call-routing", json={**create_body(1), "did_id": 816, "status": 7}
        )  # 400
        await client.post("/voicelink/call-routing", json=create_body(99999))  # 404
        await client.post(
            "/voicelink/call-routing/5001",
            json={"for_inbound_call": 1, "for_outbound_call": 2, "outbound_sip_trunk_id": 3, "status": 1},
        )
    state = sandbox.state_snapshot()
    assert state["create_attempts"] == {"815": 2, "816": 1, "did_id=99999": 1}
    assert state["writes_applied"] == {"812": 1, "815": 1}
    assert state["request_counts"] == {
        "POST /voicelink/call-routing": 4,
        "POST /voicelink/call-routing/{routing_id}": 1,
    }
    assert state["status_counts"] == {"200": 2, "400": 1, "404": 1, "409": 1}


async def test_sandbox_unknown_endpoints_are_not_found() -> None:
    async with api(SandboxConfig()) as (client, sandbox):
        listing = await client.get("/voicelink/call-routing")
        deleting = await client.delete("/voicelink/call-routing/5001")
    assert error_of(listing)[:2] == (404, "NOT_FOUND") and error_of(deleting)[:2] == (404, "NOT_FOUND")
    assert sandbox.state_snapshot()["request_counts"] == {"DELETE /{unknown}": 1, "GET /{unknown}": 1}


# --- auth and connections ---------------------------------------------------------------------------

WRONG_KEY = "rg_live_not_the_sandbox_key_42"


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": f"Bearer {WRONG_KEY}"},
        {"Authorization": f"Basic {WRONG_KEY}"},
        {"Authorization": "Bearer"},
    ],
)
@pytest.mark.parametrize("way", WAYS)
async def test_sandbox_rejects_a_missing_or_wrong_key_without_echoing_it(
    headers: dict[str, str], way: str
) -> None:
    async with api(SandboxConfig(), way) as (client, sandbox):
        client.headers.clear()
        response = await client.get("/voicelink/bots", params={"api_key": SANDBOX_API_KEY}, headers=headers)
    assert error_of(response)[:2] == (401, "UNAUTHORIZED")
    assert WRONG_KEY not in response.text and SANDBOX_API_KEY not in response.text
    assert SANDBOX_API_KEY not in json.dumps(sandbox.state_snapshot()) and SANDBOX_API_KEY not in repr(
        sandbox.config
    )


@pytest.mark.parametrize(
    ("params", "status", "field"),
    [
        ({}, 400, "connection_id"),
        ({"connection_id": PRIMARY}, 200, ""),
        ({"connectionId": SECONDARY}, 200, ""),
        ({"connection_id": "00000000-0000-0000-0000-000000000000"}, 404, ""),
        ({"connection_id": PRIMARY, "connectionId": SECONDARY}, 400, "connectionId"),
    ],
)
async def test_sandbox_two_connections_need_a_connection_id(
    params: dict[str, str], status: int, field: str
) -> None:
    async with api(SandboxConfig(two_connections=True)) as (client, _):
        response = await client.get("/voicelink/dids/purchased", params=params)
        listed = (await client.get("/telephony/connections", params={"provider": "voicelink"})).json()["data"]
    assert response.status_code == status
    assert field in (response.json().get("error") or {}).get("message", "")
    assert [c["id"] for c in listed] == [PRIMARY, SECONDARY]


async def test_sandbox_connection_id_in_bodies_scopes_dids() -> None:
    async with api(SandboxConfig(two_connections=True)) as (client, sandbox):
        wrong = await client.post("/voicelink/call-routing", json=create_body(815, connection_id=SECONDARY))
        right = await client.post("/voicelink/call-routing", json=create_body(815, connectionId=PRIMARY))
        secondary = (await client.post("/voicelink/sync", json={"connection_id": SECONDARY})).json()["data"]
        unknown = await client.get("/voicelink/bots", params={"connection_id": SECONDARY[::-1]})
    assert error_of(wrong)[:2] == (404, "NOT_FOUND") and right.status_code == 200
    assert secondary["dids"] == [] and secondary["routing"] == []
    assert error_of(unknown)[:2] == (404, "NOT_FOUND")
    assert routing_of(sandbox, 815) is not None


async def test_sandbox_one_connection_rejects_the_inactive_second() -> None:
    async with api(SandboxConfig()) as (client, _):
        response = await client.get("/voicelink/dids/purchased", params={"connection_id": SECONDARY})
    assert error_of(response)[:2] == (404, "NOT_FOUND")


# --- rate limit -------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("retry_after", [True, False])
async def test_sandbox_rate_limit_is_a_sliding_window_per_key(retry_after: bool) -> None:
    clock = FakeClock()
    sandbox = Sandbox(SandboxConfig(requests_per_minute=5, retry_after=retry_after), clock=clock)
    transport = httpx.ASGITransport(app=sandbox.app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://sandbox/api/v2", headers=AUTH
    ) as client:
        for _ in range(3):  # bad keys do not count
            await client.get("/voicelink/bots", headers={"Authorization": "Bearer nope"})
        statuses = []
        for i in range(5):
            clock.now = 1000.0 + i
            statuses.append((await client.get("/voicelink/bots")).status_code)
        limited = await client.post("/voicelink/call-routing", json=create_body(815))
        clock.now = 1059.5
        still = await client.get("/voicelink/bots")
        clock.now = 1060.0
        freed = await client.get("/voicelink/bots")
    assert statuses == [200] * 5
    assert error_of(limited)[:2] == (429, "LIMIT_REACHED")
    assert limited.headers.get("Retry-After") == ("56" if retry_after else None)
    assert still.status_code == 429 and still.headers.get("Retry-After") == ("1" if retry_after else None)
    assert freed.status_code == 200
    state = sandbox.state_snapshot()
    assert state["rate_limited"] == 2 and state["routing"][-1]["id"] == 5004
    assert state["create_attempts"] == {"815": 1}


@pytest.mark.parametrize("retry_after", [True, False])
async def test_sandbox_rate_limit_over_tcp(retry_after: bool) -> None:
    async with api(SandboxConfig(requests_per_minute=5, retry_after=retry_after), "tcp") as (client, sandbox):
        responses = [await client.get("/voicelink/dids/purchased") for _ in range(6)]
    assert [r.status_code for r in responses] == [200] * 5 + [429]
    header = responses[-1].headers.get("Retry-After")
    assert (header is not None and 59 <= int(header) <= 60) if retry_after else header is None
    assert sandbox.state_snapshot()["rate_limited"] == 1


# --- faults -------------------------------------------------------------------------------------------


async def _create_many(config: SandboxConfig, dids: list[int], way: str = "asgi") -> dict[str, Any]:
    """Send one create per DID concurrently; return the final state."""
    async with api(config, way) as (client, sandbox):

        async def one(did: int) -> None:
            with contextlib.suppress(httpx.TransportError):
                await client.post("/voicelink/call-routing", json=create_body(did))

        await asyncio.gather(*(one(d) for d in dids))
        return sandbox.state_snapshot()


def _fault_set(state: dict[str, Any]) -> set[tuple[str, str]]:
    return {(f["kind"], f["key"]) for f in state["faults"]}


async def test_sandbox_faults_are_deterministic_for_a_seed() -> None:
    config = SandboxConfig(fail_rate=0.3, ambiguous_rate=0.5, seed=7)
    first = await _create_many(config, FREE_DIDS)
    reordered = await _create_many(config, FREE_DIDS[::-1])
    other_seed = await _create_many(SandboxConfig(fail_rate=0.3, ambiguous_rate=0.3, seed=8), FREE_DIDS)
    assert _fault_set(first) == _fault_set(reordered)
    assert {f["kind"] for f in first["faults"]} >= {"fail", "ambiguous_500", "ambiguous_drop"}
    assert _fault_set(first) != _fault_set(other_seed)
    # fail faults apply nothing; ambiguous ones apply the write
    failed = {k for kind, k in _fault_set(first) if kind == "fail"}
    ambiguous = {k for kind, k in _fault_set(first) if kind.startswith("ambiguous")}
    applied = {f"did_id={r['did_id']}" for r in first["routing"]}
    assert not failed & applied and ambiguous <= applied
    assert sum(first["create_attempts"].values()) == len(FREE_DIDS)


async def test_sandbox_fail_fault_answers_5xx_without_applying() -> None:
    async with api(SandboxConfig(fail_rate=1.0)) as (client, sandbox):
        responses = [await client.post("/voicelink/call-routing", json=create_body(d)) for d in FREE_DIDS[:8]]
        read = await client.get("/voicelink/bots")
    assert {r.status_code for r in responses} <= {500, 503} and read.status_code >= 500
    assert all(error_of(r)[1] == "INTERNAL_ERROR" for r in responses)
    state = sandbox.state_snapshot()
    assert state["writes"] == [] and len(state["faults"]) == 9
    assert state["create_attempts"] == {str(d): 1 for d in FREE_DIDS[:8]}


async def test_sandbox_ambiguous_drop_in_process_raises_remote_protocol_error() -> None:
    async with api(SandboxConfig(ambiguous_rate=1.0)) as (client, sandbox):
        outcomes: dict[int, str] = {}
        for did in FREE_DIDS[:8]:
            try:
                outcomes[did] = str(
                    (await client.post("/voicelink/call-routing", json=create_body(did))).status_code
                )
            except httpx.RemoteProtocolError as exc:
                assert isinstance(exc, SandboxConnectionDropped)
                outcomes[did] = "dropped"
    assert set(outcomes.values()) == {"500", "dropped"}
    assert {r["did_id"] for r in sandbox.state_snapshot()["routing"]} >= set(FREE_DIDS[:8])


async def test_sandbox_ambiguous_faults_over_tcp_apply_then_lose_the_answer(
    capfd: pytest.CaptureFixture[str],
) -> None:
    config = SandboxConfig(ambiguous_rate=1.0)
    async with api(config, "tcp") as (client, sandbox):
        seen: dict[str, int] = {}
        for did in FREE_DIDS[:8]:
            try:
                response = await client.post("/voicelink/call-routing", json=create_body(did))
                assert error_of(response)[:2] == (500, "INTERNAL_ERROR")
                seen["500"] = seen.get("500", 0) + 1
            except httpx.RemoteProtocolError:
                seen["dropped"] = seen.get("dropped", 0) + 1
        # A read after a drop works on a fresh connection; reads are never ambiguous.
        sync = await client.post("/voicelink/sync", json={"import_dids": False})
        state = sandbox.state_snapshot()
    assert set(seen) == {"500", "dropped"}
    assert sync.status_code == 200 and len(sync.json()["data"]["routing"]) == 12
    assert state["writes_applied"] == {str(d): 1 for d in FREE_DIDS[:8]}
    assert state["status_counts"]["dropped"] == seen["dropped"]
    assert "Traceback" not in capfd.readouterr().err  # deliberate drops are not logged as crashes


async def test_sandbox_hang_over_tcp_applies_then_times_the_client_out() -> None:
    # A hang of ten minutes: only shutting down can end it within the bound below.
    config = SandboxConfig(hang_rate=1.0, hang_seconds=600.0)
    started = time.monotonic()
    async with api(config, "tcp") as (client, sandbox):
        with pytest.raises(httpx.ReadTimeout):
            await client.post("/voicelink/call-routing", json=create_body(815), timeout=0.5)
        # Other requests are served while one hangs: the state endpoint has no faults.
        state = (await client.get(client.base_url.copy_with(path="/_sandbox/state"))).json()
    assert time.monotonic() - started < 120, "shutting down did not cut the hang short"
    assert routing_of(sandbox, 815) is not None
    assert [f["kind"] for f in state["faults"]] == ["hang"]


async def test_sandbox_hang_in_process_delays_the_answer() -> None:
    async with api(SandboxConfig(hang_rate=1.0, hang_seconds=0.3)) as (client, _):
        started = time.monotonic()
        response = await client.get("/voicelink/bots")
    assert response.status_code == 200 and time.monotonic() - started >= 0.3


async def test_sandbox_latency_and_spikes_delay_requests() -> None:
    async with api(SandboxConfig(latency_ms=100, spike_rate=1.0, spike_ms=150)) as (client, sandbox):
        started = time.monotonic()
        await client.get("/voicelink/bots")
        elapsed = time.monotonic() - started
    assert elapsed >= 0.25
    assert [f["kind"] for f in sandbox.state_snapshot()["faults"]] == ["latency_spike"]


@pytest.mark.parametrize("retry_after", [True, False])
async def test_sandbox_burst_answers_consecutive_429s(retry_after: bool) -> None:
    config = SandboxConfig(burst_rate=0.1, burst_length=4, seed=3, retry_after=retry_after)
    async with api(config) as (client, sandbox):
        responses = [await client.get("/voicelink/bots") for _ in range(40)]
    codes = [r.status_code for r in responses]
    start = codes.index(429)
    assert codes[start : start + 4] == [429] * 4
    assert responses[start].headers.get("Retry-After") == ("1" if retry_after else None)
    kinds = [f["kind"] for f in sandbox.state_snapshot()["faults"]]
    assert kinds.count("burst_429") == codes.count(429) == sandbox.state_snapshot()["rate_limited"]


async def test_sandbox_faults_never_touch_the_state_endpoint() -> None:
    # Ten minutes of latency: an answer within the bound below had none of it.
    config = SandboxConfig(fail_rate=1.0, latency_ms=600_000)
    async with api(config) as (client, sandbox):
        started = time.monotonic()
        response = await client.get("http://sandbox/_sandbox/state")
    assert response.status_code == 200
    assert time.monotonic() - started < 120, "the state endpoint waited out the latency"
    assert sandbox.state_snapshot()["faults"] == [] and sandbox.state_snapshot()["request_counts"] == {}


# --- state, inventory, serving ------------------------------------------------------------------------


async def test_sandbox_state_over_http_equals_in_process_state() -> None:
    async with api(SandboxConfig(fail_rate=0.2, seed=1), "tcp") as (client, sandbox):
        for did in FREE_DIDS[:5]:
            await client.post("/voicelink/call-routing", json=create_body(did))
        await client.get("/voicelink/dids/purchased")
        over_http = (await client.get(client.base_url.copy_with(path="/_sandbox/state"))).json()
        assert over_http == sandbox.state_snapshot()
    assert over_http["request_counts"]["POST /voicelink/call-routing"] == 5


def test_sandbox_loads_an_inventory_file(tmp_path: Path) -> None:
    inventory = {
        "connections": [
            {"connection_id": "c1", "id": "c1", "name": "Only", "status": "ACTIVE", "is_default": True}
        ],
        "dids": [{"id": 7, "did_id": 7, "did_number": "4930123456", "client_id": 1, "status": "active"}],
        "bots": [],
        "routing": [
            {
                "id": 70,
                "did_id": 7,
                "for_inbound_call": 2,
                "inbound_sip_trunk_id": 5,
                "for_outbound_call": 4,
                "status": 1,
            }
        ],
    }
    path = tmp_path / "inventory.json"
    path.write_text(json.dumps(inventory), encoding="utf-8")
    state = create_sandbox(SandboxConfig(inventory=path)).state_snapshot()
    assert [d["did_number"] for d in state["dids"]] == ["4930123456"]
    assert state["routing"][0]["inbound_sip_trunk_id"] == 5 and state["options"]["inventory"] == str(path)


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        '{"connections": [], "dids": [], "bots": [], "routing": []}',
        '{"connections": [{"connection_id": "c", "name": "n"}], "dids": [], "bots": [], '
        '"routing": [{"id": 1, "did_id": 9, "for_inbound_call": 1, "for_outbound_call": 4}]}',
    ],
)
def test_sandbox_rejects_a_bad_inventory_file(tmp_path: Path, text: str) -> None:
    path = tmp_path / "inventory.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(InputError, match="inventory"):
        create_sandbox(SandboxConfig(inventory=path))


@pytest.mark.parametrize("options", [{"fail_rate": 1.5}, {"requests_per_minute": 0}, {"api_key": ""}])
def test_sandbox_config_rejects_bad_options(options: dict[str, Any]) -> None:
    with pytest.raises(InputError):
        SandboxConfig(**options)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str, Path]]:
    """Run serve() in a child process on a free port; yield it, its base URL and its state_out path."""
    state_out = tmp_path / "state.json"
    code = (
        "import sys; from pathlib import Path; from importer.sandbox import SandboxConfig, serve; "
        "serve(SandboxConfig(), port=0, state_out=Path(sys.argv[1]), on_ready=lambda u: print(u, flush=True))"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(state_out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        yield proc, proc.stdout.readline().strip(), state_out
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serve_stops_cleanly_on_a_signal_and_writes_state(
    served: tuple[subprocess.Popen[str], str, Path], sig: signal.Signals
) -> None:
    proc, url, state_out = served
    assert url.startswith("http://127.0.0.1:") and url.endswith("/api/v2")
    with httpx.Client(base_url=url, headers=AUTH) as client:
        assert client.post("/voicelink/call-routing", json=create_body(815)).status_code == 200
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=10)
    assert proc.returncode == 0, stderr
    state = json.loads(state_out.read_text(encoding="utf-8"))
    assert state["writes_applied"] == {"815": 1}
    assert SANDBOX_API_KEY not in state_out.read_text(encoding="utf-8") and SANDBOX_API_KEY not in stderr
