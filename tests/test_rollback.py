"""Rollback of a run against the real sandbox (in-process ASGI, and loopback TCP for the CLI)."""

from __future__ import annotations

import asyncio
import collections
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from helpers import desired_record, read_results, routing_fields, write_inventory, write_sheet

from importer.cli import main
from importer.errors import AuthError, InputError
from importer.journal import Journal
from importer.model import Status
from importer.pipeline import InputOptions, RunSummary
from importer.rollback import ROLLBACK_COLUMNS, RollbackConfig, RollbackPlan, default_rollback_path, rollback
from importer.run import ImportConfig, run_import
from importer.sandbox import SANDBOX_API_KEY, Sandbox, SandboxConfig, create_sandbox, running_sandbox

BASE = "http://sandbox.test/api/v2"
N = 6
UPDATED = (0, 1)  # routed before the import, differently: the import updates them
SAME = 2  # routed before the import exactly as the sheet asks: unchanged, no change to undo
CREATED = (3, 4, 5)  # not routed before: the import creates them (5 inactive: nothing to undo)


def routing_by_did(sandbox: Sandbox) -> dict[int, dict[str, int]]:
    return {int(r["did_id"]): routing_fields(r) for r in sandbox.state_snapshot()["routing"]}


def write_count(sandbox: Sandbox) -> int:
    counts = sandbox.state_snapshot()["request_counts"]
    return sum(n for k, n in counts.items() if k.startswith("POST /voicelink/call-routing"))


def existing() -> dict[int, dict[str, int]]:
    return {0: desired_record(1), 1: desired_record(2), SAME: desired_record(SAME)}


def do_import(tmp: Path, sandbox: Sandbox, transport: httpx.AsyncBaseTransport | None = None) -> RunSummary:
    sheet = write_sheet(tmp / "sheet.csv", N)
    config = ImportConfig(
        input=InputOptions(path=sheet),
        api_key=SANDBOX_API_KEY,
        base_url=BASE,
        requests_per_minute=100_000,
        retry_backoff=0,
    )
    summary = run_import(config, transport=transport or httpx.ASGITransport(app=sandbox.app))
    assert summary.counts == {"succeeded": 5, "unchanged": 1}
    return summary


def undo_config(source: Path, **kw: Any) -> RollbackConfig:
    defaults: dict[str, Any] = dict(
        source=source, api_key=SANDBOX_API_KEY, base_url=BASE, requests_per_minute=100_000, retry_backoff=0
    )
    defaults.update(kw)
    return RollbackConfig(**defaults)


@pytest.fixture
def imported(tmp_path: Path) -> tuple[Sandbox, RunSummary, dict[int, dict[str, int]]]:
    """A sandbox after an import that updated 2 rows and created 3, and its state before the import."""
    inv = write_inventory(tmp_path / "inv.json", N, existing=existing())
    sandbox = create_sandbox(SandboxConfig(inventory=inv))
    before = routing_by_did(sandbox)
    return sandbox, do_import(tmp_path, sandbox), before


def change_routing(sandbox: Sandbox, did_id: int, body: dict[str, int]) -> None:
    """Someone else updating a routing through the API (not through the importer)."""
    routing_id = next(int(r["id"]) for r in sandbox.state_snapshot()["routing"] if int(r["did_id"]) == did_id)

    async def send() -> None:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=sandbox.app), base_url=BASE + "/"
        ) as client:
            reply = await client.post(
                f"voicelink/call-routing/{routing_id}",
                json=body,
                headers={"Authorization": f"Bearer {SANDBOX_API_KEY}"},
            )
            assert reply.status_code == 200, reply.text

    asyncio.run(send())


def expected_after_rollback(before: dict[int, dict[str, int]]) -> dict[int, dict[str, int]]:
    return {**before, **{1000 + i: {**desired_record(i), "status": 0} for i in CREATED}}


def test_rollback_restores_updates_and_deactivates_creates(
    tmp_path: Path, imported: tuple[Sandbox, RunSummary, dict[int, dict[str, int]]]
) -> None:
    sandbox, run, before = imported
    plans: list[RollbackPlan] = []
    summary = rollback(
        undo_config(run.results_path, on_plan=plans.append), transport=httpx.ASGITransport(app=sandbox.app)
    )
    assert summary.exit_code == 0 and summary.counts == {"succeeded": 4, "unchanged": 1}
    # updated rows have their exact previous records; created rows are inactive with the run's modes
    assert routing_by_did(sandbox) == expected_after_rollback(before)
    assert plans[0].counts() == {"restore": 2, "deactivate": 2, "unchanged": 1, "skip": 0, "fail": 0}
    assert any("the API has no delete" in line for line in plans[0].lines())
    assert summary.results_path == default_rollback_path(tmp_path / "sheet.journal.sqlite")
    assert summary.results_path.name == "sheet.rollback.xlsx"
    rows = read_results(summary.results_path)
    assert [r["run_row"] for r in rows] == ["2", "3", "5", "6", "7"]  # one row per change, input rows
    assert list(rows[0])[: len(ROLLBACK_COLUMNS)] == list(ROLLBACK_COLUMNS)
    by_did = {int(r["did_id"]): r for r in rows}
    for i in CREATED[:2]:
        assert by_did[1000 + i]["action_undone"] == "create"
        assert "the API has no delete" in by_did[1000 + i]["import_reason"]
        assert "deactivated (status 0), modes kept" in by_did[1000 + i]["import_reason"]
    assert by_did[1005]["import_status"] == "unchanged"  # created inactive: already as the rollback wants
    for i in UPDATED:
        assert by_did[1000 + i]["action_undone"] == "update"
        assert by_did[1000 + i]["import_routing_id"] == str(7000 + i)
    with Journal.open(tmp_path / "sheet.journal.sqlite") as journal:
        runs = journal.runs()
        assert [r["command"] for r in runs] == ["run", "rollback"]
        assert runs[1]["audit"]["rollback_of_run"] == "1"  # type: ignore[index]
        assert len(journal.changes(int(str(runs[1]["run_id"])))) == 4  # every rollback write journalled


def test_rollback_twice_is_idempotent(
    tmp_path: Path, imported: tuple[Sandbox, RunSummary, dict[int, dict[str, int]]]
) -> None:
    sandbox, run, before = imported
    transport = httpx.ASGITransport(app=sandbox.app)
    rollback(undo_config(run.results_path), transport=transport)
    writes = write_count(sandbox)
    again = rollback(undo_config(tmp_path / "sheet.journal.sqlite"), transport=transport)
    assert again.exit_code == 0 and again.counts == {"unchanged": 5}
    assert write_count(sandbox) == writes
    assert routing_by_did(sandbox) == expected_after_rollback(before)
    reasons = {r["import_reason"] for r in read_results(again.results_path)}
    assert reasons == {
        "already as before the run; nothing to send",
        "already inactive with the run's modes; nothing to send",
    }


def test_rollback_dry_run_sends_nothing(
    tmp_path: Path, imported: tuple[Sandbox, RunSummary, dict[int, dict[str, int]]]
) -> None:
    sandbox, run, _ = imported
    after_import = routing_by_did(sandbox)
    writes = write_count(sandbox)
    summary = rollback(
        undo_config(run.results_path, dry_run=True, output=tmp_path / "plan.xlsx"),
        transport=httpx.ASGITransport(app=sandbox.app),
    )
    assert write_count(sandbox) == writes and routing_by_did(sandbox) == after_import
    assert summary.counts == {"not_sent": 4, "unchanged": 1} and summary.exit_code == 0
    rows = {int(r["did_id"]): r for r in read_results(tmp_path / "plan.xlsx")}
    assert '"outbound_websocket_bot_id": 94' in rows[1000]["import_proposed"]  # DID 0's record before
    assert '"status": 0' in rows[1003]["import_proposed"]
    with Journal.open(tmp_path / "sheet.journal.sqlite") as journal:
        assert [r["command"] for r in journal.runs()] == ["run"]  # a dry run journals nothing


def test_rollback_skips_a_row_changed_since_and_force_overwrites_it(
    tmp_path: Path, imported: tuple[Sandbox, RunSummary, dict[int, dict[str, int]]]
) -> None:
    sandbox, run, before = imported
    transport = httpx.ASGITransport(app=sandbox.app)
    someone = {"for_inbound_call": 1, "for_outbound_call": 4, "status": 1}
    change_routing(sandbox, 1000, someone)  # an updated row
    change_routing(sandbox, 1004, someone)  # a created row
    summary = rollback(undo_config(run.results_path), transport=transport)
    assert summary.counts == {"succeeded": 2, "skipped": 2, "unchanged": 1} and summary.exit_code == 0
    assert any("--force" in note for note in summary.notes)
    state = routing_by_did(sandbox)
    assert state[1000] == someone and state[1004] == someone  # left alone
    skipped = [r for r in read_results(summary.results_path) if r["import_status"] == "skipped"]
    assert {r["did_id"] for r in skipped} == {"1000", "1004"}
    assert all("changed since the run" in r["import_reason"] for r in skipped)

    forced = rollback(undo_config(run.results_path, force=True), transport=transport)
    assert forced.counts == {"succeeded": 2, "unchanged": 3}
    assert routing_by_did(sandbox) == expected_after_rollback(before)


def test_rollback_settles_writes_a_crashed_run_left_in_flight(
    tmp_path: Path, imported: tuple[Sandbox, RunSummary, dict[int, dict[str, int]]]
) -> None:
    """A crash between sending and recording: applied writes are undone, others need nothing."""
    sandbox, _, _ = imported
    journal_path = tmp_path / "sheet.journal.sqlite"
    with Journal.open(journal_path) as journal:
        crashed = journal.start_run(
            input_sha256="x", input_name="sheet.csv", command="run", audit={}, options={}
        )
        applied = {"for_inbound_call": 1, "for_outbound_call": 4, "status": 1}
        journal.record_sending(crashed, 2, "id:1000", "update", applied, desired_record(0))
        journal.record_sending(crashed, 3, "id:1001", "update", applied, {**applied, "status": 0})
    change_routing(sandbox, 1000, applied)  # the first write landed, the second did not
    summary = rollback(undo_config(journal_path), transport=httpx.ASGITransport(app=sandbox.app))
    rows = {r["did_id"]: r for r in read_results(summary.results_path)}
    assert rows["1000"]["import_status"] == "succeeded"
    assert "in-flight write had been applied" in rows["1000"]["import_reason"]
    assert rows["1001"]["import_status"] == "unchanged" and "never applied" in rows["1001"]["import_reason"]
    state = routing_by_did(sandbox)
    assert state[1000] == desired_record(0) and state[1001] == desired_record(1)  # as after the import


def test_rollback_settles_lost_answers_by_rereading(tmp_path: Path) -> None:
    """Writes applied but answered 500 or dropped: settled by re-reading, the state ends right."""
    inv = write_inventory(tmp_path / "inv.json", N, existing=existing())
    before = routing_by_did(create_sandbox(SandboxConfig(inventory=inv)))
    sandbox = create_sandbox(SandboxConfig(inventory=inv, ambiguous_rate=0.5, seed=3))
    transport = httpx.ASGITransport(app=sandbox.app)
    do_import(tmp_path, sandbox, transport)
    faults_before = len(sandbox.state_snapshot()["faults"])
    summary = rollback(undo_config(tmp_path / "sheet.results.xlsx"), transport=transport)
    assert len(sandbox.state_snapshot()["faults"]) > faults_before  # the rollback met lost answers
    assert summary.exit_code == 0 and summary.counts == {"succeeded": 4, "unchanged": 1}
    kinds = collections.Counter(r["import_reason"].split(";")[-1] for r in read_results(summary.results_path))
    assert any("confirmed by re-reading" in k for k in kinds), kinds
    assert routing_by_did(sandbox) == expected_after_rollback(before)


def test_rollback_reports_a_restore_the_api_rejects(tmp_path: Path) -> None:
    """The previous record routes to a bot that is inactive now: the API refuses, the row fails."""
    retired = {"for_inbound_call": 3, "inbound_websocket_bot_id": 95, "for_outbound_call": 4, "status": 1}
    inv = write_inventory(tmp_path / "inv.json", N, existing={**existing(), 0: retired})
    sandbox = create_sandbox(SandboxConfig(inventory=inv))
    transport = httpx.ASGITransport(app=sandbox.app)
    do_import(tmp_path, sandbox, transport)
    summary = rollback(undo_config(tmp_path / "sheet.results.xlsx"), transport=transport)
    assert summary.exit_code == 1 and summary.counts == {"succeeded": 3, "failed": 1, "unchanged": 1}
    failed = [r for r in read_results(summary.results_path) if r["import_status"] == "failed"]
    assert failed[0]["did_id"] == "1000" and "inbound_websocket_bot_id" in failed[0]["import_reason"]


@pytest.mark.parametrize(
    ("source", "extra", "fragment"),
    [
        ("missing.results.xlsx", {}, "no such file"),
        ("sheet.journal.sqlite", {"run_id": 9}, "has no run 9 (runs: 1)"),
        ("sheet.rollback.xlsx", {}, "is a rollback's own results"),
        ("sheet.csv", {}, "cannot be read as a results workbook"),
    ],
)
def test_rollback_unusable_source_is_an_input_error(
    tmp_path: Path,
    imported: tuple[Sandbox, RunSummary, dict[int, dict[str, int]]],
    source: str,
    extra: dict[str, Any],
    fragment: str,
) -> None:
    sandbox, run, _ = imported
    transport = httpx.ASGITransport(app=sandbox.app)
    rollback(undo_config(run.results_path, dry_run=True), transport=transport)  # makes sheet.rollback.xlsx
    with pytest.raises(InputError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        rollback(undo_config(tmp_path / source, **extra), transport=transport)


def test_rollback_without_the_journal_says_where_it_looked(
    tmp_path: Path, imported: tuple[Sandbox, RunSummary, dict[int, dict[str, int]]]
) -> None:
    sandbox, run, _ = imported
    (tmp_path / "sheet.journal.sqlite").rename(tmp_path / "elsewhere.sqlite")
    with pytest.raises(InputError, match=r"no journal at .*sheet\.journal\.sqlite"):
        rollback(undo_config(run.results_path), transport=httpx.ASGITransport(app=sandbox.app))


def test_rollback_rejected_key_sends_nothing(
    tmp_path: Path, imported: tuple[Sandbox, RunSummary, dict[int, dict[str, int]]]
) -> None:
    sandbox, run, _ = imported
    writes = write_count(sandbox)
    with pytest.raises(AuthError) as info:
        rollback(
            undo_config(run.results_path, api_key="rg_live_wrong_key_123456"),
            transport=httpx.ASGITransport(app=sandbox.app),
        )
    assert "rg_live_wrong_key_123456" not in str(info.value) and write_count(sandbox) == writes


def test_rollback_not_confirmed_sends_nothing_and_exits_3(
    tmp_path: Path, imported: tuple[Sandbox, RunSummary, dict[int, dict[str, int]]]
) -> None:
    sandbox, run, _ = imported
    writes = write_count(sandbox)
    asked: list[str] = []
    summary = rollback(
        undo_config(run.results_path, confirm=lambda plan: asked.append(plan.text()) or False),
        transport=httpx.ASGITransport(app=sandbox.app),
    )
    assert (
        summary.exit_code == 3
        and summary.counts == {"not_sent": 4, "unchanged": 1}
        and write_count(sandbox) == writes
    )
    assert asked and asked[0].startswith("restore 2, deactivate 2")


def test_cli_rollback_dry_run_over_tcp(tmp_path: Path) -> None:
    inv = write_inventory(tmp_path / "inv.json", N, existing=existing())
    with running_sandbox(SandboxConfig(inventory=inv, requests_per_minute=100_000)) as (url, sandbox):
        run = do_import(tmp_path, sandbox)
        writes = write_count(sandbox)
        result = CliRunner().invoke(
            main,
            ["rollback", str(run.results_path), "--dry-run"],
            env={"VOCOBASE_API_KEY": SANDBOX_API_KEY, "VOCOBASE_BASE_URL": url},
        )
        assert result.exit_code == 0, result.output
        assert write_count(sandbox) == writes
    assert "the API has no delete: routing" in result.output
    assert "plan: restore 2, deactivate 2" in result.output
    assert "dry run: nothing was sent" in result.output
    assert SANDBOX_API_KEY not in result.output
    assert (tmp_path / "sheet.rollback.xlsx").exists()


def test_rerun_after_rollback_plans_rows_afresh(tmp_path: Path) -> None:
    """A row put back by a rollback is no longer 'done in an earlier run': the file can be applied again."""
    inv = write_inventory(tmp_path / "inv.json", 4, existing={0: desired_record(1)})
    sheet = write_sheet(tmp_path / "sheet.csv", 4)
    sandbox = create_sandbox(SandboxConfig(inventory=inv))
    transport = httpx.ASGITransport(app=sandbox.app)
    common = dict(api_key=SANDBOX_API_KEY, base_url="http://sandbox.test/api/v2", retry_backoff=0)
    first = run_import(
        ImportConfig(input=InputOptions(path=sheet), output=tmp_path / "a.results.xlsx", **common),  # type: ignore[arg-type]
        transport=transport,
    )
    assert first.counts == {Status.SUCCEEDED: 4}
    rollback(RollbackConfig(source=first.results_path, **common), transport=transport)  # type: ignore[arg-type]
    assert {int(r["did_id"]): int(r["status"]) for r in sandbox.state_snapshot()["routing"]}[1001] == 0
    again = run_import(
        ImportConfig(input=InputOptions(path=sheet), output=tmp_path / "a.results.xlsx", **common),  # type: ignore[arg-type]
        transport=transport,
    )
    # DID 1002's row asks for status 0: the rollback's deactivation already matches it.
    assert again.counts == {Status.SUCCEEDED: 3, Status.UNCHANGED: 1}
    routed = {int(r["did_id"]): r for r in sandbox.state_snapshot()["routing"]}
    assert all(int(routed[1000 + i]["status"]) == desired_record(i)["status"] for i in range(4))
