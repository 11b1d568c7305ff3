"""Undo and export from the page in a real browser: Playwright driving Debian's Chromium over TCP.

As ``test_web_page``: outside CI the tests skip, loudly, without a ``chromium``; in CI
(``CI=true``) a missing browser fails them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openpyxl
import pytest
from helpers import desired_record, routing_fields, wait_for_job, web_connection, write_inventory, write_sheet
from playwright.sync_api import Browser, Page, expect

from importer.fields import FIELD_NAMES
from importer.sandbox import Sandbox, SandboxConfig, create_sandbox
from importer.web.server import ServeSettings, running_server

pytestmark = pytest.mark.slow  # browser: a real chromium driving the page

TOKEN = "page-undo-test-token-0123456789-abcdefgh"
N = 4
FINAL = {"done", "cancelled", "failed"}


@dataclass
class Served:
    url: str
    sandbox: Sandbox
    api: httpx.Client


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    """The server on loopback against a sandbox whose DIDs are all routed otherwise than the sheet asks."""
    existing = {i: desired_record(i + 1) for i in range(N)}
    sandbox = create_sandbox(
        SandboxConfig(inventory=write_inventory(tmp_path / "inventory.json", N, existing), latency_ms=40)
    )
    settings = ServeSettings(
        connection=web_connection(sandbox), data_dir=tmp_path / "data", port=0, token=TOKEN
    )
    with (
        running_server(settings) as (url, _token, _service),
        httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30) as api,
    ):
        yield Served(url, sandbox, api)


def _routing(sandbox: Sandbox) -> dict[int, dict[str, int]]:
    return {int(r["did_id"]): routing_fields(r) for r in sandbox.state_snapshot()["routing"]}


def _open(browser: Browser, url: str) -> tuple[Any, Page]:
    """A new browser context with the session cookie; console errors (CSP too) in ``page.errors``."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.set_default_timeout(20_000)
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.errors = errors
    answer = page.goto(f"{url}/?token={TOKEN}")
    assert answer is not None and answer.status == 200
    return context, page


def _import(api: httpx.Client, path: Path) -> str:
    with path.open("rb") as fh:
        job_id = str(api.post("/api/jobs", files={"file": (path.name, fh)}).json()["id"])
    wait_for_job(api, job_id, {"validated"})
    assert api.post(f"/api/jobs/{job_id}/plan").status_code == 202
    wait_for_job(api, job_id, {"planned"})
    assert api.post(f"/api/jobs/{job_id}/start").status_code == 202
    assert wait_for_job(api, job_id, FINAL)["status"] == "done"
    return job_id


def test_page_undo_from_results_through_plan_and_send(
    browser: Browser, served: Served, tmp_path: Path
) -> None:
    """Results, "Undo this import", the rollback's plan, send, its results: the account as before."""
    before = _routing(served.sandbox)
    job_id = _import(served.api, write_sheet(tmp_path / "routing.csv", N))
    assert _routing(served.sandbox) != before
    context, page = _open(browser, served.url)
    try:
        page.goto(f"{served.url}/jobs/{job_id}/results")
        page.get_by_role("button", name="Undo this import").click()
        page.wait_for_url(re.compile(r"/jobs/[0-9a-f]{24}/plan$"))
        rollback = page.url.rsplit("/", 2)[-2]
        assert rollback != job_id
        expect(page.locator(".cost")).to_contain_text("writes")  # the page reloaded once planned
        expect(page.locator("main")).to_contain_text(f"{N} to update")
        page.get_by_role("link", name="Next: send ›").click()
        page.get_by_label("I want to write these changes to the account now").check()
        page.locator("form.confirm").get_by_role("button").first.click()
        page.wait_for_url(re.compile(rf"/jobs/{rollback}/results$"))
        expect(page.locator("main")).to_contain_text("This job undoes")
        expect(page.locator("main")).not_to_contain_text("Undo this import")
        assert served.api.get(f"/api/jobs/{rollback}").json()["status"] == "done"
        assert _routing(served.sandbox) == before
        page.goto(f"{served.url}/jobs/{job_id}/results")
        expect(page.locator("main")).to_contain_text("Undone by")
        assert page.errors == [], page.errors
    finally:
        context.close()


def test_page_download_current_routing_from_the_jobs_page(
    browser: Browser, served: Served, tmp_path: Path
) -> None:
    """The jobs page's button starts an export; the page shows its download once done (htmx polls)."""
    context, page = _open(browser, served.url)
    try:
        page.get_by_role("button", name="Download current routing").click()
        link = page.get_by_role("link", name="Download routing.xlsx")
        expect(link).to_be_visible()
        with page.expect_download() as download:
            link.click()
        saved = tmp_path / "routing.xlsx"
        download.value.save_as(saved)
        book = openpyxl.load_workbook(saved, read_only=True)
        try:
            rows = list(book["Routing"].iter_rows(values_only=True))
        finally:
            book.close()
        assert list(rows[0]) == list(FIELD_NAMES) and len(rows) == N + 1
        assert page.errors == [], page.errors
    finally:
        context.close()
