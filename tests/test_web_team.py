"""The web service run by a team: people and roles, a sign-on proxy's header, notifications, audit.

Servers run on loopback (uvicorn on an ephemeral port, in a thread) with a users file made by
``voicelink-import users add``; the sandbox is the API; notifications go to a listener on
127.0.0.1 that records what it is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import openpyxl
import pytest
from click.testing import CliRunner
from helpers import wait_for_job, web_connection, write_inventory, write_sheet

from importer.cli import main
from importer.sandbox import SANDBOX_API_KEY, Sandbox, SandboxConfig, create_sandbox
from importer.web.app import WebConfig, create_app
from importer.web.jobs import JobService
from importer.web.people import Action, Role, User, add_user, can, load_users
from importer.web.security import allowed_hosts
from importer.web.server import ServeSettings, running_server

SERVER_TOKEN = "team-server-secret-token-0123456789abcdef"
TEAM = {
    "olga": Role.OPERATOR,
    "otto": Role.OPERATOR,
    "ann": Role.APPROVER,
    "vic": Role.VIEWER,
    "ada": Role.ADMIN,
}
FINAL = {"done", "cancelled", "failed"}


@contextlib.contextmanager
def _listener(fail_first: int = 0) -> Iterator[tuple[str, list[dict[str, Any]], threading.Event]]:
    """A notification listener on 127.0.0.1: records each JSON body; answers 503 to the first ones."""
    bodies: list[dict[str, Any]] = []
    arrived = threading.Event()
    refused = [0]

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("content-length", "0")))
            if refused[0] < fail_first:
                refused[0] += 1
                self.send_response(503)
            else:
                bodies.append(json.loads(raw))
                arrived.set()
                self.send_response(204)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", bodies, arrived
    finally:
        server.shutdown()
        server.server_close()


def _team(path: Path) -> dict[str, str]:
    """Write a users file for TEAM; the tokens by name."""
    return {name: add_user(path, name, role) for name, role in TEAM.items()}


def _as(url: str, token: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30)


def _upload(client: httpx.Client, path: Path, **fields: Any) -> httpx.Response:
    with path.open("rb") as fh:
        return client.post("/api/jobs", files={"file": (path.name, fh)}, data=fields)


def _settings(data: Path, sandbox: Sandbox, users: Path, **overrides: Any) -> ServeSettings:
    values: dict[str, Any] = {
        "connection": web_connection(sandbox),
        "data_dir": data,
        "port": 0,
        "token": SERVER_TOKEN,
        "users_file": users,
    }
    values.update(overrides)
    return ServeSettings(**values)


def _summary(data: bytes) -> dict[str, Any]:
    book = openpyxl.load_workbook(io.BytesIO(data), read_only=True)
    try:
        return {str(r[0]): r[1] for r in book["Summary"].iter_rows(values_only=True) if r and r[0]}
    finally:
        book.close()


def _wait_for(bodies: list[dict[str, Any]], wanted: set[tuple[str, str]], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while {(b["job"], b["event"]) for b in bodies} < wanted:
        if time.monotonic() > deadline:
            raise AssertionError(f"notices seen: {[(b['job'], b['event']) for b in bodies]}; wanted {wanted}")
        time.sleep(0.05)


@pytest.mark.parametrize(
    ("role", "action", "owner", "allowed"),
    [
        (Role.VIEWER, Action.VIEW, None, True),
        (Role.VIEWER, Action.UPLOAD, None, False),
        (Role.VIEWER, Action.START, "vic", False),
        (Role.OPERATOR, Action.UPLOAD, None, True),
        (Role.OPERATOR, Action.START, "me", True),
        (Role.OPERATOR, Action.START, "someone", False),
        (Role.OPERATOR, Action.CANCEL, "someone", False),
        (Role.OPERATOR, Action.APPROVE, "someone", False),
        (Role.OPERATOR, Action.AUDIT, None, False),
        (Role.APPROVER, Action.APPROVE, "someone", True),
        (Role.APPROVER, Action.CANCEL, "someone", False),
        (Role.ADMIN, Action.CANCEL, "someone", True),
        (Role.ADMIN, Action.START, "someone", True),
    ],
)
def test_people_can_follows_the_role_table(
    role: Role, action: Action, owner: str | None, allowed: bool
) -> None:
    why = can(User("me", role), action, owner)
    assert (why is None) is allowed, why
    if not allowed:
        assert role.value in why or (owner or "") in (why or "")


def test_team_roles_notifications_and_audit_over_a_real_server(tmp_path: Path) -> None:
    """Viewer refused (403 with the reason) but lists and downloads; operators start only their own
    jobs; an admin cancels another's; each notice arrives without a secret; audit says who did what."""
    users = tmp_path / "users.toml"
    tokens = _team(users)
    sandbox = create_sandbox(SandboxConfig(inventory=write_inventory(tmp_path / "inventory.json", 10)))
    sheet = write_sheet(tmp_path / "routing.csv", 4)
    with (
        _listener(fail_first=1) as (hook, bodies, _arrived),
        running_server(_settings(tmp_path / "data", sandbox, users, notify_url=(hook,))) as (url, _t, _s),
        _as(url, tokens["olga"]) as olga,
        _as(url, tokens["otto"]) as otto,
        _as(url, tokens["vic"]) as vic,
        _as(url, tokens["ada"]) as ada,
        _as(url, tokens["ann"]) as ann,
    ):
        # The server's own token opens nothing once there are users.
        with _as(url, SERVER_TOKEN) as server_token:
            assert server_token.get("/api/jobs").status_code == 401

        refused = _upload(vic, sheet)
        assert refused.status_code == 403
        assert refused.json()["error"].startswith("your role viewer cannot upload a file")

        # The uploader is who signed in, whatever the free-text field says.
        first = _upload(olga, sheet, uploaded_by="mallory")
        assert first.status_code == 201, first.text
        job_id = first.json()["id"]
        assert first.json()["uploaded_by"] == "olga"
        wait_for_job(vic, job_id, {"validated"})

        assert olga.post(f"/api/jobs/{job_id}/plan").status_code == 202
        wait_for_job(olga, job_id, {"planned"})
        start = vic.post(f"/api/jobs/{job_id}/start")
        assert start.status_code == 403
        assert "your role viewer cannot start a job" in start.json()["error"]
        not_his = otto.post(f"/api/jobs/{job_id}/start")
        assert not_his.status_code == 403
        assert "uploaded by olga" in not_his.json()["error"]
        assert otto.post(f"/api/jobs/{job_id}/cancel").status_code == 403
        # The page's buttons are held to the same table, and the pages offer only what the role may do.
        assert otto.post(f"/jobs/{job_id}/send").status_code == 403
        send_page = otto.get(f"/jobs/{job_id}/send").text
        assert "rows now</button>" not in send_page and "only they or an admin can start a job" in send_page
        assert "rows now</button>" in olga.get(f"/jobs/{job_id}/send").text
        front = vic.get("/").text
        assert 'action="/upload"' not in front and "your role viewer cannot upload a file" in front
        front = olga.get("/").text
        assert 'action="/upload"' in front and "signed in as olga (operator)" in front
        assert 'name="uploaded_by"' not in front  # the uploader is who signed in

        assert olga.post(f"/api/jobs/{job_id}/start").status_code == 202
        done = wait_for_job(vic, job_id, FINAL)
        assert done["status"] == "done", done

        # The viewer sees the list and downloads; the Summary names who uploaded, planned, started.
        assert [j["id"] for j in vic.get("/api/jobs").json()["jobs"]] == [job_id]
        book = vic.get(f"/api/jobs/{job_id}/results.xlsx")
        assert book.status_code == 200
        summary = _summary(book.content)
        assert str(summary["uploaded by"]).startswith("olga at ")
        assert str(summary["planned by"]).startswith("olga at ")
        assert str(summary["started by"]).startswith("olga at ")
        assert "from 127.0.0.1" in str(summary["started by"])

        # A second job of olga's: another operator cannot cancel it, an admin can.
        second = _upload(olga, sheet).json()["id"]
        wait_for_job(olga, second, {"validated"})
        assert otto.post(f"/api/jobs/{second}/cancel").status_code == 403
        assert ada.post(f"/api/jobs/{second}/cancel").status_code == 202
        assert wait_for_job(olga, second, FINAL)["status"] == "cancelled"

        # The list filters by user and status.
        assert [j["id"] for j in vic.get("/api/jobs", params={"status": "done"}).json()["jobs"]] == [job_id]
        assert [j["id"] for j in vic.get("/api/jobs", params={"user": "ada"}).json()["jobs"]] == [second]
        assert vic.get("/api/jobs", params={"user": "otto"}).json()["jobs"] == []

        # Audit: for approvers and admins, as JSON lines.
        assert vic.get("/api/audit").status_code == 403
        audit = ann.get("/api/audit", params={"since": "2000-01-01T00:00:00Z"})
        assert audit.status_code == 200
        assert audit.headers["content-type"].startswith("application/x-ndjson")
        records = [json.loads(line) for line in audit.text.splitlines()]
        acts = {(r["job"], r["name"], r["user"], r["answer"]) for r in records if r["kind"] == "action"}
        assert {
            (job_id, "plan", "olga", 202),
            (job_id, "start", "vic", 403),
            (job_id, "start", "otto", 403),
            (job_id, "start", "olga", 202),
            (second, "cancel", "otto", 403),
            (second, "cancel", "ada", 202),
        } <= acts
        assert all(r["client"] == "127.0.0.1" for r in records if r["kind"] == "action")
        events = [(r["job"], r["name"]) for r in records if r["kind"] == "event"]
        assert events[:1] == [(job_id, "created")]
        assert (job_id, "done") in events and (second, "cancelled") in events
        assert ann.get("/api/audit", params={"since": "2999-01-01T00:00:00Z"}).text == ""
        assert ann.get("/api/audit", params={"since": "yesterday"}).status_code == 400

        # Notices: each arrived (the first after a 503 and a retry), with no secret in any.
        _wait_for(bodies, {(job_id, "done"), (second, "cancelled")})
    by_event = {b["event"]: b for b in bodies}
    notice = by_event["done"]
    assert notice["file"] == "routing.csv" and notice["status"] == "done" and notice["kind"] == "import"
    assert notice["counts"]["succeeded"] == 4
    assert notice["users"] == {"uploaded by": "olga", "planned by": "olga", "started by": "olga"}
    assert notice["link"] == f"{url}/jobs/{job_id}"
    assert "routing.csv: done" in notice["text"] and notice["link"] in notice["text"]
    assert by_event["cancelled"]["users"]["uploaded by"] == "olga"
    wire = json.dumps(bodies)
    for secret in [SANDBOX_API_KEY, SERVER_TOKEN, *tokens.values()]:
        assert secret not in wire


def test_users_add_stores_only_a_hash_and_the_printed_token_signs_in(tmp_path: Path) -> None:
    users = tmp_path / "team.toml"
    runner = CliRunner()
    added = runner.invoke(main, ["users", "add", "olga", "--role", "operator", "--file", str(users)])
    assert added.exit_code == 0, added.output
    token = added.output.strip().splitlines()[-1]
    assert len(token) >= 43
    text = users.read_text()
    assert token not in text
    assert load_users(users).by_name["olga"].role is Role.OPERATOR
    assert (
        runner.invoke(main, ["users", "add", "vic", "--role", "viewer", "--file", str(users)]).exit_code == 0
    )
    listed = runner.invoke(main, ["users", "list", "--file", str(users)])
    assert listed.output.split() == ["olga", "operator", "vic", "viewer"]
    bad = runner.invoke(main, ["users", "add", "bad name", "--role", "viewer", "--file", str(users)])
    assert bad.exit_code != 0 and "not a usable user name" in bad.output and "Traceback" not in bad.output

    sandbox = create_sandbox(SandboxConfig(inventory=write_inventory(tmp_path / "inventory.json", 3)))
    with running_server(_settings(tmp_path / "data", sandbox, users)) as (url, _t, _s):
        with _as(url, token) as olga:
            assert olga.get("/api/jobs").status_code == 200
        with _as(url, token[::-1]) as wrong:
            assert wrong.get("/api/jobs").status_code == 401
        # ?token= once sets a cookie naming olga; the cookie alone then signs her in.
        with httpx.Client(base_url=url, timeout=30, follow_redirects=True) as browser:
            login = browser.get("/", params={"token": token})
            assert login.status_code == 200
            assert browser.cookies and token not in str(list(browser.cookies.values()))
            refused = browser.post("/api/jobs/" + "a" * 24 + "/approve", headers={"Origin": url})
            assert (
                refused.status_code == 403 and "your role operator cannot approve" in refused.json()["error"]
            )

    removed = runner.invoke(main, ["users", "remove", "vic", "--file", str(users)])
    assert removed.exit_code == 0
    assert set(load_users(users).by_name) == {"olga"}


def test_user_header_believed_only_from_a_trusted_proxy(tmp_path: Path) -> None:
    """The app is called in-process with the client address set, as uvicorn would set it."""
    users = tmp_path / "users.toml"
    tokens = _team(users)
    sandbox = create_sandbox(SandboxConfig(inventory=write_inventory(tmp_path / "inventory.json", 3)))
    service = JobService(tmp_path / "data", web_connection(sandbox))
    config = WebConfig(
        token=SERVER_TOKEN,
        hosts=allowed_hosts("127.0.0.1", 8000),
        max_upload_bytes=2**20,
        scratch=tmp_path / "data" / "incoming",
        people=load_users(users),
        user_header="X-Remote-User",
        trusted_proxies=("10.0.0.0/24",),
    )
    app = create_app(service, config)
    base = "http://127.0.0.1:8000"

    def client(address: str) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=app, client=(address, 40000))
        return httpx.AsyncClient(transport=transport, base_url=base)

    form = {"file": ("a.csv", b"Phone Number\n+15550001\n")}

    async def scenario() -> None:
        async with client("10.0.0.5") as proxy, client("192.0.2.9") as stranger:
            # From the proxy: the header names the user, no token needed; the role is the file's.
            assert (await proxy.get("/api/jobs", headers={"X-Remote-User": "vic"})).status_code == 200
            as_vic = await proxy.post("/api/jobs", files=form, headers={"X-Remote-User": "vic"})
            assert as_vic.status_code == 403 and "your role viewer" in as_vic.json()["error"]
            unknown = await proxy.get("/api/jobs", headers={"X-Remote-User": "mallory"})
            assert unknown.status_code == 403 and "mallory" in unknown.text
            # From anywhere else the header is ignored: no token, no entry; a token is who you are.
            assert (await stranger.get("/api/jobs", headers={"X-Remote-User": "ada"})).status_code == 401
            with_token = await stranger.post(
                "/api/jobs",
                files=form,
                headers={"X-Remote-User": "ada", "Authorization": f"Bearer {tokens['vic']}"},
            )
            assert with_token.status_code == 403 and "your role viewer" in with_token.json()["error"]

    asyncio.run(scenario())
    service.audit_log.close()
    service.store.close()


def test_serve_settings_refuse_a_user_header_without_users_and_proxy(tmp_path: Path) -> None:
    from importer.errors import InputError

    sandbox = create_sandbox(SandboxConfig())
    with pytest.raises(InputError, match="--user-header needs --users"):
        ServeSettings(web_connection(sandbox), tmp_path, user_header="X-Remote-User").check()
    users = tmp_path / "u.toml"
    _team(users)
    with pytest.raises(InputError, match="--trusted-proxy"):
        ServeSettings(
            web_connection(sandbox), tmp_path, users_file=users, trusted_proxy=("not-an-ip",)
        ).check()
    with pytest.raises(InputError, match="--notify-url must start with http"):
        ServeSettings(web_connection(sandbox), tmp_path, notify_url=("ftp://x",)).check()


def test_notifier_queue_drops_the_oldest_with_a_log_line_when_full() -> None:
    """Putting never waits: a full queue loses its oldest notice, and says so in the log."""
    from importer.web.notify import Notifier
    from importer.web.observe import LogFormat, configure_logging

    log = io.StringIO()
    handler = configure_logging(LogFormat.TEXT, stream=log)
    try:
        notifier = Notifier(["http://127.0.0.1:9/hook"], link_base="http://x", queue_size=2)
        for n in range(3):
            notifier.put({"event": "done", "job": f"job{n}"})
    finally:
        handler.close()
    assert [b["job"] for b in notifier.queue] == ["job1", "job2"]
    assert notifier.dropped == 1
    assert "notification queue full: dropped the done notice of job job0" in log.getvalue()
