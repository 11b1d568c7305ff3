"""The send page run by a team, in a real browser: approve as another user, schedule, see it start.

Playwright drives Debian's Chromium (as ``test_web_page``) against a server on loopback with
``--require-approval`` and a users file; each user has their own browser context (cookie). The
scheduling user's browser is in another zone than the server, so the time typed is taken in the
browser's zone (``send.js`` sends it with the form).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from helpers import wait_for_job, write_inventory, write_sheet
from playwright.sync_api import Browser, Page, expect
from test_web_team import _as, _settings, _team, _upload

from importer.sandbox import SandboxConfig, create_sandbox
from importer.web.server import running_server

pytestmark = pytest.mark.slow  # browser: a real chromium driving the page

SHOTS = Path(__file__).resolve().parent / "artifacts" / "screenshots"
ZONE = "Asia/Kolkata"  # UTC+05:30 all year: never the server's zone here, no DST to trip on
SHOWN_ZONE = re.compile(r"Asia/(Kolkata|Calcutta)")  # Chromium's ICU names it by its older name


def _shot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    # caret="initial": hiding the caret would inject a <style> that the page's CSP (rightly) blocks.
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True, caret="initial")


def _open(browser: Browser, url: str, token: str, **options: Any) -> tuple[Any, Page]:
    """A browser context signed in with ``token``; console errors (CSP too) in ``page.errors``."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, **options)
    page = context.new_page()
    page.set_default_timeout(20_000)
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.errors = errors  # type: ignore[attr-defined]
    answer = page.goto(f"{url}/?token={token}")
    assert answer is not None and answer.status == 200
    return context, page


def test_page_approve_as_another_user_then_schedule_and_see_it_start(
    browser: Browser, tmp_path: Path
) -> None:
    users = tmp_path / "users.toml"
    tokens = _team(users)
    sandbox = create_sandbox(SandboxConfig(inventory=write_inventory(tmp_path / "inventory.json", 4)))
    sheet = write_sheet(tmp_path / "routing.csv", 4)
    settings = _settings(tmp_path / "data", sandbox, users, require_approval=True)
    with running_server(settings) as (url, _t, _s), _as(url, tokens["olga"]) as api:
        job_id = _upload(api, sheet).json()["id"]
        wait_for_job(api, job_id, {"validated"})
        assert api.post(f"/api/jobs/{job_id}/plan").status_code == 202
        wait_for_job(api, job_id, {"planned"})
        send = f"{url}/jobs/{job_id}/send"

        olga_context, olga = _open(browser, url, tokens["olga"], timezone_id=ZONE)
        ann_context, ann = _open(browser, url, tokens["ann"])
        try:
            olga.goto(send)
            expect(olga.get_by_text("needs approval by someone other than olga").first).to_be_visible()
            expect(olga.get_by_role("button", name="Approve this plan")).to_have_count(0)
            expect(olga.get_by_role("button", name="Schedule the send")).to_have_count(0)

            # The approver, in their own browser, approves the plan.
            ann.goto(send)
            _shot(ann, "team-approve")
            ann.get_by_role("button", name="Approve this plan").click()
            expect(ann.get_by_text("Approved by ann")).to_be_visible()
            assert api.get(f"/api/jobs/{job_id}").json()["approval"]["by"] == "ann"

            # The planner schedules it a few seconds ahead, typed in her browser's zone.
            olga.reload()
            expect(olga.locator("[data-zone-name]")).to_contain_text(SHOWN_ZONE)
            at = (datetime.now(UTC) + timedelta(seconds=6)).replace(microsecond=0)
            olga.get_by_label("I want to write these changes").check()
            olga.locator("#at").fill(at.astimezone(ZoneInfo(ZONE)).strftime("%Y-%m-%dT%H:%M:%S"))
            olga.get_by_role("button", name="Schedule the send").click()
            expect(olga.get_by_role("heading", name="Scheduled")).to_be_visible()
            snap = api.get(f"/api/jobs/{job_id}").json()
            assert snap["status"] == "scheduled", snap
            assert snap["scheduled_at"] == at.strftime("%Y-%m-%dT%H:%M:%SZ")
            expect(olga.locator("time[data-local]")).to_contain_text(SHOWN_ZONE)
            expect(olga.get_by_role("button", name="Move")).to_be_visible()
            _shot(olga, "team-scheduled")
            expect(olga.get_by_role("button", name="Cancel the scheduled send")).to_be_visible()

            # Left open, the page follows the job: it starts on time and ends on the results.
            olga.wait_for_url(f"{url}/jobs/{job_id}/results", timeout=30_000)
            done = wait_for_job(api, job_id, {"done", "failed", "cancelled"})
            assert done["status"] == "done" and done["counts"]["succeeded"] == 4, done
            assert olga.errors == [] and ann.errors == []  # type: ignore[attr-defined]
        finally:
            olga_context.close()
            ann_context.close()


def test_page_moves_and_cancels_a_scheduled_send(browser: Browser, tmp_path: Path) -> None:
    users = tmp_path / "users.toml"
    tokens = _team(users)
    sandbox = create_sandbox(SandboxConfig(inventory=write_inventory(tmp_path / "inventory.json", 4)))
    sheet = write_sheet(tmp_path / "routing.csv", 4)
    with (
        running_server(_settings(tmp_path / "data", sandbox, users)) as (url, _t, _s),
        _as(url, tokens["olga"]) as api,
    ):
        job_id = _upload(api, sheet).json()["id"]
        wait_for_job(api, job_id, {"validated"})
        assert api.post(f"/api/jobs/{job_id}/plan").status_code == 202
        wait_for_job(api, job_id, {"planned"})
        assert api.post(f"/api/jobs/{job_id}/start", json={"at": "2099-03-01T08:00:00Z"}).status_code == 202

        context, page = _open(browser, url, tokens["olga"], timezone_id=ZONE)
        try:
            page.goto(f"{url}/jobs/{job_id}")
            expect(page.get_by_role("heading", name="Scheduled")).to_be_visible()
            expect(page.locator("main")).to_contain_text("2099-03-01T08:00:00Z")
            page.locator("#at").fill("2099-03-02T09:15:00")
            page.get_by_role("button", name="Move").click()
            expect(page.locator("main")).to_contain_text("2099-03-02T03:45:00Z")  # 09:15 in Kolkata
            page.get_by_role("button", name="Cancel the scheduled send").click()
            assert wait_for_job(api, job_id, {"cancelled"})["scheduled_at"] is None
            assert page.errors == []  # type: ignore[attr-defined]
        finally:
            context.close()
    assert sandbox.state_snapshot()["writes"] == []
