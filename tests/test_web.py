"""The web service over real TCP: the whole flow, each lock on the door, kills, shutdown, the queue.

The server runs on loopback (uvicorn on an ephemeral port), in a thread for most tests and as a
``voicelink-import serve`` process where it must be killed. The sandbox is the API: in-process
behind the server for the flow, over TCP in the test process when the server is the one killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import dataclasses
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import httpx
import openpyxl
import pytest
from helpers import (
    REPO,
    Web,
    did_number,
    read_results,
    served_web,
    signed_in,
    wait_for_job,
    web_connection,
    write_inventory,
    write_sheet,
)

from importer.engine.plan import Plan, Write, plan_from_dict, plan_to_dict, writes_fingerprint
from importer.model import RowOutcome
from importer.sandbox import SANDBOX_API_KEY, Sandbox, SandboxConfig, create_sandbox, running_sandbox
from importer.vocab import Action, ReasonKind, Status
from importer.web.app import sniff_upload
from importer.web.engine import Connection
from importer.web.jobs import safe_name
from importer.web.security import allowed_hosts
from importer.web.server import ServeSettings, build
from importer.web.store import JobStore

TOKEN = "web-test-token-0123456789-abcdefghijkl"
FINAL = {"done", "cancelled", "failed"}


@pytest.fixture
def web(tmp_path: Path) -> Iterator[Web]:
    inventory = write_inventory(tmp_path / "inventory.json", 40)
    sandbox = create_sandbox(SandboxConfig(inventory=inventory, requests_per_minute=100_000))
    with served_web(sandbox, tmp_path / "data", token=TOKEN, max_upload_mb=1) as web:
        yield web


def _sheet(folder: Path, n: int = 10, bad: bool = True) -> Path:
    """``n`` good rows for DIDs 0..n-1, then (row n+2) one with an unknown inbound mode."""
    path = write_sheet(folder / "routing.csv", n)
    if bad:
        with path.open("a", newline="", encoding="utf-8") as fh:
            csv.writer(fh).writerow(["+" + did_number(n), "9", "", "", "4", "", "", "active", "bad mode"])
    return path


def _upload(client: httpx.Client, path: Path, **fields: Any) -> httpx.Response:
    with path.open("rb") as fh:
        return client.post("/api/jobs", files={"file": (path.name, fh)}, data=fields)


def _record(data: Path, job_id: str) -> dict[str, Any]:
    """A job's stored record, read from the data dir's database as the next start reads it."""
    store = JobStore(data)
    try:
        found = [j.record for j in store.jobs() if j.id == job_id]
    finally:
        store.close()
    assert found and found[0] is not None, job_id
    return found[0]


def _put_record(data: Path, job_id: str, **changes: Any) -> None:
    store = JobStore(data)
    try:
        store.put(job_id, {**_record(data, job_id), **changes})
    finally:
        store.close()


def _plan(client: httpx.Client, job_id: str) -> dict[str, Any]:
    """Plan a validated job (only a planned job starts) and wait for its plan."""
    assert client.post(f"/api/jobs/{job_id}/plan").status_code == 202
    return wait_for_job(client, job_id, {"planned"})


def _summary(data: bytes) -> dict[str, Any]:
    book = openpyxl.load_workbook(io.BytesIO(data), read_only=True)
    try:
        return {str(r[0]): r[1] for r in book["Summary"].iter_rows(values_only=True) if r and r[0]}
    finally:
        book.close()


# -- the whole flow ---------------------------------------------------------------------------------


def test_web_flow_upload_fix_plan_send_download(web: Web, tmp_path: Path) -> None:
    """Upload answers at once; errors are readable; a fix revalidates; plan, send, results."""
    sheet = _sheet(tmp_path)
    created = _upload(web.client, sheet, uploaded_by="Asha (NOC)")
    assert created.status_code == 201
    job = created.json()
    assert job["status"] == "validating" and re.fullmatch(r"[0-9a-f]{24}", job["id"])
    job = wait_for_job(web.client, job["id"], {"validated"})
    assert job["counts"]["failed"] == 1 and job["counts"]["valid"] == 10
    assert job["problems"] == {"bad_mode": 1}

    failed = web.client.get(f"/api/jobs/{job['id']}/rows", params={"status": "failed"}).json()
    assert failed["total"] == 1
    bad = failed["rows"][0]
    assert bad["row"] == 12 and bad["issues"][0]["column"] == "Inbound Mode"
    assert bad["values"][1] == "9" and "Inbound Mode" in bad["reason"]
    valid = web.client.get(f"/api/jobs/{job['id']}/rows", params={"status": "valid"}).json()
    assert valid["total"] == 10 and all(r["valid"] and r["row"] != 12 for r in valid["rows"])
    either = web.client.get(f"/api/jobs/{job['id']}/rows", params={"status": "valid,failed"}).json()
    assert either["total"] == 11
    page = web.client.get(f"/api/jobs/{job['id']}/rows", params={"offset": 3, "limit": 4}).json()
    assert [r["row"] for r in page["rows"]] == [5, 6, 7, 8] and page["total"] == 11

    fixed = web.client.patch(f"/api/jobs/{job['id']}/rows/12", json={"Inbound Mode": "1"})
    assert fixed.status_code == 200, fixed.text
    assert fixed.json()["row"]["status"] == "not_sent" and fixed.json()["row"]["edited"] == ["Inbound Mode"]
    assert fixed.json()["job"]["counts"]["failed"] == 0
    assert sheet.read_bytes() == (web.data / "jobs" / job["id"] / "input" / "routing.csv").read_bytes()
    edits = json.loads((web.data / "jobs" / job["id"] / "edits.json").read_text())
    assert edits[0]["row"] == 12 and edits[0]["old"] == "9" and edits[0]["new"] == "1"

    assert web.client.post(f"/api/jobs/{job['id']}/plan").status_code == 202
    job = wait_for_job(web.client, job["id"], {"planned"})
    assert job["plan"].startswith("create 11,") and web.sandbox.state_snapshot()["writes"] == []
    assert job["budget"] == {"reads": 3, "writes": 11, "seconds": 0.0}  # connections, sync; 1 sync back
    plan_rows = web.client.get(f"/api/jobs/{job['id']}/rows", params={"limit": 1}).json()["rows"]
    assert plan_rows[0]["action"] == "create" and '"for_inbound_call": 3' in plan_rows[0]["proposed"]

    requests_before = sum(web.sandbox.state_snapshot()["request_counts"].values())
    assert web.client.post(f"/api/jobs/{job['id']}/start").status_code == 202
    job = wait_for_job(web.client, job["id"], FINAL)
    assert job["status"] == "done", job
    sent = sum(web.sandbox.state_snapshot()["request_counts"].values()) - requests_before
    assert sent == job["budget"]["reads"] + job["budget"]["writes"]
    assert job["counts"]["succeeded"] == 11 and job["progress"]["done"] == 11
    late = web.client.patch(f"/api/jobs/{job['id']}/rows/12", json={"Inbound Mode": "2"})
    assert late.status_code == 409

    results = web.client.get(f"/api/jobs/{job['id']}/results.xlsx")
    assert results.status_code == 200 and results.headers["cache-control"] == "no-store"
    assert 'filename="routing.results.xlsx"' in results.headers["content-disposition"]
    summary = _summary(results.content)
    assert summary["uploaded_by"] == "Asha (NOC)" and summary["client"] == "127.0.0.1"
    assert summary["edit 1"].startswith("row 12, column 'Inbound Mode': '9' -> '1'")
    # A web job's workbook names its job and file, never the server's user or host (issue 18).
    assert summary["succeeded"] == 11 and "os_user" not in summary and "host" not in summary
    assert summary["web job"] == job["id"] and summary["file"] == job["file"]
    assert web.client.get(f"/api/jobs/{job['id']}/failed.xlsx").status_code == 404  # no row failed
    creates = [w for w in web.sandbox.state_snapshot()["writes"] if w["op"] == "create"]
    assert len(creates) == 11 == len({w["did_id"] for w in creates})
    assert [j["id"] for j in web.client.get("/api/jobs").json()["jobs"]] == [job["id"]]


def test_web_failed_rows_and_snapshot_downloads_before_sending(web: Web, tmp_path: Path) -> None:
    job = _upload(web.client, _sheet(tmp_path)).json()
    wait_for_job(web.client, job["id"], {"validated"})
    failed = web.client.get(f"/api/jobs/{job['id']}/failed.xlsx")
    assert failed.status_code == 200
    book = openpyxl.load_workbook(io.BytesIO(failed.content), read_only=True)
    rows = list(book.worksheets[0].iter_rows(values_only=True))
    book.close()
    assert len(rows) == 2 and rows[1][1] == "9"
    results = web.client.get(f"/api/jobs/{job['id']}/results.xlsx")
    assert _summary(results.content)["command"] == "web (validate)"


def test_web_events_stream_sends_full_snapshots(web: Web, tmp_path: Path) -> None:
    job = _upload(web.client, _sheet(tmp_path, bad=False)).json()
    wait_for_job(web.client, job["id"], {"validated"})
    _plan(web.client, job["id"])
    seen: list[dict[str, Any]] = []
    with web.client.stream("GET", f"/api/jobs/{job['id']}/events") as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        assert stream.headers["cache-control"] == "no-store"
        for line in stream.iter_lines():
            if not line.startswith("data: "):
                continue
            seen.append(json.loads(line[6:]))
            if len(seen) == 1:
                web.client.post(f"/api/jobs/{job['id']}/start")
            if seen[-1]["status"] == "done":
                break
    assert seen[0]["status"] == "planned" and seen[0]["counts"]["valid"] == 10
    assert {"id", "status", "file", "created", "counts", "progress", "queue_position", "error"} <= set(
        seen[-1]
    )
    assert seen[-1]["progress"]["done"] == seen[-1]["progress"]["total"] == 10


def test_web_options_change_reads_again(web: Web, tmp_path: Path) -> None:
    """A mapping fixed after upload: the job validates again from the same upload."""
    path = tmp_path / "odd.csv"
    text = _sheet(tmp_path, bad=False).read_text(encoding="utf-8").replace("Phone Number", "Nummer", 1)
    path.write_text(text, encoding="utf-8")
    job = _upload(web.client, path).json()
    job = wait_for_job(web.client, job["id"], {"failed"})
    assert "did_number" in job["error"] or "DID" in job["error"]
    changed = web.client.patch(f"/api/jobs/{job['id']}", json={"map": ["Nummer=did_number"]})
    assert changed.status_code == 200, changed.text
    job = wait_for_job(web.client, job["id"], {"validated"})
    assert job["counts"]["valid"] == 10 and job["options"]["map"] == ["Nummer=did_number"]


# -- locked down: one test each ------------------------------------------------------------------


def test_web_token_required(web: Web, tmp_path: Path) -> None:
    job = _upload(web.client, _sheet(tmp_path)).json()
    with httpx.Client(base_url=web.url) as anonymous:
        for path in ("/", "/api/jobs", f"/api/jobs/{job['id']}", f"/api/jobs/{job['id']}/events"):
            answer = anonymous.get(path)
            assert answer.status_code == 401 and answer.text == "unauthorized", path
        wrong = anonymous.get("/api/jobs", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.text == "unauthorized"
        assert anonymous.post("/api/jobs", files={"file": ("a.csv", b"x")}).status_code == 401
    assert len(web.client.get("/api/jobs").json()["jobs"]) == 1


def test_web_token_url_sets_strict_session_cookie(web: Web) -> None:
    with httpx.Client(base_url=web.url) as browser:
        opened = browser.get(f"/?token={TOKEN}", follow_redirects=False)
        assert opened.status_code == 303 and opened.headers["location"] == "/"
        cookie = opened.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and TOKEN not in cookie
        assert browser.get("/api/jobs").status_code == 200  # the cookie is enough from now on
        assert browser.get("/?token=wrong", follow_redirects=False).status_code == 401


def test_web_token_random_per_start_unless_given(tmp_path: Path) -> None:
    settings = ServeSettings(connection=Connection(api_key="k", base_url="http://x.test"), data_dir=tmp_path)
    tokens = {build(settings, 8000)[2] for _ in range(3)}
    assert len(tokens) == 3 and all(len(t) >= 24 for t in tokens)
    given = ServeSettings(connection=settings.connection, data_dir=tmp_path, token="chosen")
    assert build(given, 8000)[2] == "chosen"


def test_web_host_header_must_name_the_server(web: Web) -> None:
    port = web.url.rsplit(":", 1)[1]
    for host in (f"evil.example:{port}", "127.0.0.1:1", "evil.example"):
        answer = web.client.get("/api/jobs", headers={"Host": host})
        assert answer.status_code == 403 and "jobs" not in answer.text, host
    assert web.client.get("/api/jobs", headers={"Host": f"localhost:{port}"}).status_code == 200
    assert allowed_hosts("0.0.0.0", 80) == frozenset({"0.0.0.0:80", "0.0.0.0"})


def test_web_foreign_origin_refused_on_changes(web: Web, tmp_path: Path) -> None:
    sheet = _sheet(tmp_path)
    with sheet.open("rb") as fh:
        foreign = web.client.post(
            "/api/jobs", files={"file": ("a.csv", fh)}, headers={"Origin": "http://evil.example"}
        )
    assert foreign.status_code == 403
    cross = web.client.post(
        "/api/jobs", files={"file": ("a.csv", b"x")}, headers={"Sec-Fetch-Site": "cross-site"}
    )
    assert cross.status_code == 403
    assert web.client.get("/api/jobs").json()["jobs"] == []
    with sheet.open("rb") as fh:
        own = web.client.post("/api/jobs", files={"file": ("a.csv", fh)}, headers={"Origin": web.url})
    assert own.status_code == 201


def test_web_upload_over_limit_refused_without_reading_it(web: Web) -> None:
    """413 arrives after ~1 MB of a body announced as 50 MB: the rest is never read."""
    host, port = web.url.removeprefix("http://").split(":")
    boundary = "b0undary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.csv"\r\n'
        "Content-Type: text/csv\r\n\r\n"
    ).encode()
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            (
                f"POST /api/jobs HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {TOKEN}\r\n"
                f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
                f"Content-Length: {50 * 2**20}\r\n\r\n"
            ).encode()
            + head
        )
        answer = sock.recv(4096).decode("latin-1")
    assert answer.startswith("HTTP/1.1 413"), answer[:80]

    # Without a length (chunked), the count stops it as it streams.
    def body() -> Iterator[bytes]:
        yield head
        for _ in range(40):
            yield b"1234567890," * 10_000
        yield f"\r\n--{boundary}--\r\n".encode()

    chunked = web.client.post(
        "/api/jobs",
        content=body(),
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert chunked.status_code == 413
    assert web.client.get("/api/jobs").json()["jobs"] == []
    leftovers = [p for p in (web.data / "incoming").glob("*")] if (web.data / "incoming").exists() else []
    assert leftovers == []


@pytest.mark.parametrize(
    ("content", "name", "expected"),
    [
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, "routing.csv", None),
        (b"MZ\x90\x00\x03\x00\x00\x00", "routing.xlsx", None),
        (b"PK\x03\x04rest", "routing.txt", ".xlsx"),
        (b"PK\x03\x04rest", "routing.ods", ".ods"),
        (bytes.fromhex("D0CF11E0A1B11AE1") + b"\x00" * 8, "routing.csv", ".xls"),
        (b"Phone Number\tInbound Mode\n", "routing.tsv", ".tsv"),
        (b"Phone Number,Inbound Mode\n", "routing.xlsx", ".csv"),
        (b"", "empty.csv", None),
    ],
)
def test_web_upload_type_told_by_content(content: bytes, name: str, expected: str | None) -> None:
    assert sniff_upload(content, name) == expected


def test_web_upload_of_unsupported_content_refused(web: Web) -> None:
    answer = web.client.post("/api/jobs", files={"file": ("routing.csv", b"\x89PNG\r\n\x1a\n\x00\x00\x00")})
    assert answer.status_code == 415 and web.client.get("/api/jobs").json()["jobs"] == []


def test_web_security_headers_on_every_answer(web: Web, tmp_path: Path) -> None:
    job = _upload(web.client, _sheet(tmp_path)).json()
    for path in ("/", "/api/jobs", f"/api/jobs/{job['id']}"):
        answer = web.client.get(path)
        csp = answer.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "default-src 'none'" in csp
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["cache-control"] == "no-store"
    with httpx.Client(base_url=web.url) as anonymous:
        assert anonymous.get("/api/jobs").headers["x-content-type-options"] == "nosniff"


def test_web_values_escaped_and_names_sanitised(web: Web, tmp_path: Path) -> None:
    evil = '<img src=x onerror=alert(1)>"; rm -rf.csv'
    sheet = _sheet(tmp_path)
    with sheet.open("rb") as fh:
        job = web.client.post("/api/jobs", files={"file": (evil, fh)}).json()
    wait_for_job(web.client, job["id"], {"validated"})
    page = web.client.get("/").text
    assert "<img" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    answer = web.client.get(f"/api/jobs/{job['id']}")
    assert answer.headers["content-type"] == "application/json"
    download = web.client.get(f"/api/jobs/{job['id']}/results.xlsx")
    disposition = download.headers["content-disposition"]
    name = disposition.split("filename=", 1)[1].strip('"')
    assert re.fullmatch(r"[A-Za-z0-9._-]+", name), disposition
    assert safe_name("../../etc/passwd") == "passwd" and safe_name("..\\..\\x.csv") == "x.csv"
    stored = list((web.data / "jobs" / job["id"] / "input").iterdir())
    assert len(stored) == 1 and re.fullmatch(r"[A-Za-z0-9._-]+", stored[0].name)


def test_web_job_ids_random_and_never_paths(web: Web, tmp_path: Path) -> None:
    sheet = _sheet(tmp_path)
    ids = {_upload(web.client, sheet).json()["id"] for _ in range(2)}
    assert len(ids) == 2 and all(re.fullmatch(r"[0-9a-f]{24}", i) for i in ids)
    for bad in ("..%2F..%2Fetc", "..", "jobs", "0" * 23, "%2e%2e"):
        assert web.client.get(f"/api/jobs/{bad}").status_code in (404, 405), bad


def test_web_key_never_leaves_the_server(web: Web, tmp_path: Path) -> None:
    """The key is in no JSON, event, page, download or file under the data dir."""
    job = _upload(web.client, _sheet(tmp_path), uploaded_by="ops").json()
    wait_for_job(web.client, job["id"], {"validated"})
    _plan(web.client, job["id"])
    web.client.post(f"/api/jobs/{job['id']}/start")
    wait_for_job(web.client, job["id"], FINAL)
    answers = [
        web.client.get("/").content,
        web.client.get("/api/jobs").content,
        web.client.get(f"/api/jobs/{job['id']}/rows").content,
        web.client.get(f"/api/jobs/{job['id']}/results.xlsx").content,
        web.client.get(f"/api/jobs/{job['id']}/failed.xlsx").content,
    ]
    with web.client.stream("GET", f"/api/jobs/{job['id']}/events") as stream:
        answers.append(next(stream.iter_bytes()))
    key = SANDBOX_API_KEY.encode()
    assert not any(key in a for a in answers)
    files = [p for p in web.data.rglob("*") if p.is_file()]
    assert len(files) >= 5 and not any(key in p.read_bytes() for p in files)
    unzipped = _xlsx_text(web.data / "jobs" / job["id"] / "results.xlsx")
    assert SANDBOX_API_KEY not in unzipped and "..." + SANDBOX_API_KEY[-4:] in unzipped


def _xlsx_text(path: Path) -> str:
    import zipfile

    with zipfile.ZipFile(path) as z:
        return "".join(z.read(n).decode("utf-8", "replace") for n in z.namelist())


# -- one key, one queue --------------------------------------------------------------------------


@pytest.mark.slow
def test_web_two_jobs_on_one_key_queue_and_meet_no_429(tmp_path: Path) -> None:
    """At the sandbox's own limit (a window 20x shorter on both sides), two jobs never meet a 429.

    Each job needs 13 requests (2 reads, 10 writes, 1 sync back) and the limit is 8 a window, so
    the limiter has to hold requests back within and across the two jobs (and the first job is
    still sending when the queue is looked at).
    """
    inventory = write_inventory(tmp_path / "inventory.json", 20)
    speed = 20.0
    sandbox = Sandbox(
        SandboxConfig(inventory=inventory, requests_per_minute=8), clock=lambda: time.monotonic() * speed
    )
    connection = web_connection(sandbox, requests_per_minute=8, rate_window=60 / speed)
    settings = ServeSettings(connection=connection, data_dir=tmp_path / "data", port=0, token=TOKEN)
    first = write_sheet(tmp_path / "first.csv", 10)
    second = tmp_path / "second.csv"
    lines = write_sheet(tmp_path / "all.csv", 20).read_text().splitlines()
    second.write_text("\n".join([lines[0], *lines[11:]]) + "\n")
    with signed_in(settings) as client:
        jobs = [_upload(client, path).json()["id"] for path in (first, second)]
        third = _upload(client, first).json()["id"]
        # Every plan before any send: a plan made while the first job sends would wait for the
        # key's limiter behind its writes, and the queue could have moved on by then.
        for job_id in (*jobs, third):
            wait_for_job(client, job_id, {"validated"})
            _plan(client, job_id)
        for job_id in (*jobs, third):
            assert client.post(f"/api/jobs/{job_id}/start").status_code == 202
        waiting = client.get(f"/api/jobs/{jobs[1]}").json()
        assert waiting["queue_position"] == 1 and waiting["status"] == "sending"
        assert client.get(f"/api/jobs/{third}").json()["queue_position"] == 2
        cancelled = client.post(f"/api/jobs/{third}/cancel").json()
        assert cancelled["status"] == "cancelled" and cancelled["queue_position"] is None
        snapshot = client.get(f"/api/jobs/{jobs[0]}/results.xlsx")  # mid-run: a snapshot
        assert snapshot.status_code == 200
        assert _summary(snapshot.content)["command"] in ("web (snapshot while sending)", "web")
        done = [wait_for_job(client, job_id, FINAL, timeout=40) for job_id in jobs]
    state = sandbox.state_snapshot()
    assert [j["status"] for j in done] == ["done", "done"]
    assert all(j["counts"]["succeeded"] == 10 for j in done)
    assert state["status_counts"].get("429", 0) == 0, state["status_counts"]
    assert len([w for w in state["writes"] if w["op"] == "create"]) == 20


def test_web_jobs_survive_a_restart(tmp_path: Path) -> None:
    """Finished, planned and validated jobs read back from their folders, outcomes and edits too."""
    inventory = write_inventory(tmp_path / "inventory.json", 40)
    sandbox = create_sandbox(SandboxConfig(inventory=inventory, requests_per_minute=100_000))
    settings = ServeSettings(
        connection=web_connection(sandbox), data_dir=tmp_path / "data", port=0, token=TOKEN
    )
    sheet = _sheet(tmp_path)
    with signed_in(settings) as client:
        done, planned = (_upload(client, sheet).json()["id"] for _ in range(2))
        for job_id in (done, planned):
            wait_for_job(client, job_id, {"validated"})
            client.patch(f"/api/jobs/{job_id}/rows/12", json={"for_inbound_call": "1"})
        for job_id in (planned, done):
            _plan(client, job_id)
        client.post(f"/api/jobs/{done}/start")
        before = {j: wait_for_job(client, j, {"done", "planned"}) for j in (done, planned)}
    with signed_in(settings) as client:
        for job_id, job in before.items():
            assert client.get(f"/api/jobs/{job_id}").json() == job
        succeeded = client.get(f"/api/jobs/{done}/rows", params={"status": "succeeded"}).json()
        assert succeeded["total"] == 11 and succeeded["rows"][-1]["edited"] == ["Inbound Mode"]
        assert succeeded["rows"][0]["reason"] == "created"
        plan = client.get(f"/api/jobs/{planned}/rows", params={"limit": 1}).json()["rows"][0]
        assert plan["action"] == "create" and plan["proposed"]
        assert _summary(client.get(f"/api/jobs/{done}/results.xlsx").content)["succeeded"] == 11
        client.post(f"/api/jobs/{planned}/start")
        assert wait_for_job(client, planned, FINAL)["counts"]["unchanged"] == 11  # the first job routed them


def test_web_restart_validates_again_and_drops_a_half_plan(tmp_path: Path) -> None:
    """A job killed while validating is validated again; one killed while planning is validated."""
    sandbox = create_sandbox(SandboxConfig(inventory=write_inventory(tmp_path / "inventory.json", 20)))
    settings = ServeSettings(
        connection=web_connection(sandbox), data_dir=tmp_path / "data", port=0, token=TOKEN
    )
    with signed_in(settings) as client:
        jobs = [_upload(client, _sheet(tmp_path)).json()["id"] for _ in range(2)]
        for job_id in jobs:
            wait_for_job(client, job_id, {"validated"})
    for job_id, status in zip(jobs, ("validating", "planning"), strict=True):
        _put_record(settings.data_dir, job_id, status=status, counts={})
    with signed_in(settings) as client:
        again = wait_for_job(client, jobs[0], {"validated"})
        assert again["counts"]["failed"] == 1 and again["counts"]["valid"] == 10
        assert client.get(f"/api/jobs/{jobs[1]}").json()["status"] == "validated"


def test_web_rejected_key_fails_the_job_with_its_reason_and_can_be_retried(tmp_path: Path) -> None:
    """A rejected key fails a plan (the job stays validated) and a send (the job fails, may start again).

    The send's key is rejected after the plan was made with a good one: the server restarted with
    another key in between.
    """
    sandbox = create_sandbox(SandboxConfig(inventory=write_inventory(tmp_path / "inventory.json", 20)))
    key = "rg_live_wrong_key_5678"
    wrong = ServeSettings(
        connection=web_connection(sandbox, api_key=key), data_dir=tmp_path / "data", port=0, token=TOKEN
    )
    good = ServeSettings(connection=web_connection(sandbox), data_dir=tmp_path / "data", port=0, token=TOKEN)
    with _serving(wrong) as client:
        job_id = _upload(client, _sheet(tmp_path)).json()["id"]
        wait_for_job(client, job_id, {"validated"})
        client.post(f"/api/jobs/{job_id}/plan")
        planned = wait_for_job(client, job_id, {"planned", "validated"})
        assert planned["status"] == "validated" and planned["error"].startswith("plan failed: ")
        assert client.post(f"/api/jobs/{job_id}/start").status_code == 409  # no plan to send
    with _serving(good) as client:
        _plan(client, job_id)
    with _serving(wrong) as client:
        assert client.post(f"/api/jobs/{job_id}/start").status_code == 202
        failed = wait_for_job(client, job_id, FINAL)
        assert failed["status"] == "failed" and "rejected the API key" in failed["error"]
        assert key not in failed["error"] and key not in planned["error"]
        assert client.patch(f"/api/jobs/{job_id}", json={"map": []}).status_code == 409
        assert client.post(f"/api/jobs/{job_id}/start").status_code == 202  # resumes from its journal
        assert wait_for_job(client, job_id, FINAL)["status"] == "failed"
    assert sandbox.state_snapshot()["writes"] == []


def test_web_cancel_settles_writes_in_flight_and_sends_no_more(tmp_path: Path) -> None:
    inventory = write_inventory(tmp_path / "inventory.json", 40)
    sandbox = create_sandbox(SandboxConfig(inventory=inventory, requests_per_minute=100_000, latency_ms=100))
    settings = ServeSettings(
        connection=web_connection(sandbox), data_dir=tmp_path / "data", port=0, token=TOKEN
    )
    with signed_in(settings) as client:
        job_id = _upload(client, write_sheet(tmp_path / "routing.csv", 40)).json()["id"]
        wait_for_job(client, job_id, {"validated"})
        _plan(client, job_id)
        client.post(f"/api/jobs/{job_id}/start")
        while len(sandbox.state_snapshot()["writes"]) < 3:
            time.sleep(0.01)
        assert client.post(f"/api/jobs/{job_id}/cancel").status_code == 202
        job = wait_for_job(client, job_id, FINAL)
        writes = len(sandbox.state_snapshot()["writes"])
        time.sleep(0.3)
        assert len(sandbox.state_snapshot()["writes"]) == writes
        assert job["status"] == "cancelled" and job["stopped"] == "cancelled"
        assert job["counts"]["succeeded"] == writes and job["counts"]["not_sent"] == 40 - writes
        rows = client.get(f"/api/jobs/{job_id}/rows", params={"status": "not_sent", "limit": 1}).json()
        assert rows["total"] == 40 - writes and rows["rows"][0]["reason"] == "not sent: cancelled"
        assert client.post(f"/api/jobs/{job_id}/start").status_code == 409


# -- kills, restarts and shutdown (the server as its own process) ---------------------------------


@dataclass
class Process:
    proc: subprocess.Popen[str]
    url: str
    client: httpx.Client


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[str, Sandbox]]:
    """A sandbox over TCP in this process: it outlives the server processes a test kills."""
    inventory = write_inventory(tmp_path / "inventory.json", 40)
    config = SandboxConfig(inventory=inventory, requests_per_minute=100_000, latency_ms=150)
    with running_sandbox(config) as (url, sandbox):
        yield url, sandbox


def _serve(data: Path, base_url: str) -> Process:
    env = {
        **os.environ,
        "VOCOBASE_API_KEY": SANDBOX_API_KEY,
        "VOCOBASE_BASE_URL": base_url,
        "VOICELINK_WEB_TOKEN": TOKEN,
        "PYTHONPATH": str(REPO),
    }
    command = [sys.executable, "-m", "importer", "serve", "--port", "0", "--data-dir", str(data)]
    command += ["--requests-per-minute", "100000"]
    errors = data.parent / f"serve-{time.monotonic_ns()}.stderr"
    with errors.open("w") as err:
        proc = subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL, text=True
        )
    assert proc.stdout is not None
    first = proc.stdout.readline()
    match = re.search(r"http://127\.0\.0\.1:\d+", first)
    if match is None:
        proc.kill()
        proc.wait()
        proc.stdout.close()
        raise AssertionError(f"no URL in {first!r}: {errors.read_text()}")
    threading.Thread(target=proc.stdout.read, daemon=True).start()  # keep the pipe drained
    url = match.group(0)
    client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    # The server listens before it prints its URL: this waits in the backlog until the jobs are loaded.
    client.get("/api/jobs").raise_for_status()
    return Process(proc, url, client)


def _stop(p: Process) -> None:
    p.client.close()
    if p.proc.poll() is None:
        p.proc.kill()
    p.proc.wait(10)
    if p.proc.stdout is not None:
        p.proc.stdout.close()


def _start_sending(p: Process, sheet: Path, sandbox: Sandbox, writes: int) -> str:
    job_id: str = _upload(p.client, sheet).json()["id"]
    wait_for_job(p.client, job_id, {"validated"})
    _plan(p.client, job_id)
    assert p.client.post(f"/api/jobs/{job_id}/start").status_code == 202
    deadline = time.monotonic() + 20
    while len(sandbox.state_snapshot()["writes"]) < writes:
        assert time.monotonic() < deadline, "the sends did not start"
        time.sleep(0.01)
    return job_id


def _one_create_per_did(sandbox: Sandbox, n: int) -> None:
    state = sandbox.state_snapshot()
    creates = [int(w["did_id"]) for w in state["writes"] if w["op"] == "create"]
    assert sorted(creates) == [1000 + i for i in range(n)], creates
    assert all(v == 1 for v in state["create_attempts"].values()), state["create_attempts"]
    assert state["status_counts"].get("409", 0) == 0


@pytest.mark.slow
def test_web_killed_mid_send_resumes_on_start_one_create_per_did(
    api: tuple[str, Sandbox], tmp_path: Path
) -> None:
    base_url, sandbox = api
    sheet = write_sheet(tmp_path / "routing.csv", 30)
    data = tmp_path / "data"
    first = _serve(data, base_url)
    try:
        job_id = _start_sending(first, sheet, sandbox, writes=6)
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(10)
    finally:
        _stop(first)
    assert _record(data, job_id)["status"] == "sending"
    assert len(sandbox.state_snapshot()["writes"]) < 30
    second = _serve(data, base_url)
    try:
        job = wait_for_job(second.client, job_id, FINAL, timeout=30)
    finally:
        _stop(second)
    assert job["status"] == "done", job
    assert job["counts"]["succeeded"] == 30 and job["stopped"] is None
    _one_create_per_did(sandbox, 30)


@pytest.mark.slow
def test_web_sigterm_settles_closes_streams_and_resumes(api: tuple[str, Sandbox], tmp_path: Path) -> None:
    base_url, sandbox = api
    sheet = write_sheet(tmp_path / "routing.csv", 30)
    data = tmp_path / "data"
    first = _serve(data, base_url)
    ended = threading.Event()
    try:
        job_id = _start_sending(first, sheet, sandbox, writes=4)

        def watch() -> None:
            with (
                httpx.Client(base_url=first.url, headers={"Authorization": f"Bearer {TOKEN}"}) as c,
                c.stream("GET", f"/api/jobs/{job_id}/events", timeout=30) as stream,
            ):
                for _ in stream.iter_lines():
                    pass
            ended.set()

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        time.sleep(0.3)
        started = time.monotonic()
        first.proc.send_signal(signal.SIGTERM)
        code = first.proc.wait(10)
        took = time.monotonic() - started
    finally:
        _stop(first)
    # uvicorn re-raises the signal once it has shut down, so the exit status is SIGTERM's own.
    assert code in (0, -signal.SIGTERM) and took < 5, (code, took)
    assert ended.wait(2), "the event stream was not closed"
    stored = _record(data, job_id)
    assert stored["status"] == "sending" and "resumes on the next start" in stored["stopped"]
    writes_before = len(sandbox.state_snapshot()["writes"])
    time.sleep(0.3)
    assert len(sandbox.state_snapshot()["writes"]) == writes_before  # nothing left in flight
    second = _serve(data, base_url)
    try:
        job = wait_for_job(second.client, job_id, FINAL, timeout=30)
    finally:
        _stop(second)
    assert job["status"] == "done" and job["counts"]["succeeded"] == 30
    _one_create_per_did(sandbox, 30)


@pytest.mark.slow
def test_web_serve_without_key_says_so(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "VOCOBASE_API_KEY"} | {"PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-m", "importer", "serve", "--data-dir", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2 and done.stderr.strip() == (
        "Error: no API key: set VOCOBASE_API_KEY, or try it with --sandbox"
    )


def test_page_fix_edits_the_cell_at_its_position_when_headers_repeat(web: Web, tmp_path: Path) -> None:
    """The page's row form names cells by position: the second of two "Memo" columns is the one edited."""
    path = _sheet(tmp_path, 3, bad=False)
    with path.open(newline="", encoding="utf-8") as fh:
        lines = list(csv.reader(fh))
    with path.open("w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([[*lines[0], "Memo", "Memo"], *([*r, "first", "second"] for r in lines[1:])])
    job = wait_for_job(web.client, _upload(web.client, path).json()["id"], {"validated"})
    last = len(job["columns"]) - 1
    fixed = web.client.post(f"/jobs/{job['id']}/rows/2", data={f"c{last}": "edited"})
    assert fixed.status_code == 303, fixed.text
    row = web.client.get(f"/api/jobs/{job['id']}/rows", params={"limit": 1}).json()["rows"][0]
    assert row["values"][-2:] == ["first", "edited"]


# -- the plan shown is the plan sent -------------------------------------------------------------


def _serving(settings: ServeSettings) -> Any:
    """The server and an authorised client, as one context (start it twice for a restart)."""

    @contextlib.contextmanager
    def both() -> Iterator[httpx.Client]:
        with signed_in(settings) as client:
            yield client

    return both()


def _planned(client: httpx.Client, sheet: Path) -> dict[str, Any]:
    job_id = _upload(client, sheet).json()["id"]
    wait_for_job(client, job_id, {"validated"})
    assert client.post(f"/api/jobs/{job_id}/plan").status_code == 202
    return wait_for_job(client, job_id, {"planned"})


def test_web_send_page_after_restart_states_the_planned_counts(tmp_path: Path) -> None:
    """Plan, restart, open the Send page directly: it states the plan's writes (not 0)."""
    sandbox = create_sandbox(SandboxConfig(inventory=write_inventory(tmp_path / "inventory.json", 40)))
    settings = ServeSettings(
        connection=web_connection(sandbox), data_dir=tmp_path / "data", port=0, token=TOKEN
    )
    with _serving(settings) as client:
        job = _planned(client, _sheet(tmp_path))
    with _serving(settings) as client:
        page = client.get(f"/jobs/{job['id']}/send")
        assert page.status_code == 200
        text = re.sub(r"<[^>]+>", "", page.text)
        assert "Send 10 writes" in text and "10 new routing records and 0 updates" in text, text
        assert "Send 10 rows now" in text
        snap = client.get(f"/api/jobs/{job['id']}").json()
        assert snap["planned"]["create"] == 10 and snap["planned"]["writes"] == 10
        plan_page = re.sub(r"<[^>]+>", "", client.get(f"/jobs/{job['id']}/plan").text)
        assert re.search(r"10\s+to create", plan_page), plan_page


def test_web_start_needs_a_plan_of_the_inputs_shown(web: Web, tmp_path: Path) -> None:
    """No plan, an edited row or changed options after the plan: start is refused with 409 and why."""
    job_id = _upload(web.client, _sheet(tmp_path)).json()["id"]
    wait_for_job(web.client, job_id, {"validated"})
    refused = web.client.post(f"/api/jobs/{job_id}/start")
    assert refused.status_code == 409 and "plan" in refused.json()["error"]

    web.client.post(f"/api/jobs/{job_id}/plan")
    wait_for_job(web.client, job_id, {"planned"})
    assert web.client.patch(f"/api/jobs/{job_id}/rows/12", json={"Inbound Mode": "1"}).status_code == 200
    edited = web.client.post(f"/api/jobs/{job_id}/start")
    assert edited.status_code == 409 and "plan" in edited.json()["error"]

    web.client.post(f"/api/jobs/{job_id}/plan")
    wait_for_job(web.client, job_id, {"planned"})
    assert web.client.patch(f"/api/jobs/{job_id}", json={"on_existing": "skip"}).status_code == 200
    wait_for_job(web.client, job_id, {"validated"})
    changed = web.client.post(f"/api/jobs/{job_id}/start")
    assert changed.status_code == 409 and "plan" in changed.json()["error"]
    assert web.sandbox.state_snapshot()["writes"] == []


def test_web_live_change_after_the_plan_sends_nothing_and_plans_again(web: Web, tmp_path: Path) -> None:
    """Someone routes a planned DID after the plan was shown: nothing is sent; the new plan is shown."""
    job = _planned(web.client, _sheet(tmp_path, bad=False))
    assert job["planned"]["create"] == 10

    async def route_did_elsewhere() -> None:
        transport = httpx.ASGITransport(app=web.sandbox.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://sandbox.test/api/v2") as api:
            answer = await api.post(
                "/voicelink/call-routing",
                json={"did_id": 1000, "for_inbound_call": 1, "for_outbound_call": 4, "status": 1},
                headers={"Authorization": f"Bearer {SANDBOX_API_KEY}"},
            )
            assert answer.status_code < 300, answer.text

    asyncio.run(route_did_elsewhere())
    assert web.client.post(f"/api/jobs/{job['id']}/start").status_code == 202
    again = wait_for_job(web.client, job["id"], {"planned", "done", "failed", "cancelled"})
    assert again["status"] == "planned", again
    assert "changed since the plan was shown" in again["error"]
    assert again["planned"]["create"] == 9 and again["planned"]["update"] == 1
    assert len(web.sandbox.state_snapshot()["writes"]) == 1  # only the change made above
    assert web.client.post(f"/api/jobs/{job['id']}/start").status_code == 202  # the new plan, reviewed
    done = wait_for_job(web.client, job["id"], FINAL)
    assert done["status"] == "done" and done["counts"]["succeeded"] == 10


def test_web_validate_download_says_valid_as_the_cli(web: Web, tmp_path: Path) -> None:
    """A validated job's results workbook is ``validate``'s: valid rows say "valid", not "not sent"."""
    job_id = _upload(web.client, _sheet(tmp_path)).json()["id"]
    wait_for_job(web.client, job_id, {"validated"})
    answer = web.client.get(f"/api/jobs/{job_id}/results.xlsx")
    path = tmp_path / "v.results.xlsx"
    path.write_bytes(answer.content)
    statuses = [r["import_status"] for r in read_results(path)]
    assert statuses == ["valid"] * 10 + ["failed"]


def test_web_job_options_reach_the_plan(tmp_path: Path) -> None:
    """on_existing and max_error_rate, set through the API or the page's options step, reach the plan."""
    routed = {0: {"for_inbound_call": 1, "for_outbound_call": 4, "status": 1}}
    sandbox = create_sandbox(
        SandboxConfig(inventory=write_inventory(tmp_path / "inventory.json", 20, routed))
    )
    settings = ServeSettings(
        connection=web_connection(sandbox), data_dir=tmp_path / "data", port=0, token=TOKEN
    )
    with _serving(settings) as client:
        job_id = _upload(client, _sheet(tmp_path, bad=False)).json()["id"]
        wait_for_job(client, job_id, {"validated"})
        assert _plan(client, job_id)["planned"]["update"] == 1
        bad = client.patch(f"/api/jobs/{job_id}", json={"on_existing": "overwrite"})
        assert bad.status_code == 409 and "on_existing" in bad.json()["error"]
        set_ = client.patch(f"/api/jobs/{job_id}", json={"on_existing": "skip", "max_error_rate": 0.5})
        assert set_.status_code == 200 and set_.json()["options"]["on_existing"] == "skip"
        wait_for_job(client, job_id, {"validated"})
        planned = _plan(client, job_id)["planned"]
        assert planned["update"] == 0 and planned["held"] == {"exists_skipped": 1}
        assert planned["create"] == 9
        form = {"on_existing": "fail", "max_error_rate": "25", "default_region": "", "sheet": ""}
        page = client.post(f"/jobs/{job_id}/columns", data=form, follow_redirects=False)
        assert page.status_code == 303, page.text
        job = wait_for_job(client, job_id, {"validated"})
        assert job["options"]["on_existing"] == "fail" and job["options"]["max_error_rate"] == 0.25
        assert job["planned"] is None  # an option changed: the plan shown is dropped
        assert _plan(client, job_id)["planned"]["held"] == {"exists_failed": 1}


def test_web_plan_page_states_the_time_the_summary_states(tmp_path: Path) -> None:
    """At 60 requests a minute the plan's cost and the plan page give the same time for 10 writes."""
    sandbox = create_sandbox(SandboxConfig(inventory=write_inventory(tmp_path / "inventory.json", 20)))
    settings = ServeSettings(
        connection=web_connection(sandbox, requests_per_minute=60),
        data_dir=tmp_path / "data",
        port=0,
        token=TOKEN,
    )
    with _serving(settings) as client:
        job_id = _upload(client, _sheet(tmp_path, bad=False)).json()["id"]
        wait_for_job(client, job_id, {"validated"})
        job = _plan(client, job_id)
        assert "10 writes, about 10 s at 60/min" in job["plan"]
        page = re.sub(r"<[^>]+>", "", client.get(f"/jobs/{job_id}/plan").text)
        assert "the writes take about 10 s" in page, page


def test_web_plan_kept_reads_back_equal_and_fingerprints_only_its_writes() -> None:
    """plan.json holds the plan as it was shown; the fingerprint changes with a write, not with words."""
    body = {"for_inbound_call": 1, "for_outbound_call": 4, "status": 1}
    write = Write(
        row=2,
        did_id=1000,
        did_number="918020000000",
        action=Action.UPDATE,
        routing_id=7000,
        body=MappingProxyType(dict(body)),
        before=MappingProxyType({"for_inbound_call": 3, "for_outbound_call": 4, "status": 1}),
        expect=MappingProxyType(dict(body)),
        note="changed since run 1",
    )
    settled = RowOutcome(3, Status.UNCHANGED, Action.UNCHANGED, "as asked", ReasonKind.UNCHANGED, 1001, 7001)
    plan = Plan((write,), (settled,), MappingProxyType({"update": 1, "unchanged": 1}), cost="2 reads done")
    again = plan_from_dict(json.loads(json.dumps(plan_to_dict(plan))))
    assert again == plan and again.text() == plan.text()
    assert writes_fingerprint(again) == writes_fingerprint(plan)
    reworded = dataclasses.replace(plan, writes=(write._replace(note="other words"),))
    assert writes_fingerprint(reworded) == writes_fingerprint(plan)
    other = MappingProxyType({**body, "status": 0})
    changed = dataclasses.replace(plan, writes=(write._replace(body=other),))
    assert writes_fingerprint(changed) != writes_fingerprint(plan)
