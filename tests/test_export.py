"""``export``: the account's routing as a workbook, and the round trip through ``run``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import openpyxl
import pytest
from click.testing import CliRunner
from helpers import desired_record, did_number, read_results, write_inventory

from importer.cli import main
from importer.errors import InputError
from importer.fields import FIELD_NAMES
from importer.jobs.export import export_routing
from importer.jobs.run import run_import
from importer.model import Status
from importer.options import ExportConfig, ImportConfig, InputOptions
from importer.sandbox import SANDBOX_API_KEY, Sandbox, SandboxConfig, create_sandbox, running_sandbox

BASE = "http://sandbox.test/api/v2"
CONNECTION = "3f6c2a9e-5b1d-4c8e-9a7f-1e2d3c4b5a60"


def _export(sandbox: Sandbox, out: Path, **kw: Any) -> Any:
    config = ExportConfig(
        api_key=SANDBOX_API_KEY, base_url=BASE, output=out, requests_per_minute=100_000, **kw
    )
    return export_routing(config, transport=httpx.ASGITransport(app=sandbox.app))


def _sheets(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    book = openpyxl.load_workbook(path, read_only=True)
    try:
        return {name: list(book[name].iter_rows(values_only=True)) for name in book.sheetnames}
    finally:
        book.close()


def _varied_sandbox(tmp_path: Path, **kw: Any) -> Sandbox:
    """40 DIDs, 24 routed with every kind of record (bots, SIP, inactive, only-answer)."""
    existing = {i + k: desired_record(i + 2 * k) for i in range(0, 40, 5) for k in range(3)}
    inv = write_inventory(tmp_path / "inv.json", 40, existing=existing)
    return create_sandbox(SandboxConfig(inventory=inv, requests_per_minute=100_000, **kw))


def test_export_writes_the_template_columns_and_a_summary(tmp_path: Path) -> None:
    sandbox = create_sandbox(SandboxConfig(requests_per_minute=100_000))
    summary = _export(sandbox, tmp_path / "routing.xlsx")
    sheets = _sheets(tmp_path / "routing.xlsx")
    assert list(sheets) == ["Routing", "Summary"]
    header, *rows = sheets["Routing"]
    assert header == FIELD_NAMES
    assert summary.routed == 4 and summary.unrouted == 0 and len(rows) == 4
    assert all(isinstance(v, str) for row in rows for v in row if v is not None)
    by_id = {row[0]: dict(zip(FIELD_NAMES, row, strict=True)) for row in rows}
    assert (
        by_id["813"]["for_inbound_call"] == "WebSocket bot"
        and by_id["813"]["inbound_websocket_bot_id"] == "93"
    )
    assert by_id["901"]["status"] == "inactive" and by_id["901"]["for_outbound_call"] == "only-answer"
    assert by_id["814"]["inbound_sip_trunk_id"] == "7" and by_id["814"]["inbound_websocket_bot_id"] is None
    facts = dict(sheets["Summary"])
    assert (
        facts["API key"] == "...0000"
        and facts["routed DIDs"] == "4"
        and facts["connection"].startswith(CONNECTION)
    )
    assert facts["exported at"].endswith("Z")
    assert sandbox.state_snapshot()["request_counts"] == {
        "GET /telephony/connections": 1,
        "POST /voicelink/sync": 1,
    }
    text = str(sheets)
    assert SANDBOX_API_KEY not in text


def test_export_include_unrouted_lists_every_did_with_blank_modes(tmp_path: Path) -> None:
    sandbox = _varied_sandbox(tmp_path)
    summary = _export(sandbox, tmp_path / "all.xlsx", include_unrouted=True)
    _header, *rows = _sheets(tmp_path / "all.xlsx")["Routing"]
    assert len(rows) == 40 and summary.routed == 24 and summary.unrouted == 16
    unrouted = [r for r in rows if r[2] is None]
    assert len(unrouted) == 16 and all(r[0] and r[1] and set(r[2:]) == {None} for r in unrouted)
    assert [r[1] for r in rows] == sorted(did_number(i) for i in range(40))


def test_export_lean_sync_reads_pages_only_for_unrouted_dids(tmp_path: Path) -> None:
    """Routing carries its DIDs: a lean sync costs no page unless every DID is asked for."""
    sandbox = _varied_sandbox(tmp_path, lean_sync=True)
    assert _export(sandbox, tmp_path / "a.xlsx").routed == 24
    assert sandbox.state_snapshot()["request_counts"] == {
        "GET /telephony/connections": 1,
        "POST /voicelink/sync": 1,
    }
    summary = _export(sandbox, tmp_path / "b.xlsx", include_unrouted=True)
    assert summary.unrouted == 16
    assert sandbox.state_snapshot()["request_counts"]["GET /voicelink/dids/purchased"] == 1


@pytest.mark.parametrize("lean", [False, True])
def test_export_round_trip_plans_every_row_unchanged_and_sends_nothing(tmp_path: Path, lean: bool) -> None:
    sandbox = _varied_sandbox(tmp_path, lean_sync=lean)
    _export(sandbox, tmp_path / "snapshot.xlsx")
    before = sandbox.state_snapshot()["request_counts"]
    summary = run_import(
        ImportConfig(
            input=InputOptions(path=tmp_path / "snapshot.xlsx"),
            api_key=SANDBOX_API_KEY,
            base_url=BASE,
            output=tmp_path / "snapshot.results.xlsx",
            requests_per_minute=100_000,
            retry_backoff=0,
        ),
        transport=httpx.ASGITransport(app=sandbox.app),
    )
    assert summary.counts == {Status.UNCHANGED: 24} and summary.exit_code == 0
    assert {r["import_action"] for r in read_results(summary.results_path)} == {"unchanged"}
    after = sandbox.state_snapshot()["request_counts"]
    sent = {k: n - before.get(k, 0) for k, n in after.items() if n != before.get(k, 0)}
    # bots are read only when sync carries none (lean) and a row names one
    assert sent == {"GET /telephony/connections": 1, "POST /voicelink/sync": 1} | (
        {"GET /voicelink/bots": 1} if lean else {}
    )


def test_export_dry_run_writes_no_file(tmp_path: Path) -> None:
    sandbox = create_sandbox(SandboxConfig(requests_per_minute=100_000))
    summary = _export(sandbox, tmp_path / "x.xlsx", dry_run=True)
    assert summary.path is None and summary.routed == 4 and not (tmp_path / "x.xlsx").exists()


def test_export_output_is_checked_before_any_read(tmp_path: Path) -> None:
    sandbox = create_sandbox(SandboxConfig(requests_per_minute=100_000))
    (tmp_path / "taken.xlsx").mkdir()
    with pytest.raises(InputError, match=r"cannot save .*taken.xlsx: .*folder"):
        _export(sandbox, tmp_path / "taken.xlsx")
    with pytest.raises(InputError, match=r"give -o a name ending in .xlsx \(e.g. x.xlsx\)"):
        _export(sandbox, tmp_path / "x.csv")
    assert sandbox.state_snapshot()["request_counts"] == {}
    summary = _export(sandbox, tmp_path / "missing" / "x.xlsx")  # a missing folder is made, as for run
    assert summary.path is not None and summary.path.is_file()


def test_cli_export_against_tcp_sandbox(tmp_path: Path) -> None:
    out = tmp_path / "cli.xlsx"
    with running_sandbox(SandboxConfig(requests_per_minute=100_000)) as (url, _sandbox):
        result = CliRunner().invoke(
            main,
            [
                "export",
                "-o",
                str(out),
                "--base-url",
                url,
                "--connection-id",
                CONNECTION,
                "--include-unrouted",
            ],
            env={"VOCOBASE_API_KEY": SANDBOX_API_KEY},
        )
    assert result.exit_code == 0, result.output
    assert "4 routed DIDs, 26 without routing" in result.stdout and f"exported: {out}" in result.stdout
    assert result.stderr == ""  # not a terminal, and the reads took less than a minute
    assert len(_sheets(out)["Routing"]) == 31
