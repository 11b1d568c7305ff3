"""Shared test helpers: generated inventories and the sheets that match them."""

from __future__ import annotations

import asyncio
import csv
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import openpyxl

if TYPE_CHECKING:
    from importer.options import ImportConfig
    from importer.sandbox import Sandbox
    from importer.web.engine import Connection

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "sample_data"
CONNECTION = "3f6c2a9e-5b1d-4c8e-9a7f-1e2d3c4b5a60"
SECOND_CONNECTION = "8b0e4d2c-7a19-4f3b-b6c5-0d9e8f7a6b51"


def did_number(i: int) -> str:
    return f"9180{20000000 + i:08d}"


def write_inventory(path: Path, n: int, existing: dict[int, dict[str, int]] | None = None) -> Path:
    """An inventory of ``n`` DIDs (ids 1000+i), bots 93/94 active and 95 inactive."""
    data: dict[str, Any] = {
        "connections": [
            {
                "connection_id": CONNECTION,
                "id": CONNECTION,
                "name": "Primary",
                "status": "ACTIVE",
                "is_default": True,
            },
            {
                "connection_id": SECOND_CONNECTION,
                "id": SECOND_CONNECTION,
                "name": "Second",
                "status": "ACTIVE",
                "is_default": False,
            },
        ],
        "dids": [
            {
                "id": 1000 + i,
                "did_id": 1000 + i,
                "did_number": did_number(i),
                "client_id": 1,
                "status": "active",
            }
            for i in range(n)
        ],
        "bots": [
            {"id": 93, "bot_name": "Support", "client_id": 1, "websocket_url": "wss://b/1", "status": 1},
            {"id": 94, "bot_name": "Sales", "client_id": 1, "websocket_url": "wss://b/2", "status": 1},
            {"id": 95, "bot_name": "Retired", "client_id": 1, "websocket_url": "wss://b/3", "status": 0},
        ],
        "routing": [
            {"id": 7000 + i, "did_id": 1000 + i, **record} for i, record in sorted((existing or {}).items())
        ],
    }
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def desired_record(i: int) -> dict[str, int]:
    """The routing row ``i`` of a generated sheet asks for (the API's body form)."""
    kind = i % 3
    if kind == 0:
        return {"for_inbound_call": 3, "inbound_websocket_bot_id": 93, "for_outbound_call": 4, "status": 1}
    if kind == 1:
        return {"for_inbound_call": 1, "for_outbound_call": 3, "outbound_websocket_bot_id": 94, "status": 1}
    return {
        "for_inbound_call": 2,
        "inbound_sip_trunk_id": 7,
        "for_outbound_call": 2,
        "outbound_sip_trunk_id": 8,
        "status": 0,
    }


def write_sheet(path: Path, n: int) -> Path:
    """A CSV of ``n`` valid rows for DIDs 0..n-1 of ``write_inventory``."""
    headers = [
        "Phone Number",
        "Inbound Mode",
        "Inbound Bot ID",
        "Inbound SIP Trunk",
        "Outbound Mode",
        "Outbound Bot ID",
        "Outbound SIP Trunk",
        "Status",
        "Customer",
    ]
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(headers)
        for i in range(n):
            r = desired_record(i)
            w.writerow(
                [
                    "+" + did_number(i),
                    r["for_inbound_call"],
                    r.get("inbound_websocket_bot_id", ""),
                    r.get("inbound_sip_trunk_id", ""),
                    r["for_outbound_call"],
                    r.get("outbound_websocket_bot_id", ""),
                    r.get("outbound_sip_trunk_id", ""),
                    "active" if r["status"] else "inactive",
                    f"customer {i}",
                ]
            )
    return path


def routing_fields(record: dict[str, Any]) -> dict[str, int]:
    """Keep a routing record's body fields (drop ids, None values and extras)."""
    keep = (
        "for_inbound_call",
        "for_outbound_call",
        "inbound_websocket_bot_id",
        "inbound_sip_trunk_id",
        "outbound_websocket_bot_id",
        "outbound_sip_trunk_id",
        "status",
    )
    return {k: int(record[k]) for k in keep if record.get(k) is not None}


def read_results(path: Path) -> list[dict[str, Any]]:
    import openpyxl

    wb = openpyxl.load_workbook(path, read_only=True)
    try:
        rows = list(wb["Results"].iter_rows(values_only=True))
    finally:
        wb.close()
    header = rows[0]
    return [dict(zip(header, r, strict=False)) for r in rows[1:]]


SANDBOX_BASE = "http://sandbox.test/api/v2"


def config_for(sheet: Path | str, tmp: Path, **kw: Any) -> ImportConfig:
    """An import of ``sheet`` into the in-process sandbox: results and journal in ``tmp``, no waits."""
    from importer.options import ImportConfig, InputOptions
    from importer.sandbox import SANDBOX_API_KEY

    defaults: dict[str, Any] = dict(
        input=InputOptions(path=sheet),
        api_key=SANDBOX_API_KEY,
        base_url=SANDBOX_BASE,
        output=tmp / "out.results.xlsx",
        journal=tmp / "run.journal.sqlite",
        requests_per_minute=100_000,
        retry_backoff=0,
    )
    defaults.update(kw)
    return ImportConfig(**defaults)


def change_routing(sandbox: Sandbox, did_id: int, body: dict[str, int]) -> None:
    """Someone else updating a routing through the API (not through the importer)."""
    from importer.sandbox import SANDBOX_API_KEY

    routing_id = next(int(r["id"]) for r in sandbox.state_snapshot()["routing"] if int(r["did_id"]) == did_id)

    async def send() -> None:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=sandbox.app), base_url=SANDBOX_BASE + "/"
        ) as client:
            reply = await client.post(
                f"voicelink/call-routing/{routing_id}",
                json=body,
                headers={"Authorization": f"Bearer {SANDBOX_API_KEY}"},
            )
            assert reply.status_code == 200, reply.text

    asyncio.run(send())


def web_connection(sandbox: Sandbox, **overrides: Any) -> Connection:
    """The web service's connection to an in-process sandbox: a raised limit, no waits."""
    from importer.sandbox import SANDBOX_API_KEY
    from importer.web.engine import Connection

    values: dict[str, Any] = {
        "api_key": SANDBOX_API_KEY,
        "base_url": SANDBOX_BASE,
        "transport": httpx.ASGITransport(app=sandbox.app),
        "requests_per_minute": 100_000,
        "retry_backoff": 0.0,
    }
    values.update(overrides)
    return Connection(**values)


def wait_for_job(
    client: httpx.Client, job_id: str, statuses: set[str], timeout: float = 30
) -> dict[str, Any]:
    """Poll the web service's API until the job is in one of ``statuses``."""
    deadline = time.monotonic() + timeout
    while True:
        job: dict[str, Any] = client.get(f"/api/jobs/{job_id}").json()
        if job["status"] in statuses:
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job stayed {job['status']}: {job}")
        time.sleep(0.05)


def hidden_book(path: Path) -> Path:
    """Write a workbook with rows 5, 9 and 12 hidden under a filter, column D hidden, C6:C8 merged."""
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.append(["DID Number", "Inbound Mode", "Outbound Mode", "Inbound Bot ID", "Notes"])
    for i in range(2, 14):
        sheet.append([f"+91801234{i:04d}", 3, 4, 93, f"note {i}"])
    sheet.auto_filter.ref = "A1:E13"
    for row in (5, 9, 12):
        sheet.row_dimensions[row].hidden = True
    sheet.column_dimensions["D"].hidden = True
    sheet["C7"] = None
    sheet["C8"] = None
    sheet.merge_cells("C6:C8")
    book.save(path)
    return path
