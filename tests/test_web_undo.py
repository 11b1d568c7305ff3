"""Undo and export on the web service: a rollback job over the import's journal, current routing.

Servers run on loopback (uvicorn on an ephemeral port, in a thread) against the sandbox
in-process; the sandbox's state is read before the import and after the rollback.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openpyxl
import pytest
from helpers import (
    change_routing,
    desired_record,
    did_number,
    routing_fields,
    wait_for_job,
    wait_until,
    web_connection,
    write_inventory,
    write_sheet,
)

from importer.account.limiter import RateLimiter
from importer.fields import FIELD_NAMES
from importer.sandbox import SANDBOX_API_KEY, Sandbox, SandboxConfig, create_sandbox
from importer.web import exports
from importer.web.exports import Export, ExportService
from importer.web.jobs import JobService
from importer.web.people import Role, add_user
from importer.web.server import ServeSettings, running_server

TOKEN = "undo-test-server-token-0123456789abcdef"
N = 5
FINAL = {"done", "cancelled", "failed"}


def _routing(sandbox: Sandbox) -> dict[int, dict[str, int]]:
    return {int(r["did_id"]): routing_fields(r) for r in sandbox.state_snapshot()["routing"]}


def _sandbox(tmp_path: Path, **config: Any) -> Sandbox:
    """Every DID routed before the import, each differently from what the sheet asks: all updates."""
    existing = {i: desired_record(i + 1) for i in range(N)}
    return create_sandbox(
        SandboxConfig(inventory=write_inventory(tmp_path / "inventory.json", N, existing), **config)
    )


@contextlib.contextmanager
def _server(
    tmp_path: Path, sandbox: Sandbox, **overrides: Any
) -> Iterator[tuple[str, httpx.Client, JobService]]:
    values: dict[str, Any] = {
        "connection": web_connection(sandbox),
        "data_dir": tmp_path / "data",
        "port": 0,
        "token": TOKEN,
    }
    values.update(overrides)
    with (
        running_server(ServeSettings(**values)) as (url, _token, service),
        httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30) as api,
    ):
        yield url, api, service


def _upload(api: httpx.Client, path: Path) -> str:
    with path.open("rb") as fh:
        answer = api.post("/api/jobs", files={"file": (path.name, fh)})
    assert answer.status_code == 201, answer.text
    return str(answer.json()["id"])


def _import(api: httpx.Client, path: Path) -> str:
    """Upload, plan and send a sheet through the API; the job id once it is done."""
    job_id = _upload(api, path)
    wait_for_job(api, job_id, {"validated"})
    assert api.post(f"/api/jobs/{job_id}/plan").status_code == 202
    wait_for_job(api, job_id, {"planned"})
    assert api.post(f"/api/jobs/{job_id}/start").status_code == 202
    assert wait_for_job(api, job_id, FINAL)["status"] == "done"
    return job_id


def _plan_and_send(api: httpx.Client, job_id: str) -> dict[str, Any]:
    assert api.post(f"/api/jobs/{job_id}/plan").status_code == 202
    planned = wait_for_job(api, job_id, {"planned", "validated", "failed"})
    assert planned["status"] == "planned", planned
    assert api.post(f"/api/jobs/{job_id}/start").status_code == 202
    return wait_for_job(api, job_id, FINAL)


def _sheet_rows(data: bytes, sheet: str) -> list[dict[str, Any]]:
    book = openpyxl.load_workbook(io.BytesIO(data), read_only=True)
    try:
        rows = list(book[sheet].iter_rows(values_only=True))
    finally:
        book.close()
    return [dict(zip(rows[0], r, strict=False)) for r in rows[1:]]


def _no_key_anywhere(data_dir: Path, answers: list[str]) -> None:
    for text in answers:
        assert SANDBOX_API_KEY not in text
    for path in data_dir.rglob("*"):
        if path.is_file():
            assert SANDBOX_API_KEY.encode() not in path.read_bytes(), path


def test_web_undo_rollback_job_restores_the_account_exactly(tmp_path: Path) -> None:
    """Import via the web, then undo it: a new rollback job, planned and sent, puts every record back."""
    sandbox = _sandbox(tmp_path)
    before = _routing(sandbox)
    answers: list[str] = []
    with _server(tmp_path, sandbox) as (_url, api, _service):
        job_id = _import(api, write_sheet(tmp_path / "routing.csv", N))
        assert _routing(sandbox) != before

        made = api.post(f"/api/jobs/{job_id}/rollback")
        assert made.status_code == 201, made.text
        rollback = made.json()
        assert (rollback["kind"], rollback["undoes"], rollback["status"]) == ("rollback", job_id, "validated")
        original = api.get(f"/api/jobs/{job_id}").json()
        assert (original["kind"], original["undone_by"], original["undoes"]) == (
            "import",
            rollback["id"],
            None,
        )

        # The plan: the CLI's rollback plan, each change of the import put back, nothing held.
        assert api.post(f"/api/jobs/{rollback['id']}/plan").status_code == 202
        planned = wait_for_job(api, rollback["id"], {"planned", "validated"})
        assert planned["status"] == "planned", planned
        assert planned["planned"]["update"] == N and planned["planned"]["held"] == {}
        assert planned["plan"].startswith(f"restore {N}, deactivate 0, unchanged 0, skip 0")
        rows = api.get(f"/api/jobs/{rollback['id']}/rows").json()
        assert rows["total"] == N and rows["columns"][:3] == ["run_row", "did_id", "did_number"]
        assert _routing(sandbox) != before  # a plan sends nothing

        assert api.post(f"/api/jobs/{rollback['id']}/start").status_code == 202
        done = wait_for_job(api, rollback["id"], FINAL)
        assert done["status"] == "done", done
        assert done["counts"]["succeeded"] == N and done["progress"]["done"] == N
        assert _routing(sandbox) == before

        # Its results workbook is the CLI rollback's: one row per change, each restored.
        book = api.get(f"/api/jobs/{rollback['id']}/results.xlsx")
        assert book.status_code == 200
        results = _sheet_rows(book.content, "Results")
        assert [r["import_status"] for r in results] == ["succeeded"] * N
        assert {r["action_undone"] for r in results} == {"update"}

        listed = {j["id"]: j for j in api.get("/api/jobs").json()["jobs"]}
        assert listed[rollback["id"]]["kind"] == "rollback" and listed[job_id]["undone_by"] == rollback["id"]

        # A rollback of a rollback, and a second rollback of the import, are refused.
        again = api.post(f"/api/jobs/{rollback['id']}/rollback")
        assert again.status_code == 409 and "itself a rollback" in again.json()["error"]
        second = api.post(f"/api/jobs/{job_id}/rollback")
        assert second.status_code == 409 and "has a rollback already" in second.json()["error"]
        # Neither job takes edits or a resume once undone.
        assert api.post(f"/api/jobs/{rollback['id']}/edits", json={"op": "undo"}).status_code == 409
        answers += [made.text, planned["plan"], json.dumps(done), json.dumps(rows), again.text, second.text]
    _no_key_anywhere(tmp_path / "data", answers)


def test_web_undo_holds_back_a_row_someone_changed_since(tmp_path: Path) -> None:
    """A routing changed by someone else after the import is held back with the reason, never overwritten."""
    sandbox = _sandbox(tmp_path)
    before = _routing(sandbox)
    someone = {"for_inbound_call": 1, "for_outbound_call": 4, "status": 1}
    with _server(tmp_path, sandbox) as (_url, api, _service):
        job_id = _import(api, write_sheet(tmp_path / "routing.csv", N))
        change_routing(sandbox, 1002, someone)
        rollback = api.post(f"/api/jobs/{job_id}/rollback").json()["id"]
        assert api.post(f"/api/jobs/{rollback}/plan").status_code == 202
        planned = wait_for_job(api, rollback, {"planned", "validated"})
        assert planned["planned"]["update"] == N - 1
        assert sum(planned["planned"]["held"].values()) == 1, planned["planned"]
        held = api.get(f"/api/jobs/{rollback}/rows", params={"status": "skipped"}).json()["rows"]
        assert [r["values"][1] for r in held] == ["1002"]
        assert "changed since the run" in held[0]["reason"]

        assert api.post(f"/api/jobs/{rollback}/start").status_code == 202
        done = wait_for_job(api, rollback, FINAL)
        assert done["status"] == "done" and done["counts"]["skipped"] == 1
    state = _routing(sandbox)
    assert state[1002] == someone  # left as that person set it
    assert {k: v for k, v in state.items() if k != 1002} == {k: v for k, v in before.items() if k != 1002}


def test_web_undo_needs_an_operator_a_finished_job_and_an_approval(tmp_path: Path) -> None:
    """A viewer cannot roll back (403); another operator can; a job not finished cannot be undone;
    with four eyes the rollback's plan is approved by someone else before it starts, like an import's."""
    users = tmp_path / "users.toml"
    tokens = {
        name: add_user(users, name, role)
        for name, role in {
            "olga": Role.OPERATOR,
            "otto": Role.OPERATOR,
            "vic": Role.VIEWER,
            "ann": Role.APPROVER,
        }.items()
    }
    sandbox = _sandbox(tmp_path)
    with _server(tmp_path, sandbox, users_file=users, require_approval=True) as (url, _api, _service):
        clients = {
            n: httpx.Client(base_url=url, headers={"Authorization": f"Bearer {t}"}, timeout=30)
            for n, t in tokens.items()
        }
        try:
            olga, otto, vic, ann = (clients[n] for n in ("olga", "otto", "vic", "ann"))
            pending = _upload(olga, write_sheet(tmp_path / "pending.csv", 2))
            wait_for_job(olga, pending, {"validated"})
            early = olga.post(f"/api/jobs/{pending}/rollback")
            assert early.status_code == 409 and "only a finished job" in early.json()["error"]

            job_id = _upload(olga, write_sheet(tmp_path / "routing.csv", N))
            wait_for_job(olga, job_id, {"validated"})
            assert olga.post(f"/api/jobs/{job_id}/plan").status_code == 202
            wait_for_job(olga, job_id, {"planned"})
            assert ann.post(f"/api/jobs/{job_id}/approve").status_code == 200
            assert olga.post(f"/api/jobs/{job_id}/start").status_code == 202
            assert wait_for_job(olga, job_id, FINAL)["status"] == "done"
            refused = vic.post(f"/api/jobs/{job_id}/rollback")
            assert refused.status_code == 403
            assert refused.json()["error"].startswith("your role viewer cannot undo an import")
            assert vic.get(f"/api/jobs/{job_id}").json()["undone_by"] is None
            made = otto.post(f"/api/jobs/{job_id}/rollback")
            assert made.status_code == 201 and made.json()["uploaded_by"] == "otto"
            # The rollback is otto's job: olga cannot start it, otto can.
            rollback = made.json()["id"]
            assert otto.post(f"/api/jobs/{rollback}/plan").status_code == 202
            wait_for_job(otto, rollback, {"planned"})
            assert olga.post(f"/api/jobs/{rollback}/start").status_code == 403
            unapproved = otto.post(f"/api/jobs/{rollback}/start")
            assert unapproved.status_code == 409 and "needs approval" in unapproved.json()["error"]
            assert otto.post(f"/api/jobs/{rollback}/approve").status_code == 403  # an operator
            assert ann.post(f"/api/jobs/{rollback}/approve").status_code == 200
            assert otto.post(f"/api/jobs/{rollback}/start").status_code == 202
            assert wait_for_job(vic, rollback, FINAL)["status"] == "done"
            # Its results workbook (the CLI rollback's) names who made, planned and started it.
            book = openpyxl.load_workbook(io.BytesIO(vic.get(f"/api/jobs/{rollback}/results.xlsx").content))
            summary = {r[0]: r[1] for r in book["Summary"].iter_rows(values_only=True) if r and r[0]}
            book.close()
            assert summary["command"] == "rollback" and summary["undoes web job"] == job_id
            assert summary["web job"] == rollback
            for step in ("uploaded by", "planned by", "started by"):
                assert str(summary[step]).startswith("otto at "), summary
            assert str(summary["approved by"]).startswith("ann at ")
            # A service's workbook names none of the server's paths, user or host (the journal's neither).
            assert not {"path", "os_user", "host", "journal"} & set(summary)
            assert not any(str(tmp_path) in str(value) for value in summary.values())
        finally:
            for client in clients.values():
                client.close()


def _export(api: httpx.Client) -> dict[str, Any]:
    started = api.post("/api/exports")
    assert started.status_code == 202, started.text
    export_id = started.json()["id"]
    deadline = time.monotonic() + 30
    while (shown := api.get(f"/api/exports/{export_id}").json())["status"] == "running":
        assert time.monotonic() < deadline, shown
        time.sleep(0.05)
    return dict(shown)


def test_web_export_reimports_as_all_unchanged(tmp_path: Path) -> None:
    """The workbook has the CLI export's columns; imported again as a new web job, every row is unchanged."""
    sandbox = _sandbox(tmp_path)
    answers: list[str] = []
    with _server(tmp_path, sandbox) as (_url, api, service):
        limiter = service.key_limiter()
        paced = limiter.requests
        shown = _export(api)
        assert shown["status"] == "done" and shown["routed"] == N, shown
        # Its reads went through the key's one limiter, the one the jobs' sends use.
        assert limiter.requests - paced == shown["requests"] > 0
        book = api.get(shown["workbook"])
        assert book.status_code == 200
        rows = _sheet_rows(book.content, "Routing")
        assert list(rows[0]) == list(FIELD_NAMES) and len(rows) == N
        book_sheets = openpyxl.load_workbook(io.BytesIO(book.content), read_only=True)
        summary = {r[0]: r[1] for r in book_sheets["Summary"].iter_rows(values_only=True)}
        book_sheets.close()
        assert summary["API key"] == "..." + SANDBOX_API_KEY[-4:]

        path = tmp_path / "current.xlsx"
        path.write_bytes(book.content)
        job_id = _upload(api, path)
        wait_for_job(api, job_id, {"validated"})
        assert api.post(f"/api/jobs/{job_id}/plan").status_code == 202
        planned = wait_for_job(api, job_id, {"planned", "validated"})
        assert planned["status"] == "planned", planned
        assert planned["planned"]["unchanged"] == N and planned["planned"]["writes"] == 0
        listed = api.get("/api/exports").json()["exports"]
        assert [e["id"] for e in listed] == [shown["id"]]
        answers += [json.dumps(shown), json.dumps(listed), json.dumps(planned)]
    _no_key_anywhere(tmp_path / "data", answers)


def test_web_export_one_at_a_time_and_open_to_viewers(tmp_path: Path) -> None:
    """A second export while one runs is refused (409, naming it); a viewer may export (it only reads)."""
    users = tmp_path / "users.toml"
    token = add_user(users, "vic", Role.VIEWER)
    sandbox = _sandbox(tmp_path, latency_ms=300)
    with (
        _server(tmp_path, sandbox, users_file=users) as (url, _api, _service),
        httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as vic,
    ):
        first = vic.post("/api/exports")
        assert first.status_code == 202 and first.json()["by"] == "vic"
        busy = vic.post("/api/exports")
        assert busy.status_code == 409 and first.json()["id"] in busy.json()["error"]
        assert vic.get(f"/api/exports/{first.json()['id']}/routing.xlsx").status_code == 409
        assert _export_done(vic, first.json()["id"])["status"] == "done"
        assert vic.get("/api/exports/0123456789abcdef01234567").status_code == 404


def _export_done(api: httpx.Client, export_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while (shown := api.get(f"/api/exports/{export_id}").json())["status"] == "running":
        assert time.monotonic() < deadline, shown
        time.sleep(0.05)
    return dict(shown)


def test_web_export_cut_off_by_a_restart_is_listed_as_lost(tmp_path: Path) -> None:
    """An export running when the server stopped is listed as lost, with why; a finished one stays."""
    sandbox = _sandbox(tmp_path)
    data = tmp_path / "data"

    def _limiter() -> RateLimiter:
        return RateLimiter(100_000)

    async def start_and_stop() -> tuple[str, str]:
        service = ExportService(data, web_connection(sandbox), _limiter)
        service.load()
        finished = service.start("ann")
        assert service.task is not None
        await service.task
        cut = service.start("bob")
        await service.stop()  # before its first read ends
        return finished.id, cut.id

    finished, cut = asyncio.run(start_and_stop())
    again = ExportService(data, web_connection(sandbox), _limiter)
    again.load()
    assert again.exports[finished].status == "done" and again.workbook(again.exports[finished]).is_file()
    assert again.exports[cut].status == "lost"
    assert "server stopped while it ran" in again.exports[cut].error
    assert [e.id for e in again.list()] == [cut, finished]


@pytest.mark.parametrize("status", ["validated", "cancelled"])
def test_web_undo_refuses_a_job_that_sent_nothing(tmp_path: Path, status: str) -> None:
    sandbox = _sandbox(tmp_path)
    with _server(tmp_path, sandbox) as (_url, api, _service):
        job_id = _upload(api, write_sheet(tmp_path / "routing.csv", 2))
        wait_for_job(api, job_id, {"validated"})
        if status == "cancelled":
            assert api.post(f"/api/jobs/{job_id}/cancel").status_code == 202
            wait_for_job(api, job_id, {"cancelled"})
        refused = api.post(f"/api/jobs/{job_id}/rollback")
        assert (
            refused.status_code == 409
            and "only a finished job that sent something" in refused.json()["error"]
        )


def test_web_undo_and_export_forms_work_without_javascript(tmp_path: Path) -> None:
    """The results page's "Undo this import" form makes and plans the rollback; the jobs page's
    "Download current routing" form starts an export the page then lists with its download."""
    sandbox = _sandbox(tmp_path)
    with _server(tmp_path, sandbox) as (_url, api, _service):
        job_id = _import(api, write_sheet(tmp_path / "routing.csv", N))
        page = api.get(f"/jobs/{job_id}/results").text
        assert f'action="/jobs/{job_id}/rollback"' in page and "Undo this import</button>" in page
        made = api.post(f"/jobs/{job_id}/rollback")
        assert made.status_code == 303
        rollback = api.get(f"/api/jobs/{job_id}").json()["undone_by"]
        assert made.headers["location"] == f"/jobs/{rollback}/plan"
        assert wait_for_job(api, rollback, {"planned", "validated"})["status"] == "planned"
        # Once undone, the offer is gone and the page links the rollback; a second form post says why not.
        page = api.get(f"/jobs/{job_id}/results").text
        assert "Undo this import</button>" not in page and f'href="/jobs/{rollback}"' in page
        again = api.post(f"/jobs/{job_id}/rollback")
        assert again.status_code == 409 and "has a rollback already" in again.text
        # The rollback job's own steps render: its plan (one row per change), send, then results.
        plan_page = api.get(f"/jobs/{rollback}/plan")
        assert plan_page.status_code == 200 and did_number(0) in plan_page.text
        assert api.get(f"/jobs/{rollback}/send").status_code == 200
        assert api.post(f"/jobs/{rollback}/send", data={"confirm": "yes"}).status_code == 303
        assert wait_for_job(api, rollback, FINAL)["status"] == "done"
        done_page = api.get(f"/jobs/{rollback}/results").text
        assert (
            f'This job undoes <a href="/jobs/{job_id}">' in done_page
            and "Undo this import</button>" not in done_page
        )

        front = api.get("/").text
        assert 'action="/exports"' in front and "Download current routing</button>" in front
        started = api.post("/exports")
        assert started.status_code == 303 and started.headers["location"] == "/#routing"
        export = api.get("/api/exports").json()["exports"][0]
        _export_done(api, export["id"])
        assert f'href="/api/exports/{export["id"]}/routing.xlsx"' in api.get("/").text


def test_web_undo_account_changed_after_the_plan_sends_nothing_then_survives_a_restart(
    tmp_path: Path,
) -> None:
    """Someone changes a routing between the rollback's plan and its start: nothing is sent, the new
    plan (that row held back) is shown; started again it is done; a restart shows the same rollback."""
    sandbox = _sandbox(tmp_path)
    someone = {"for_inbound_call": 1, "for_outbound_call": 4, "status": 1}
    with _server(tmp_path, sandbox) as (_url, api, _service):
        job_id = _import(api, write_sheet(tmp_path / "routing.csv", N))
        rollback = api.post(f"/api/jobs/{job_id}/rollback").json()["id"]
        assert api.post(f"/api/jobs/{rollback}/plan").status_code == 202
        assert wait_for_job(api, rollback, {"planned"})["planned"]["update"] == N
        imported = _routing(sandbox)
        change_routing(sandbox, 1001, someone)
        assert api.post(f"/api/jobs/{rollback}/start").status_code == 202
        replanned = wait_for_job(api, rollback, {"planned", *FINAL})
        assert replanned["status"] == "planned" and "the account changed since the plan" in replanned["error"]
        assert replanned["planned"]["update"] == N - 1
        assert _routing(sandbox) == {**imported, 1001: someone}  # nothing sent
        assert api.post(f"/api/jobs/{rollback}/start").status_code == 202
        assert wait_for_job(api, rollback, FINAL)["status"] == "done"
        shown = api.get(f"/api/jobs/{rollback}").json()
    assert _routing(sandbox)[1001] == someone
    with _server(tmp_path, sandbox) as (_url, api, _service):
        again = api.get(f"/api/jobs/{rollback}").json()
        assert {k: again[k] for k in ("kind", "undoes", "status", "counts")} == {
            k: shown[k] for k in ("kind", "undoes", "status", "counts")
        }
        assert api.get(f"/api/jobs/{job_id}").json()["undone_by"] == rollback
        rows = api.get(f"/api/jobs/{rollback}/rows").json()
        assert rows["total"] == N
        assert sorted(r["status"] for r in rows["rows"]) == ["skipped"] + ["succeeded"] * (N - 1)


def test_web_export_keeps_the_newest_and_says_why_one_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the newest ``KEEP`` exports stay on disk; a rejected key fails the export with one line."""
    sandbox = _sandbox(tmp_path)
    monkeypatch.setattr(exports, "KEEP", 2)

    async def three(connection: Any) -> list[Export]:
        service = ExportService(tmp_path / "data", connection, lambda: RateLimiter(100_000))
        service.load()
        made = []
        for _ in range(3):
            made.append(service.start(""))
            assert service.task is not None
            await service.task
        return [service.exports.get(e.id) or e for e in made]

    first, second, third = asyncio.run(three(web_connection(sandbox)))
    assert not (tmp_path / "data" / "exports" / first.id).exists()
    assert {second.status, third.status} == {"done"}
    wrong = "wrong-key-0123456789abcdefghijklmnop"
    failed = asyncio.run(three(web_connection(sandbox, api_key=wrong)))[-1]
    assert failed.status == "failed" and "rejected the API key" in failed.error and "\n" not in failed.error
    assert wrong not in failed.error and wrong not in json.dumps(failed.shown()), failed.error


def test_web_undo_cancelled_rollback_is_not_resumed_but_followed_by_a_new_one(tmp_path: Path) -> None:
    """A cancelled rollback offers no "send the rest" (409 through the API); the import may be undone
    again by a new rollback, which puts the account back."""
    sandbox = _sandbox(tmp_path)
    before = _routing(sandbox)
    with _server(tmp_path, sandbox) as (_url, api, _service):
        job_id = _import(api, write_sheet(tmp_path / "routing.csv", N))
        first = api.post(f"/api/jobs/{job_id}/rollback").json()["id"]
        assert api.post(f"/api/jobs/{first}/plan").status_code == 202
        wait_for_job(api, first, {"planned"})
        assert api.post(f"/api/jobs/{first}/cancel").status_code == 202
        assert wait_for_job(api, first, FINAL)["status"] == "cancelled"
        assert "/resume" not in api.get(f"/jobs/{first}/results").text
        resumed = api.post(f"/api/jobs/{first}/resume")
        assert resumed.status_code == 409 and "not resumed" in resumed.json()["error"]

        second = api.post(f"/api/jobs/{job_id}/rollback")
        assert second.status_code == 201, second.text
        assert api.get(f"/api/jobs/{job_id}").json()["undone_by"] == second.json()["id"]
        assert _plan_and_send(api, second.json()["id"])["status"] == "done"
    assert _routing(sandbox) == before


def test_web_undo_of_a_cancelled_import_hides_send_the_rest_and_opens_on_its_plan(tmp_path: Path) -> None:
    """An import cancelled mid-send and being undone offers no "send the remaining rows" (it would be
    refused); the rollback job, made through the API and not planned yet, opens on its plan step."""
    inventory = write_inventory(tmp_path / "inventory.json", 20)
    sandbox = create_sandbox(SandboxConfig(inventory=inventory, requests_per_minute=100_000, latency_ms=60))
    connection = web_connection(sandbox, concurrency=1)
    with _server(tmp_path, sandbox, connection=connection) as (_url, api, _service):
        job_id = _upload(api, write_sheet(tmp_path / "routing.csv", 20))
        wait_for_job(api, job_id, {"validated"})
        assert api.post(f"/api/jobs/{job_id}/plan").status_code == 202
        wait_for_job(api, job_id, {"planned"})
        assert api.post(f"/api/jobs/{job_id}/start").status_code == 202
        wait_until(lambda: api.get(f"/api/jobs/{job_id}").json()["progress"]["done"] >= 2, "2 writes")
        assert api.post(f"/api/jobs/{job_id}/cancel").status_code == 202
        assert wait_for_job(api, job_id, FINAL)["status"] == "cancelled"
        assert "Send the remaining" in api.get(f"/jobs/{job_id}/results").text  # before the undo
        rollback = api.post(f"/api/jobs/{job_id}/rollback")
        assert rollback.status_code == 201, rollback.text
        assert "Send the remaining" not in api.get(f"/jobs/{job_id}/results").text
        opened = api.get(f"/jobs/{rollback.json()['id']}", follow_redirects=False)
        assert opened.status_code in (302, 303, 307) and opened.headers["location"].endswith("/plan")
