"""Rollback of a run against the real sandbox (in-process ASGI, and loopback TCP for the CLI)."""

from __future__ import annotations

import asyncio
import collections
import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from helpers import (
    change_routing,
    desired_record,
    did_number,
    read_results,
    routing_fields,
    write_inventory,
    write_sheet,
)

from importer.cli import main
from importer.engine.journal import Journal
from importer.engine.plan import Plan
from importer.errors import AuthError, InputError, NothingToDo
from importer.jobs.rollback import ROLLBACK_COLUMNS, default_rollback_path
from importer.jobs.rollback import rollback_run as rollback
from importer.jobs.run import run_import, run_import_async
from importer.jobs.summary import RunSummary
from importer.model import Status
from importer.options import ImportConfig, InputOptions, RollbackConfig
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


def expected_after_rollback(before: dict[int, dict[str, int]]) -> dict[int, dict[str, int]]:
    return {**before, **{1000 + i: {**desired_record(i), "status": 0} for i in CREATED}}


def test_rollback_restores_updates_and_deactivates_creates(
    tmp_path: Path, imported: tuple[Sandbox, RunSummary, dict[int, dict[str, int]]]
) -> None:
    sandbox, run, before = imported
    plans: list[Plan] = []
    summary = rollback(
        undo_config(run.results_path, on_plan=plans.append), transport=httpx.ASGITransport(app=sandbox.app)
    )
    assert summary.exit_code == 0 and summary.counts == {"succeeded": 4, "unchanged": 1}
    # updated rows have their exact previous records; created rows are inactive with the run's modes
    assert routing_by_did(sandbox) == expected_after_rollback(before)
    assert dict(plans[0].counts) == {"restore": 2, "deactivate": 2, "unchanged": 1, "skip": 0, "fail": 0}
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
        assert [r.command for r in runs] == ["run", "rollback"]
        assert runs[1].audit["rollback_of_run"] == "1"
        assert len(journal.changes(runs[1].run_id)) == 4  # every rollback write journalled


def test_rollback_twice_is_idempotent(
    tmp_path: Path, imported: tuple[Sandbox, RunSummary, dict[int, dict[str, int]]]
) -> None:
    sandbox, run, before = imported
    transport = httpx.ASGITransport(app=sandbox.app)
    rollback(undo_config(run.results_path), transport=transport)
    writes = write_count(sandbox)
    again = rollback(undo_config(run.results_path), transport=transport)  # the run's workbook names it
    assert again.exit_code == 0 and again.counts == {"unchanged": 5}
    assert write_count(sandbox) == writes
    assert routing_by_did(sandbox) == expected_after_rollback(before)
    reasons = {r["import_reason"] for r in read_results(again.results_path)}
    assert reasons == {"rolled back already by run 2; nothing left to roll back"}
    # The journal alone never defaults to a run rolled back already: it says there is nothing left.
    with pytest.raises(
        NothingToDo,
        match=r"^nothing left to roll back in sheet\.journal\.sqlite: every change was rolled back already "
        r"\(run 1 by run 2\)$",
    ):
        rollback(undo_config(tmp_path / "sheet.journal.sqlite"), transport=transport)
    assert write_count(sandbox) == writes


def test_second_rollback_takes_a_stamped_name(
    tmp_path: Path, imported: tuple[Sandbox, RunSummary, dict[int, dict[str, int]]]
) -> None:
    """A second rollback keeps the first one's workbook: it writes beside it under a timestamped name."""
    sandbox, run, _ = imported
    transport = httpx.ASGITransport(app=sandbox.app)
    first = rollback(undo_config(run.results_path, dry_run=True), transport=transport)
    first_bytes = first.results_path.read_bytes()
    second = rollback(undo_config(run.results_path, dry_run=True), transport=transport)
    assert first.results_path.name == "sheet.rollback.xlsx"
    assert re.fullmatch(r"sheet\.rollback\.\d{8}-\d{6}(-\d+)?\.xlsx", second.results_path.name)
    assert first.results_path.read_bytes() == first_bytes  # untouched
    assert len(read_results(second.results_path)) == len(read_results(first.results_path)) == 5
    # an explicit -o is taken at its word and overwritten, as for run
    third = rollback(
        undo_config(run.results_path, dry_run=True, output=first.results_path), transport=transport
    )
    assert third.results_path == first.results_path


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
        assert [r.command for r in journal.runs()] == ["run"]  # a dry run journals nothing


@pytest.mark.parametrize("lean", [False, True])
def test_rollback_reads_the_connections_and_one_sync(tmp_path: Path, lean: bool) -> None:
    """The DIDs a rollback touches are routed, so sync resolves them (lean or not): no DID page."""
    inv = write_inventory(tmp_path / "inv.json", N, existing=existing())
    sandbox = create_sandbox(SandboxConfig(inventory=inv, requests_per_minute=100_000, lean_sync=lean))
    run = do_import(tmp_path, sandbox)
    before = dict(sandbox.state_snapshot()["request_counts"])
    plans: list[Plan] = []
    summary = rollback(
        undo_config(run.results_path, on_plan=plans.append), transport=httpx.ASGITransport(app=sandbox.app)
    )
    assert summary.counts == {"succeeded": 4, "unchanged": 1}
    after = sandbox.state_snapshot()["request_counts"]
    reads = {
        k: n - before.get(k, 0)
        for k, n in after.items()
        if n != before.get(k, 0) and not k.startswith("POST /voicelink/call-routing")
    }
    # updates only: the closing sync (for created routing ids) is not needed
    assert reads == {"GET /telephony/connections": 1, "POST /voicelink/sync": 1}
    assert "(the API has no delete: deactivate sets status 0, modes kept; 2 reads done; 4 writes, about" in (
        plans[0].text()
    )


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


def test_rollback_not_confirmed_sends_nothing_and_exits_0(
    tmp_path: Path, imported: tuple[Sandbox, RunSummary, dict[int, dict[str, int]]]
) -> None:
    """Declining the prompt is a choice, not a failure: exit 0, 'nothing sent'."""
    sandbox, run, _ = imported
    writes = write_count(sandbox)
    asked: list[str] = []
    summary = rollback(
        undo_config(run.results_path, confirm=lambda plan: asked.append(plan.text()) or False),
        transport=httpx.ASGITransport(app=sandbox.app),
    )
    assert (
        summary.exit_code == 0
        and summary.counts == {"not_sent": 4, "unchanged": 1}
        and write_count(sandbox) == writes
    )
    assert asked and asked[0].startswith("restore 2, deactivate 2")
    assert summary.notes[0] == "nothing sent: the plan was not confirmed"
    assert summary.stopped == "not confirmed"


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


class Scripted(httpx.AsyncBaseTransport):
    """The sandbox, except that writes to one path first get scripted answers (never applied)."""

    def __init__(self, sandbox: Sandbox, path: str, answers: list[int]) -> None:
        self.base = httpx.ASGITransport(app=sandbox.app)
        self.path = path
        self.answers = list(answers)
        self.sent = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and request.url.path.endswith(self.path):
            self.sent += 1
            if self.answers:
                status = self.answers.pop(0)
                # Retry-After 0: the limiter's pause must not hold the test for a window.
                headers = {"Retry-After": "0"} if status == 429 else {}
                error = {"code": "RATE_LIMITED" if status == 429 else "INTERNAL", "message": "scripted"}
                return httpx.Response(status, json={"success": False, "error": error}, headers=headers)
        return await self.base.handle_async_request(request)


@pytest.mark.parametrize(
    "job",
    [
        "run",
        "rollback",
    ],
)
def test_rollback_and_run_settle_429_429_500_alike(tmp_path: Path, job: str) -> None:
    """429, 429, 500 on one write: the 429s are re-sent and cost no try; the 500 is settled by
    re-reading, then the write is sent again and succeeds, in a run and in a rollback alike."""
    inv = write_inventory(tmp_path / "inv.json", N, existing=existing())
    sandbox = create_sandbox(SandboxConfig(inventory=inv))
    path = "/voicelink/call-routing/7000"  # DID 1000's routing: the run updates it, the rollback restores it
    if job == "run":
        transport = Scripted(sandbox, path, [429, 429, 500])
        summary = do_import(tmp_path, sandbox, transport)
        row = next(r for r in read_results(summary.results_path) if r["import_did_id"] == "1000")
    else:
        run = do_import(tmp_path, sandbox)
        transport = Scripted(sandbox, path, [429, 429, 500])
        summary = rollback(undo_config(run.results_path), transport=transport)
        assert summary.exit_code == 0 and summary.counts == {"succeeded": 4, "unchanged": 1}
        row = next(r for r in read_results(summary.results_path) if r["did_id"] == "1000")
    assert row["import_status"] == "succeeded", row["import_reason"]
    assert "HTTP 500" in row["import_reason"]  # the unknown outcome is named in the reason
    assert transport.sent == 4 and row["import_attempts"] == "4"  # 429, 429, 500, then the re-send


# -- rollback across the runs of one input (an interrupted run and its resume) ---------


def interrupted_then_resumed(
    tmp: Path, sandbox: Sandbox, stop_after: int = 2
) -> tuple[RunSummary, RunSummary]:
    """Run 1 is stopped (cancel) after ``stop_after`` writes; run 2 resumes the same file to the end."""
    sheet = write_sheet(tmp / "sheet.csv", N)
    config = ImportConfig(
        input=InputOptions(path=sheet),
        api_key=SANDBOX_API_KEY,
        base_url=BASE,
        requests_per_minute=100_000,
        retry_backoff=0,
        concurrency=1,  # one write at a time: the stop lands after exactly ``stop_after`` writes
    )
    transport = httpx.ASGITransport(app=sandbox.app)

    async def first() -> RunSummary:
        cancel = asyncio.Event()

        def progress(p: Any) -> None:
            if p.done >= stop_after:
                cancel.set()

        return await run_import_async(config, transport=transport, on_progress=progress, cancel=cancel)

    stopped = asyncio.run(first())
    assert stopped.exit_code == 130 and stopped.counts[Status.SUCCEEDED] == stop_after
    resumed = run_import(config, transport=transport)
    assert resumed.exit_code == 0 and resumed.counts[Status.SUCCEEDED] == 5 - stop_after
    return stopped, resumed


def test_rollback_of_a_resumed_run_covers_every_run_of_the_input(tmp_path: Path) -> None:
    """Run 1 stopped after 2 updates, run 2 finished: rolling back run 2's workbook undoes both runs."""
    inv = write_inventory(tmp_path / "inv.json", N, existing=existing())
    sandbox = create_sandbox(SandboxConfig(inventory=inv))
    before = routing_by_did(sandbox)
    _, resumed = interrupted_then_resumed(tmp_path, sandbox)
    plans: list[Plan] = []
    summary = rollback(
        undo_config(resumed.results_path, on_plan=plans.append),
        transport=httpx.ASGITransport(app=sandbox.app),
    )
    assert summary.exit_code == 0 and summary.counts == {"succeeded": 4, "unchanged": 1}
    assert routing_by_did(sandbox) == expected_after_rollback(before)  # run 1's updates are undone too
    assert "2 routing records run 2 created were deactivated (status 0), modes kept" in summary.notes[-1]
    assert plans[0].heading.startswith("rollback of runs 1, 2 (sheet.csv) from ")
    assert [d.split(":")[0] for d in plans[0].details] == [
        "row 2, DID 918020000000 (id 1000), updated by run 1",
        "row 3, DID 918020000001 (id 1001), updated by run 1",
        "row 5, DID 918020000003 (id 1003), created by run 2",
        "row 6, DID 918020000004 (id 1004), created by run 2",
        "row 7, DID 918020000005 (id 1005), created by run 2",
    ]
    with Journal.open(tmp_path / "sheet.journal.sqlite") as journal:
        assert journal.runs()[-1].audit["rollback_of_run"] == "1,2"
    # the rolled-back rows are no longer "done": the file can be applied again
    again = run_import(
        ImportConfig(
            input=InputOptions(path=tmp_path / "sheet.csv"),
            api_key=SANDBOX_API_KEY,
            base_url=BASE,
            requests_per_minute=100_000,
            retry_backoff=0,
        ),
        transport=httpx.ASGITransport(app=sandbox.app),
    )
    assert again.counts == {"succeeded": 4, "unchanged": 2}  # 1005: asked inactive
    done = [o.row for o in again.outcomes if o.reason.startswith("done in an earlier run")]
    assert done == [2 + SAME]  # as asked before run 1 and never changed: still done


def test_rollback_run_id_narrows_to_the_runs_named(tmp_path: Path) -> None:
    inv = write_inventory(tmp_path / "inv.json", N, existing=existing())
    sandbox = create_sandbox(SandboxConfig(inventory=inv))
    before = routing_by_did(sandbox)
    _, resumed = interrupted_then_resumed(tmp_path, sandbox)
    transport = httpx.ASGITransport(app=sandbox.app)
    plans: list[Plan] = []
    second = rollback(
        undo_config(resumed.results_path, run_ids=[2], on_plan=plans.append), transport=transport
    )
    assert plans[0].heading.startswith("rollback of run 2 (sheet.csv) from ")
    assert second.counts == {"succeeded": 2, "unchanged": 1}  # run 2's creates only
    state = routing_by_did(sandbox)
    assert state[1000] == desired_record(0) and state[1001] == desired_record(1)  # run 1's updates stay
    first = rollback(undo_config(tmp_path / "sheet.journal.sqlite", run_ids=(1,)), transport=transport)
    assert first.counts == {"succeeded": 2}
    assert routing_by_did(sandbox) == expected_after_rollback(before)


def test_rollback_across_runs_restores_the_record_before_the_first_run(
    tmp_path: Path, imported: tuple[Sandbox, RunSummary, dict[int, dict[str, int]]]
) -> None:
    """A DID changed by run 1 and again by run 2: the first run's before, the last run's body."""
    sandbox, _, before = imported
    someone = {"for_inbound_call": 1, "for_outbound_call": 4, "status": 1}
    change_routing(sandbox, 1000, someone)
    with Journal.open(tmp_path / "sheet.journal.sqlite") as journal:
        first = journal.runs()[0]
        second = journal.start_run(
            input_sha256=first.input_sha256, input_name="sheet.csv", command="run", audit={}, options={}
        )
        journal.record_sending(second, 2, "id:1000", "update", desired_record(0), someone)
        journal.record_outcome(
            second, 2, status="succeeded", action="update", reason="", did_id=1000, routing_id=7000,
            http_status=200, attempts=1,
        )  # fmt: skip
        journal.finish_run(second, {"succeeded": 1})
    change_routing(sandbox, 1000, desired_record(0))  # what run 2 sent
    # the journal: its latest input's runs (run 2 alone would put back `someone`)
    journal_path = tmp_path / "sheet.journal.sqlite"
    summary = rollback(undo_config(journal_path), transport=httpx.ASGITransport(app=sandbox.app))
    assert summary.exit_code == 0
    assert routing_by_did(sandbox)[1000] == before[1000]  # not `someone`: the record before run 1
    assert routing_by_did(sandbox) == expected_after_rollback(before)


def test_rollback_from_a_run_that_changed_nothing_names_the_runs_that_did(
    tmp_path: Path, imported: tuple[Sandbox, RunSummary, dict[int, dict[str, int]]]
) -> None:
    sandbox, _, _ = imported
    again = do_import_again(tmp_path, sandbox)  # run 2: every row done in run 1, nothing sent
    with pytest.raises(InputError) as info:
        rollback(undo_config(again.results_path), transport=httpx.ASGITransport(app=sandbox.app))
    assert str(info.value) == (
        "run 2 changed nothing; run 1 of the same input changed 5 rows: "
        "roll back with --run-id 1 or pass the journal sheet.journal.sqlite"
    )
    journal = tmp_path / "sheet.journal.sqlite"
    with pytest.raises(InputError, match=r"^run 2 changed nothing; run 1 of the same input changed 5 rows"):
        rollback(undo_config(journal, run_ids=[2]), transport=httpx.ASGITransport(app=sandbox.app))
    rollback(undo_config(journal), transport=httpx.ASGITransport(app=sandbox.app))  # run 3 undoes run 1
    third = do_import_again(tmp_path, sandbox, {"succeeded": 4, "unchanged": 2})  # run 4 applies it again
    with pytest.raises(InputError) as info:  # run 5: nothing to do
        rollback(
            undo_config(do_import_again(tmp_path, sandbox).results_path),
            transport=httpx.ASGITransport(app=sandbox.app),
        )
    assert str(info.value).startswith(
        "run 5 changed nothing; run 4 of the same input changed 4 rows: roll back with --run-id 4 or"
    )
    rollback(undo_config(third.results_path, run_ids=[4]), transport=httpx.ASGITransport(app=sandbox.app))
    with pytest.raises(InputError) as info:  # run 6 undid run 4
        rollback(undo_config(journal, run_ids=[5]), transport=httpx.ASGITransport(app=sandbox.app))
    assert str(info.value) == (
        "run 5 changed nothing; runs 1 and 4 of the same input changed 5 rows "
        "and runs 3 and 6 rolled them back already"
    )
    with Journal.open(journal) as j:
        alone = j.start_run(
            input_sha256="z" * 64, input_name="other.csv", command="run", audit={}, options={}
        )
    with pytest.raises(InputError, match=r"^run 7 changed nothing, nor did any other run of the same input"):
        rollback(undo_config(journal, run_ids=[alone]), transport=httpx.ASGITransport(app=sandbox.app))


def do_import_again(tmp: Path, sandbox: Sandbox, counts: dict[str, int] | None = None) -> RunSummary:
    config = ImportConfig(
        input=InputOptions(path=tmp / "sheet.csv"),
        api_key=SANDBOX_API_KEY,
        base_url=BASE,
        requests_per_minute=100_000,
        retry_backoff=0,
    )
    summary = run_import(config, transport=httpx.ASGITransport(app=sandbox.app))
    assert summary.counts == (counts or {"unchanged": 6})
    return summary


def create_routing(sandbox: Sandbox, body: dict[str, int]) -> int:
    """A create landing on the API (as a killed run's write may have), outside the importer."""

    async def send() -> None:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=sandbox.app), base_url=BASE + "/"
        ) as client:
            reply = await client.post(
                "voicelink/call-routing", json=body, headers={"Authorization": f"Bearer {SANDBOX_API_KEY}"}
            )
            assert reply.status_code in (200, 201), reply.text

    asyncio.run(send())
    return next(
        int(r["id"]) for r in sandbox.state_snapshot()["routing"] if int(r["did_id"]) == body["did_id"]
    )


def test_rollback_after_a_killed_run_and_its_resume_undoes_both(tmp_path: Path) -> None:
    """Run 1 killed (never finished) with one create confirmed and one in flight but applied;
    run 2 resumes the file: rolling back run 2's workbook deactivates run 1's creates too."""
    inv = write_inventory(tmp_path / "inv.json", N, existing=existing())
    sandbox = create_sandbox(SandboxConfig(inventory=inv))
    before = routing_by_did(sandbox)
    sheet = write_sheet(tmp_path / "sheet.csv", N)
    with Journal.open(tmp_path / "sheet.journal.sqlite") as journal:
        killed = journal.start_run(
            input_sha256=hashlib.sha256(sheet.read_bytes()).hexdigest(),
            input_name="sheet.csv",
            command="run",
            audit={},
            options={},
        )
        for i in (3, 4):  # rows 5 and 6: DIDs 1003 and 1004, not routed before
            body = {"did_id": 1000 + i, **desired_record(i)}
            journal.record_sending(killed, 2 + i, f"id:{1000 + i}", "create", body, None)
            routing_id = create_routing(sandbox, body)
            if i == 3:  # the second write's answer never got recorded: the process was killed
                journal.record_outcome(
                    killed, 2 + i, status="succeeded", action="create", reason="", did_id=1003,
                    routing_id=routing_id, http_status=201, attempts=1,
                )  # fmt: skip
    resumed = run_import(
        ImportConfig(
            input=InputOptions(path=sheet),
            api_key=SANDBOX_API_KEY,
            base_url=BASE,
            requests_per_minute=100_000,
            retry_backoff=0,
        ),
        transport=httpx.ASGITransport(app=sandbox.app),
    )
    assert resumed.counts == {"succeeded": 4, "unchanged": 2}  # row 5 done, row 6 settled on resume
    plans: list[Plan] = []
    summary = rollback(
        undo_config(resumed.results_path, on_plan=plans.append),
        transport=httpx.ASGITransport(app=sandbox.app),
    )
    assert plans[0].heading.startswith("rollback of runs 1, 2 (sheet.csv)")
    assert summary.exit_code == 0 and summary.counts == {"succeeded": 4, "unchanged": 1}
    assert routing_by_did(sandbox) == expected_after_rollback(before)


def test_rollback_after_rollback_and_rerun_restores_the_record_before_the_rerun(
    tmp_path: Path, imported: tuple[Sandbox, RunSummary, dict[int, dict[str, int]]]
) -> None:
    """Run 1, its rollback (run 2), someone's change, run 3: the record before run 3 comes back."""
    sandbox, run, before = imported
    transport = httpx.ASGITransport(app=sandbox.app)
    rollback(undo_config(run.results_path), transport=transport)
    someone = {"for_inbound_call": 1, "for_outbound_call": 4, "status": 1}
    change_routing(sandbox, 1000, someone)
    rerun = run_import(
        ImportConfig(
            input=InputOptions(path=tmp_path / "sheet.csv"),
            api_key=SANDBOX_API_KEY,
            base_url=BASE,
            requests_per_minute=100_000,
            retry_backoff=0,
        ),
        transport=transport,
    )
    assert rerun.counts == {"succeeded": 4, "unchanged": 2}  # 1000 back to the sheet's
    plans: list[Plan] = []
    summary = rollback(undo_config(rerun.results_path, on_plan=plans.append), transport=transport)
    # run 1 still covers DID 1005 (created inactive, unchanged since its rollback): nothing to send
    assert plans[0].heading.startswith("rollback of runs 1, 3 (sheet.csv)")
    assert summary.counts == {"succeeded": 4, "unchanged": 1}
    assert summary.exit_code == 0
    assert routing_by_did(sandbox) == {**expected_after_rollback(before), 1000: someone}


def _cli_into_closed_pipe(args: list[str], url: str) -> subprocess.CompletedProcess[str]:
    """Run the CLI with stdout a pipe whose reader has gone, as in `voicelink-import ... | head -1`
    once head has its line: every write to stdout meets EPIPE."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader left before the first line
    try:
        env = {**os.environ, "VOCOBASE_API_KEY": SANDBOX_API_KEY, "VOCOBASE_BASE_URL": url}
        return subprocess.run(
            [sys.executable, "-m", "importer", *args],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
            env=env,
        )
    finally:
        os.close(write_end)


@pytest.mark.slow
def test_cli_closed_stdout_never_stops_or_changes_a_rollback(tmp_path: Path) -> None:
    """`rollback ... | head -1`, `rollback --dry-run | head -1` and `history | head -1` still do
    their whole job, over loopback TCP, and exit with the job's own code."""
    inv = write_inventory(tmp_path / "inv.json", N, existing=existing())
    with running_sandbox(SandboxConfig(inventory=inv, requests_per_minute=100_000)) as (url, sandbox):
        before = routing_by_did(sandbox)
        run = do_import(tmp_path, sandbox)
        writes = write_count(sandbox)
        dry = _cli_into_closed_pipe(
            ["rollback", str(run.results_path), "--dry-run", "-o", str(tmp_path / "plan.xlsx")], url
        )
        assert dry.returncode == 0, dry.stderr
        assert write_count(sandbox) == writes
        assert len(read_results(tmp_path / "plan.xlsx")) == 5  # the dry run's workbook is written
        sent = _cli_into_closed_pipe(["rollback", str(run.results_path), "--yes"], url)
        assert sent.returncode == 0, sent.stderr
        assert write_count(sandbox) == writes + 4  # the undos were really sent
        assert routing_by_did(sandbox) == expected_after_rollback(before)
        assert {r["import_status"] for r in read_results(tmp_path / "sheet.rollback.xlsx")} == {
            "succeeded",
            "unchanged",
        }
        shown = _cli_into_closed_pipe(["history", str(tmp_path / "sheet.journal.sqlite")], url)
        assert shown.returncode == 0, shown.stderr
    assert "Error" not in dry.stderr + sent.stderr + shown.stderr


def import_other_file(tmp: Path, sandbox: Sandbox) -> RunSummary:
    """Another file for DIDs 0..4 (each mobile in, only-answer out), into the same journal as sheet.csv."""
    other = tmp / "other.csv"
    lines = ["Phone Number,Inbound Mode,Outbound Mode,Status"]
    lines += [f"+{did_number(i)},1,4,active" for i in range(5)]
    other.write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = ImportConfig(
        input=InputOptions(path=other),
        api_key=SANDBOX_API_KEY,
        base_url=BASE,
        requests_per_minute=100_000,
        retry_backoff=0,
        journal=tmp / "sheet.journal.sqlite",
    )
    summary = run_import(config, transport=httpx.ASGITransport(app=sandbox.app))
    assert summary.counts == {"succeeded": 5}
    return summary


def test_rollback_never_replans_a_run_rolled_back_already(
    tmp_path: Path, imported: tuple[Sandbox, RunSummary, dict[int, dict[str, int]]]
) -> None:
    """Run 1 (sheet.csv), run 2 (other.csv) over the same DIDs, run 3 rolls back run 2, run 4 run 1:
    the journal alone has nothing left to roll back, and run 2 named again (even with --force)
    is 'rolled back already', never 'someone's change', and nothing is re-activated."""
    sandbox, _, before = imported
    transport = httpx.ASGITransport(app=sandbox.app)
    journal = tmp_path / "sheet.journal.sqlite"
    import_other_file(tmp_path, sandbox)
    assert rollback(undo_config(journal, run_ids=[2]), transport=transport).counts == {"succeeded": 5}
    assert rollback(undo_config(journal, run_ids=[1]), transport=transport).counts == {
        "succeeded": 4,
        "unchanged": 1,
    }
    assert routing_by_did(sandbox) == expected_after_rollback(before)
    writes = write_count(sandbox)
    for force in (False, True):
        with pytest.raises(NothingToDo) as info:
            rollback(undo_config(journal, force=force), transport=transport)
        assert str(info.value) == (
            "nothing left to roll back in sheet.journal.sqlite: every change was rolled back already "
            "(run 1 by run 4, run 2 by run 3)"
        )
        plans: list[Plan] = []
        again = rollback(
            undo_config(journal, run_ids=[2], force=force, on_plan=plans.append), transport=transport
        )
        assert again.counts == {"unchanged": 5} and again.exit_code == 0
        assert {u.reason for u in plans[0].undos} == {
            "rolled back already by run 3; nothing left to roll back"
        }
    assert write_count(sandbox) == writes
    assert routing_by_did(sandbox) == expected_after_rollback(before)  # nothing re-activated
    result = CliRunner().invoke(
        main, ["rollback", str(journal), "--force", "--yes"], env={"VOCOBASE_API_KEY": SANDBOX_API_KEY}
    )
    assert result.exit_code == 0, result.output
    assert (
        result.output.startswith("nothing left to roll back in sheet.journal.sqlite")
        and "Error" not in result.output
    )


def test_rollback_of_another_run_is_never_someones_change(
    tmp_path: Path, imported: tuple[Sandbox, RunSummary, dict[int, dict[str, int]]]
) -> None:
    """Run 1, run 2 (another file) over the same DIDs, run 3 rolls back run 1 with --force (writing
    over run 2): run 2's rows are the tool's own rollback now, left as they are even with --force."""
    sandbox, _, before = imported
    transport = httpx.ASGITransport(app=sandbox.app)
    journal = tmp_path / "sheet.journal.sqlite"
    import_other_file(tmp_path, sandbox)
    forced = rollback(undo_config(journal, run_ids=[1], force=True), transport=transport)
    assert forced.counts == {"succeeded": 4, "unchanged": 1}
    mobile_in = {"for_inbound_call": 1, "for_outbound_call": 4, "status": 1}  # run 2's, on DID 1002
    assert routing_by_did(sandbox) == {**expected_after_rollback(before), 1002: mobile_in}
    writes = write_count(sandbox)
    plans: list[Plan] = []
    again = rollback(undo_config(journal, run_ids=[2], force=True, on_plan=plans.append), transport=transport)
    # DID 1002: run 1 left it as it was, so run 3 did not touch it: run 2's change is live, undone
    assert again.counts == {"unchanged": 4, "succeeded": 1}
    reasons = {u.did_id: u.reason for u in plans[0].undos}
    assert all("run 3, a rollback, has written it since" in reasons[1000 + i] for i in (0, 1, 3, 4))
    assert not any("someone" in r for r in reasons.values())
    assert write_count(sandbox) == writes + 1 and routing_by_did(sandbox) == expected_after_rollback(before)
    with pytest.raises(NothingToDo, match=r"\(run 1 by run 3, run 2 by run 4\)$"):
        rollback(undo_config(journal), transport=transport)
