"""Live state in a few reads: counted with the sandbox's request counters, and odd sync shapes."""

from __future__ import annotations

import asyncio
import io
import json
import random
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from types import MappingProxyType
from typing import Any

import httpx
import openpyxl
import pytest
from helpers import desired_record, did_number, read_results, write_inventory, write_sheet

from importer.account import inventory as inventory_module
from importer.account.client import VoiceLinkClient
from importer.account.inventory import (
    DidIndex,
    Inventory,
    LiveRouting,
    ReadReport,
    collect_created_ids,
    read_state,
)
from importer.account.limiter import RateLimiter
from importer.account.preflight import preflight
from importer.account.records import Did, decode_did, number_key
from importer.account.retry import SETTLE_ATTEMPTS
from importer.cli.progress import reading
from importer.errors import ApiError, UnreadableFileError
from importer.jobs.rollback import rollback_run
from importer.jobs.run import run_import
from importer.model import RoutingRow, RowOutcome, Status
from importer.options import ImportConfig, InputOptions, RollbackConfig
from importer.sandbox import SANDBOX_API_KEY, Sandbox, SandboxConfig, create_sandbox
from importer.sandbox.server import running_sandbox

BASE = "http://sandbox.test/api/v2"
DIDS = "GET /voicelink/dids/purchased"
BOTS = "GET /voicelink/bots"
SYNC = "POST /voicelink/sync"
CONNECTIONS = "GET /telephony/connections"


def _client(transport: httpx.AsyncBaseTransport) -> VoiceLinkClient:
    return VoiceLinkClient(
        BASE, SANDBOX_API_KEY, limiter=RateLimiter(100_000), transport=transport, backoff=0
    )


def _row(i: int, *, by: str = "number") -> RoutingRow:
    r = desired_record(i)
    return RoutingRow(
        row=i + 2,
        did_id=1000 + i if by in ("id", "both") else None,
        did_number=did_number(i) if by in ("number", "both") else None,
        for_inbound_call=r["for_inbound_call"],
        for_outbound_call=r["for_outbound_call"],
        inbound_websocket_bot_id=r.get("inbound_websocket_bot_id"),
        inbound_sip_trunk_id=r.get("inbound_sip_trunk_id"),
        outbound_websocket_bot_id=r.get("outbound_websocket_bot_id"),
        outbound_sip_trunk_id=r.get("outbound_sip_trunk_id"),
        status=r["status"],
    )


def _state(
    transport: httpx.AsyncBaseTransport, rows: list[RoutingRow], log: list[str] | None = None
) -> tuple[Inventory, ReadReport]:
    async def main() -> tuple[Inventory, ReadReport]:
        async with _client(transport) as client:
            await preflight(client)
            inventory = await read_state(client, rows, on_read=None if log is None else log.append)
            return inventory, inventory.reads

    return asyncio.run(main())


def _sandbox(tmp_path: Path, dids: int, routed: range = range(0), **kw: Any) -> Sandbox:
    inv = write_inventory(tmp_path / "inv.json", dids, existing={i: desired_record(i + 1) for i in routed})
    return create_sandbox(SandboxConfig(inventory=inv, requests_per_minute=100_000, **kw))


def _counts(sandbox: Sandbox) -> dict[str, int]:
    return dict(sandbox.state_snapshot()["request_counts"])


class _Queries(httpx.AsyncBaseTransport):
    """Forward to the sandbox, noting each request's query and optionally editing sync answers."""

    def __init__(self, sandbox: Sandbox, edit_sync: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.inner = httpx.ASGITransport(app=sandbox.app)
        self.edit_sync = edit_sync
        self.searches: list[str] = []
        self.pages: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        params = request.url.params
        if request.url.path.endswith("/dids/purchased"):
            if "search" in params:
                self.searches.append(params["search"])
            else:
                self.pages.append(params["page"])
        response = await self.inner.handle_async_request(request)
        if self.edit_sync is None or not request.url.path.endswith("/voicelink/sync"):
            return response
        payload = json.loads(await response.aread())
        self.edit_sync(payload["data"])
        return httpx.Response(response.status_code, json=payload)


def _config(path: Path, tmp: Path, **kw: Any) -> ImportConfig:
    options: dict[str, Any] = {
        "input": InputOptions(path=path),
        "api_key": SANDBOX_API_KEY,
        "base_url": BASE,
        "output": tmp / "out.results.xlsx",
        "journal": tmp / "run.journal.sqlite",
        "requests_per_minute": 100_000,
        "retry_backoff": 0,
    }
    return ImportConfig(**{**options, **kw})


# -- whole runs, counted by the sandbox ------------------------------------------------------


def test_run_full_sync_reads_connections_and_two_syncs(tmp_path: Path) -> None:
    """500 DIDs (5 pages), 20 rows, half routed: no DID page, no bots read, no lookup."""
    sandbox = _sandbox(tmp_path, 500, routed=range(10))
    sheet = write_sheet(tmp_path / "sheet.csv", 20)
    summary = run_import(_config(sheet, tmp_path), transport=httpx.ASGITransport(app=sandbox.app))
    assert summary.counts == {Status.SUCCEEDED: 20}
    counts = _counts(sandbox)
    assert {k: n for k, n in counts.items() if not k.startswith("POST /voicelink/call-routing")} == {
        CONNECTIONS: 1,
        SYNC: 2,
    }
    assert all(r["import_routing_id"] for r in read_results(summary.results_path))


def test_run_with_nothing_created_never_syncs_again(tmp_path: Path) -> None:
    """Every row already as asked: connections and one sync, nothing else at all."""
    inv = write_inventory(tmp_path / "inv.json", 300, existing={i: desired_record(i) for i in range(12)})
    sandbox = create_sandbox(SandboxConfig(inventory=inv, requests_per_minute=100_000))
    sheet = write_sheet(tmp_path / "sheet.csv", 12)
    summary = run_import(_config(sheet, tmp_path), transport=httpx.ASGITransport(app=sandbox.app))
    assert summary.counts == {Status.UNCHANGED: 12}
    assert _counts(sandbox) == {CONNECTIONS: 1, SYNC: 1}


def test_run_lean_sync_looks_up_the_few_unrouted_numbers(tmp_path: Path) -> None:
    """Lean sync, 300 of 500 DIDs routed (>= 3 pages): 2 unrouted rows cost 2 searches + bots."""
    sandbox = _sandbox(tmp_path, 500, routed=range(2, 302), lean_sync=True)
    sheet = write_sheet(tmp_path / "sheet.csv", 6)
    summary = run_import(_config(sheet, tmp_path), transport=httpx.ASGITransport(app=sandbox.app))
    assert summary.counts == {Status.SUCCEEDED: 6}
    counts = _counts(sandbox)
    assert counts[DIDS] == 2 and counts[BOTS] == 1 and counts[SYNC] == 2 and counts[CONNECTIONS] == 1
    reads = sum(n for k, n in counts.items() if not k.startswith("POST /voicelink/call-routing"))
    assert reads <= min(2, 5) + 4
    book = openpyxl.load_workbook(summary.results_path, read_only=True)
    facts = {row[0]: row[1] for row in book["Summary"].iter_rows(values_only=True)}
    book.close()
    assert facts["reads"] == "1 sync, 2 DID lookups, 1 bots read"


def test_run_plan_shows_the_cost(tmp_path: Path) -> None:
    sandbox = _sandbox(tmp_path, 50)
    sheet = write_sheet(tmp_path / "sheet.csv", 10)
    summary = run_import(
        _config(sheet, tmp_path, dry_run=True, requests_per_minute=60),
        transport=httpx.ASGITransport(app=sandbox.app),
    )
    assert "(2 reads done; 10 writes, about 10 s at 60/min)" in summary.notes[0]


def test_run_and_rollback_say_what_they_read_through_on_read(tmp_path: Path) -> None:
    """Lean sync, nothing routed: the bots, then the list's one page (cheaper than 3 lookups)."""
    sandbox = _sandbox(tmp_path, 30, lean_sync=True)
    sheet = write_sheet(tmp_path / "sheet.csv", 3)
    said: list[str] = []
    transport = httpx.ASGITransport(app=sandbox.app)
    summary = run_import(_config(sheet, tmp_path, on_read=said.append), transport=transport)
    assert summary.counts == {Status.SUCCEEDED: 3}
    assert said == ["sync", "bots", "DIDs: page 1"]
    said.clear()
    undone = rollback_run(
        RollbackConfig(
            source=summary.results_path,
            api_key=SANDBOX_API_KEY,
            base_url=BASE,
            requests_per_minute=100_000,
            retry_backoff=0,
            on_read=said.append,
        ),
        transport=transport,
    )
    assert undone.counts == {Status.SUCCEEDED: 2, Status.UNCHANGED: 1}  # row 4 was created inactive
    assert said == ["sync"]  # the DIDs it created routing for are in routing[]: nothing else read


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_cli_reading_lines_on_a_terminal_and_one_a_minute_elsewhere() -> None:
    steps = ["sync", "DIDs: page 1 of 90", "DIDs: page 45 of 90", "DIDs: page 90 of 90"]
    terminal = _Terminal()
    say = reading(False, stream=terminal)
    assert say is not None
    for text in steps:
        say(text)
    assert terminal.getvalue().splitlines() == [f"reading: {t}" for t in steps]
    log, now = io.StringIO(), [0.0]
    say = reading(False, stream=log, clock=lambda: now[0])
    assert say is not None
    for t, text in zip([0, 30, 61, 90], steps, strict=True):
        now[0] = t
        say(text)
    assert log.getvalue() == "reading: DIDs: page 45 of 90\n"
    assert reading(True, stream=terminal) is None


# -- read_state strategies -----------------------------------------------------------------


def test_read_state_lean_without_routing_pages_when_many_are_missing(tmp_path: Path) -> None:
    """No routing to bound the page count: read page 1, learn 5 pages, page since 30 rows >= 4."""
    sandbox = _sandbox(tmp_path, 500, lean_sync=True)
    transport = _Queries(sandbox)
    rows = [_row(i) for i in range(0, 500, 17)]
    log: list[str] = []
    inventory, report = _state(transport, rows, log)
    assert all(inventory.dids_by_number.get(r.did_number or "") for r in rows)
    assert transport.searches == [] and transport.pages == ["1", "2", "3", "4", "5"]
    assert report == ReadReport(syncs=1, did_pages=5, bot_reads=1, unresolved=30, did_list_pages=5)
    assert log[:3] == ["sync", "bots", "DIDs: page 1"]
    assert "DIDs: page 5 of 5" in log


def test_read_state_lean_without_routing_searches_when_few_are_missing(tmp_path: Path) -> None:
    """Page 1 says 5 pages; 2 numbers beyond it cost 2 searches, not 4 more pages."""
    sandbox = _sandbox(tmp_path, 500, lean_sync=True)
    transport = _Queries(sandbox)
    rows = [_row(250), _row(450), _row(3)]
    inventory, report = _state(transport, rows)
    assert transport.pages == ["1"]
    assert sorted(transport.searches) == [did_number(250), did_number(450)]
    assert inventory.dids_by_number[did_number(450)].did_id == 1450
    assert report.did_lookups == 2 and report.did_pages == 1 and report.did_list_pages == 5


def test_read_state_stops_paging_once_every_row_is_found(tmp_path: Path) -> None:
    sandbox = _sandbox(tmp_path, 500, lean_sync=True)
    transport = _Queries(sandbox)
    rows = [_row(i) for i in range(0, 200, 5)]  # all on pages 1 and 2
    _inventory, report = _state(transport, rows)
    assert transport.pages == ["1", "2"] and transport.searches == []
    assert report.did_pages == 2


def test_read_state_full_sync_searches_a_number_sync_did_not_list(tmp_path: Path) -> None:
    """A DID missing from sync's dids[] (but on the account) is found with one search."""
    sandbox = _sandbox(tmp_path, 500)

    def drop(data: dict[str, Any]) -> None:
        data["dids"] = [d for d in data["dids"] if str(d["did_number"]) != did_number(7)]

    transport = _Queries(sandbox, edit_sync=drop)
    inventory, report = _state(transport, [_row(1), _row(7)])
    assert transport.searches == [did_number(7)] and transport.pages == []
    assert inventory.dids_by_number[did_number(7)].did_id == 1007
    assert report == ReadReport(syncs=1, did_lookups=1, unresolved=1)


def test_run_row_whose_did_is_not_on_the_account_costs_one_search(tmp_path: Path) -> None:
    sandbox = _sandbox(tmp_path, 400)
    sheet = write_sheet(tmp_path / "sheet.csv", 3)
    text = sheet.read_text(encoding="utf-8").replace(did_number(2), "918099999999")
    sheet.write_text(text, encoding="utf-8")
    summary = run_import(_config(sheet, tmp_path), transport=httpx.ASGITransport(app=sandbox.app))
    assert summary.counts == {Status.SUCCEEDED: 2, Status.FAILED: 1}
    assert _counts(sandbox)[DIDS] == 1
    failed = [r for r in read_results(summary.results_path) if r["import_status"] == "failed"]
    assert "918099999999 is not in this account's purchased DIDs" in failed[0]["import_reason"]


def test_read_state_full_sync_and_a_total_prove_unknown_numbers_absent_in_one_page(tmp_path: Path) -> None:
    """Sync named every DID and page 1 says the list holds that many: the 60 numbers none of them
    has are not the account's, with no other page and no search (all 10 pages were read)."""
    sandbox = _sandbox(tmp_path, 1000)
    transport = _Queries(sandbox)
    rows = [_row(5000 + k) for k in range(60)] + [_row(k) for k in range(0, 1000, 50)]
    inventory, report = _state(transport, rows)
    assert transport.pages == ["1"] and transport.searches == []
    assert report == ReadReport(syncs=1, did_pages=1, unresolved=60, did_list_pages=10)
    assert len(inventory.dids_by_id) == 1000
    assert not any(did_number(5000 + k) in inventory.dids_by_number for k in range(60))


def test_read_state_full_sync_settles_a_few_unknown_numbers_with_one_page_not_a_search_each(
    tmp_path: Path,
) -> None:
    """5 numbers sync did not name, against 10 pages: page 1's total proves all 5 absent in one
    read (it was 5 searches: a second each at the API's rate)."""
    sandbox = _sandbox(tmp_path, 1000)
    transport = _Queries(sandbox)
    _inventory, report = _state(transport, [_row(5000 + k) for k in range(5)] + [_row(3)])
    assert transport.pages == ["1"] and transport.searches == []
    assert report == ReadReport(syncs=1, did_pages=1, unresolved=5, did_list_pages=10)


def test_read_state_full_sync_searches_when_page_1_cannot_prove_absence(tmp_path: Path) -> None:
    """Sync left out 3 DIDs of the account: page 1 (its total) cannot settle them, so each is
    searched, one read more than searching at once."""
    sandbox = _sandbox(tmp_path, 1000)
    gone = {did_number(k) for k in (300, 500, 700)}

    def drop(data: dict[str, Any]) -> None:
        data["dids"] = [d for d in data["dids"] if str(d["did_number"]) not in gone]

    transport = _Queries(sandbox, edit_sync=drop)
    inventory, report = _state(transport, [_row(300), _row(500), _row(700)])
    assert transport.pages == ["1"] and sorted(transport.searches) == sorted(gone)
    assert all(number in inventory.dids_by_number for number in gone)
    assert report.did_pages == 1 and report.did_lookups == 3


def test_read_state_pages_on_when_sync_missed_a_did_until_the_total_is_reached(tmp_path: Path) -> None:
    """Sync left out DID 750 (page 8): 999 known of 1,000 proves nothing, so pages are read until
    page 8 brings it; then every DID is known and pages 9 and 10 are not read."""
    sandbox = _sandbox(tmp_path, 1000)

    def drop(data: dict[str, Any]) -> None:
        data["dids"] = [d for d in data["dids"] if str(d["did_number"]) != did_number(750)]

    transport = _Queries(sandbox, edit_sync=drop)
    rows = [_row(5000 + k) for k in range(60)]
    inventory, report = _state(transport, rows)
    assert transport.pages == [str(p) for p in range(1, 9)] and transport.searches == []
    assert report.did_pages == 8 and len(inventory.dids_by_id) == 1000


def test_read_state_pages_every_page_when_the_list_reports_no_total(tmp_path: Path) -> None:
    """Without ``total`` (the reference does not promise it) a complete sync cannot be proved: the
    pages are read to the end, as before (an empty page 11 tells where it is)."""
    sandbox = _sandbox(tmp_path, 1000)
    inner = httpx.ASGITransport(app=sandbox.app)
    pages: list[str] = []

    class NoTotal(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            response = await inner.handle_async_request(request)
            if not request.url.path.endswith("/dids/purchased"):
                return response
            pages.append(request.url.params["page"])
            payload = json.loads(await response.aread())
            del payload["data"]["total"], payload["data"]["last_page"]
            return httpx.Response(response.status_code, json=payload)

    _inventory, report = _state(NoTotal(), [_row(5000 + k) for k in range(60)])
    assert pages == [str(p) for p in range(1, 12)] and report.did_pages == 11


def test_run_dry_run_of_many_unknown_numbers_reads_one_page_after_a_complete_sync(tmp_path: Path) -> None:
    """A dry run whose file names 40 numbers the account lacks, counted by the sandbox: the
    connections, one sync and one page of DIDs (all 10 pages before), and each unknown row fails."""
    sandbox = _sandbox(tmp_path, 1000)
    sheet = write_sheet(tmp_path / "sheet.csv", 60)
    text = sheet.read_text(encoding="utf-8")
    for k in range(40):
        text = text.replace("+" + did_number(k) + ",", "+" + did_number(5000 + k) + ",")
    sheet.write_text(text, encoding="utf-8")
    config = _config(sheet, tmp_path, dry_run=True)
    summary = run_import(config, transport=httpx.ASGITransport(app=sandbox.app))
    assert _counts(sandbox) == {CONNECTIONS: 1, SYNC: 1, DIDS: 1}
    assert summary.counts[Status.FAILED] == 40
    failed = [r for r in read_results(summary.results_path) if r["import_status"] == "failed"]
    assert len(failed) == 40
    assert all("is not in this account's purchased DIDs" in r["import_reason"] for r in failed)


def test_read_state_id_only_rows_page_since_ids_cannot_be_searched(tmp_path: Path) -> None:
    sandbox = _sandbox(tmp_path, 300, lean_sync=True)
    transport = _Queries(sandbox)
    inventory, report = _state(transport, [_row(250, by="id")])
    assert transport.searches == [] and transport.pages == ["1", "2", "3"]
    assert 1250 in inventory.dids_by_id and report.did_pages == 3


def test_read_state_falls_back_to_paging_when_search_is_ignored(tmp_path: Path) -> None:
    """A server that ignores ``search`` answers page 1 of everything: that proves nothing, so page."""
    sandbox = _sandbox(tmp_path, 300, routed=range(200), lean_sync=True)
    inner = httpx.ASGITransport(app=sandbox.app)

    class IgnoreSearch(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            url = request.url.copy_remove_param("search")
            return await inner.handle_async_request(
                httpx.Request(request.method, url, headers=request.headers)
            )

    inventory, report = _state(IgnoreSearch(), [_row(250)])
    assert inventory.dids_by_number[did_number(250)].did_id == 1250
    assert report.did_lookups == 1 and report.did_pages == 3


# -- parsing sync defensively ----------------------------------------------------------------


def _mock(sync_data: object) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/telephony/connections"):
            return httpx.Response(
                200, json={"success": True, "data": [{"id": "c1", "name": "c", "status": "ACTIVE"}]}
            )
        if request.url.path.endswith("/voicelink/sync"):
            return httpx.Response(200, json={"success": True, "data": sync_data})
        return httpx.Response(404, json={"success": False, "error": {"code": "NOT_FOUND", "message": "no"}})

    return httpx.MockTransport(handler)


def _sync(sync_data: object) -> tuple[Any, list[str]]:
    async def main() -> tuple[Any, list[str]]:
        async with _client(_mock(sync_data)) as client:
            return await client.read_sync(), client.warnings

    return asyncio.run(main())


def test_read_sync_parses_int_numbers_nested_lists_and_skips_bad_items() -> None:
    got, warnings = _sync(
        {
            "data": {
                "dids": {"data": [{"id": 5, "did_number": 918011223344}, {"did_id": "6", "raw": {}}]},
                "bots": {"data": {"data": [{"id": "93", "bot_name": "b", "status": "0"}, {"name": "x"}]}},
                "routing": [
                    {"id": 70, "did_id": 5, "for_inbound_call": 1, "for_outbound_call": 4, "status": 1},
                    {"did_id": 6},
                    "junk",
                ],
                "readiness": [],
            }
        }
    )
    assert [(d.did_id, d.did_number) for d in got.dids] == [(5, "918011223344")]
    assert [(b.bot_id, b.active) for b in got.bots] == [(93, False)]
    assert [(r.routing_id, r.did_id) for r in got.routing] == [(70, 5)]
    assert any("DID 6 without a number" in w for w in warnings)
    assert any("bot without a usable id" in w for w in warnings)
    assert any("routing record without a usable id" in w for w in warnings)


def test_read_sync_takes_the_did_from_raw_and_phone_number() -> None:
    got, _ = _sync(
        {"dids": [{"raw": {"did_id": 9, "phone_number": "+918011223355"}}], "routing": [], "bots": []}
    )
    assert [(d.did_id, d.did_number) for d in got.dids] == [(9, "918011223355")]


def test_read_sync_without_routing_is_an_error_not_an_empty_account() -> None:
    with pytest.raises(ApiError, match="neither routing"):
        _sync({"dids": [{"id": 1, "did_number": "1"}], "bots": []})


def test_find_dids_accepts_only_an_exact_match() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        items = [
            {"id": 1, "did_number": "9918011223344"},
            {"id": 2, "did_number": 918011223344},
            {"id": 3, "did_number": "+91 8011-223344"},
        ]
        return httpx.Response(200, json={"success": True, "data": {"data": items, "last_page": 1}})

    async def main() -> Any:
        async with _client(httpx.MockTransport(handler)) as client:
            return await client.find_dids("+918011223344")

    got = asyncio.run(main())
    assert [d.did_id for d in got.matches] == [2, 3] and got.conclusive


# -- after the writes: the closing sync ---------------------------------------------------


def test_collect_created_ids_reads_nothing_when_no_row_lacks_an_id(tmp_path: Path) -> None:
    sandbox = _sandbox(tmp_path, 5, routed=range(2))
    outcomes = {
        2: RowOutcome(row=2, status=Status.SUCCEEDED, did_id=1000, routing_id=7000),
        3: RowOutcome(row=3, status=Status.FAILED, did_id=1003),
    }

    async def main(outs: dict[int, RowOutcome]) -> dict[int, RowOutcome]:
        async with _client(httpx.ASGITransport(app=sandbox.app)) as client:
            return await collect_created_ids(client, outs)

    assert asyncio.run(main(outcomes)) == {}
    assert _counts(sandbox) == {}
    outcomes[4] = RowOutcome(row=4, status=Status.SUCCEEDED, did_id=1001)
    assert asyncio.run(main(outcomes)) == {
        4: RowOutcome(row=4, status=Status.SUCCEEDED, did_id=1001, routing_id=7001)
    }
    assert _counts(sandbox) == {SYNC: 1}


def test_live_routing_re_read_is_one_retry_loop_of_settle_attempts() -> None:
    """A re-read that keeps failing: SETTLE_ATTEMPTS tries in the client's one loop, then an error."""
    sent: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request.url.path)
        return httpx.Response(
            500, json={"success": False, "error": {"code": "INTERNAL_ERROR", "message": "down"}}
        )

    async def main() -> str:
        async with _client(httpx.MockTransport(handler)) as client:
            live = LiveRouting(client, Inventory({}, {}, {}, {}))
            with pytest.raises(ApiError) as caught:
                await live.fresh()
            return str(caught.value)

    message = asyncio.run(main())
    assert len(sent) == SETTLE_ATTEMPTS == 9
    assert all(path.endswith("/voicelink/sync") for path in sent)
    assert f"failed after {SETTLE_ATTEMPTS} attempt(s)" in message


class _CountedRow:
    """A row naming a DID, counting how often the reads look at its number."""

    looks = 0

    def __init__(self, number: str) -> None:
        self._number = number
        self.did_id: int | None = None

    @property
    def did_number(self) -> str | None:
        _CountedRow.looks += 1
        return self._number


def test_read_state_looks_at_each_row_once_however_many_pages(tmp_path: Path) -> None:
    """60 numbers the account lacks make it read all 10 pages (a lean sync names no DID, so nothing
    proves them absent sooner); each row is looked at once in all, not once per page (20,000 such
    rows against 1,000 pages took minutes), nor once per stage."""
    sandbox = _sandbox(tmp_path, 1000, lean_sync=True)
    transport = _Queries(sandbox)
    rows = [_CountedRow(did_number(5000 + k)) for k in range(60)]

    async def main() -> ReadReport:
        async with _client(transport) as client:
            await preflight(client)
            return (await read_state(client, rows)).reads

    _CountedRow.looks = 0
    report = asyncio.run(main())
    assert report.did_pages == 10 and transport.pages == [str(p) for p in range(1, 11)]
    assert _CountedRow.looks == len(rows)


class _CountedNumbers(dict[str, Did]):
    """The index's numbers, counting the checks of whether a number is among them."""

    checks = 0

    def __contains__(self, key: object) -> bool:
        _CountedNumbers.checks += 1
        return super().__contains__(key)


class _SpiedIndex(DidIndex):
    def __init__(self, dids: Iterable[Did] = ()) -> None:
        super().__init__()
        self.by_number = _CountedNumbers()
        self.add(dids)


def test_read_state_checks_each_missing_number_once_not_once_per_page(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The page loop strikes off what each page's DIDs resolve; it does not check every number
    still missing after every page (20,000 missing x 1,000 pages: 20 million checks). A lean sync,
    so that every page is read."""
    sandbox = _sandbox(tmp_path, 1000, lean_sync=True)
    transport = _Queries(sandbox)
    rows = [_row(5000 + k) for k in range(60)] + [_row(k) for k in range(0, 1000, 50)]
    monkeypatch.setattr(inventory_module, "DidIndex", _SpiedIndex)
    _CountedNumbers.checks = 0
    inventory, report = _state(transport, rows)
    assert report == ReadReport(syncs=1, did_pages=10, bot_reads=1, unresolved=80, did_list_pages=10)
    assert transport.pages == [str(p) for p in range(1, 11)] and transport.searches == []
    assert [inventory.dids_by_number[did_number(k)].did_id for k in range(0, 1000, 50)] == [
        1000 + k for k in range(0, 1000, 50)
    ]
    assert _CountedNumbers.checks <= len(rows)


def _number_key_before(text: str) -> str:
    """number_key as it was (a generator over the characters): the reference for the fast one."""
    return "".join(ch for ch in text if ch.isascii() and ch.isdigit())


@pytest.mark.parametrize(
    "text",
    [
        "",
        "918040000040",
        "+918040000040",
        "+91 80-4000 0040",
        "(480) 555.0123 ext 9",
        "00 44 20 7946 0958",
        "+٩١٨٠٤٠",  # Arabic-Indic digits are digits to str.isdigit, not to number_key
        "918²040",
        "１２３45",  # fullwidth digits
        "abc",
        " \t+1\n",
        "9" * 40,
    ],
)
def test_number_key_keeps_ascii_digits_as_before(text: str) -> None:
    assert number_key(text) == _number_key_before(text)


def test_number_key_matches_the_old_one_on_random_text() -> None:
    rng = random.Random(5)
    alphabet = "0123456789+-() .x٣²１\u00a0a"
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 16)))
        assert number_key(text) == _number_key_before(text)


def test_sandbox_sync_answer_is_what_it_was_item_by_item(tmp_path: Path) -> None:
    """Sync renders each DID's item once for dids[] and readiness[]: the answer is unchanged."""
    sandbox = _sandbox(tmp_path, 40, routed=range(0, 40, 3))
    transport = httpx.ASGITransport(app=sandbox.app)

    async def main() -> Any:
        async with httpx.AsyncClient(transport=transport, base_url=BASE + "/") as http:
            headers = {"Authorization": f"Bearer {SANDBOX_API_KEY}"}
            return (await http.post("voicelink/sync", json={}, headers=headers)).json()["data"]

    data = asyncio.run(main())
    account = sandbox._account  # the reference: every item rendered on its own, as before
    dids = list(account.dids.values())[:40]
    assert data["dids"] == [
        {**account.did_item(d, as_int=True), "phone_number": "+" + d.did_number, "is_expired": False}
        for d in dids
    ]
    assert data["readiness"] == [account.readiness(d) for d in dids]
    assert {r["state"] for r in data["readiness"]} >= {"ROUTING_MISSING", "READY"}


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ({"id": 5, "did_number": " 918011223344 "}, (5, "918011223344")),
        ({"id": 5, "did_number": 918011223344}, (5, "918011223344")),
        ({"id": 5, "did_number": 918011223344.0}, (5, "918011223344")),
        ({"id": 5, "did_number": True, "phone_number": "+918011"}, (5, "True")),
        ({"id": 5, "did_number": "", "phone_number": "+918011"}, (5, "918011")),
        ({"id": 5, "raw": MappingProxyType({"did_number": "91801"})}, (5, "91801")),
        ({"raw": {"did_id": "6", "did_number": "91802"}, "status": "x"}, (6, "91802")),
        ({"id": 5, "raw": ["not", "an", "object"], "did_number": "91803"}, (5, "91803")),
        ({"id": 5, "raw": None, "did_number": None}, None),
    ],
)
def test_decode_did_reads_each_shape_as_before(
    item: dict[str, Any], expected: tuple[int, str] | None
) -> None:
    did = decode_did(item, "here", [], need_number=True)
    assert (None if did is None else (did.did_id, did.did_number)) == expected


# -- the rows made while the sync answer is being built ------------------------------------


def _state_over_tcp(url: str, rows: Any) -> Inventory:
    async def main() -> Inventory:
        async with VoiceLinkClient(url, SANDBOX_API_KEY, limiter=RateLimiter(100_000), backoff=0) as client:
            await preflight(client)
            return await read_state(client, rows)

    return asyncio.run(main())


def test_read_state_makes_the_rows_once_the_sync_request_has_reached_the_api(tmp_path: Path) -> None:
    """Over loopback TCP the rows (a run checks its file's rows here) are made while the API has
    the sync request in hand, not before it is sent: the API builds its answer meanwhile. Made
    before the sync went out, the API could never count the request while they were made."""
    inv = write_inventory(tmp_path / "inventory.json", 200)
    rows = [_row(k) for k in range(0, 200, 10)] + [_row(5000)]
    seen: list[int] = []

    def make_rows() -> list[RoutingRow]:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # the server counts each request as it takes it
            seen[:] = [sandbox.state_snapshot()["request_counts"].get(SYNC, 0)]
            if seen[0]:
                break
            time.sleep(0.01)
        return rows

    config = SandboxConfig(inventory=inv, requests_per_minute=100_000)
    with running_sandbox(config) as (url, sandbox):
        inventory = _state_over_tcp(url, make_rows)
        counts = _counts(sandbox)
    assert seen == [1]
    assert counts[SYNC] == 1 and counts[CONNECTIONS] == 1
    assert inventory.dids_by_number.keys() >= {did_number(k) for k in range(0, 200, 10)}
    assert inventory.reads.unresolved == 1  # the rows reached the reads that follow the sync


def test_read_state_with_rows_to_make_in_process_reads_the_same_as_with_the_rows(tmp_path: Path) -> None:
    """In process (no trace from httpcore) the rows are made once the answer is in: same reads, same state."""
    rows = [_row(k) for k in range(0, 300, 7)] + [_row(9000 + k) for k in range(3)]
    made, given = _sandbox(tmp_path, 300), _sandbox(tmp_path, 300)
    inventory, report = _state(httpx.ASGITransport(app=made.app), lambda: rows)  # type: ignore[arg-type]
    expected, expected_report = _state(httpx.ASGITransport(app=given.app), rows)
    assert report == expected_report and _counts(made) == _counts(given)
    assert inventory.dids_by_number == expected.dids_by_number and inventory.routing == expected.routing


def test_read_state_passes_on_the_rows_error_and_abandons_the_sync(tmp_path: Path) -> None:
    """Making the rows fails (the file's rows cannot be checked): that error, the sync abandoned."""
    inv = write_inventory(tmp_path / "inventory.json", 50)

    def broken() -> list[RoutingRow]:
        raise UnreadableFileError("the file changed while it was read")

    with running_sandbox(SandboxConfig(inventory=inv, requests_per_minute=100_000)) as (url, sandbox):
        with pytest.raises(UnreadableFileError, match="changed while it was read"):
            _state_over_tcp(url, broken)
        counts = _counts(sandbox)
    assert counts.get(DIDS, 0) == 0 and counts.get(SYNC, 0) <= 1  # nothing read after it
