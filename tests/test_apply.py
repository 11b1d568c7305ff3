"""The one write engine and the job entry points around it, against the real sandbox (in-process ASGI)."""

from __future__ import annotations

import asyncio
import copy
import json
import signal
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import (
    REPO,
    SAMPLE,
    change_routing,
    config_for,
    desired_record,
    read_results,
    routing_fields,
    wait_until_async,
    write_inventory,
    write_sheet,
)

import importer
from importer.account.inventory import Inventory
from importer.account.records import Bot, Connection, Did, Routing
from importer.cli import main
from importer.engine.apply import Progress
from importer.engine.journal import Journal
from importer.engine.plan import History, Write, plan_import
from importer.errors import InputError
from importer.fields import ROUTING_FIELDS
from importer.jobs.run import run_import, run_import_async
from importer.model import RoutingRow
from importer.options import ConnectOptions, ImportConfig, InputOptions, SendOptions, human_duration
from importer.sandbox import Sandbox, SandboxConfig, create_sandbox
from importer.vocab import Action, ExitCode, OnExisting, ReasonKind, Status

BASE = "http://sandbox.test/api/v2"


def routed(sandbox: Sandbox) -> dict[int, dict[str, int]]:
    return {int(r["did_id"]): routing_fields(r) for r in sandbox.state_snapshot()["routing"]}


def write_count(sandbox: Sandbox) -> int:
    counts = sandbox.state_snapshot()["request_counts"]
    return sum(n for k, n in counts.items() if k.startswith("POST /voicelink/call-routing"))


# -- planning is pure ----------------------------------------------------------------------


def _inventory() -> Inventory:
    dids = [Did(1000 + i, f"91802000000{i}", "active") for i in range(4)]
    existing = {1001: desired_record(1), 1002: {**desired_record(0), "status": 0}}
    routing = {
        did: Routing(7000 + did, did, None, {**dict.fromkeys(ROUTING_FIELDS), **rec})
        for did, rec in existing.items()
    }
    return Inventory(
        dids_by_id={d.did_id: d for d in dids},
        dids_by_number={d.did_number: d for d in dids},
        bots={93: Bot(93, "Support", True), 94: Bot(94, "Sales", True)},
        routing=routing,
        connection="c-1",
    )


def _row(row: int, i: int, number: str | None = None) -> RoutingRow:
    rec = desired_record(i)
    return RoutingRow(row=row, did_id=None, did_number=number or f"91802000000{i}", **rec)


@pytest.mark.parametrize(
    ("on_existing", "updates", "settled"),
    [
        (OnExisting.UPDATE, 1, {3: Status.UNCHANGED, 6: Status.FAILED}),
        (OnExisting.SKIP, 0, {3: Status.UNCHANGED, 4: Status.SKIPPED, 6: Status.FAILED}),
        (OnExisting.FAIL, 0, {3: Status.UNCHANGED, 4: Status.FAILED, 6: Status.FAILED}),
    ],
)
def test_plan_import_plans_every_row_without_touching_the_state(
    on_existing: OnExisting, updates: int, settled: dict[int, Status]
) -> None:
    inventory = _inventory()
    before = copy.deepcopy(inventory)
    rows = [_row(2, 0), _row(3, 1), _row(4, 2), _row(5, 3), _row(6, 9, number="918020000099")]
    # row 4 asks DID 1002 for its sheet record; live holds another record: an update, or skip/fail
    rows[2] = RoutingRow(row=4, did_id=None, did_number="918020000002", **desired_record(0))
    plan = plan_import(rows, inventory, "c-1", History(), on_existing)
    assert inventory == before  # nothing read or changed besides the arguments
    assert [w.action for w in plan.writes].count(Action.UPDATE) == updates
    assert {w.row for w in plan.writes if w.action is Action.CREATE} == {2, 5}
    assert {o.row: o.status for o in plan.outcomes} == settled
    failed = next(o for o in plan.outcomes if o.row == 6)
    assert failed.reason_kind == ReasonKind.DID_NOT_FOUND and "not in this account" in failed.reason
    assert plan.counts["create"] == 2 and plan.text().startswith("create 2, update")
    create = next(w for w in plan.writes if w.row == 2)
    assert (
        dict(create.expect) == desired_record(0) and create.body["did_id"] == 1000 and create.before is None
    )
    with pytest.raises(AttributeError):
        create.row = 3  # type: ignore[misc]
    assert isinstance(create, Write)


# -- the engine ----------------------------------------------------------------------------


def test_run_import_async_with_str_paths_returns_every_rows_outcome(tmp_path: Path) -> None:
    inv = write_inventory(tmp_path / "inv.json", 6, existing={0: desired_record(0)})
    sheet = write_sheet(tmp_path / "sheet.csv", 6)
    sandbox = create_sandbox(SandboxConfig(inventory=inv))
    config = config_for(
        str(sheet), tmp_path, output=str(tmp_path / "o.results.xlsx"), journal=str(tmp_path / "j")
    )
    summary = asyncio.run(run_import_async(config, transport=httpx.ASGITransport(app=sandbox.app)))
    assert summary.results_path == tmp_path / "o.results.xlsx" and (tmp_path / "j").exists()
    assert [o.row for o in summary.outcomes] == list(range(2, 8))
    frame = summary.frame()
    assert list(frame["status"]) == ["unchanged"] + ["succeeded"] * 5
    assert frame.loc[1, "routing_id"] == routed_id(sandbox, 1001)
    assert summary.exit_code is ExitCode.OK


def routed_id(sandbox: Sandbox, did_id: int) -> int:
    return next(int(r["id"]) for r in sandbox.state_snapshot()["routing"] if int(r["did_id"]) == did_id)


def test_run_import_inside_a_running_loop_says_to_await_the_async_one(tmp_path: Path) -> None:
    sheet = write_sheet(tmp_path / "sheet.csv", 1)

    async def notebook_cell() -> None:
        run_import(config_for(sheet, tmp_path))

    with pytest.raises(InputError, match=r"await run_import_async"):
        asyncio.run(notebook_cell())


class SlowWrites(httpx.AsyncBaseTransport):
    """The sandbox, with every write answered after ``delay`` seconds (applied first)."""

    def __init__(self, sandbox: Sandbox, delay: float) -> None:
        self.base = httpx.ASGITransport(app=sandbox.app)
        self.delay = delay

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.base.handle_async_request(request)
        if request.method == "POST":
            await asyncio.sleep(self.delay)
        return response


def test_cancel_from_another_task_stops_new_writes_and_settles_those_in_flight(tmp_path: Path) -> None:
    inv = write_inventory(tmp_path / "inv.json", 20)
    sheet = write_sheet(tmp_path / "sheet.csv", 20)
    sandbox = create_sandbox(SandboxConfig(inventory=inv))

    async def main() -> importer.RunSummary:
        cancel = asyncio.Event()
        seen: list[Progress] = []

        def progress(p: Progress) -> None:
            seen.append(p)

        async def stop_soon() -> None:
            await wait_until_async(lambda: any(p.outcome for p in seen), "a first write's outcome")
            cancel.set()  # as a web handler would: another task, no signal

        stopper = asyncio.create_task(stop_soon())
        summary = await run_import_async(
            config_for(sheet, tmp_path, concurrency=2),
            transport=SlowWrites(sandbox, 0.05),
            on_progress=progress,
            cancel=cancel,
        )
        await stopper
        return summary

    summary = asyncio.run(main())
    assert summary.exit_code is ExitCode.INTERRUPTED
    sent = summary.counts[Status.SUCCEEDED]
    assert 1 <= sent < 20 and summary.counts[Status.NOT_SENT] == 20 - sent
    assert write_count(sandbox) == sent == len(routed(sandbox))  # in flight settled, nothing else sent
    # The caller's cancel is a cancel (a signal's stop says "interrupted"), for the rows kept back too.
    assert summary.stopped == "cancelled" and any("stopped: cancelled" in n for n in summary.notes)
    assert {o.reason for o in summary.outcomes if o.status is Status.NOT_SENT} == {"not sent: cancelled"}
    with Journal.open(tmp_path / "run.journal.sqlite") as journal:
        assert journal.in_flight(summary_sha(summary)) == {}  # every write sent has its outcome


def summary_sha(summary: importer.RunSummary) -> str:
    rows = {k: v for k, v in _summary_sheet(summary.results_path).items()}
    return str(rows["sha256"])


def _summary_sheet(path: Path) -> dict[str, Any]:
    import openpyxl

    book = openpyxl.load_workbook(path, read_only=True)
    try:
        return {str(r[0]).strip(): r[1] for r in book["Summary"].iter_rows(values_only=True) if r and r[0]}
    finally:
        book.close()


class PauseThenSlow(httpx.AsyncBaseTransport):
    """The first write is answered slowly; the second meets a 429 (Retry-After 1 s) meanwhile."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.base = httpx.ASGITransport(app=sandbox.app)
        self.writes = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and "call-routing" in request.url.path:
            self.writes += 1
            n = self.writes
            if n == 1:
                await asyncio.sleep(0.3)
            if n == 2:
                error = {"code": "RATE_LIMITED", "message": "slow down"}
                return httpx.Response(
                    429, json={"success": False, "error": error}, headers={"Retry-After": "1"}
                )
        return await self.base.handle_async_request(request)


def test_progress_carries_each_outcome_and_the_limiters_pause(tmp_path: Path) -> None:
    inv = write_inventory(tmp_path / "inv.json", 2)
    sheet = write_sheet(tmp_path / "sheet.csv", 2)
    sandbox = create_sandbox(SandboxConfig(inventory=inv))
    seen: list[Progress] = []
    summary = run_import(
        config_for(sheet, tmp_path, concurrency=2), transport=PauseThenSlow(sandbox), on_progress=seen.append
    )
    assert summary.counts == {Status.SUCCEEDED: 2}
    assert seen[0].outcome is None and sorted(p.outcome.row for p in seen[1:] if p.outcome) == [2, 3]
    # The slow write finished inside the 429's pause, which never exceeds its Retry-After.
    assert 0 < max(p.paused_seconds for p in seen) <= 1.0


class AlwaysLost(httpx.AsyncBaseTransport):
    """Every write answered 500 and not applied: the outcome stays unknown."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.base = httpx.ASGITransport(app=sandbox.app)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and "call-routing" in request.url.path:
            return httpx.Response(500, json={"success": False, "error": {"code": "INTERNAL", "message": "x"}})
        return await self.base.handle_async_request(request)


def test_summary_prints_labels_never_internal_codes(tmp_path: Path) -> None:
    inv = write_inventory(tmp_path / "inv.json", 2)
    sheet = write_sheet(tmp_path / "sheet.csv", 2)
    sandbox = create_sandbox(SandboxConfig(inventory=inv))
    summary = run_import(config_for(sheet, tmp_path), transport=AlwaysLost(sandbox))
    text = "\n".join(summary.lines())
    assert summary.counts == {Status.FAILED: 2} and write_count(sandbox) == 0
    assert ReasonKind.NOT_APPLIED.label in text and "not_applied" not in text
    assert "may have been applied" not in text  # re-reading proved them not applied
    rows = read_results(summary.results_path)
    assert all(r["import_attempts"] == "3" for r in rows)  # three unknown outcomes, then give up


def test_vocabulary_members_have_distinct_labels() -> None:
    for vocab in (Status, Action, OnExisting, importer.vocab.Decision, ReasonKind, ExitCode):
        labels = [m.label for m in vocab]
        assert all(labels) and len(set(labels)) == len(labels), vocab
    assert importer.vocab.describe_kind("api_VALIDATION_ERROR") == "the API refused (VALIDATION_ERROR)"


class GarbledDids(httpx.AsyncBaseTransport):
    """The sandbox, with a DID the client cannot use (no id) added to sync's dids[]."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.base = httpx.ASGITransport(app=sandbox.app)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.base.handle_async_request(request)
        if request.url.path.endswith("/voicelink/sync"):
            payload = json.loads(await response.aread())
            payload["data"]["dids"].append({"did_number": "918099999999", "status": "active"})
            return httpx.Response(response.status_code, json=payload)
        return response


def test_items_the_parser_skipped_are_reported_in_the_summary_and_summary_sheet(tmp_path: Path) -> None:
    inv = write_inventory(tmp_path / "inv.json", 2)
    sheet = write_sheet(tmp_path / "sheet.csv", 2)
    sandbox = create_sandbox(SandboxConfig(inventory=inv))
    summary = run_import(config_for(sheet, tmp_path), transport=GarbledDids(sandbox))
    note = next(n for n in summary.notes if "could not be used" in n)
    assert "918099999999" in note
    sheet_lines = _summary_sheet(summary.results_path)
    assert "918099999999" in str(sheet_lines["skipped from the API's lists"])


# -- package and command ---------------------------------------------------------------------


def test_importer_rollback_names_the_module() -> None:
    import importer.jobs.rollback

    assert isinstance(importer.jobs.rollback, types.ModuleType)
    assert importer.rollback_run is importer.jobs.rollback.rollback_run


def test_cli_takes_choices_and_defaults_from_the_library() -> None:
    defaults = SendOptions()
    for command in ("run", "rollback"):
        params = {p.name: p for p in main.commands[command].params}
        for name in ("requests_per_minute", "concurrency", "timeout"):
            assert params[name].default == getattr(defaults, name), (command, name)
    on_existing = next(p for p in main.commands["run"].params if p.name == "on_existing")
    assert list(on_existing.type.choices) == [c.value for c in OnExisting]  # type: ignore[attr-defined]


@pytest.mark.slow
def test_cli_output_into_a_closed_pipe_exits_quietly(tmp_path: Path) -> None:
    """`voicelink-import validate FILE | head -0`: the reader is gone before the first line."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "importer", "validate", str(SAMPLE / "carrier_routing.csv"), "-o",
         str(tmp_path / "v.results.xlsx")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the pipe's reader leaves at once
    with proc.stderr:
        err = proc.stderr.read().decode()
    proc.wait(timeout=60)
    assert err == "" and proc.returncode == ExitCode.ROWS_FAILED  # its rows' verdict, and no traceback


def test_cancel_while_writes_wait_for_the_rate_limit_stops_them_at_once(tmp_path: Path) -> None:
    """The window is full (2 reads + 4 writes of 6): queued writes are dropped, not sent later."""
    inv = write_inventory(tmp_path / "inv.json", 10)
    sheet = write_sheet(tmp_path / "sheet.csv", 10)
    sandbox = create_sandbox(SandboxConfig(inventory=inv, requests_per_minute=100_000))
    seen: list[Progress] = []

    async def main() -> importer.RunSummary:
        cancel = asyncio.Event()

        async def stop_when_full() -> None:
            await wait_until_async(lambda: sum(1 for p in seen if p.outcome) >= 4, "four writes' outcomes")
            await asyncio.sleep(0.1)  # the other workers are waiting for a slot by now
            cancel.set()

        stopper = asyncio.create_task(stop_when_full())
        # A window of an hour: a queued write that waited for a slot instead of being
        # cancelled would outlast the bound below by far, however loaded the machine.
        config = config_for(sheet, tmp_path, requests_per_minute=6, rate_window=3600.0, concurrency=4)
        try:
            async with asyncio.timeout(60):
                summary = await run_import_async(
                    config,
                    transport=httpx.ASGITransport(app=sandbox.app),
                    on_progress=seen.append,
                    cancel=cancel,
                )
        except TimeoutError:
            raise AssertionError("the cancelled run waited for the rate window instead of stopping") from None
        await stopper
        return summary

    summary = asyncio.run(main())
    assert summary.exit_code is ExitCode.INTERRUPTED
    assert summary.counts == {Status.SUCCEEDED: 4, Status.NOT_SENT: 6} and write_count(sandbox) == 4
    notes = [p.note for p in seen if p.note]
    assert notes == ["stopping: 0 writes in flight, settling"]
    reasons = {
        r["import_reason"] for r in read_results(summary.results_path) if r["import_status"] == "not_sent"
    }
    assert reasons and all(r.startswith("not sent: cancelled") for r in reasons)
    with Journal.open(tmp_path / "run.journal.sqlite") as journal:
        assert journal.in_flight(summary_sha(summary)) == {}  # the queued writes are settled as not sent


class CtrlCTwice(httpx.AsyncBaseTransport):
    """Writes hang (never applied); once two are in flight, Ctrl-C arrives twice."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.base = httpx.ASGITransport(app=sandbox.app)
        self.writes = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and "call-routing" in request.url.path:
            self.writes += 1
            if self.writes == 2:
                signal.raise_signal(signal.SIGINT)  # stop: settle what is in flight
                await asyncio.sleep(0.05)
                signal.raise_signal(signal.SIGINT)  # stop now: leave it for the next run
            await asyncio.sleep(3600)  # hangs far past the bound below unless the second Ctrl-C ends it
        return await self.base.handle_async_request(request)


def test_second_ctrl_c_leaves_writes_in_flight_for_the_next_run(tmp_path: Path) -> None:
    inv = write_inventory(tmp_path / "inv.json", 6)
    sheet = write_sheet(tmp_path / "sheet.csv", 6)
    sandbox = create_sandbox(SandboxConfig(inventory=inv))
    seen: list[Progress] = []
    started = time.monotonic()
    first = run_import(
        config_for(sheet, tmp_path, concurrency=2),
        transport=CtrlCTwice(sandbox),
        on_progress=seen.append,
    )
    assert time.monotonic() - started < 120, "the second Ctrl-C did not end the hung writes"
    assert first.exit_code is ExitCode.INTERRUPTED
    assert first.counts == {Status.FAILED: 2, Status.NOT_SENT: 4}
    assert [p.note for p in seen if p.note] == [
        "stopping: 2 writes in flight, settling",
        "stopping now: 2 writes left unsettled; running the same file again settles them",
    ]
    # Nothing proved these two writes were not applied: the summary must not say they were not.
    text = "\n".join(first.lines())
    assert "2 x outcome unknown (may have been applied): running the same file again settles it" in text
    assert "not applied" not in text
    reasons = [r["import_reason"] for r in read_results(first.results_path) if r["import_status"] == "failed"]
    assert len(reasons) == 2 and all(r.startswith("outcome unknown (may have been applied)") for r in reasons)
    sha = summary_sha(first)
    with Journal.open(tmp_path / "run.journal.sqlite") as journal:
        assert sorted(journal.in_flight(sha)) == [2, 3]  # consistent: sent, outcome unknown
    again = run_import(config_for(sheet, tmp_path), transport=httpx.ASGITransport(app=sandbox.app))
    assert again.counts == {Status.SUCCEEDED: 6} and write_count(sandbox) == 6  # each DID routed once
    with Journal.open(tmp_path / "run.journal.sqlite") as journal:
        assert journal.in_flight(sha) == {}


class AppliedThenKilled(httpx.AsyncBaseTransport):
    """The first write goes through; the second is applied, then the run stops dead (Ctrl-C twice)
    before its answer: the journal holds one confirmed row and one write in flight that landed,
    as after ``kill -9``."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.base = httpx.ASGITransport(app=sandbox.app)
        self.writes = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.base.handle_async_request(request)
        if request.method == "POST" and "call-routing" in request.url.path:
            self.writes += 1
            if self.writes == 2:
                signal.raise_signal(signal.SIGINT)
                await asyncio.sleep(0.05)
                signal.raise_signal(signal.SIGINT)
                await asyncio.sleep(3600)  # the second Ctrl-C ends it: the run stops dead
        return response


def test_dry_run_after_a_crash_plans_what_the_resume_does(tmp_path: Path) -> None:
    """A dry run reads the journal (read-only, unclaimed): its plan and every row's outcome
    match the real resume's, for the row confirmed before the crash and the one left in flight."""
    inv = write_inventory(tmp_path / "inv.json", 4)
    sheet = write_sheet(tmp_path / "sheet.csv", 4)
    sandbox = create_sandbox(SandboxConfig(inventory=inv))
    first = run_import(config_for(sheet, tmp_path, concurrency=1), transport=AppliedThenKilled(sandbox))
    assert first.exit_code is ExitCode.INTERRUPTED
    sha = summary_sha(first)
    journal_path = tmp_path / "run.journal.sqlite"
    with Journal.open(journal_path) as journal:
        assert set(journal.confirmed(sha)) == {2} and set(journal.in_flight(sha)) == {3}
        runs_before = journal.runs()
    journal_bytes = journal_path.read_bytes()
    transport = httpx.ASGITransport(app=sandbox.app)
    dry_plans: list[importer.Plan] = []
    # Another process holding the journal's claim does not stop a dry run: it takes none.
    with Journal.open(journal_path) as holder:
        holder.claim()
        dry = run_import(
            config_for(sheet, tmp_path, dry_run=True, on_plan=dry_plans.append), transport=transport
        )
    assert journal_path.read_bytes() == journal_bytes  # nothing written: no run, no claim
    with Journal.open(journal_path) as journal:
        assert journal.runs() == runs_before and set(journal.in_flight(sha)) == {3}
    assert write_count(sandbox) == 2
    real_plans: list[importer.Plan] = []
    real = run_import(config_for(sheet, tmp_path, on_plan=real_plans.append), transport=transport)
    assert real.exit_code is ExitCode.OK and write_count(sandbox) == 4  # rows 4 and 5, once each
    dry_plan, real_plan = dry_plans[0], real_plans[0]
    assert dry_plan.counts == real_plan.counts
    assert dry_plan.outcomes == real_plan.outcomes  # the rows settled without a write
    assert [(w.row, w.action, dict(w.body)) for w in dry_plan.writes] == [
        (w.row, w.action, dict(w.body)) for w in real_plan.writes
    ]
    dry_rows, real_rows = {o.row: o for o in dry.outcomes}, {o.row: o for o in real.outcomes}
    for row in (2, 3):  # settled from the journal: the same words in both
        assert (dry_rows[row].status, dry_rows[row].reason_kind, dry_rows[row].reason) == (
            real_rows[row].status,
            real_rows[row].reason_kind,
            real_rows[row].reason,
        )
    assert dry_rows[2].reason.startswith("done in an earlier run")
    for row in (4, 5):  # written by the resume, "would" be by the dry run
        assert dry_rows[row].status is Status.NOT_SENT and real_rows[row].status is Status.SUCCEEDED
        assert dry_rows[row].action is real_rows[row].action is Action.CREATE


def test_rerun_plans_rows_done_earlier_against_the_live_state(tmp_path: Path) -> None:
    """Drift: a row done in run 1 whose routing someone changed since is updated back, and the
    plan says so before anything is sent; rows still as asked are unchanged."""
    inv = write_inventory(tmp_path / "inv.json", 4)
    sheet = write_sheet(tmp_path / "sheet.csv", 4)
    sandbox = create_sandbox(SandboxConfig(inventory=inv))
    transport = httpx.ASGITransport(app=sandbox.app)
    assert run_import(config_for(sheet, tmp_path), transport=transport).counts == {Status.SUCCEEDED: 4}
    someone = {"for_inbound_call": 1, "for_outbound_call": 4, "status": 1}
    change_routing(sandbox, 1001, someone)
    plans: list[importer.Plan] = []

    def confirm(plan: importer.Plan) -> bool:
        plans.append(plan)
        return True

    again = run_import(config_for(sheet, tmp_path, confirm=confirm), transport=transport)
    assert again.counts == {Status.UNCHANGED: 3, Status.SUCCEEDED: 1}
    assert routed(sandbox)[1001] == desired_record(1)
    assert [line for line in plans[0].lines() if "changed since run 1" in line]
    assert plans[0].counts["update"] == 1
    by_row = {o.row: o for o in again.outcomes}
    assert "changed since run 1" in by_row[3].reason and by_row[3].action is Action.UPDATE
    assert all(by_row[r].reason.startswith("done in an earlier run at ") for r in (2, 4, 5))


def test_declining_the_prompt_sends_nothing_and_exits_0(tmp_path: Path) -> None:
    inv = write_inventory(tmp_path / "inv.json", 3)
    sheet = write_sheet(tmp_path / "sheet.csv", 3)
    sandbox = create_sandbox(SandboxConfig(inventory=inv))
    summary = run_import(
        config_for(sheet, tmp_path, confirm=lambda plan: False),
        transport=httpx.ASGITransport(app=sandbox.app),
    )
    assert summary.exit_code is ExitCode.OK and write_count(sandbox) == 0
    assert summary.counts == {Status.NOT_SENT: 3}
    assert summary.notes[0] == "nothing sent: the plan was not confirmed"
    assert summary.stopped == "not confirmed"  # why nothing was sent, for a library's caller (the web)
    assert "nothing sent" in "\n".join(summary.lines())
    with Journal.open(tmp_path / "run.journal.sqlite") as journal:
        assert journal.runs() == []  # a declined plan starts no journal run


def test_async_confirm_refusing_a_plan_that_changed_since_it_was_shown_sends_nothing(tmp_path: Path) -> None:
    """The web's use of ``confirm``: a plan shown (dry run), the live routing changed, and the send's
    new plan has other writes, so its confirm refuses it: nothing is sent and the summary says why."""
    inv = write_inventory(tmp_path / "inv.json", 3, existing={1: desired_record(1)})
    sheet = write_sheet(tmp_path / "sheet.csv", 3)
    sandbox = create_sandbox(SandboxConfig(inventory=inv))
    transport = httpx.ASGITransport(app=sandbox.app)
    shown: list[importer.Plan] = []
    run_import(config_for(sheet, tmp_path, dry_run=True, on_plan=shown.append), transport=transport)
    change_routing(sandbox, 1001, {"for_inbound_call": 1, "for_outbound_call": 4, "status": 1})
    writes_before = write_count(sandbox)

    def writes(plan: importer.Plan) -> list[tuple[int, str, dict[str, int | str]]]:
        return [(w.row, str(w.action), dict(w.body)) for w in plan.writes]

    asked: list[importer.Plan] = []

    def same_as_shown(plan: importer.Plan) -> bool:
        asked.append(plan)
        return writes(plan) == writes(shown[0])

    summary = asyncio.run(
        run_import_async(config_for(sheet, tmp_path, confirm=same_as_shown), transport=transport)
    )
    assert len(asked) == 1 and len(asked[0].writes) == len(shown[0].writes) + 1  # row 3 changed since
    assert write_count(sandbox) == writes_before and summary.stopped == "not confirmed"
    assert summary.counts == {Status.NOT_SENT: 3} and summary.exit_code is ExitCode.OK


def test_confirm_is_asked_with_no_loop_running_and_ctrl_c_there_sends_nothing(tmp_path: Path) -> None:
    """run_import asks its confirm hook while no event loop runs (a prompt's Ctrl-C is a plain
    KeyboardInterrupt): nothing is sent, no journal run starts, and the journal is free again."""
    inv = write_inventory(tmp_path / "inv.json", 3)
    sheet = write_sheet(tmp_path / "sheet.csv", 3)
    sandbox = create_sandbox(SandboxConfig(inventory=inv))
    loops: list[bool] = []

    def ctrl_c(plan: importer.Plan) -> bool:
        try:
            asyncio.get_running_loop()
            loops.append(True)
        except RuntimeError:
            loops.append(False)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_import(
            config_for(sheet, tmp_path, confirm=ctrl_c), transport=httpx.ASGITransport(app=sandbox.app)
        )
    assert loops == [False] and write_count(sandbox) == 0
    with Journal.open(tmp_path / "run.journal.sqlite") as journal:
        journal.claim()  # the interrupted run let go of it
        assert journal.runs() == []


def test_an_unwritable_results_path_is_refused_before_any_write(tmp_path: Path) -> None:
    inv = write_inventory(tmp_path / "inv.json", 3)
    sheet = write_sheet(tmp_path / "sheet.csv", 3)
    sandbox = create_sandbox(SandboxConfig(inventory=inv))
    (tmp_path / "not-a-folder").write_text("a file where the results' folder should be")
    config = config_for(sheet, tmp_path, output=tmp_path / "not-a-folder" / "out.results.xlsx")
    with pytest.raises(InputError, match=r"cannot save .*not-a-folder.*: a part of the path is a file"):
        run_import(config, transport=httpx.ASGITransport(app=sandbox.app))
    assert write_count(sandbox) == 0


def test_results_that_cannot_be_saved_after_the_writes_go_to_a_fallback_path(tmp_path: Path) -> None:
    inv = write_inventory(tmp_path / "inv.json", 3)
    sheet = write_sheet(tmp_path / "sheet.csv", 3)
    sandbox = create_sandbox(SandboxConfig(inventory=inv))
    wanted = tmp_path / "out.results.xlsx"

    def confirm_then_lock(plan: importer.Plan) -> bool:
        wanted.mkdir()  # after the check and before the save: the save itself fails
        return True

    summary = run_import(
        config_for(sheet, tmp_path, confirm=confirm_then_lock), transport=httpx.ASGITransport(app=sandbox.app)
    )
    assert write_count(sandbox) == 3 and summary.exit_code is ExitCode.OK
    assert summary.results_path != wanted and summary.results_path.is_file()
    assert any(f"saved to {summary.results_path}" in n and str(wanted) in n for n in summary.notes)
    assert [r["import_status"] for r in read_results(summary.results_path)] == ["succeeded"] * 3


@pytest.mark.parametrize(
    ("reads", "writes", "per_minute", "window", "text"),
    [
        (2, 9720, 60, 60.0, "2 reads done; 9,720 writes, about 2 h 42 min at 60/min"),
        (3, 10, 60, 60.0, "3 reads done; 10 writes, about 10 s at 60/min"),
        (1, 1, 60, 60.0, "1 read done; 1 write, about 1 s at 60/min"),
        (2, 0, 60, 60.0, "2 reads done; no writes"),
        (2, 300, 10, 1.0, "2 reads done; 300 writes, about 30 s at 600/min"),
    ],
)
def test_send_options_cost_line_says_reads_done_writes_and_their_time_at_the_rate(
    reads: int, writes: int, per_minute: int, window: float, text: str
) -> None:
    assert SendOptions(requests_per_minute=per_minute, rate_window=window).cost(reads, writes) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0 s"), (9.2, "10 s"), (60, "1 min"), (250, "4 min 10 s"), (3600, "1 h"), (9720, "2 h 42 min")],
)
def test_human_duration(seconds: float, text: str) -> None:
    assert human_duration(seconds) == text


def test_dry_run_summary_says_how_long_the_writes_would_take(tmp_path: Path) -> None:
    inv = write_inventory(tmp_path / "inv.json", 3)
    sheet = write_sheet(tmp_path / "sheet.csv", 3)
    sandbox = create_sandbox(SandboxConfig(inventory=inv))
    summary = run_import(
        config_for(sheet, tmp_path, dry_run=True, requests_per_minute=60),
        transport=httpx.ASGITransport(app=sandbox.app),
    )
    assert summary.notes[0].endswith("(2 reads done; 3 writes, about 3 s at 60/min)")


@pytest.mark.parametrize(
    ("connection_id", "kind", "fragment"),
    [
        ("c-2", ReasonKind.OTHER_CONNECTION, "one run serves one connection: import this row in a run"),
        ("c-9", ReasonKind.UNKNOWN_CONNECTION, "c-9 is not one of this account's connections"),
        ("C-1", None, ""),
    ],
)
def test_plan_tells_another_connection_from_an_unknown_one(
    connection_id: str, kind: ReasonKind | None, fragment: str
) -> None:
    inventory = _inventory()
    inventory.connections = (
        Connection("c-1", "One", "ACTIVE", True),
        Connection("c-2", "Two", "ACTIVE", False),
    )
    row = RoutingRow(
        row=2, did_id=None, did_number="918020000000", connection_id=connection_id, **desired_record(0)
    )
    plan = plan_import([row], inventory, "c-1", History(), OnExisting.UPDATE)
    if kind is None:
        assert [w.row for w in plan.writes] == [2] and not plan.outcomes
    else:
        (failed,) = plan.outcomes
        assert failed.reason_kind == kind and fragment in failed.reason


def test_a_base_url_without_api_v2_says_to_check_it(tmp_path: Path) -> None:
    inv = write_inventory(tmp_path / "inv.json", 2)
    sheet = write_sheet(tmp_path / "sheet.csv", 2)
    sandbox = create_sandbox(SandboxConfig(inventory=inv))
    with pytest.raises(
        importer.ApiError,
        match=r"check --base-url: http://sandbox.test/api must be the API root, ending in /api/v2",
    ):
        run_import(
            config_for(sheet, tmp_path, base_url="http://sandbox.test/api"),
            transport=httpx.ASGITransport(app=sandbox.app),
        )


def test_a_callers_cancel_event_leaves_the_process_signals_to_the_caller(tmp_path: Path) -> None:
    """A web server passes its own cancel event: SIGTERM during a send stays the server's, and
    the server's handler is still there afterwards (the CLI, passing none, gets Ctrl-C handling)."""
    inv = write_inventory(tmp_path / "inv.json", 10)
    sheet = write_sheet(tmp_path / "sheet.csv", 10)
    sandbox = create_sandbox(SandboxConfig(inventory=inv))
    got: list[str] = []

    async def main() -> tuple[importer.RunSummary, Any]:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, got.append, "server")
        try:

            def progress(p: Progress) -> None:
                if p.outcome is not None and p.done == 1:
                    signal.raise_signal(signal.SIGTERM)

            summary = await run_import_async(
                config_for(sheet, tmp_path, concurrency=1),
                transport=SlowWrites(sandbox, 0.02),
                on_progress=progress,
                cancel=asyncio.Event(),
            )
            await asyncio.sleep(0.05)
            return summary, signal.getsignal(signal.SIGTERM)
        finally:
            loop.remove_signal_handler(signal.SIGTERM)

    summary, handler = asyncio.run(main())
    assert got == ["server"] and handler is not signal.SIG_DFL
    assert summary.exit_code is ExitCode.OK and summary.counts == {Status.SUCCEEDED: 10}


def test_connect_options_from_env_and_a_job_config_using_them(tmp_path: Path) -> None:
    """A surface builds its connection once (a server from its environment) and each job's
    config from it: the key, base URL, connection and pacing carry over; the key is never shown."""
    env = {
        "VOCOBASE_API_KEY": "sk-live-0123456789abcdef",
        "VOCOBASE_BASE_URL": "http://127.0.0.1:9/api/v2",
        "VOCOBASE_CONNECTION_ID": "",
    }
    connect = ConnectOptions.from_env(env, requests_per_minute=30, retry_backoff=0)
    assert (connect.api_key, connect.base_url, connect.connection_id) == (
        "sk-live-0123456789abcdef",
        "http://127.0.0.1:9/api/v2",
        None,
    )
    assert "0123456789abcdef" not in repr(connect)
    config = ImportConfig.using(connect, input=InputOptions(tmp_path / "a.csv"), dry_run=True)
    assert isinstance(config, ImportConfig) and config.dry_run and config.requests_per_minute == 30
    assert (config.api_key, config.base_url, config.retry_backoff) == (connect.api_key, connect.base_url, 0)
    assert ConnectOptions.from_env({**env, "VOCOBASE_CONNECTION_ID": "c-1"}).connection_id == "c-1"
    with pytest.raises(InputError, match="no API key: set VOCOBASE_API_KEY"):
        ConnectOptions.from_env({})
    with pytest.raises(InputError, match="must start with http:// or https://"):
        ConnectOptions.from_env({**env, "VOCOBASE_BASE_URL": "ftp://x"})
