"""The page in plain words: labels with codes in the plan, titles naming the job, workbooks that say
the job's facts (never the server's), finishing what was cancelled, mappings remembered, no
console error or CSP violation on the way (Playwright on Debian's Chromium for the last).
"""

from __future__ import annotations

import getpass
import html
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openpyxl
import pytest
from helpers import (
    SAMPLE,
    SHEET_FIELDS,
    desired_record,
    did_number,
    served_web,
    wait_for_job,
    wait_until,
    web_connection,
    write_carrier_workbook,
    write_inventory,
    write_sheet,
)
from playwright.sync_api import Browser, Page, expect

from importer.sandbox import Sandbox, SandboxConfig, create_sandbox
from importer.web.mappings import MappingMemory
from importer.web.pages.plan import field_label, value_words
from importer.web.server import ServeSettings, running_server

TOKEN = "words-test-token-0123456789-abcdefghijk"


@dataclass
class Served:
    url: str
    sandbox: Sandbox
    api: httpx.Client
    data: Path


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    """The server on loopback over an in-process sandbox of 60 DIDs; DID 2 routed otherwise already."""
    existing = {
        2: {"for_inbound_call": 1, "for_outbound_call": 3, "outbound_websocket_bot_id": 94, "status": 1}
    }
    inventory = write_inventory(tmp_path / "inventory.json", 60, existing)
    sandbox = create_sandbox(SandboxConfig(inventory=inventory, requests_per_minute=100_000))
    data = tmp_path / "data"
    settings = ServeSettings(connection=web_connection(sandbox), data_dir=data, port=0, token=TOKEN)
    with (
        running_server(settings) as (url, _token, _service),
        httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30) as api,
    ):
        yield Served(url, sandbox, api, data)


def _upload(api: httpx.Client, path: Path, name: str | None = None, **form: str) -> dict[str, Any]:
    with path.open("rb") as fh:
        answer = api.post("/api/jobs", files={"file": (name or path.name, fh)}, data=form)
    assert answer.status_code == 201, answer.text
    return dict(answer.json())


def _planned(api: httpx.Client, path: Path, name: str | None = None, **form: str) -> dict[str, Any]:
    job = _upload(api, path, name, **form)
    wait_for_job(api, job["id"], {"validated"})
    assert api.post(f"/api/jobs/{job['id']}/plan").status_code == 202
    return wait_for_job(api, job["id"], {"planned"})


def _text(page: str) -> str:
    """A page's text without its tags, entities resolved, blanks folded."""
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", page)))


def _title(page: str) -> str:
    found = re.search(r"<title>(.*?)</title>", page, re.S)
    assert found is not None
    return html.unescape(found.group(1).strip())


def _cells(path: Path) -> list[tuple[str, str, str]]:
    """Every non-empty cell of a workbook: (sheet, coordinate, text)."""
    book = openpyxl.load_workbook(path, read_only=True)
    try:
        return [
            (sheet.title, f"{r}:{c}", str(v))
            for sheet in book.worksheets
            for r, row in enumerate(sheet.iter_rows(values_only=True), start=1)
            for c, v in enumerate(row, start=1)
            if v is not None and str(v) != ""
        ]
    finally:
        book.close()


def _rows(path: Path) -> list[tuple[Any, ...]]:
    """The rows of a workbook's first sheet."""
    book = openpyxl.load_workbook(path, read_only=True)
    try:
        return list(book.worksheets[0].iter_rows(values_only=True))
    finally:
        book.close()


def _summary(path: Path) -> dict[str, Any]:
    book = openpyxl.load_workbook(path, read_only=True)
    try:
        return {str(r[0]): r[1] for r in book["Summary"].iter_rows(values_only=True) if r and r[0]}
    finally:
        book.close()


# -- 5a: the plan in plain words --------------------------------------------------------------------


def test_plan_page_shows_labels_with_codes(served: Served, tmp_path: Path) -> None:
    """An update reads "Outbound: WebSocket bot (3) → SIP (2)"; fields by their titles, no API names."""
    job = _planned(served.api, write_sheet(tmp_path / "routing.csv", 6))
    page = served.api.get(f"/jobs/{job['id']}/plan")
    assert page.status_code == 200
    text = _text(page.text)
    assert "Outbound: WebSocket bot (3) → SIP (2)" in text  # DID 2's routing, as it is and as asked
    assert "Inbound: mobile (1) → SIP (2)" in text
    assert "Outbound SIP Trunk ID: — → 8" in text
    assert "Inbound Bot ID" in text and "WebSocket bot (3)" in text and "only-answer (4)" in text
    assert "active (1)" in text and "inactive (0)" in text
    for api_name in ("for_outbound_call", "for_inbound_call", "_websocket_bot_id", "_sip_trunk_id", "did_id"):
        assert api_name not in text, api_name


@pytest.mark.parametrize(
    ("key", "value", "shown"),
    [
        ("for_inbound_call", 3, "WebSocket bot (3)"),
        ("for_outbound_call", 4, "only-answer (4)"),
        ("for_outbound_call", 1, "1"),  # no outbound mode 1: the code as the API gave it
        ("status", 0, "inactive (0)"),
        ("status", True, "True"),
        ("outbound_sip_trunk_id", 8, "8"),
        ("status", None, ""),
    ],
)
def test_plan_value_words(key: str, value: object, shown: str) -> None:
    assert value_words(key, value) == shown


@pytest.mark.parametrize(
    ("key", "label"),
    [
        ("for_outbound_call", "Outbound"),
        ("for_inbound_call", "Inbound"),
        ("outbound_sip_trunk_id", "Outbound SIP Trunk ID"),
        ("did_id", "DID ID"),
        ("created_at", "created_at"),  # an API extra no field has
    ],
)
def test_plan_field_label(key: str, label: str) -> None:
    assert field_label(key) == label


# -- 5b: tab titles ---------------------------------------------------------------------------------


def test_page_titles_name_the_step_and_the_file(served: Served, tmp_path: Path) -> None:
    """Every job page's tab names its step and the job's file; the jobs page is plain."""
    job = _planned(served.api, write_sheet(tmp_path / "routing.csv", 4), "carrier March.csv")
    steps = {"columns": "Sheet and columns", "check": "Check", "plan": "Plan", "send": "Send"}
    for path, step in steps.items():
        page = served.api.get(f"/jobs/{job['id']}/{path}")
        assert page.status_code == 200, path
        assert _title(page.text) == f"{step} · carrier March.csv · VoiceLink importer"
    assert _title(served.api.get("/").text) == "Jobs · VoiceLink importer"
    missing = served.api.get("/jobs/0123456789abcdef01234567/plan")
    assert missing.status_code == 404 and _title(missing.text) == "No such job · VoiceLink importer"


# -- 5c: the workbooks say the job's facts, not the server's ------------------------------------------


def _machine_facts_in(path: Path, data: Path) -> list[tuple[str, str, str]]:
    """Cells naming the data dir, the OS user or the host (as a whole word: "vm" in "vmware" is not)."""
    dirs = {str(data), str(data.resolve())}
    words = {getpass.getuser(), socket.gethostname()}
    return [
        (sheet, at, text)
        for sheet, at, text in _cells(path)
        if any(d in text for d in dirs) or words & set(re.split(r"[^\w.-]+", text))
    ]


def test_web_workbooks_carry_the_job_facts_not_the_server(served: Served, tmp_path: Path) -> None:
    """The validate, plan, results and failed workbooks of a web job: its id, file and uploader only."""
    sheet = write_sheet(tmp_path / "routing.csv", 8)
    lines = sheet.read_text(encoding="utf-8").splitlines()
    lines[3] = lines[3].replace("+" + did_number(2), "+91 80 12")  # one bad number: a failed.xlsx too
    sheet.write_text("\n".join(lines) + "\n", encoding="utf-8")
    job = _upload(served.api, sheet, "carrier routing.csv", uploaded_by="Asha (NOC)")
    wait_for_job(served.api, job["id"], {"validated"})
    books: dict[str, Path] = {}

    def fetch(kind: str, label: str) -> None:
        answer = served.api.get(f"/api/jobs/{job['id']}/{kind}.xlsx")
        assert answer.status_code == 200, (label, answer.text)
        books[label] = tmp_path / f"{label}.xlsx"
        books[label].write_bytes(answer.content)

    fetch("results", "validated")
    assert served.api.post(f"/api/jobs/{job['id']}/plan").status_code == 202
    wait_for_job(served.api, job["id"], {"planned"})
    fetch("results", "planned")
    assert served.api.post(f"/api/jobs/{job['id']}/start").status_code == 202
    wait_for_job(served.api, job["id"], {"done"})
    fetch("results", "results")
    fetch("failed", "failed")
    for label in ("validated", "planned", "results"):
        summary = _summary(books[label])
        assert summary["web job"] == job["id"], label
        assert summary["file"] == "carrier routing.csv", label
        assert summary["uploaded_by"] == "Asha (NOC)", label
        assert "path" not in summary and "os_user" not in summary and "host" not in summary, label
    assert "journal run" in _summary(books["results"])  # the send's journal is named, not where it is
    for label, path in books.items():
        assert _machine_facts_in(path, served.data) == [], label


# -- 6: finish what was cancelled ------------------------------------------------------------------


@pytest.mark.slow  # a send slowed down (60 ms a write) so that it can be cancelled midway
def test_remaining_rows_are_one_number_on_the_page_and_in_the_api(tmp_path: Path) -> None:
    """Rows already routed as asked are not "remaining": the page's N is the API's ``remaining``."""
    inventory = write_inventory(tmp_path / "inventory.json", 10, {i: desired_record(i) for i in range(4)})
    sandbox = create_sandbox(SandboxConfig(inventory=inventory, requests_per_minute=100_000))
    with served_web(sandbox, tmp_path / "data", token=TOKEN) as web:
        job = _planned(web.client, write_sheet(tmp_path / "routing.csv", 10))
        assert job["planned"]["create"] == 6 and job["planned"]["unchanged"] == 4
        assert web.client.post(f"/api/jobs/{job['id']}/cancel").status_code == 202
        wait_for_job(web.client, job["id"], {"cancelled"})
        results = _text(web.client.get(f"/jobs/{job['id']}/results").text)
        offered = re.search(r"Send the remaining (\d+) rows", results)
        assert offered is not None, results
        answer = web.client.post(f"/api/jobs/{job['id']}/resume")
        assert answer.status_code == 202
        assert answer.json()["remaining"] == int(offered.group(1)) == 6


def test_cancelled_job_sends_the_remaining_rows_from_its_page(tmp_path: Path) -> None:
    """Cancelled mid-send: its page offers the rest and the rows not done; the rest is planned, then
    sent once, and every DID ends created exactly once."""
    inventory = write_inventory(tmp_path / "inventory.json", 40)
    sandbox = create_sandbox(SandboxConfig(inventory=inventory, requests_per_minute=100_000, latency_ms=60))
    settings = ServeSettings(
        connection=web_connection(sandbox, concurrency=1), data_dir=tmp_path / "data", port=0, token=TOKEN
    )
    with (
        running_server(settings) as (url, _token, _service),
        httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30) as api,
    ):
        job = _planned(api, write_sheet(tmp_path / "routing.csv", 40))
        page = f"/jobs/{job['id']}"
        assert api.post(page + "/send", data={"confirm": "yes"}).status_code == 303
        wait_until(lambda: api.get(f"/api/jobs/{job['id']}").json()["progress"]["done"] >= 3, "3 writes")
        assert api.post(page + "/cancel").status_code == 303
        job = wait_for_job(api, job["id"], {"cancelled"})
        done, left = job["counts"]["succeeded"], job["counts"]["not_sent"]
        assert 0 < done < 40 and done + left == 40

        results = _text(api.get(page + "/results").text)
        assert f"Send the remaining {left} rows" in results
        book = tmp_path / "not-done.xlsx"
        book.write_bytes(api.get(f"/api/jobs/{job['id']}/failed.xlsx").content)
        header, *unsent = _rows(book)
        assert len(unsent) == left and header[0] == "Phone Number"  # the upload's own columns, and why
        why = [str(r[header.index("import_reason")]) for r in unsent]
        assert all("not sent" in w for w in why), why

        answer = api.post(page + "/resume")
        assert answer.status_code == 303 and answer.headers["location"] == page + "/plan"
        job = wait_for_job(api, job["id"], {"planned"})
        assert job["planned"]["create"] == left  # only what is still needed
        plan = _text(api.get(page + "/plan").text)
        assert f"{left} to create" in plan
        assert api.post(page + "/send", data={"confirm": "yes"}).status_code == 303
        job = wait_for_job(api, job["id"], {"done"})
        assert job["counts"]["succeeded"] == 40
        assert "Send the remaining" not in _text(api.get(page + "/results").text)
    creates = [int(w["did_id"]) for w in sandbox.state_snapshot()["writes"] if w["op"] == "create"]
    assert sorted(creates) == [1000 + i for i in range(40)]  # each DID once: nothing sent twice


# -- 5d: no console error or CSP violation on the way -----------------------------------------------

# Chromium logs a blocked inline style as a console error already; this says which directive and
# what, and catches a violation reported only as an event.
REPORT_VIOLATIONS = """
document.addEventListener("securitypolicyviolation", function (e) {
  console.error("CSP violation: " + e.violatedDirective + " " + e.blockedURI + " " + e.sample);
});
"""


def _open(browser: Browser, url: str) -> tuple[Any, Page, list[str]]:
    """A signed-in page whose console errors, page errors and CSP violations land in the list."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.add_init_script(REPORT_VIOLATIONS)
    page = context.new_page()
    page.set_default_timeout(20_000)
    errors: list[str] = []
    page.on("console", lambda m: errors.append(f"{page.url}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"{page.url}: {e}"))
    answer = page.goto(f"{url}/?token={TOKEN}")
    assert answer is not None and answer.status == 200
    return context, page, errors


@pytest.mark.slow
def test_page_every_step_without_console_error_or_csp_violation(
    browser: Browser, served: Served, tmp_path: Path
) -> None:
    """Upload the four-sheet carrier workbook, columns, check (a save), plan (filter), send, results.

    A script giving an element of a swapped table an inline style (CSSOM, which the policy allows)
    must not make htmx copy it as a ``style`` attribute while settling (which the policy blocks).
    """
    book = write_carrier_workbook(tmp_path / "carrier.xlsx")
    context, page, errors = _open(browser, served.url)
    try:
        expect(page).to_have_title("Jobs · VoiceLink importer")
        page.set_input_files("#file", str(book))
        page.get_by_role("button", name="Upload and check").click()
        expect(page.locator("h1")).to_have_text("2. Sheet and columns")
        expect(page).to_have_title("Sheet and columns · carrier.xlsx · VoiceLink importer")
        page.get_by_role("button", name="Save and check the rows").click()

        expect(page.locator("h1")).to_have_text("3. Check")
        expect(page).to_have_title("Check · carrier.xlsx · VoiceLink importer")
        page.get_by_label("Only rows with problems").check()  # htmx swaps the table
        expect(page).to_have_url(re.compile(r"problems=1"))
        page.evaluate("document.querySelector('#check [id]').style.outline = '2px solid red'")
        cell = page.locator("#c-7-5")  # row 7 says "In Service": not a status
        expect(cell).to_have_value("In Service")
        cell.fill("Active")
        cell.press("Enter")  # keeps the cell (the grid); Ctrl+S saves the rows changed (htmx)
        page.keyboard.press("Control+s")
        expect(page.locator("#message")).to_have_text("Row 7 saved and checked again.")

        page.get_by_role("link", name="Next: plan ›").click()
        expect(page).to_have_title("Plan · carrier.xlsx · VoiceLink importer")
        page.get_by_role("button", name="Check against my account").click()
        expect(page.locator("main")).to_contain_text("to create")
        page.evaluate("document.getElementById('problems').style.outline = '2px solid red'")
        page.get_by_label("Only rows with problems").check()  # htmx swaps the plan's rows
        expect(page).to_have_url(re.compile(r"problems=1"))
        expect(page.locator("#planrows")).to_contain_text("rows shown")

        page.get_by_role("link", name="Next: send ›").click()
        expect(page).to_have_title("Send · carrier.xlsx · VoiceLink importer")
        page.get_by_label("I want to write these changes to the account now").check()
        page.locator("form.confirm").get_by_role("button").first.click()
        page.wait_for_url(re.compile(r"/results$"))
        expect(page).to_have_title("Results · carrier.xlsx · VoiceLink importer")
        expect(page.locator("main")).to_contain_text("succeeded")
        page.get_by_label("Show").select_option("failed")  # htmx swaps the outcomes
        expect(page).to_have_url(re.compile(r"status=failed"))
        assert errors == [], errors
    finally:
        context.close()


# -- 7: mappings remembered -------------------------------------------------------------------------

GERMAN = ("Nummer", "Eingehend", "Bot ein", "Trunk ein", "Ausgehend", "Bot aus", "Trunk aus", "Zustand")
FIELD_OF = dict(zip(GERMAN, SHEET_FIELDS, strict=True))


def _german(path: Path, n: int, headers: tuple[str, ...] = GERMAN, first: int = 0) -> Path:
    """A carrier export with headers the reader does not know: rows ``first`` .. ``first+n-1``."""
    lines = write_sheet(tmp := path.with_suffix(".tmp"), first + n).read_text(encoding="utf-8").splitlines()
    tmp.unlink()
    path.write_text("\n".join([",".join([*headers, "Kunde"]), *lines[1 + first :]]) + "\n", encoding="utf-8")
    return path


def _map_on_page(api: httpx.Client, job_id: str, picks: dict[str, str]) -> None:
    """Save the columns step with ``picks`` (field -> header), as its form posts them."""
    form = {f"field_{f}": h for f, h in picks.items()}
    answer = api.post(f"/jobs/{job_id}/columns", data=form)
    assert answer.status_code == 303, _text(answer.text)


def test_mapping_remembered_for_the_same_header_row(served: Served, tmp_path: Path) -> None:
    """Mapped once on the page, the next file with that header row maps itself and says from which
    job; the user's change is what the file after it gets; other orders and explicit maps are left be."""
    first = _upload(served.api, _german(tmp_path / "march.csv", 5), "march.csv")
    first = wait_for_job(served.api, first["id"], {"failed"})
    assert "missing required column" in first["error"]
    _map_on_page(served.api, first["id"], {f: h for h, f in FIELD_OF.items()})
    assert wait_for_job(served.api, first["id"], {"validated"})["counts"]["valid"] == 5

    # Same headers once normalised (case, spaces, punctuation), same order: mapped by itself.
    shouted = tuple(h.upper().replace(" ", "_") for h in GERMAN)
    second = _upload(served.api, _german(tmp_path / "april.csv", 6, shouted, first=5), "april.csv")
    second = wait_for_job(served.api, second["id"], {"validated", "failed"})
    assert second["status"] == "validated" and second["counts"]["valid"] == 6, second["error"]
    wanted = sorted(f"{h}={f}" for h, f in zip(shouted, FIELD_OF.values(), strict=True))
    assert sorted(second["options"]["map"]) == wanted  # the pairs name this file's own headers
    page = _text(served.api.get(f"/jobs/{second['id']}/columns").text)
    assert f"Columns mapped as in job {first['id']} (march.csv)" in page
    assert second["mapped_from"] == {"job": first["id"], "file": "march.csv"}  # the API says it too
    assert "mapped as in job" not in _text(served.api.get(f"/jobs/{first['id']}/columns").text)
    assert first["mapped_from"] is None

    # The user changes it (no status column now): the message goes, and the next file maps that way.
    picks = {f: h for h, f in zip(shouted, FIELD_OF.values(), strict=True) if f != "status"}
    _map_on_page(served.api, second["id"], picks)
    second = wait_for_job(served.api, second["id"], {"validated"})
    assert not any(m.endswith("=status") for m in second["options"]["map"])
    assert second["mapped_from"] is None  # the user's own mapping now
    assert "mapped as in job" not in _text(served.api.get(f"/jobs/{second['id']}/columns").text)
    third = _upload(served.api, _german(tmp_path / "may.csv", 4, first=11), "may.csv")
    third = wait_for_job(served.api, third["id"], {"validated", "failed"})
    assert third["status"] == "validated" and len(third["options"]["map"]) == 7
    assert f"Columns mapped as in job {second['id']} (april.csv)" in _text(
        served.api.get(f"/jobs/{third['id']}/columns").text
    )

    # Another order is another header row; a file sent with its own map keeps it.
    swapped = (GERMAN[1], GERMAN[0], *GERMAN[2:])
    other = _upload(served.api, _german(tmp_path / "june.csv", 3, swapped, first=15), "june.csv")
    assert wait_for_job(served.api, other["id"], {"validated", "failed"})["status"] == "failed"
    own = _upload(
        served.api, _german(tmp_path / "july.csv", 3, first=18), "july.csv", map="Nummer=did_number"
    )
    own = wait_for_job(served.api, own["id"], {"validated", "failed"})
    assert own["options"]["map"] == ["Nummer=did_number"] and own["status"] == "failed"


def test_mapping_remembered_across_a_restart(tmp_path: Path) -> None:
    """The memory is in the data dir: a server started again maps the file the same way."""
    inventory = write_inventory(tmp_path / "inventory.json", 20)
    sandbox = create_sandbox(SandboxConfig(inventory=inventory, requests_per_minute=100_000))
    settings = ServeSettings(
        connection=web_connection(sandbox), data_dir=tmp_path / "data", port=0, token=TOKEN
    )
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with running_server(settings) as (url, _t, _s), httpx.Client(base_url=url, headers=headers) as api:
        first = _upload(api, _german(tmp_path / "march.csv", 5), "march.csv")
        wait_for_job(api, first["id"], {"failed"})
        _map_on_page(api, first["id"], {f: h for h, f in FIELD_OF.items()})
        wait_for_job(api, first["id"], {"validated"})
    with running_server(settings) as (url, _t, _s), httpx.Client(base_url=url, headers=headers) as api:
        second = _upload(api, _german(tmp_path / "april.csv", 6, first=5), "april.csv")
        assert wait_for_job(api, second["id"], {"validated", "failed"})["status"] == "validated"
        assert f"Columns mapped as in job {first['id']} (march.csv)" in _text(
            api.get(f"/jobs/{second['id']}/columns").text
        )


def test_mapping_memory_is_bounded(tmp_path: Path) -> None:
    """Past its limit the memory lets the least recently saved header rows go."""
    memory = MappingMemory(tmp_path, limit=3)
    try:
        for i in range(5):
            memory.remember(
                [f"Nummer {i}", "Eingehend"], {f"Nummer {i}": "did_number"}, f"job{i}", f"{i}.csv"
            )
        assert len(memory) == 3
        assert (
            memory.recall(["Nummer 0", "Eingehend"]) is None
            and memory.recall(["Nummer 1", "Eingehend"]) is None
        )
        kept = memory.recall(["nummer 4", "EINGEHEND"])
        assert kept is not None and kept.job == "job4" and dict(kept.column_map) == {"Nummer 4": "did_number"}
        memory.remember(["Plain", "Eingehend"], {}, "job9", "9.csv")  # automatic, nothing to undo: not kept
        assert len(memory) == 3 and memory.recall(["Plain", "Eingehend"]) is None
    finally:
        memory.close()


@pytest.mark.slow
def test_page_cancelled_job_sends_the_rest_in_the_browser(browser: Browser, tmp_path: Path) -> None:
    """From a cancelled job's results: "Send the remaining N rows", its plan, the send, all done."""
    inventory = write_inventory(tmp_path / "inventory.json", 40)
    sandbox = create_sandbox(SandboxConfig(inventory=inventory, requests_per_minute=100_000, latency_ms=60))
    connection = web_connection(sandbox, concurrency=1)
    settings = ServeSettings(connection=connection, data_dir=tmp_path / "data", port=0, token=TOKEN)
    with (
        running_server(settings) as (url, _token, _service),
        httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30) as api,
    ):
        job = _planned(api, write_sheet(tmp_path / "routing.csv", 40))
        assert api.post(f"/api/jobs/{job['id']}/start").status_code == 202
        wait_until(lambda: api.get(f"/api/jobs/{job['id']}").json()["progress"]["done"] >= 3, "3 writes")
        assert api.post(f"/api/jobs/{job['id']}/cancel").status_code == 202
        left = wait_for_job(api, job["id"], {"cancelled"})["counts"]["not_sent"]
        context, page, errors = _open(browser, url)
        try:
            page.goto(f"{url}/jobs/{job['id']}")
            expect(page).to_have_title("Results · routing.csv · VoiceLink importer")
            with page.expect_download() as download:
                page.get_by_role("link", name="Download the rows not done, with why (xlsx)").click()
            saved = tmp_path / "not-done.xlsx"
            download.value.save_as(saved)
            assert len(_rows(saved)) == left + 1
            page.get_by_role("button", name=f"Send the remaining {left} rows").click()
            expect(page.locator("h1")).to_have_text("4. Plan")
            expect(page.locator(".counts")).to_contain_text(f"{left} to create")  # the page moved on itself
            page.get_by_role("link", name="Next: send ›").click()
            page.get_by_label("I want to write these changes to the account now").check()
            page.locator("form.confirm").get_by_role("button").first.click()
            page.wait_for_url(re.compile(r"/results$"))
            expect(page.locator(".count.ok .n")).to_have_text("40")
            expect(page.get_by_role("button", name=re.compile("Send the remaining"))).to_have_count(0)
            assert errors == [], errors
        finally:
            context.close()
    creates = [int(w["did_id"]) for w in sandbox.state_snapshot()["writes"] if w["op"] == "create"]
    assert sorted(creates) == [1000 + i for i in range(40)]


@pytest.mark.slow
def test_page_mapping_remembered_in_the_browser(browser: Browser, served: Served, tmp_path: Path) -> None:
    """The second export maps itself as the first was mapped, says so, and takes a change."""
    first = _upload(served.api, _german(tmp_path / "march.csv", 5), "march.csv")
    context, page, errors = _open(browser, served.url)
    try:
        page.goto(f"{served.url}/jobs/{first['id']}/columns")
        expect(page.locator(".error")).to_contain_text("missing required column")
        for header, field in FIELD_OF.items():
            page.locator(f"#field_{field}").select_option(header)
        page.get_by_role("button", name="Save and check the rows").click()
        expect(page.locator("[data-k=valid]")).to_have_text("5")

        page.goto(served.url + "/")
        page.set_input_files("#file", str(_german(tmp_path / "april.csv", 6, first=5)))
        page.get_by_role("button", name="Upload and check").click()
        expect(page.locator("#mapped-from")).to_have_text(
            re.compile(rf"^Columns mapped as in job {first['id']} \(march\.csv\)")
        )
        for header, field in FIELD_OF.items():
            expect(page.locator(f"#field_{field}")).to_have_value(header)
        page.locator("#field_status").select_option("")  # the user's own choice: no status column
        page.get_by_role("button", name="Save and check the rows").click()
        expect(page.locator("[data-k=valid]")).to_have_text("6")
        page.get_by_role("link", name="‹ Back to sheet and columns").click()
        expect(page.locator("#field_status")).to_have_value("")
        expect(page.locator("#mapped-from")).to_have_count(0)
        assert errors == [], errors
    finally:
        context.close()


def test_plan_page_says_how_many_held_back_rows_fail_in_the_file_and_against_the_account(
    tmp_path: Path,
) -> None:
    """The held-back count is split the way the check page counts: the file's problems, the account's."""
    sandbox = create_sandbox(SandboxConfig(requests_per_minute=100_000))
    with served_web(sandbox, tmp_path / "data", token=TOKEN) as web:
        job = _planned(web.client, SAMPLE / "carrier_routing.csv")
        in_file = job["rows"] - job["counts"]["valid"]
        by_account = job["counts"]["failed"] - in_file
        assert in_file > 0 and by_account > 0, job["counts"]
        page = _text(web.client.get(f"/jobs/{job['id']}/plan").text)
        held = f"{job['counts']['failed']} failed (held back)"
        assert f"{held} {in_file} in the file, {by_account} against the account" in page, page
