"""The import step against the real sandbox (in-process ASGI and loopback TCP)."""

from __future__ import annotations

import asyncio
import collections
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import (
    CONNECTION,
    SAMPLE,
    SECOND_CONNECTION,
    config_for,
    desired_record,
    read_results,
    routing_fields,
    write_inventory,
    write_sheet,
)

from importer.engine.apply import Progress
from importer.engine.plan import Plan
from importer.errors import AuthError, InputError
from importer.jobs.run import run_import, run_import_async
from importer.model import RawTable, ValidationReport
from importer.read.table import read_table
from importer.sandbox import SANDBOX_API_KEY, SandboxConfig, create_sandbox, running_sandbox
from importer.validate.rules import validate_table


def routing_by_did(state: dict[str, Any]) -> dict[int, dict[str, int]]:
    return {int(r["did_id"]): routing_fields(r) for r in state["routing"]}


def write_count(state: dict[str, Any]) -> int:
    return sum(n for k, n in state["request_counts"].items() if k.startswith("POST /voicelink/call-routing"))


SAMPLE_EXPECTED = {
    4: ("succeeded", "update"),
    5: ("unchanged", "unchanged"),
    6: ("succeeded", "update"),
    7: ("succeeded", "create"),
    8: ("succeeded", "create"),
    9: ("succeeded", "create"),
    10: ("succeeded", "update"),
    11: ("succeeded", "create"),
    12: ("failed", None),
    13: ("failed", None),
    14: ("failed", None),
    15: ("failed", None),
    16: ("failed", None),
    18: ("failed", None),
    19: ("failed", None),
    20: ("failed", "fail"),
    21: ("failed", "fail"),
    22: ("failed", None),
    23: ("succeeded", "create"),
    24: ("succeeded", "create"),
    25: ("succeeded", "create"),
    26: ("succeeded", "create"),
    27: ("succeeded", "create"),
}


def test_run_sample_sheet_end_to_end(tmp_path: Path) -> None:
    sandbox = create_sandbox(SandboxConfig())
    summary = run_import(
        config_for(SAMPLE / "carrier_routing.xlsx", tmp_path), transport=httpx.ASGITransport(app=sandbox.app)
    )
    rows = read_results(summary.results_path)
    got = {int(r["import_row"]): (r["import_status"], r["import_action"]) for r in rows}
    assert got == SAMPLE_EXPECTED
    assert summary.exit_code == 1
    by_row = {int(r["import_row"]): r for r in rows}
    assert "inactive" in by_row[20]["import_reason"] and "not in this account" in by_row[21]["import_reason"]
    state = sandbox.state_snapshot()
    # every succeeded row is routed, with the routing id read back after the run
    routed = {int(r["did_id"]): int(r["id"]) for r in state["routing"]}
    for r in rows:
        if r["import_status"] == "succeeded":
            assert int(r["import_routing_id"]) == routed[int(r["import_did_id"])]
    assert write_count(state) == 12
    assert summary.failed_path is not None and summary.failed_path.exists()


def test_run_routes_every_row_exactly_once_and_rerun_skips(tmp_path: Path) -> None:
    inv = write_inventory(tmp_path / "inv.json", 30, existing={0: desired_record(0), 1: desired_record(2)})
    sheet = write_sheet(tmp_path / "sheet.csv", 30)
    sandbox = create_sandbox(SandboxConfig(inventory=inv))
    transport = httpx.ASGITransport(app=sandbox.app)
    summary = run_import(config_for(sheet, tmp_path), transport=transport)
    assert summary.exit_code == 0
    assert summary.counts == {"succeeded": 29, "unchanged": 1}
    state = sandbox.state_snapshot()
    assert routing_by_did(state) == {1000 + i: desired_record(i) for i in range(30)}
    assert all(n == 1 for n in state["create_attempts"].values())
    assert 1000 not in {int(k) for k in state["create_attempts"]}
    assert 1001 not in {int(k) for k in state["create_attempts"]}  # existed: updated, never created
    before = write_count(state)
    again = run_import(config_for(sheet, tmp_path), transport=transport)
    assert again.counts == {"unchanged": 30}
    assert write_count(sandbox.state_snapshot()) == before
    reasons = {r["import_reason"] for r in read_results(again.results_path)}
    assert all(reason.startswith("done in an earlier run at ") for reason in reasons)


def test_run_dry_run_sends_no_write(tmp_path: Path) -> None:
    inv = write_inventory(tmp_path / "inv.json", 6, existing={0: desired_record(1)})
    sheet = write_sheet(tmp_path / "sheet.csv", 6)
    sandbox = create_sandbox(SandboxConfig(inventory=inv))
    summary = run_import(
        config_for(sheet, tmp_path, dry_run=True), transport=httpx.ASGITransport(app=sandbox.app)
    )
    assert write_count(sandbox.state_snapshot()) == 0
    rows = {int(r["import_row"]): r for r in read_results(summary.results_path)}
    assert rows[2]["import_action"] == "update" and rows[2]["import_status"] == "not_sent"
    assert '"outbound_websocket_bot_id": 94' in rows[2]["import_current"]
    assert '"inbound_websocket_bot_id": 93' in rows[2]["import_proposed"]
    assert {rows[i]["import_action"] for i in range(3, 8)} == {"create"}
    assert not (tmp_path / "run.journal.sqlite").exists()


@pytest.mark.parametrize(("mode", "status"), [("skip", "skipped"), ("fail", "failed")])
def test_run_on_existing_skip_or_fail(tmp_path: Path, mode: str, status: str) -> None:
    inv = write_inventory(tmp_path / "inv.json", 3, existing={1: desired_record(0)})
    sheet = write_sheet(tmp_path / "sheet.csv", 3)
    sandbox = create_sandbox(SandboxConfig(inventory=inv))
    summary = run_import(
        config_for(sheet, tmp_path, on_existing=mode), transport=httpx.ASGITransport(app=sandbox.app)
    )
    rows = {int(r["import_row"]): r for r in read_results(summary.results_path)}
    assert rows[3]["import_status"] == status and "exists and differs" in rows[3]["import_reason"]
    assert routing_by_did(sandbox.state_snapshot())[1001] == desired_record(0)  # untouched


def test_run_rejected_key_exits_3_and_sends_nothing(tmp_path: Path) -> None:
    sandbox = create_sandbox(SandboxConfig(api_key="rg_live_the_real_one_123456"))
    with pytest.raises(AuthError) as info:
        run_import(
            config_for(SAMPLE / "carrier_routing.csv", tmp_path),
            transport=httpx.ASGITransport(app=sandbox.app),
        )
    assert info.value.exit_code == 3
    assert SANDBOX_API_KEY not in str(info.value)
    assert write_count(sandbox.state_snapshot()) == 0


def test_run_two_connections_need_a_choice(tmp_path: Path) -> None:
    inv = write_inventory(tmp_path / "inv.json", 3)
    sheet = write_sheet(tmp_path / "sheet.csv", 3)
    sandbox = create_sandbox(SandboxConfig(inventory=inv, two_connections=True))
    transport = httpx.ASGITransport(app=sandbox.app)
    with pytest.raises(InputError) as info:
        run_import(config_for(sheet, tmp_path), transport=transport)
    assert (
        CONNECTION in str(info.value)
        and SECOND_CONNECTION in str(info.value)
        and "default" in str(info.value)
    )
    with pytest.raises(InputError, match="not one of this account's connections"):
        run_import(
            config_for(sheet, tmp_path, connection_id="00000000-0000-4000-8000-000000000000"),
            transport=transport,
        )
    summary = run_import(config_for(sheet, tmp_path, connection_id=CONNECTION), transport=transport)
    assert summary.counts == {"succeeded": 3}


def test_run_max_error_rate_stops_sending(tmp_path: Path) -> None:
    inv = write_inventory(tmp_path / "inv.json", 40)
    sheet = write_sheet(tmp_path / "sheet.csv", 40)
    sandbox = create_sandbox(SandboxConfig(inventory=inv))
    base = httpx.ASGITransport(app=sandbox.app)

    class RejectWrites(httpx.AsyncBaseTransport):
        """The API refusing every write with a 400 (a plan the sandbox cannot be made to reject)."""

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            if request.method == "POST" and "call-routing" in request.url.path:
                return httpx.Response(
                    400,
                    json={
                        "success": False,
                        "error": {"code": "VALIDATION_ERROR", "message": "upstream says no"},
                    },
                )
            return await base.handle_async_request(request)

    summary = run_import(
        config_for(sheet, tmp_path, max_error_rate=0.2, concurrency=1), transport=RejectWrites()
    )
    assert summary.exit_code == 3
    assert summary.counts["failed"] == 20 and summary.counts["not_sent"] == 20
    rows = read_results(summary.results_path)
    assert {r["import_reason"] for r in rows if r["import_status"] == "failed"} == {"upstream says no"}
    assert all("max-error-rate" in r["import_reason"] for r in rows if r["import_status"] == "not_sent")


def test_run_key_revoked_midway_stops_all_sending(tmp_path: Path) -> None:
    inv = write_inventory(tmp_path / "inv.json", 12)
    sheet = write_sheet(tmp_path / "sheet.csv", 12)
    sandbox = create_sandbox(SandboxConfig(inventory=inv))
    base = httpx.ASGITransport(app=sandbox.app)
    writes = collections.Counter[str]()

    class RevokeAfterFive(httpx.AsyncBaseTransport):
        """The key being revoked mid-run: the sandbox's key is fixed, so this is the one wrapper."""

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            if request.method == "POST" and "call-routing" in request.url.path:
                writes["n"] += 1
                if writes["n"] > 5:
                    return httpx.Response(
                        401,
                        json={"success": False, "error": {"code": "UNAUTHORIZED", "message": "key revoked"}},
                    )
            return await base.handle_async_request(request)

    summary = run_import(config_for(sheet, tmp_path, concurrency=1), transport=RevokeAfterFive())
    assert summary.exit_code == 3 and "rejected" in summary.stopped  # why, for a library's caller
    assert summary.counts == {"succeeded": 5, "not_sent": 7}
    assert writes["n"] == 6


def test_run_progress_reports_every_write(tmp_path: Path) -> None:
    inv = write_inventory(tmp_path / "inv.json", 8)
    sheet = write_sheet(tmp_path / "sheet.csv", 8)
    sandbox = create_sandbox(SandboxConfig(inventory=inv))
    seen: list[Progress] = []
    run_import(
        config_for(sheet, tmp_path), transport=httpx.ASGITransport(app=sandbox.app), on_progress=seen.append
    )
    assert [p.done for p in seen] == list(range(9))
    assert all(p.total == 8 for p in seen) and seen[-1].succeeded == 8


def test_run_over_tcp_with_ambiguous_faults_never_duplicates(tmp_path: Path) -> None:
    inv = write_inventory(
        tmp_path / "inv.json", 30, existing={i: desired_record(i + 1) for i in range(0, 30, 5)}
    )
    sheet = write_sheet(tmp_path / "sheet.csv", 30)
    cfg = SandboxConfig(
        inventory=inv,
        requests_per_minute=100_000,
        ambiguous_rate=0.3,
        fail_rate=0.15,
        hang_rate=0.05,
        hang_seconds=3,
        seed=11,
    )
    with running_sandbox(cfg) as (url, sandbox):
        summary = run_import(config_for(sheet, tmp_path, base_url=url, timeout=1.0, concurrency=4))
        state = sandbox.state_snapshot()
    assert routing_by_did(state) == {1000 + i: desired_record(i) for i in range(30)}
    kinds = collections.Counter(f["kind"] for f in state["faults"])
    assert len(kinds) >= 2, kinds
    existed = {1000 + i for i in range(0, 30, 5)}
    assert not existed & {int(k) for k in state["create_attempts"]}
    creates_applied = collections.Counter(int(w["did_id"]) for w in state["writes"] if w["op"] == "create")
    assert set(creates_applied) == {1000 + i for i in range(30)} - existed
    assert all(n == 1 for n in creates_applied.values()), creates_applied
    assert summary.counts.get("succeeded") == 30 and summary.exit_code == 0


def test_run_audit_in_summary_sheet_and_journal(tmp_path: Path) -> None:
    """Who ran it, when, the input's sha256, the options, the key's last 4, connection, base URL, counts."""
    import getpass
    import hashlib
    import socket

    import openpyxl

    from importer.engine.journal import Journal

    sandbox = create_sandbox(SandboxConfig())
    sheet = SAMPLE / "carrier_routing.csv"
    summary = run_import(config_for(sheet, tmp_path), transport=httpx.ASGITransport(app=sandbox.app))
    wb = openpyxl.load_workbook(summary.results_path, read_only=True)
    items = {r[0]: r[1] for r in wb["Summary"].iter_rows(values_only=True) if r and r[0]}
    wb.close()
    sha = hashlib.sha256(sheet.read_bytes()).hexdigest()
    expected = {
        "sha256": sha,
        "os_user": getpass.getuser(),
        "host": socket.gethostname(),
        "api_key": "..." + SANDBOX_API_KEY[-4:],
        "connection": CONNECTION,
        "base_url": "http://sandbox.test/api/v2",
    }
    for key, value in expected.items():
        assert items[key] == value, key
    assert items["option on_existing"] == "update" and items["succeeded"] == 12
    with Journal.open(tmp_path / "run.journal.sqlite") as journal:
        (run,) = journal.runs()
    assert run.input_sha256 == sha and run.finished
    for key in ("os_user", "host", "api_key", "connection", "base_url"):
        assert run.audit[key] == expected[key], key
    assert run.counts == {"succeeded": 12, "unchanged": 1, "failed": 10, "skipped": 0, "not_sent": 0}
    assert run.options["requests_per_minute"] == "100000"


def _edited_report(sheet: Path, row: int, header: str, value: str) -> ValidationReport:
    """The sheet read and validated with one cell corrected (as the web service keeps edits)."""
    table = read_table(sheet)
    frame = table.frame.copy()
    frame.at[row, table.headers.index(header)] = value
    edited = RawTable(
        source=table.source, headers=table.headers, frame=frame, row_problems=table.row_problems
    )
    return validate_table(edited)


def test_run_takes_a_validated_table_extra_audit_and_shows_its_plan(tmp_path: Path) -> None:
    """A caller's corrected table is what is sent; its Summary lines are added; the plan is shown;
    a second run with the same correction finds the first one's rows by the file's sha256."""
    inv = write_inventory(tmp_path / "inv.json", 6)
    sheet = write_sheet(tmp_path / "sheet.csv", 6)
    sandbox = create_sandbox(SandboxConfig(inventory=inv))
    transport = httpx.ASGITransport(app=sandbox.app)
    plans: list[Plan] = []
    config = config_for(
        sheet, tmp_path, audit_extra={"uploaded_by": "Asha", "edit 1": "row 2, Status"}, on_plan=plans.append
    )
    summary = run_import(
        config, transport=transport, validated=_edited_report(sheet, 2, "Status", "inactive")
    )
    assert summary.exit_code == 0 and summary.counts == {"succeeded": 6} and summary.stopped == ""
    assert routing_by_did(sandbox.state_snapshot())[1000]["status"] == 0  # the file says active
    assert len(plans) == 1 and len(plans[0].writes) == 6 and plans[0].text().startswith("create 6")
    # every read and write the run made: the reads of the account, 6 creates, the read back
    assert summary.requests == sum(sandbox.state_snapshot()["request_counts"].values())
    summary_sheet = _summary_items(summary.results_path)
    assert summary_sheet["uploaded_by"] == "Asha" and summary_sheet["edit 1"] == "row 2, Status"
    again = run_import(config, transport=transport, validated=_edited_report(sheet, 2, "Status", "inactive"))
    assert again.counts == {"unchanged": 6}
    assert all(o.reason.startswith("done in an earlier run") for o in again.outcomes)


def test_run_async_writes_the_results_workbook_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A large workbook takes seconds: the loop (a web server's) must not wait for it."""
    from importer.jobs import run as run_module

    threads: list[threading.Thread] = []
    write = run_module.write_outputs

    def spy(*args: Any, **kwargs: Any) -> Any:
        threads.append(threading.current_thread())
        return write(*args, **kwargs)

    monkeypatch.setattr(run_module, "write_outputs", spy)
    sandbox = create_sandbox(SandboxConfig(inventory=write_inventory(tmp_path / "inv.json", 3)))
    summary = asyncio.run(
        run_import_async(
            config_for(write_sheet(tmp_path / "sheet.csv", 3), tmp_path),
            transport=httpx.ASGITransport(app=sandbox.app),
        )
    )
    assert summary.counts == {"succeeded": 3}
    assert len(threads) == 1 and threads[0] is not threading.main_thread()


def _summary_items(path: Path) -> dict[str, Any]:
    import openpyxl

    wb = openpyxl.load_workbook(path, read_only=True)
    try:
        return {r[0]: r[1] for r in wb["Summary"].iter_rows(values_only=True) if r and r[0]}
    finally:
        wb.close()
