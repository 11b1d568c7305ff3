"""Shared test helpers: generated inventories and the sheets that match them."""

from __future__ import annotations

import asyncio
import csv
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import openpyxl

if TYPE_CHECKING:
    from importer.options import ImportConfig
    from importer.sandbox import Sandbox
    from importer.web.engine import Connection
    from importer.web.jobs import JobService
    from importer.web.server import ServeSettings

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


SHEET_FIELDS = (
    "did_number",
    "for_inbound_call",
    "inbound_websocket_bot_id",
    "inbound_sip_trunk_id",
    "for_outbound_call",
    "outbound_websocket_bot_id",
    "outbound_sip_trunk_id",
    "status",
)
"""The fields in the order a carrier's sheet has them: the number, then each direction's mode and ids."""


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


WEB_TOKEN = "web-test-token-0123456789-abcdefghijkl"


@dataclass
class Web:
    """A web service on loopback in front of an in-process sandbox, with a signed-in client."""

    url: str
    client: httpx.Client
    sandbox: Sandbox
    data: Path
    service: JobService


@contextmanager
def served_web(sandbox: Sandbox, data: Path, *, token: str = WEB_TOKEN, **settings: Any) -> Iterator[Web]:
    """Serve the web service on ``data`` for the ``with`` (``settings``: more :class:`ServeSettings`)."""
    from importer.web.server import ServeSettings, running_server

    config = ServeSettings(connection=web_connection(sandbox), data_dir=data, port=0, token=token, **settings)
    with (
        running_server(config) as (url, _token, service),
        httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as client,
    ):
        yield Web(url, client, sandbox, data, service)


@contextmanager
def signed_in(settings: ServeSettings) -> Iterator[httpx.Client]:
    """A client signed in to the web service served with ``settings`` for the ``with``."""
    from importer.web.server import running_server

    with (
        running_server(settings) as (url, token, _service),
        httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as client,
    ):
        yield client


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


def wait_until(ready: Callable[[], bool], what: str, timeout: float = 30) -> None:
    """Poll ``ready`` until it holds; fail naming ``what`` once ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s")
        time.sleep(0.01)


async def wait_until_async(ready: Callable[[], bool], what: str, timeout: float = 30) -> None:
    """:func:`wait_until` inside an event loop: the loop keeps running while it polls."""
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s")
        await asyncio.sleep(0.01)


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


CARRIER_HEADER = [
    "DID Number",
    "Inbound Mode",
    "Inbound Bot ID",
    "Outbound Mode",
    "Outbound Bot ID",
    "Status",
    "Customer",
]
"""The header row of the carrier workbooks below (every column but Customer names a field)."""


def carrier_row(i: int) -> list[object]:
    """Row ``i`` of a carrier's DIDs sheet: DID ``did_number(i)``, a bot inbound, only-answer outbound.

    Typical mistakes, on purpose: every 10th row from the 4th says "In Service" (not a status), every
    10th from the 8th has no inbound bot id, row 13 (i == 12) writes "Only Answr".
    """
    status = "In Service" if i % 10 == 3 else "Active"
    bot: object = None if i % 10 == 7 else 93
    outbound = "Only Answr" if i == 12 else "Only answer"
    return ["+" + did_number(i), "WebSocket bot", bot, outbound, None, status, f"customer {i}"]


def write_carrier_workbook(path: Path, *, stale_matches: bool = False) -> Path:
    """Write the four-sheet carrier workbook an ops engineer gets from a carrier's portal.

    Sheets, in order: "Read me" (two lines of text), "Old DIDs 2023" (3 stale rows; its headers
    name the fields only with ``stale_matches``), "DIDs" (a title row, a blank row, the header on
    row 3, 40 rows from ``carrier_row`` on rows 4-43, then "Total DIDs: 40" on row 44: 41 rows
    below the header) and "Lists" (the mode labels).
    """
    book = openpyxl.Workbook()
    readme = book.active
    assert readme is not None
    readme.title = "Read me"
    readme.append(["How to fill this workbook"])
    readme.append(["One row per DID on the DIDs sheet; modes from the Lists sheet."])
    stale = book.create_sheet("Old DIDs 2023")
    stale.append(CARRIER_HEADER if stale_matches else ["Number", "Route", "Comment"])
    for i in range(3):
        stale.append(["+" + did_number(900 + i), "WebSocket bot", 93, "Only answer", None, "Active", "2023"])
    dids = book.create_sheet("DIDs")
    dids.append(["Carrier X - DID routing export, March 2024"])
    dids.append([None])
    dids.append(CARRIER_HEADER)
    for i in range(40):
        dids.append(carrier_row(i))
    dids.append(["Total DIDs: 40"])
    lists = book.create_sheet("Lists")
    for label in ("Mode", "Mobile", "SIP", "WebSocket bot", "Only answer"):
        lists.append([label])
    book.save(path)
    return path


REGIONS = ("US East", "US West", "UK", "Germany", "France", "India", "Japan", "Brazil", "Australia")


def write_region_workbook(path: Path, rows: int = 6, *, repeat: tuple[int, int] | None = None) -> Path:
    """Write one sheet per region of ``REGIONS``, all under one header row, ``rows`` valid rows each.

    The DIDs run on from sheet to sheet (sheet k holds DIDs k*rows .. k*rows+rows-1 of
    ``did_number``), each row bot inbound, only-answer outbound, active. ``repeat=(k, j)`` makes
    data row ``j`` (0-based) of sheet ``k`` repeat the first DID of the first sheet.
    """
    book = openpyxl.Workbook()
    first = book.active
    assert first is not None
    book.remove(first)
    for k, region in enumerate(REGIONS):
        sheet = book.create_sheet(region)
        sheet.append(["DID Number", "Inbound Mode", "Inbound Bot ID", "Outbound Mode", "Status"])
        for j in range(rows):
            n = 0 if repeat == (k, j) else k * rows + j
            sheet.append(["+" + did_number(n), 3, 93, 4, "active"])
    book.save(path)
    return path


def cut_off_upload(url: str, data: Path, token: str) -> None:
    """Start a multipart upload to ``url`` and go away mid-way, once its file reached ``data``."""
    import socket

    host, port = url.removeprefix("http://").rstrip("/").rsplit(":", 1)
    body = (
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.csv"\r\n\r\n'
        + b"Phone Number,Inbound Mode\r\n" * 2000
    )
    head = (
        f"POST /api/jobs HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: {len(body) * 10}\r\n\r\n"
    )
    with socket.create_connection((host, int(port))) as raw:
        raw.sendall(head.encode() + body)
        wait_until(lambda: any((data / "incoming").glob("upload-*")), "the upload to reach the disk", 10)
