"""Four-eyes approval and change windows, over real HTTP against the sandbox.

Servers run on loopback (uvicorn on an ephemeral port, in a thread) with ``--require-approval``
and a users file made by ``users add``: olga and otto operate, ann approves, vic views, ada is an
admin. Notifications go to a listener on 127.0.0.1 that records what it is sent.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from helpers import wait_for_job, write_inventory, write_sheet
from test_web_team import _as, _listener, _settings, _summary, _team, _upload, _wait_for

from importer.cli import main
from importer.errors import InputError
from importer.sandbox import SANDBOX_API_KEY, Sandbox, SandboxConfig, create_sandbox
from importer.web.lifecycle import JobError, JobStatus, Step, next_status
from importer.web.server import ServeSettings, running_server
from importer.web.store import JobStore
from importer.web.windows import parse_at

FINAL = {"done", "cancelled", "failed"}
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def _sandbox(tmp_path: Path, n: int = 4) -> Sandbox:
    return create_sandbox(SandboxConfig(inventory=write_inventory(tmp_path / "inventory.json", n)))


def _route_elsewhere(sandbox: Sandbox, did_id: int) -> None:
    """Someone changes the live account: routes a DID of the file by hand."""

    async def route() -> None:
        transport = httpx.ASGITransport(app=sandbox.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://sandbox.test/api/v2") as api:
            answer = await api.post(
                "/voicelink/call-routing",
                json={"did_id": did_id, "for_inbound_call": 1, "for_outbound_call": 4, "status": 1},
                headers={"Authorization": f"Bearer {SANDBOX_API_KEY}"},
            )
            assert answer.status_code < 300, answer.text

    asyncio.run(route())


def _planned(client: httpx.Client, sheet: Path) -> str:
    job_id: str = _upload(client, sheet).json()["id"]
    wait_for_job(client, job_id, {"validated"})
    assert client.post(f"/api/jobs/{job_id}/plan").status_code == 202
    wait_for_job(client, job_id, {"planned"})
    return job_id


def _in(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()


def _settled(
    client: httpx.Client, job_id: str, leave: str, timeout: float = 30
) -> tuple[dict[str, Any], float]:
    """Poll until the job is no longer ``leave``; the snapshot and when it left (epoch seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        job: dict[str, Any] = client.get(f"/api/jobs/{job_id}").json()
        if job["status"] != leave:
            return job, time.time()
        if time.monotonic() > deadline:
            raise AssertionError(f"job stayed {leave}: {job}")
        time.sleep(0.05)


@pytest.mark.parametrize(
    ("text", "zone", "message"),
    [
        ("2026-06-01T13:00:00+02:00", None, "not in the future"),
        ("2026-06-01T11:59:59Z", None, "not in the future"),
        ("tonight at ten", None, "not an ISO 8601 time"),
        ("2026-06-01T22:00:00", None, "has no zone"),
        ("", None, "must be an ISO 8601 time with its zone"),
        (22, None, "must be an ISO 8601 time with its zone"),
    ],
)
def test_parse_at_refuses_past_unzoned_and_unparseable_times(text: object, zone: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_at(text, NOW, zone)


def test_parse_at_gives_utc_and_takes_the_forms_zone_for_a_bare_time() -> None:
    assert parse_at("2026-06-01T22:00:00+02:00", NOW) == datetime(2026, 6, 1, 20, tzinfo=UTC)
    assert parse_at("2026-06-01T22:00", NOW, UTC) == datetime(2026, 6, 1, 22, tzinfo=UTC)


@pytest.mark.parametrize(
    ("status", "step", "to"),
    [
        (JobStatus.PLANNED, Step.SCHEDULE, JobStatus.SCHEDULED),
        (JobStatus.SCHEDULED, Step.SCHEDULE, JobStatus.SCHEDULED),
        (JobStatus.SCHEDULED, Step.CANCEL, JobStatus.CANCELLED),
        (JobStatus.SCHEDULED, Step.DUE, JobStatus.PLANNING),
        (JobStatus.SCHEDULED, Step.START, JobStatus.SENDING),
        (JobStatus.SCHEDULED, Step.EDIT, None),
        (JobStatus.VALIDATED, Step.SCHEDULE, None),
        (JobStatus.PLANNED, Step.DUE, None),
    ],
)
def test_lifecycle_scheduled_transitions(status: JobStatus, step: Step, to: JobStatus | None) -> None:
    if to is None:
        with pytest.raises(JobError):
            next_status(status, step)
    else:
        assert next_status(status, step) is to


def test_serve_settings_refuse_approval_without_users(tmp_path: Path) -> None:
    settings = _settings(tmp_path / "data", _sandbox(tmp_path), tmp_path / "none.toml")
    no_users = ServeSettings(settings.connection, tmp_path / "data", require_approval=True)
    with pytest.raises(InputError, match="--require-approval needs --users"):
        no_users.check()
    data = str(tmp_path / "data")
    result = CliRunner().invoke(main, ["serve", "--sandbox", "--require-approval", "--data-dir", data])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert result.output.strip().splitlines() == [
        "Error: --require-approval needs --users FILE: without users the token is one admin, and nobody "
        "other than the planner could approve"
    ]


def test_approval_four_eyes_over_a_real_server(tmp_path: Path) -> None:
    """Viewer and operator cannot approve, nobody approves their own plan, an edit voids the approval;
    the approved plan is sent and the Summary names the approver; needs-approval is notified."""
    users = tmp_path / "users.toml"
    tokens = _team(users)
    sandbox = _sandbox(tmp_path)
    sheet = write_sheet(tmp_path / "routing.csv", 4)
    with (
        _listener() as (hook, bodies, _arrived),
        running_server(
            _settings(tmp_path / "data", sandbox, users, require_approval=True, notify_url=(hook,))
        ) as (url, _t, _s),
        _as(url, tokens["olga"]) as olga,
        _as(url, tokens["ann"]) as ann,
        _as(url, tokens["vic"]) as vic,
        _as(url, tokens["ada"]) as ada,
    ):
        job_id = _upload(olga, sheet).json()["id"]
        wait_for_job(olga, job_id, {"validated"})
        early = ann.post(f"/api/jobs/{job_id}/approve")
        assert early.status_code == 409 and "only a planned job can be approved" in early.json()["error"]
        assert olga.post(f"/api/jobs/{job_id}/plan").status_code == 202
        snap = wait_for_job(olga, job_id, {"planned"})
        assert snap["planned_by"] == "olga" and snap["approval"] is None and snap["needs_approval"] is True

        for who, client, wanted in (
            ("vic", vic, "your role viewer cannot approve"),
            ("olga", olga, "your role operator cannot approve"),
        ):
            refused = client.post(f"/api/jobs/{job_id}/approve")
            assert refused.status_code == 403 and wanted in refused.json()["error"], who
        assert vic.post(f"/api/jobs/{job_id}/start").status_code == 403
        unapproved = olga.post(f"/api/jobs/{job_id}/start")
        assert unapproved.status_code == 409
        assert unapproved.json()["error"] == "needs approval by someone other than olga"

        approved = ann.post(f"/api/jobs/{job_id}/approve")
        assert approved.status_code == 200, approved.text
        assert approved.json()["approval"]["by"] == "ann" and approved.json()["needs_approval"] is False

        # An edit voids it: planned again (the same writes even), it needs a new approval.
        edit = olga.patch(f"/api/jobs/{job_id}/rows/2", json={"Customer": "Renamed"})
        assert edit.status_code == 200, edit.text
        assert edit.json()["job"]["approval"] is None
        assert olga.post(f"/api/jobs/{job_id}/plan").status_code == 202
        assert wait_for_job(olga, job_id, {"planned"})["needs_approval"] is True
        voided = olga.post(f"/api/jobs/{job_id}/start")
        assert voided.status_code == 409 and "needs approval by someone other than olga" in voided.text

        # The planner cannot approve even as an approver or admin: ada plans, then tries.
        assert ada.post(f"/api/jobs/{job_id}/plan").status_code == 202
        assert wait_for_job(olga, job_id, {"planned"})["planned_by"] == "ada"
        own = ada.post(f"/api/jobs/{job_id}/approve")
        assert own.status_code == 403 and "you (ada) planned this job" in own.json()["error"]
        assert ann.post(f"/api/jobs/{job_id}/approve").status_code == 200
        assert olga.post(f"/api/jobs/{job_id}/start").status_code == 202
        done = wait_for_job(olga, job_id, FINAL)
        assert done["status"] == "done" and done["counts"]["succeeded"] == 4, done
        summary = _summary(vic.get(f"/api/jobs/{job_id}/results.xlsx").content)
        assert str(summary["approved by"]).startswith("ann at ")
        assert str(summary["planned by"]).startswith("ada at ")

        records = [json.loads(line) for line in ann.get("/api/audit").text.splitlines()]
        acts = {(r["name"], r["user"], r["answer"]) for r in records if r["kind"] == "action"}
        assert {("approve", "vic", 403), ("approve", "olga", 403), ("approve", "ann", 200)} <= acts
        assert ("approve", "ada", 403) in acts
        assert (job_id, "approved") in {(r["job"], r["name"]) for r in records if r["kind"] == "event"}
        _wait_for(bodies, {(job_id, "needs-approval"), (job_id, "done")})
    needs = [b for b in bodies if b["event"] == "needs-approval"]
    assert len(needs) == 3  # each plan without an approval that holds
    assert needs[0]["users"]["planned by"] == "olga" and "needs-approval" in needs[0]["text"]
    wire = json.dumps(bodies)
    for secret in [SANDBOX_API_KEY, *tokens.values()]:
        assert secret not in wire


def test_approval_voided_by_a_live_change_that_changes_the_plan(tmp_path: Path) -> None:
    """Approved, then the account changes: planned again it is another plan (start refused); a start
    that finds the change itself shows the new plan, unapproved, and sends nothing."""
    users = tmp_path / "users.toml"
    tokens = _team(users)
    sandbox = _sandbox(tmp_path)
    sheet = write_sheet(tmp_path / "routing.csv", 4)
    with (
        running_server(_settings(tmp_path / "data", sandbox, users, require_approval=True)) as (url, _t, _s),
        _as(url, tokens["olga"]) as olga,
        _as(url, tokens["ann"]) as ann,
    ):
        job_id = _planned(olga, sheet)
        assert ann.post(f"/api/jobs/{job_id}/approve").status_code == 200
        # Planned again, unchanged account: the same plan, the approval holds.
        assert olga.post(f"/api/jobs/{job_id}/plan").status_code == 202
        assert wait_for_job(olga, job_id, {"planned"})["approval"]["by"] == "ann"

        _route_elsewhere(sandbox, 1000)
        assert olga.post(f"/api/jobs/{job_id}/plan").status_code == 202
        replanned = wait_for_job(olga, job_id, {"planned"})
        assert replanned["planned"]["update"] == 1 and replanned["approval"] is None
        assert olga.post(f"/api/jobs/{job_id}/start").status_code == 409

        assert ann.post(f"/api/jobs/{job_id}/approve").status_code == 200
        _route_elsewhere(sandbox, 1001)  # after the approval: found by the send itself
        assert olga.post(f"/api/jobs/{job_id}/start").status_code == 202
        again, _ = _settled(olga, job_id, "sending")
        assert again["status"] == "planned" and "changed since the plan was shown" in again["error"]
        assert again["approval"] is None and again["needs_approval"] is True
        assert olga.post(f"/api/jobs/{job_id}/start").status_code == 409
    assert len(sandbox.state_snapshot()["writes"]) == 2  # only the two hand changes


def test_scheduled_job_survives_a_restart_and_starts_on_time(tmp_path: Path) -> None:
    """Scheduled a few seconds ahead, the server restarts (a new JobService on the same data dir);
    the job starts within 5 s of its time, plans again, finds the approved plan and sends it."""
    users = tmp_path / "users.toml"
    tokens = _team(users)
    sandbox = _sandbox(tmp_path)
    sheet = write_sheet(tmp_path / "routing.csv", 4)
    with _listener() as (hook, bodies, _arrived):
        settings = _settings(tmp_path / "data", sandbox, users, require_approval=True, notify_url=(hook,))
        with (
            running_server(settings) as (url, _t, _s),
            _as(url, tokens["olga"]) as olga,
            _as(url, tokens["ann"]) as ann,
        ):
            job_id = _planned(olga, sheet)
            early = olga.post(f"/api/jobs/{job_id}/start", json={"at": _in(60)})
            assert early.status_code == 409 and "needs approval by someone other than olga" in early.text
            assert ann.post(f"/api/jobs/{job_id}/approve").status_code == 200
            at = (datetime.now(UTC) + timedelta(seconds=6)).replace(microsecond=0)
            scheduled = olga.post(f"/api/jobs/{job_id}/start", json={"at": at.isoformat()})
            assert scheduled.status_code == 202, scheduled.text
            snap = scheduled.json()
            assert snap["status"] == "scheduled"
            assert snap["scheduled_at"] == at.strftime("%Y-%m-%dT%H:%M:%SZ")
            _wait_for(bodies, {(job_id, "scheduled")})
        assert sandbox.state_snapshot()["writes"] == []
        with (
            running_server(settings) as (url, _t, _s),
            _as(url, tokens["olga"]) as olga,
            _as(url, tokens["ann"]) as ann,
        ):
            assert olga.get(f"/api/jobs/{job_id}").json()["status"] == "scheduled"
            _left, left_at = _settled(olga, job_id, "scheduled")
            assert at.timestamp() - 0.5 <= left_at <= at.timestamp() + 5
            done = wait_for_job(olga, job_id, FINAL)
            assert done["status"] == "done" and done["counts"]["succeeded"] == 4, done
            records = [json.loads(line) for line in ann.get("/api/audit").text.splitlines()]
            events = [r["name"] for r in records if r["kind"] == "event" and r["job"] == job_id]
            assert events.index("scheduled") < events.index("due") < events.index("started")
            _wait_for(bodies, {(job_id, "done")})
    scheduled_notice = next(b for b in bodies if b["event"] == "scheduled")
    assert scheduled_notice["status"] == "scheduled" and scheduled_notice["job"] == job_id
    assert f"for {at.strftime('%Y-%m-%dT%H:%M:%SZ')} (UTC)" in scheduled_notice["text"]
    assert not [b for b in bodies if b["event"] == "needs-approval" and b["status"] != "planned"]
    wire = json.dumps(bodies)
    for secret in [SANDBOX_API_KEY, *tokens.values()]:
        assert secret not in wire


def test_scheduled_job_whose_plan_changed_fails_and_sends_nothing(tmp_path: Path) -> None:
    users = tmp_path / "users.toml"
    tokens = _team(users)
    sandbox = _sandbox(tmp_path)
    sheet = write_sheet(tmp_path / "routing.csv", 4)
    with (
        running_server(_settings(tmp_path / "data", sandbox, users, require_approval=True)) as (url, _t, _s),
        _as(url, tokens["olga"]) as olga,
        _as(url, tokens["ann"]) as ann,
    ):
        job_id = _planned(olga, sheet)
        assert ann.post(f"/api/jobs/{job_id}/approve").status_code == 200
        assert olga.post(f"/api/jobs/{job_id}/start", json={"at": _in(2)}).status_code == 202
        _route_elsewhere(sandbox, 1002)
        failed = wait_for_job(olga, job_id, FINAL, timeout=20)
        assert failed["status"] == "failed", failed
        assert failed["error"].startswith(
            "the plan changed since it was approved/scheduled: 4 writes were shown"
        )
        # Failed before sending anything: it plans again (the new plan), is approved anew and sends.
        assert olga.post(f"/api/jobs/{job_id}/plan").status_code == 202
        again = wait_for_job(olga, job_id, {"planned"})
        assert not again["error"] and again["approval"] is None
        assert ann.post(f"/api/jobs/{job_id}/approve").status_code == 200
        assert olga.post(f"/api/jobs/{job_id}/start").status_code == 202
        assert wait_for_job(olga, job_id, FINAL)["status"] == "done"
    assert len(sandbox.state_snapshot()["writes"]) == 5  # the hand change, then 3 creates and 1 update


def test_scheduled_job_whose_due_plan_a_restart_cut_fails_saying_so(tmp_path: Path) -> None:
    """A stop while a due job was planning again: the next start says so and sends nothing."""
    users = tmp_path / "users.toml"
    tokens = _team(users)
    sandbox = _sandbox(tmp_path)
    sheet = write_sheet(tmp_path / "routing.csv", 4)
    settings = _settings(tmp_path / "data", sandbox, users)
    with running_server(settings) as (url, _t, _s), _as(url, tokens["olga"]) as olga:
        job_id = _planned(olga, sheet)
        assert olga.post(f"/api/jobs/{job_id}/start", json={"at": _in(600)}).status_code == 202
    store = JobStore(tmp_path / "data")
    try:
        record = next(j.record for j in store.jobs() if j.id == job_id)
        assert record is not None
        store.put(job_id, {**record, "status": "planning", "schedule": {**record["schedule"], "due": "yes"}})
    finally:
        store.close()
    with running_server(settings) as (url, _t, _s), _as(url, tokens["olga"]) as olga:
        failed = wait_for_job(olga, job_id, FINAL, timeout=10)
        assert failed["status"] == "failed" and "stopped while the scheduled send" in failed["error"]
        assert olga.post(f"/api/jobs/{job_id}/plan").status_code == 202
        assert wait_for_job(olga, job_id, {"planned"})["scheduled_at"] is None
    assert sandbox.state_snapshot()["writes"] == []


def test_scheduled_job_whose_window_passed_unseen_fails_and_sends_nothing(tmp_path: Path) -> None:
    """The server finds a job long past its time (it was not running then): not sent late."""
    users = tmp_path / "users.toml"
    tokens = _team(users)
    sandbox = _sandbox(tmp_path)
    sheet = write_sheet(tmp_path / "routing.csv", 4)
    with (
        running_server(_settings(tmp_path / "data", sandbox, users)) as (url, _t, service),
        _as(url, tokens["olga"]) as olga,
    ):
        job_id = _planned(olga, sheet)
        assert olga.post(f"/api/jobs/{job_id}/start", json={"at": _in(60)}).status_code == 202
        service.scheduler.clock = lambda: datetime.now(UTC) + timedelta(hours=2)  # as after a long stop
        failed = wait_for_job(olga, job_id, FINAL, timeout=10)
        assert failed["status"] == "failed" and "passed while the server was not running" in failed["error"]
    assert sandbox.state_snapshot()["writes"] == []


def test_scheduled_job_can_be_moved_and_cancelled(tmp_path: Path) -> None:
    """A move is a start with another time; a time past or unreadable is a 400; cancel sends nothing."""
    users = tmp_path / "users.toml"
    tokens = _team(users)
    sandbox = _sandbox(tmp_path)
    sheet = write_sheet(tmp_path / "routing.csv", 4)
    with (
        running_server(_settings(tmp_path / "data", sandbox, users)) as (url, _t, _s),
        _as(url, tokens["olga"]) as olga,
        _as(url, tokens["otto"]) as otto,
        _as(url, tokens["ann"]) as ann,
    ):
        job_id = _planned(olga, sheet)
        first = olga.post(f"/api/jobs/{job_id}/start", json={"at": "2099-01-01T22:00:00+01:00"})
        assert first.status_code == 202 and first.json()["scheduled_at"] == "2099-01-01T21:00:00Z"
        for bad, wanted in (
            ("2001-01-01T00:00:00Z", "is not in the future"),
            ("next tuesday", "is not an ISO 8601 time"),
            ("2099-01-01T22:00:00", "has no zone"),
        ):
            answer = olga.post(f"/api/jobs/{job_id}/start", json={"at": bad})
            assert answer.status_code == 400 and wanted in answer.json()["error"], bad
            assert "\n" not in answer.json()["error"]
        assert otto.post(f"/api/jobs/{job_id}/start", json={"at": "2099-02-01T00:00:00Z"}).status_code == 403
        moved = olga.post(f"/api/jobs/{job_id}/start", json={"at": "2099-02-01T00:00:00Z"})
        assert moved.status_code == 202 and moved.json()["scheduled_at"] == "2099-02-01T00:00:00Z"
        assert olga.get(f"/api/jobs/{job_id}").json()["status"] == "scheduled"
        edit = olga.patch(f"/api/jobs/{job_id}/rows/2", json={"Customer": "x"})
        assert edit.status_code == 409
        assert olga.post(f"/api/jobs/{job_id}/cancel").status_code == 202
        cancelled = wait_for_job(olga, job_id, FINAL)
        assert cancelled["status"] == "cancelled" and cancelled["scheduled_at"] is None
        records = [json.loads(line) for line in ann.get("/api/audit").text.splitlines()]
        events = [r["name"] for r in records if r["kind"] == "event" and r["job"] == job_id]
        assert events.count("scheduled") == 2 and events[-1] == "cancelled"
    assert sandbox.state_snapshot()["writes"] == []


def test_send_page_approves_and_schedules_without_javascript(tmp_path: Path) -> None:
    """Plain forms: the planner sees who must approve and no Send button; the approver's page has
    the Approve button; a "Send at" time in the form's zone schedules; the page offers Move and Cancel."""
    users = tmp_path / "users.toml"
    tokens = _team(users)
    sandbox = _sandbox(tmp_path)
    sheet = write_sheet(tmp_path / "routing.csv", 4)
    with (
        running_server(_settings(tmp_path / "data", sandbox, users, require_approval=True)) as (url, _t, _s),
        _as(url, tokens["olga"]) as olga,
        _as(url, tokens["ann"]) as ann,
        _as(url, tokens["vic"]) as vic,
    ):
        job_id = _planned(olga, sheet)
        mine = olga.get(f"/jobs/{job_id}/send").text
        assert (
            "Planned by <strong>olga</strong>" in mine and "needs approval by someone other than olga" in mine
        )
        assert "rows now</button>" not in mine and "Approve this plan" not in mine
        assert "You planned it, so someone else approves it." in mine
        assert "Approve this plan" not in vic.get(f"/jobs/{job_id}/send").text
        assert "Approve this plan</button>" in ann.get(f"/jobs/{job_id}/send").text
        assert vic.post(f"/jobs/{job_id}/approve").status_code == 403
        self_approval = olga.post(f"/jobs/{job_id}/approve")
        assert self_approval.status_code == 403
        approved = ann.post(f"/jobs/{job_id}/approve")
        assert approved.status_code == 303 and approved.headers["location"] == f"/jobs/{job_id}/send"

        page = olga.get(f"/jobs/{job_id}/send").text
        assert "Approved by <strong>ann</strong>" in page and "rows now</button>" in page
        assert 'type="datetime-local"' in page and "Schedule the send</button>" in page
        unconfirmed = olga.post(f"/jobs/{job_id}/send", data={"when": "at", "at": "2099-05-01T10:00"})
        assert unconfirmed.status_code == 400
        past = olga.post(
            f"/jobs/{job_id}/send", data={"confirm": "yes", "when": "at", "at": "2001-05-01T10:00"}
        )
        assert past.status_code == 400 and "is not in the future" in past.text
        form = {"confirm": "yes", "when": "at", "at": "2099-05-01T10:00", "zone": "Asia/Kolkata"}
        scheduled = olga.post(f"/jobs/{job_id}/send", data=form)
        assert scheduled.status_code == 303, scheduled.text
        snap = olga.get(f"/api/jobs/{job_id}").json()
        assert snap["status"] == "scheduled" and snap["scheduled_at"] == "2099-05-01T04:30:00Z"
        assert olga.get(f"/jobs/{job_id}", follow_redirects=False).headers["location"].endswith("/send")
        page = olga.get(f"/jobs/{job_id}/send").text
        assert "2099-05-01T04:30:00Z" in page and 'data-watch="scheduled"' in page
        assert "Move</button>" in page and "Cancel the scheduled send</button>" in page
        assert "<script>" not in page and "style=" not in page
        assert olga.get("/static/send.js").status_code == 200
        assert olga.post(f"/jobs/{job_id}/cancel").status_code == 303
        assert olga.get(f"/api/jobs/{job_id}").json()["status"] == "cancelled"
