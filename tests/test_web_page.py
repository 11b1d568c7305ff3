"""The web page in a real browser: Playwright driving Debian's Chromium against the server over TCP.

Outside CI the browser tests skip, loudly, when no ``chromium`` is installed; in CI (``CI=true``) a
missing browser fails them. Screenshots of each step land in ``tests/artifacts/screenshots/``.
"""

from __future__ import annotations

import csv
import io
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openpyxl
import pytest
from helpers import REPO, SAMPLE, did_number, wait_for_job, web_connection, write_inventory, write_sheet
from playwright.sync_api import Browser, Page, expect

from importer.errors import InputError
from importer.jobs.validate import move_header, read_input
from importer.options import InputOptions
from importer.sandbox import SANDBOX_API_KEY, Sandbox, SandboxConfig, create_sandbox, running_sandbox
from importer.web.server import ServeSettings, running_server

pytestmark = pytest.mark.slow  # browser: a real chromium driving the page, served by subprocesses

TOKEN = "page-test-token-0123456789-abcdefghijk"
SHOTS = Path(__file__).resolve().parent / "artifacts" / "screenshots"


@dataclass
class Served:
    url: str
    sandbox: Sandbox
    api: httpx.Client


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    """The server on loopback against an in-process sandbox (the sample inventory, a raised limit)."""
    sandbox = create_sandbox(SandboxConfig(requests_per_minute=100_000, latency_ms=40))
    connection = web_connection(sandbox, concurrency=2)
    settings = ServeSettings(connection=connection, data_dir=tmp_path / "data", port=0, token=TOKEN)
    with (
        running_server(settings) as (url, _token, _service),
        httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30) as api,
    ):
        yield Served(url, sandbox, api)


def _shot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    # caret="initial": hiding the caret would inject a <style> that the page's CSP (rightly) blocks.
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=False, caret="initial")


def _open(browser: Browser, url: str, **options: Any) -> tuple[Any, Page]:
    """A new browser context with the session cookie; console errors (CSP too) in ``page.errors``."""
    context = browser.new_context(viewport={"width": 1280, "height": 800}, **options)
    page = context.new_page()
    page.set_default_timeout(20_000)
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.errors = errors
    answer = page.goto(f"{url}/?token={TOKEN}")
    assert answer is not None and answer.status == 200 and page.url == f"{url}/"
    return context, page


def _bad_sheet(path: Path, n: int, bad_every: int) -> Path:
    """``n`` rows for generated DIDs, every ``bad_every``-th with an unknown inbound mode."""
    write_sheet(path, n)
    lines = path.read_text(encoding="utf-8").splitlines()
    rows = list(csv.reader(lines))
    mode = rows[0].index("Inbound Mode")
    for i in range(1, len(rows)):
        if i % bad_every == 0:
            rows[i][mode] = "voicemail"
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    path.write_text(out.getvalue(), encoding="utf-8")
    return path


# -- no browser needed ----------------------------------------------------------------------------


def test_page_header_row_moves_only_down(tmp_path: Path) -> None:
    """The reader took the title row; the header moves down to the names, never above the table."""
    path = tmp_path / "export.csv"
    path.write_text("Export,,\nNummer,Eingehend,Ausgehend\n+918020000000,1,4\n\n+918020000001,1,4\n")
    table = read_input(InputOptions(path=path))
    assert table.source.header_row == 1 and table.headers == ("Export", "", "")
    moved = read_input(InputOptions(path=path, header_row=2))
    assert moved.headers == ("Nummer", "Eingehend", "Ausgehend") and moved.source.header_row == 2
    assert moved.frame.index.tolist() == [3, 5] and moved.frame.loc[5].tolist() == ["+918020000001", "1", "4"]
    with pytest.raises(InputError, match="can only move down from row 2"):
        move_header(moved, 1)
    with pytest.raises(InputError, match="row 4 is blank or past the end"):
        move_header(table, 4)


def test_page_header_row_through_the_api(served: Served, tmp_path: Path) -> None:
    """The API takes the same header row as the page; a bad one is refused; null goes back."""
    path = tmp_path / "export.csv"
    lines = write_sheet(tmp_path / "routing.csv", 3).read_text(encoding="utf-8").splitlines()
    path.write_text("\n".join(["Export,,,,,,,,", *lines]) + "\n", encoding="utf-8")
    with path.open("rb") as fh:
        job = served.api.post("/api/jobs", files={"file": ("export.csv", fh)}).json()
    job = wait_for_job(served.api, job["id"], {"validated"})
    assert job["source"]["header_row"] == 2  # the reader skips the title row by itself here
    for bad in (0, "2", True, 1.5):
        answer = served.api.patch(f"/api/jobs/{job['id']}", json={"header_row": bad})
        assert answer.status_code == 409 and "row number" in answer.json()["error"], bad
    moved = served.api.patch(f"/api/jobs/{job['id']}", json={"header_row": 3}).json()
    assert moved["options"]["header_row"] == 3 and moved["status"] == "failed"  # a data row as header
    back = served.api.patch(f"/api/jobs/{job['id']}", json={"header_row": None}).json()
    assert back["status"] == "validated" and back["counts"]["valid"] == 3


# -- the whole flow ---------------------------------------------------------------------------------


def test_page_whole_flow_upload_fix_plan_send_download(
    browser: Browser, served: Served, tmp_path: Path
) -> None:
    """Upload the sample sheet, map, fix a number, go back, plan, send, watch, download and read it."""
    context, page = _open(browser, served.url)
    try:
        _shot(page, "01-upload")
        page.set_input_files("#file", str(SAMPLE / "carrier_routing.csv"))
        page.fill("#uploaded_by", "Asha (NOC)")
        page.get_by_role("button", name="Upload and check").click()
        expect(page.locator("#field_did_number")).to_be_visible()  # the page moved on by itself
        expect(page.locator("#field_did_number")).to_have_value("DID Number")
        expect(page.locator("main")).to_contain_text("918011223344")  # a sample value, every digit
        _shot(page, "02-columns")
        page.get_by_role("button", name="Save and check the rows").click()

        expect(page.locator("h1")).to_have_text("3. Check")
        expect(page.locator("[data-k=valid]")).to_have_text("15")
        expect(page.locator("[data-k=failed]")).to_have_text("8")
        expect(page.locator(".hint").first).to_contain_text("country code")
        page.get_by_label("Only rows with problems").check()  # htmx: the table swaps in place
        expect(page).to_have_url(re.compile(r"problems=1"))
        expect(page.locator("table.rows tbody tr")).to_have_count(8)
        cell = page.locator("#c-10-2")
        expect(cell).to_have_attribute("aria-invalid", "true")
        reason = page.locator("#" + str(cell.get_attribute("aria-describedby")))
        expect(reason).to_contain_text("add the country code")
        expect(reason).to_contain_text("or set the default region (step 2, Sheet and columns)")
        reasons = page.locator(".why").all_inner_texts()
        assert len(reasons) == 8 and not any("--" in r for r in reasons)  # page words, not CLI options
        _shot(page, "03-check")
        cell.focus()  # by keyboard: select the cell's text, type over it, Enter keeps it, Ctrl+S saves
        page.keyboard.press("Control+A")
        page.keyboard.type("+91 80 1123 0010")
        page.keyboard.press("Enter")
        page.keyboard.press("Control+s")
        expect(page.locator("#message")).to_have_text("Row 10 saved and checked again.")
        expect(page.locator("[data-k=failed]")).to_have_text("7")
        expect(page.locator("#row-10")).to_have_count(0)  # no longer a row with problems

        # Back to the columns and forward again: the correction is kept.
        page.get_by_role("link", name="‹ Back to sheet and columns").click()
        expect(page.locator("h1")).to_have_text("2. Sheet and columns")
        page.get_by_role("button", name="Save and check the rows").click()
        expect(page.locator("[data-k=failed]")).to_have_text("7")

        page.get_by_role("link", name="Next: plan ›").click()
        page.get_by_role("button", name="Check against my account").click()
        expect(page.locator(".cost")).to_contain_text("writes")
        expect(page.locator("main")).to_contain_text("to create")
        _shot(page, "04-plan")
        page.get_by_role("link", name="Next: send ›").click()
        confirm = page.locator("form.confirm")
        expect(confirm).to_contain_text("held back")
        expect(confirm).to_contain_text("bot inactive")
        _shot(page, "05-confirm")
        page.get_by_label("I want to write these changes to the account now").check()
        confirm.get_by_role("button").first.click()
        expect(page.locator("progress")).to_be_attached()
        _shot(page, "06-progress")
        page.wait_for_url(re.compile(r"/results$"))  # SSE told the page the job is done
        expect(page.locator("main")).to_contain_text("succeeded")
        _shot(page, "07-results")
        page.get_by_label("Show").select_option("failed")
        expect(page).to_have_url(re.compile(r"status=failed"))
        with page.expect_download() as download:
            page.get_by_role("link", name="Download results.xlsx").click()
        assert download.value.suggested_filename == "carrier_routing.results.xlsx"
        saved = tmp_path / download.value.suggested_filename
        download.value.save_as(saved)
        book = openpyxl.load_workbook(saved, read_only=True)
        try:
            summary = {str(r[0]): r[1] for r in book["Summary"].iter_rows(values_only=True) if r and r[0]}
        finally:
            book.close()
        assert summary["uploaded_by"] == "Asha (NOC)"
        assert str(summary["edit 1"]).startswith("row 10, column 'DID Number': '080 1123 0010' -> ")
        assert summary["failed"] == 9 and summary["succeeded"] == 13
        creates = [w for w in served.sandbox.state_snapshot()["writes"] if w["op"] == "create"]
        assert len(creates) == len({w["did_id"] for w in creates}) > 0

        page.goto(served.url + "/")
        expect(page.locator("table.jobs")).to_contain_text("carrier_routing.csv")
        expect(page.locator("table.jobs")).to_contain_text("done")
        _shot(page, "08-jobs")
        assert page.errors == [], page.errors  # no script error, nothing the Content-Security-Policy blocked
    finally:
        context.close()


def test_page_narrow_screen_check_is_usable(browser: Browser, served: Served) -> None:
    """At 390 px the check step still shows its counts and an input tied to its reason."""
    with SAMPLE.joinpath("carrier_routing.csv").open("rb") as fh:
        job = served.api.post("/api/jobs", files={"file": ("carrier_routing.csv", fh)}).json()
    wait_for_job(served.api, job["id"], {"validated"})
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    try:
        page = context.new_page()
        page.goto(f"{served.url}/jobs/{job['id']}/check?problems=1&token={TOKEN}")
        expect(page.locator("[data-k=failed]")).to_have_text("8")
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"the page itself scrolls sideways ({width} px); only tables may"
        _shot(page, "09-check-390px")
        page.goto(f"{served.url}/")
        _shot(page, "10-jobs-390px")
    finally:
        context.close()


def test_page_workbook_sheet_shown_and_changeable(browser: Browser, served: Served) -> None:
    """An XLSX: its sheets are offered, the header row found is shown, another sheet can be chosen."""
    context, page = _open(browser, served.url)
    try:
        page.set_input_files("#file", str(SAMPLE / "carrier_routing.xlsx"))
        page.get_by_role("button", name="Upload and check").click()
        expect(page.locator("#sheet-help")).to_contain_text("Sheets: Notes, DID Routing")
        expect(page.locator("#sheet")).to_have_value("DID Routing")
        expect(page.get_by_label("Header row")).to_have_value("3")  # title rows above the header
        page.fill("#sheet", "Notes")
        page.get_by_role("button", name="Save and check the rows").click()
        expect(page.locator(".error")).to_contain_text("missing required column")
        page.fill("#sheet", "DID Routing")
        page.get_by_role("button", name="Save and check the rows").click()
        expect(page.locator("[data-k=failed]")).to_have_text("8")
    finally:
        context.close()


def test_page_dropped_file_and_mapping_changed_from_the_list(
    browser: Browser, served: Served, tmp_path: Path
) -> None:
    """Dropped on the page, a header the reader does not know: picked from the list, the choice stays."""
    text = write_sheet(tmp_path / "odd.csv", 12).read_text(encoding="utf-8")
    text = text.replace("Phone Number", "Nummer", 1)
    context, page = _open(browser, served.url)
    try:
        dropped = page.evaluate_handle(
            "text => { const d = new DataTransfer();"
            " d.items.add(new File([text], 'odd.csv', {type: 'text/csv'})); return d; }",
            text,
        )
        page.dispatch_event("[data-drop]", "drop", {"dataTransfer": dropped})
        expect(page.locator("[data-drop-name]")).to_have_text("Chosen: odd.csv")
        page.get_by_role("button", name="Upload and check").click()
        expect(page.locator(".error")).to_contain_text("missing required column DID Number")
        expect(page.get_by_label("DID Number")).to_have_value("")
        page.get_by_label("DID Number").select_option("Nummer")
        page.get_by_role("button", name="Save and check the rows").click()
        expect(page.locator("[data-k=valid]")).to_have_text("12")
        expect(page.locator("table.rows thead")).to_contain_text("= DID Number")
        page.get_by_role("link", name="‹ Back to sheet and columns").click()
        expect(page.get_by_label("DID Number")).to_have_value("Nummer")
        expect(page.locator("main")).to_contain_text("+" + did_number(0))  # its sample values
    finally:
        context.close()


GERMAN = {
    "Nummer": "DID Number",
    "Eingehend": "Inbound Mode",
    "Bot ein": "Inbound Bot ID",
    "Trunk ein": "Inbound SIP Trunk ID",
    "Ausgehend": "Outbound Mode",
    "Bot aus": "Outbound Bot ID",
    "Trunk aus": "Outbound SIP Trunk ID",
    "Zustand": "Status",
}


def test_page_header_row_moved_down_then_columns_mapped(
    browser: Browser, served: Served, tmp_path: Path
) -> None:
    """A title row above headers the reader does not know: the header row is moved, then mapped."""
    lines = write_sheet(tmp_path / "routing.csv", 6).read_text(encoding="utf-8").splitlines()
    german = tmp_path / "export.csv"
    german.write_text(
        "\n".join(["Export aus dem Portal,,,,,,,,", ",".join([*GERMAN, "Kunde"]), *lines[1:]]) + "\n",
        encoding="utf-8",
    )
    context, page = _open(browser, served.url)
    try:
        page.set_input_files("#file", str(german))
        page.get_by_role("button", name="Upload and check").click()
        expect(page.locator(".error")).to_contain_text("missing required column")
        expect(page.get_by_label("Header row")).to_have_value("1")
        page.get_by_label("Header row").fill("2")
        page.get_by_role("button", name="Save and check the rows").click()
        expect(page.get_by_label("Header row")).to_have_value("2")
        for header, title in GERMAN.items():
            page.get_by_label(title, exact=True).select_option(header)
        page.get_by_role("button", name="Save and check the rows").click()
        expect(page.locator("[data-k=valid]")).to_have_text("6")
        expect(page.locator("table.rows thead")).to_contain_text("Nummer")
    finally:
        context.close()


def test_page_reopened_mid_send_shows_progress_and_cancels(browser: Browser, tmp_path: Path) -> None:
    """Closing the tab leaves the job sending; reopening shows it; Cancel stops it, writes settle."""
    inventory = write_inventory(tmp_path / "inventory.json", 60)
    sandbox = create_sandbox(SandboxConfig(inventory=inventory, requests_per_minute=100_000, latency_ms=150))
    connection = web_connection(sandbox, concurrency=2)
    settings = ServeSettings(connection=connection, data_dir=tmp_path / "data", port=0, token=TOKEN)
    sheet = write_sheet(tmp_path / "routing.csv", 60)
    with running_server(settings) as (url, _token, _service):
        context, page = _open(browser, url)
        try:
            page.set_input_files("#file", str(sheet))
            page.get_by_role("button", name="Upload and check").click()
            page.get_by_role("button", name="Save and check the rows").click()
            page.get_by_role("link", name="5. Send").click()
            page.get_by_role("link", name="‹ Go to the plan").click()  # only a plan seen is sent
            page.get_by_role("button", name="Check against my account").click()
            page.get_by_role("link", name="Next: send ›").click()
            page.get_by_label("I want to write these changes to the account now").check()
            page.get_by_role("button", name="Send 60 rows now").click()
            expect(page.locator("[data-k=done]")).not_to_have_text("0")
            job_url = page.url.removesuffix("/send")
            page.close()  # the tab is gone; the job is not
            page = context.new_page()
            page.goto(url + "/")
            expect(page.locator("table.jobs")).to_contain_text("sending")
            page.get_by_role("link", name="routing.csv").click()
            expect(page).to_have_url(job_url + "/send")
            expect(page.locator("[data-k=done]")).not_to_have_text("0")
            page.get_by_role("button", name="Cancel sending").click()
            page.wait_for_url(re.compile(r"/results$"))
            expect(page.locator("main")).to_contain_text("cancelled")
            not_sent = int(page.locator(".count .n").nth(3).inner_text())
            assert 0 < not_sent < 60
        finally:
            context.close()
    writes = sandbox.state_snapshot()["writes"]
    assert 0 < len(writes) == 60 - not_sent  # every write that started was settled and counted


def test_page_queued_job_shows_its_place_and_cancels(browser: Browser, tmp_path: Path) -> None:
    """Two jobs on one key: the second waits, its page says where in the queue; Cancel ends it.

    A correction sent from a check page opened before the job started is refused, and says so.
    """
    inventory = write_inventory(tmp_path / "inventory.json", 40)
    sandbox = create_sandbox(SandboxConfig(inventory=inventory, requests_per_minute=100_000, latency_ms=150))
    connection = web_connection(sandbox, concurrency=1)
    settings = ServeSettings(connection=connection, data_dir=tmp_path / "data", port=0, token=TOKEN)
    sheets = [write_sheet(tmp_path / "routing.csv", 40), _bad_sheet(tmp_path / "bad.csv", 40, 10)]
    with (
        running_server(settings) as (url, _token, _service),
        httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30) as api,
    ):
        ids = []
        for sheet in sheets:
            with sheet.open("rb") as fh:
                ids.append(api.post("/api/jobs", files={"file": (sheet.name, fh)}).json()["id"])
            wait_for_job(api, ids[-1], {"validated"})
        context, page = _open(browser, url)
        try:
            page.goto(f"{url}/jobs/{ids[1]}/check?problems=1")
            for job_id in ids:
                assert api.post(f"/api/jobs/{job_id}/plan").status_code == 202
                wait_for_job(api, job_id, {"planned"})
                assert api.post(f"/api/jobs/{job_id}/start").status_code == 202
            page.locator("#c-11-1").fill("WebSocket bot")  # too late: the job is in the queue now
            page.get_by_role("button", name="Save row 11", exact=True).click()
            expect(page.locator("#message.error")).to_contain_text("can be edited only before sending")
            page.goto(f"{url}/jobs/{ids[1]}")
            expect(page).to_have_url(f"{url}/jobs/{ids[1]}/send")
            expect(page.locator("p[data-k=queue]")).to_be_visible()
            expect(page.locator("[data-k=queue_position]")).to_have_text("1")
            _shot(page, "15-queued")
            page.get_by_role("button", name="Cancel sending").click()
            page.wait_for_url(re.compile(r"/results$"))
            expect(page.locator("main")).to_contain_text("cancelled before sending started")
            api.post(f"/api/jobs/{ids[0]}/cancel")
            wait_for_job(api, ids[0], {"cancelled", "done"})
        finally:
            context.close()


# -- without the token, without JavaScript ---------------------------------------------------------


def test_page_without_token_is_401_and_nothing_else(browser: Browser, served: Served) -> None:
    context = browser.new_context()
    try:
        page = context.new_page()
        for path in ("/", "/jobs/0123456789abcdef01234567/check", "/static/page.css"):
            answer = page.goto(served.url + path)
            assert answer is not None and answer.status == 401, path
            assert answer.text() == "unauthorized"
        assert page.locator("body").inner_text().strip() == "unauthorized"
    finally:
        context.close()


def test_page_works_without_javascript(browser: Browser, served: Served, tmp_path: Path) -> None:
    """Upload, check (filter, paging, a fix by a plain form post) and download with JavaScript off."""
    sheet = _bad_sheet(tmp_path / "nojs.csv", 120, bad_every=10)
    text = sheet.read_text(encoding="utf-8").replace("customer 0\n", "<img src=x onerror=alert(1)>\n", 1)
    sheet.write_text(text, encoding="utf-8")
    png = tmp_path / "picture.csv"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    context, page = _open(browser, served.url, java_script_enabled=False)
    try:
        page.set_input_files("#file", str(png))
        page.get_by_role("button", name="Upload and check").click()
        expect(page.locator(".error")).to_contain_text("unsupported file")
        page.set_input_files("#file", str(sheet))
        page.get_by_role("button", name="Upload and check").click()
        expect(page.locator("#field_did_number")).to_be_visible()  # <noscript> refresh, no script
        page.get_by_role("button", name="Save and check the rows").click()
        expect(page.locator("[data-k=failed]")).to_have_text("12")
        expect(page.locator("#row-2 input.cell").last).to_have_value("<img src=x onerror=alert(1)>")
        assert page.locator("table.rows img").count() == 0
        page.get_by_role("link", name="Next ›").first.click()
        expect(page).to_have_url(re.compile(r"page=2"))
        expect(page.locator("table.rows tbody tr").first).to_contain_text("52")
        page.get_by_label("Only rows with problems").check()
        page.get_by_role("button", name="Show").click()
        expect(page).to_have_url(re.compile(r"problems=1"))
        expect(page.locator("table.rows tbody tr")).to_have_count(12)
        page.locator("#c-11-1").fill("WebSocket bot")  # row 11: the first bad one (Excel numbering)
        page.get_by_role("button", name="Save row 11", exact=True).click()
        expect(page.locator("#message")).to_have_text("Row 11 saved and checked again.")
        expect(page.locator("[data-k=failed]")).to_have_text("11")
        _shot(page, "11-check-without-js")
        with page.expect_download() as download:
            page.get_by_role("link", name="Download the rows with problems (xlsx)").click()
        saved = tmp_path / "failed.xlsx"
        download.value.save_as(saved)
        book = openpyxl.load_workbook(saved, read_only=True)
        try:
            rows = list(book.worksheets[0].iter_rows(values_only=True))
        finally:
            book.close()
        assert len(rows) == 12  # the header and the 11 rows still wrong
    finally:
        context.close()


# -- a big file -------------------------------------------------------------------------------------


def test_page_ten_thousand_rows_page_fast_and_small(browser: Browser, served: Served, tmp_path: Path) -> None:
    sheet = _bad_sheet(tmp_path / "big.csv", 10_000, bad_every=7)
    with sheet.open("rb") as fh:
        job = served.api.post("/api/jobs", files={"file": ("big.csv", fh)}).json()
    wait_for_job(served.api, job["id"], {"validated"}, timeout=60)
    context, page = _open(browser, served.url)
    try:
        for query in ("page=150", "problems=1&page=20"):
            started = time.monotonic()
            page.goto(f"{served.url}/jobs/{job['id']}/check?{query}")
            took = time.monotonic() - started
            expect(page.locator("table.rows tbody tr")).to_have_count(50)
            assert took < 2.0, f"a page of rows took {took:.2f} s"
            size = len(served.api.get(f"/jobs/{job['id']}/check?{query}").content)
            assert size < 300_000, f"a page of rows weighs {size} bytes"
        expect(page.locator("[data-k=failed]")).to_have_text(str(10_000 // 7))
        started = time.monotonic()
        page.get_by_role("link", name="Next ›").first.click()  # htmx: only the table is swapped
        expect(page.locator(".pager span").first).to_have_text("Page 21 of 29")
        assert time.monotonic() - started < 2.0
        _shot(page, "12-check-10000-rows")
    finally:
        context.close()


# -- a server killed while the page watches ---------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(data: Path, base_url: str, port: int) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "VOCOBASE_API_KEY": SANDBOX_API_KEY,
        "VOCOBASE_BASE_URL": base_url,
        "VOICELINK_WEB_TOKEN": TOKEN,
        "PYTHONPATH": str(REPO),
    }
    command = [sys.executable, "-m", "importer", "serve", "--port", str(port), "--data-dir", str(data)]
    proc = subprocess.Popen(
        [*command, "--requests-per-minute", "100000"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()
    assert f"127.0.0.1:{port}" in first, first
    threading.Thread(target=proc.stdout.read, daemon=True).start()
    return proc


def _end(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)
    if proc.stdout is not None:
        proc.stdout.close()


def test_page_reconnects_after_server_killed_and_finishes(browser: Browser, tmp_path: Path) -> None:
    """SIGKILL while sending; the open page says it lost the server, then the restart finishes the job."""
    inventory = write_inventory(tmp_path / "inventory.json", 40)
    sheet = write_sheet(tmp_path / "routing.csv", 40)
    config = SandboxConfig(inventory=inventory, requests_per_minute=100_000, latency_ms=200)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    with running_sandbox(config) as (base_url, sandbox):
        first = _serve(tmp_path / "data", base_url, port)
        try:
            api = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
            with sheet.open("rb") as fh:
                job = api.post("/api/jobs", files={"file": ("routing.csv", fh)}).json()
            wait_for_job(api, job["id"], {"validated"})
            assert api.post(f"/api/jobs/{job['id']}/plan").status_code == 202
            wait_for_job(api, job["id"], {"planned"})
            context, page = _open(browser, url)
            page.goto(f"{url}/jobs/{job['id']}/send")
            page.get_by_label("I want to write these changes to the account now").check()
            page.get_by_role("button", name="Send 40 rows now").click()
            expect(page.locator("[data-k=done]")).not_to_have_text("0")
            first.send_signal(signal.SIGKILL)
            first.wait(10)
            api.close()
        finally:
            _end(first)
        try:
            expect(page.locator("[data-k=conn]")).to_be_visible()
            _shot(page, "13-progress-server-lost")
            assert len(sandbox.state_snapshot()["writes"]) < 40
            second = _serve(tmp_path / "data", base_url, port)
            try:
                page.wait_for_url(re.compile(r"/results$"), timeout=40_000)
                expect(page.locator(".count.ok .n")).to_have_text("40")
                _shot(page, "14-results-after-restart")
            finally:
                _end(second)
        finally:
            context.close()
        state = sandbox.state_snapshot()
    creates = sorted(int(w["did_id"]) for w in state["writes"] if w["op"] == "create")
    assert creates == [1000 + i for i in range(40)]
    assert all(v == 1 for v in state["create_attempts"].values())
    assert did_number(0) in sheet.read_text(encoding="utf-8")
