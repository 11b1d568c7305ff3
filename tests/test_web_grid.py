"""The check page's fixing grid in a real browser: Playwright driving Debian's Chromium over TCP.

The four-sheet carrier workbook (``helpers.write_carrier_workbook``) with 12 rows of "In Service":
its sheet chosen when asked, cells edited (valid ones too), several rows saved at once, problem
chips, find/replace, fill, exclude, undo, a mode that needs an id, the keyboard alone, and counts
that add up. Every test ends asserting no console error and nothing the CSP blocked.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openpyxl
import pytest
from helpers import wait_for_job, web_connection, write_carrier_workbook, write_inventory
from playwright.sync_api import Browser, Page, expect

from importer.sandbox import SandboxConfig, create_sandbox
from importer.web.people import Role, add_user
from importer.web.server import ServeSettings, running_server

SLOW = pytest.mark.slow  # browser: a real chromium driving the page

TOKEN = "grid-test-token-0123456789-abcdefghijk"
SHOTS = Path(__file__).resolve().parent / "artifacts" / "screenshots"
IN_SERVICE = (3, 13, 20, 21, 22, 23, 24, 25, 26, 28, 29, 33)
"""The carrier rows (``carrier_row(i)``) whose Status says "In Service": 12, on sheet rows i + 4."""
PROBLEM_ROWS = [7, 11, 16, 17, 21, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 37, 41, 44]
"""Sheet rows with a problem: the 12 "In Service", 4 without an inbound bot id, "Only Answr", the footer."""
COLUMNS = ["DID Number", "Inbound Mode", "Inbound Bot ID", "Outbound Mode", "Outbound Bot ID", "Status"]


@dataclass
class Served:
    url: str
    api: httpx.Client
    book: Path


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    """The server against a sandbox that holds the workbook's first 38 DIDs (the last 2 are not)."""
    inventory = write_inventory(tmp_path / "inventory.json", 38)
    sandbox = create_sandbox(SandboxConfig(inventory=inventory, requests_per_minute=100_000))
    settings = ServeSettings(
        connection=web_connection(sandbox, concurrency=2), data_dir=tmp_path / "data", port=0, token=TOKEN
    )
    with (
        running_server(settings) as (url, _token, _service),
        httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30) as api,
    ):
        yield Served(url, api, _carrier(tmp_path / "carrier.xlsx"))


def _carrier(path: Path) -> Path:
    """The carrier workbook (its stale sheet names the fields too), 12 rows saying "In Service"."""
    write_carrier_workbook(path, stale_matches=True)
    book = openpyxl.load_workbook(path)
    for i in IN_SERVICE:
        book["DIDs"].cell(row=i + 4, column=6).value = "In Service"
    book.save(path)
    return path


@pytest.fixture
def pages(browser: Browser) -> Iterator[Callable[..., Page]]:
    """Open pages signed in; after the test, none logged a console error or a CSP violation."""
    opened: list[tuple[Any, Page, list[str]]] = []

    def open_page(url: str, **options: Any) -> Page:
        context = browser.new_context(viewport={"width": 1280, "height": 800}, **options)
        page = context.new_page()
        page.set_default_timeout(20_000)
        errors: list[str] = []
        # A CSP violation is a console error ("Refused to apply inline style ...").
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        opened.append((context, page, errors))
        answer = page.goto(f"{url}/?token={TOKEN}")
        assert answer is not None and answer.status == 200
        return page

    yield open_page
    for context, _page, errors in opened:
        context.close()
        assert errors == [], errors


def _job(served: Served) -> str:
    """The workbook uploaded through the API, its DIDs sheet chosen, validated: the job's id."""
    with served.book.open("rb") as fh:
        job = served.api.post("/api/jobs", files={"file": (served.book.name, fh)}).json()
    wait_for_job(served.api, job["id"], {"needs_sheet"})
    served.api.patch(f"/api/jobs/{job['id']}", json={"sheets": ["DIDs"]})
    return str(wait_for_job(served.api, job["id"], {"validated"})["id"])


def _check(page: Page, served: Served, job: str, query: str = "") -> None:
    page.goto(f"{served.url}/jobs/{job}/check{query}")
    expect(page.locator("h1")).to_have_text("3. Check")


def _values(served: Served, job: str, row: int) -> list[str]:
    rows = served.api.get(f"/api/jobs/{job}/rows", params={"limit": 100}).json()["rows"]
    return next(r["values"] for r in rows if r["row"] == row)


def _failed_rows(served: Served, job: str) -> list[int]:
    data = served.api.get(f"/api/jobs/{job}/rows", params={"status": "failed", "limit": 100}).json()
    return [r["row"] for r in data["rows"]]


def _counts(page: Page) -> dict[str, int]:
    found = {}
    for key in ("valid", "failed", "account", "excluded", "left_out"):
        shown = page.locator(f".counts [data-k={key}]")
        if shown.count():
            found[key] = int(shown.inner_text())
    return found


def _type_in(page: Page, cell: str, text: str) -> None:
    """Put the keyboard on a cell and type over it, as a spreadsheet takes it."""
    page.locator(f"#{cell}").focus()
    page.keyboard.type(text)
    page.keyboard.press("Enter")


def _shot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=False, caret="initial")


# -- the sheet, the counts ------------------------------------------------------------------------


@SLOW
def test_grid_sheet_chosen_when_asked_then_counts_add_up(pages: Callable[..., Page], served: Served) -> None:
    """Two sheets name the fields: the page asks, with their row counts; the check counts each row once."""
    page = pages(served.url)
    page.set_input_files("#file", str(served.book))
    page.get_by_role("button", name="Upload and check").click()
    picker = page.locator("fieldset.sheet-picker")
    expect(picker).to_contain_text("choose which to import")
    expect(picker).to_contain_text("Old DIDs 2023 (3 rows)")
    expect(picker).to_contain_text("DIDs (41 rows)")
    page.get_by_label("DIDs (41 rows)", exact=True).check()
    page.get_by_role("button", name="Save and check the rows").click()
    expect(page.locator("h1")).to_have_text("3. Check")
    assert _counts(page) == {"valid": 23, "failed": 18, "excluded": 0}
    expect(page.locator("#sum")).to_contain_text("41 rows = 23 valid + 18 with problems + 0 excluded.")


@SLOW
def test_grid_counts_after_a_plan_are_disjoint_and_name_the_account(
    pages: Callable[..., Page], served: Served
) -> None:
    """After a plan: the 2 DIDs the account lacks are counted apart from the file's problems."""
    job = _job(served)
    served.api.post(f"/api/jobs/{job}/edits", json={"op": "exclude", "rows": [44]})
    assert served.api.post(f"/api/jobs/{job}/plan").status_code == 202
    planned = wait_for_job(served.api, job, {"planned"})
    page = pages(served.url)
    _check(page, served, job)
    counts = _counts(page)
    assert counts == {"valid": 21, "failed": 17, "account": 2, "excluded": 1}
    assert sum(counts.values()) == planned["rows"] == 41
    expect(page.locator("#sum")).to_contain_text(
        "41 rows = 21 valid + 17 with problems + 2 failing against the account + 1 excluded."
    )
    expect(page.locator(".counts")).to_contain_text(
        "2 valid rows that fail against the account (from the plan)",
    )
    expect(page.locator("#row-42 .status")).to_contain_text("the account")


# -- editing cells ---------------------------------------------------------------------------------


@SLOW
def test_grid_valid_cell_edited_and_marked(pages: Callable[..., Page], served: Served) -> None:
    """A cell of a valid row takes a correction too; it is marked unsaved, then saved and marked."""
    job = _job(served)
    page = pages(served.url)
    _check(page, served, job)
    expect(page.locator("#row-5 .status")).to_contain_text("valid")
    _type_in(page, "c-5-6", "Acme Telecom")
    expect(page.locator("#c-5-6")).to_have_value("Acme Telecom")
    expect(page.locator("#row-5 td.dirty")).to_have_count(1)
    expect(page.locator("#unsaved")).to_have_text("1 unsaved change")
    page.get_by_role("button", name="Save changes").click()
    expect(page.locator("#message")).to_have_text(re.compile(r"^Row 5 saved and checked again\."))
    assert _values(served, job, 5)[6] == "Acme Telecom"
    expect(page.locator("#row-5 td.edited")).to_have_count(1)
    expect(page.locator("#unsaved")).to_have_text("")


@SLOW
def test_grid_two_rows_saved_at_once_nothing_lost_focus_on_next_problem(
    pages: Callable[..., Page], served: Served
) -> None:
    """Two rows typed, a third typed then hidden by a filter: one Save sends all three, keeps none back.

    Afterwards the keyboard is on the next row with a problem, in view.
    """
    job = _job(served)
    page = pages(served.url)
    _check(page, served, job, "?problems=1")
    _type_in(page, "c-7-5", "Active")
    _type_in(page, "c-11-2", "93")
    expect(page.locator("#unsaved")).to_have_text("2 unsaved changes")
    page.set_viewport_size({"width": 1280, "height": 1150})
    page.evaluate("document.querySelector('.counts').scrollIntoView()")
    _shot(page, "16-grid")  # the README's picture of the check step
    page.locator("a.chip", has_text="unknown status").click()  # the table is swapped: 4 rows
    expect(page).to_have_url(re.compile(r"kind=bad_status"))
    expect(page.locator("#unsaved")).to_have_text("2 unsaved changes (1 in rows not shown)")
    expect(page.locator("#c-7-5")).to_have_value("Active")  # typed, not saved, still there
    _type_in(page, "c-17-5", "active")
    page.locator("a.chip", has_text="All problems").click()
    expect(page.locator("#c-11-2")).to_have_value("93")
    expect(page.locator("#unsaved")).to_have_text("3 unsaved changes")
    page.keyboard.press("Control+s")
    expect(page.locator("#message")).to_have_text(re.compile(r"^Rows 7, 11, 17 saved and checked again\."))
    assert [_values(served, job, r)[p] for r, p in ((7, 5), (11, 2), (17, 5))] == ["Active", "93", "active"]
    assert not {7, 11, 17} & set(_failed_rows(served, job))
    expect(page.locator("#row-7")).to_have_count(0)  # valid now: gone from the rows with problems
    expect(page.locator("#c-21-2")).to_be_focused()  # the next problem after row 17: its bot id
    assert page.locator("#c-21-2").evaluate(
        "e => { const r = e.getBoundingClientRect(); return r.top >= 0 && r.bottom <= innerHeight; }"
    )
    expect(page.locator("#unsaved")).to_have_text("")


@SLOW
def test_grid_leaving_with_unsaved_cells_asks_first(pages: Callable[..., Page], served: Served) -> None:
    """A link away with a cell typed and not saved: the browser asks; staying keeps the cell."""
    job = _job(served)
    page = pages(served.url)
    _check(page, served, job, "?problems=1")
    page.get_by_role("link", name="Next: plan ›").click()  # nothing typed: no question
    expect(page.locator("h1")).to_have_text("4. Plan")
    _check(page, served, job, "?problems=1")
    _type_in(page, "c-7-5", "Active")
    asked: list[str] = []
    page.once("dialog", lambda d: (asked.append(d.type), d.dismiss()))  # dismissed: stay
    page.get_by_role("link", name="Next: plan ›").click(no_wait_after=True)  # returns once answered
    expect(page.locator("#c-7-5")).to_have_value("Active")
    assert asked == ["beforeunload"] and page.url.endswith("/check?problems=1")
    page.keyboard.press("Control+s")
    expect(page.locator("#message")).to_have_text(re.compile(r"^Row 7 saved"))
    again: list[str] = []
    page.on("dialog", lambda d: (again.append(d.type), d.dismiss()))
    page.get_by_role("link", name="Next: plan ›").click()  # saved: no question
    expect(page.locator("h1")).to_have_text("4. Plan")
    assert again == []


@SLOW
def test_grid_status_cell_names_the_columns_and_links_to_them(
    pages: Callable[..., Page], served: Served
) -> None:
    """The footer row's status says which columns are wrong; each name puts the keyboard on its cell."""
    job = _job(served)
    page = pages(served.url)
    _check(page, served, job, "?problems=1")
    status = page.locator("#row-44 .status")
    expect(status).to_contain_text("✖ Problems in DID Number, Inbound Mode, Outbound Mode")
    status.get_by_role("link", name="Outbound Mode").click()
    expect(page.locator("#c-44-3")).to_be_focused()


@SLOW
def test_grid_chip_filters_the_rows_to_one_kind(pages: Callable[..., Page], served: Served) -> None:
    job = _job(served)
    page = pages(served.url)
    _check(page, served, job)
    chips = page.locator("nav.chips")
    expect(chips.locator("a.chip", has_text="unknown status")).to_contain_text("12")
    chips.locator("a.chip", has_text="id missing for the mode").focus()
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(r"kind=missing_mode_id"))
    expect(page.locator("#chip-missing_mode_id")).to_be_focused()  # the keyboard stays where it was
    rows = page.locator("table.rows tbody tr")
    expect(rows).to_have_count(4)
    assert [int(r) for r in rows.evaluate_all("rs => rs.map(r => r.dataset.row)")] == [11, 21, 31, 41]
    expect(chips.locator("[aria-current=true]")).to_contain_text("missing")


# -- bulk fixes ------------------------------------------------------------------------------------


@SLOW
def test_grid_find_and_replace_fixes_twelve_rows_then_undo_takes_it_back(
    pages: Callable[..., Page], served: Served
) -> None:
    """ "In Service" in 12 rows: one replace fixes them all; one undo takes the 12 cells back as a whole."""
    job = _job(served)
    page = pages(served.url)
    _check(page, served, job, "?problems=1")
    page.get_by_label("Column", exact=True).first.select_option(label="Status")
    page.get_by_label("Find", exact=True).fill("in service")
    page.get_by_label("Replace with", exact=True).fill("Active")
    page.get_by_label("In rows", exact=True).first.select_option("all")
    page.get_by_role("button", name="Replace", exact=True).click()
    expect(page.locator("#message")).to_contain_text("12 cells changed")
    assert _counts(page)["failed"] == 6
    assert sorted(set(PROBLEM_ROWS) - set(_failed_rows(served, job))) == sorted(i + 4 for i in IN_SERVICE)
    page.locator("#operations summary").click()
    listed = page.locator("#operations tbody tr").first
    expect(listed).to_contain_text("replace 'in service' with 'Active' in 'Status'")
    expect(listed.locator("td").nth(4)).to_have_text("12")
    expect(listed.locator("td").nth(2)).to_have_text(re.compile(r"^\d{4}-\d\d-\d\dT"))
    page.get_by_role("button", name="Undo the last operation").click()
    expect(page.locator("#message")).to_have_text("Undone: replace 'in service' with 'Active' in 'Status'.")
    assert _counts(page)["failed"] == 18 and _failed_rows(served, job) == PROBLEM_ROWS
    assert _values(served, job, 24)[5] == "In Service"
    edits = served.api.get(f"/api/jobs/{job}/edits").json()["edits"]
    assert [(e["op"], e["cells"], e["in_effect"]) for e in edits] == [("replace", 12, False)]
    page.locator("#operations summary").click()
    expect(page.locator("#operations tbody tr").first.locator("td").last).to_contain_text("undone")


@SLOW
def test_grid_fill_puts_the_missing_bot_id_into_the_failed_rows(
    pages: Callable[..., Page], served: Served
) -> None:
    job = _job(served)
    page = pages(served.url)
    _check(page, served, job, "?kind=missing_mode_id")
    page.get_by_label("Column", exact=True).nth(1).select_option(label="Inbound Bot ID")
    page.get_by_label("With", exact=True).fill("93")
    page.get_by_label("In rows", exact=True).nth(1).select_option("failed")
    page.get_by_role("button", name="Fill", exact=True).click()
    expect(page.locator("#message")).to_contain_text("fill 'Inbound Bot ID' with '93'")
    for row in (11, 21, 31, 41):
        assert _values(served, job, row)[2] == "93"
    assert not {11, 21, 31, 41} & set(_failed_rows(served, job))
    assert "missing_mode_id" not in served.api.get(f"/api/jobs/{job}").json()["problems"]


@SLOW
def test_grid_footer_row_excluded_then_included(pages: Callable[..., Page], served: Served) -> None:
    """ "Total DIDs: 40" is no DID: excluded, it leaves the problems and is counted as excluded."""
    job = _job(served)
    page = pages(served.url)
    _check(page, served, job, "?problems=1&page=1")
    page.get_by_role("button", name="Exclude row 44").click()
    expect(page.locator("#message")).to_have_text("Done: exclude 1 row(s).")
    expect(page.locator("#row-44")).to_have_count(0)
    assert _counts(page) == {"valid": 23, "failed": 17, "excluded": 1}
    row = served.api.get(f"/api/jobs/{job}/rows", params={"offset": 40}).json()["rows"][0]
    assert row["row"] == 44 and row["status"] == "skipped" and row["reason"] == "excluded on the page"
    _check(page, served, job)
    expect(page.locator("#row-44 .status")).to_contain_text("excluded")
    page.get_by_role("button", name="Include row 44").click()
    expect(page.locator("#row-44 .status")).to_contain_text("✖ Problems in DID Number")
    assert _counts(page)["excluded"] == 0
    # Every row shown at once: the header's box ticks them all for a bulk action.
    _check(page, served, job, "?problems=1&kind=bad_status")
    page.get_by_role("checkbox", name="Select every row shown").check()
    shown = page.locator("input[name=sel]")
    assert shown.count() == 12 and all(box.is_checked() for box in shown.all())
    page.get_by_role("button", name="Exclude the selected rows").click()
    expect(page.locator("#message")).to_have_text("Done: exclude 12 row(s).")
    assert _counts(page) == {"valid": 23, "failed": 6, "excluded": 12}


@SLOW
def test_grid_accept_suggestions_fixes_the_near_miss_label(
    pages: Callable[..., Page], served: Served
) -> None:
    job = _job(served)
    page = pages(served.url)
    _check(page, served, job, "?problems=1")
    expect(page.locator("#e-16-3")).to_contain_text("Suggested: 4 (only-answer).")
    page.get_by_role("button", name="Accept the suggested labels").click()
    expect(page.locator("#message")).to_contain_text("accept the suggested labels: 1 cell changed")
    assert _values(served, job, 16)[3] == "4" and 16 not in _failed_rows(served, job)


# -- modes and the keyboard -------------------------------------------------------------------------


@SLOW
def test_grid_mode_change_makes_its_id_cell_the_next_to_fill(
    pages: Callable[..., Page], served: Served
) -> None:
    """Outbound Mode to "WebSocket bot": the bot id cell is being edited at once; one save does both."""
    job = _job(served)
    page = pages(served.url)
    _check(page, served, job)
    _type_in(page, "c-5-3", "WebSocket bot")
    bot = page.locator("#c-5-4")
    expect(bot).to_be_focused()
    expect(page.locator("#row-5 td.editing")).to_have_count(1)
    expect(page.locator("#row-5 td.needed")).to_have_count(1)
    page.keyboard.type("94")
    page.keyboard.press("Control+s")
    expect(page.locator("#message")).to_have_text(re.compile(r"^Row 5 saved and checked again\."))
    assert _values(served, job, 5)[3:5] == ["WebSocket bot", "94"] and 5 not in _failed_rows(served, job)
    expect(page.locator("#row-5 .status")).to_contain_text("valid")


@SLOW
def test_grid_keyboard_only(pages: Callable[..., Page], served: Served) -> None:
    """Tab into the grid, arrows to a cell, Enter edits, Esc cancels, F2 edits, Ctrl+S saves."""
    job = _job(served)
    page = pages(served.url)
    _check(page, served, job, "?problems=1")
    expect(page.locator("#keys")).to_contain_text("Ctrl+S saves")
    expect(page.locator("#keys [data-js]")).to_be_visible()
    for _ in range(80):  # bounded: the grid is a few dozen stops down the page
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "c-7-0":
            break
    expect(page.locator("#c-7-0")).to_be_focused()
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline not in ("", "none"), "the focused cell shows no focus"
    page.keyboard.press("ArrowRight")
    expect(page.locator("#c-7-1")).to_be_focused()
    for _ in range(4):
        page.keyboard.press("ArrowRight")
    expect(page.locator("#c-7-5")).to_be_focused()
    page.keyboard.press("Enter")
    page.keyboard.press("Control+a")
    page.keyboard.type("Bogus")
    page.keyboard.press("Escape")  # takes the cell back
    expect(page.locator("#c-7-5")).to_have_value("In Service")
    expect(page.locator("#unsaved")).to_have_text("")
    page.keyboard.press("F2")
    page.keyboard.press("Control+a")
    page.keyboard.type("Active")
    page.keyboard.press("Enter")  # kept; the row below
    expect(page.locator("#c-11-5")).to_be_focused()
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("ArrowLeft")
    expect(page.locator("#c-11-2")).to_be_focused()
    page.keyboard.type("93")
    page.keyboard.press("Tab")
    expect(page.locator("#c-11-3")).to_be_focused()
    page.keyboard.press("Control+s")
    expect(page.locator("#message")).to_have_text(re.compile(r"^Rows 7, 11 saved and checked again\."))
    expect(page.locator("#c-16-3")).to_be_focused()  # the next problem: row 16's "Only Answr"
    assert not {7, 11} & set(_failed_rows(served, job))


@SLOW
def test_grid_works_without_javascript(pages: Callable[..., Page], served: Served) -> None:
    """One form: two cells typed and a replace asked, all done by one plain post."""
    job = _job(served)
    page = pages(served.url, java_script_enabled=False)
    _check(page, served, job, "?problems=1")
    expect(page.locator("#keys [data-js]")).to_be_hidden()  # no keys promised that need the script
    page.locator("#c-11-2").fill("93")
    page.locator("#c-16-3").fill("only answer")
    page.get_by_label("Column", exact=True).first.select_option(label="Status")
    page.get_by_label("Find", exact=True).fill("In Service")
    page.get_by_label("Replace with", exact=True).fill("active")
    page.get_by_role("button", name="Replace", exact=True).click()
    expect(page.locator("#message")).to_contain_text("Rows 11, 16 saved and checked again.")
    expect(page.locator("#message")).to_contain_text("12 cells changed")
    assert _failed_rows(served, job) == [21, 31, 41, 44]
    page.get_by_role("button", name="Exclude row 44").click()
    expect(page.locator("#message")).to_have_text("Done: exclude 1 row(s).")
    assert _failed_rows(served, job) == [21, 31, 41]


# -- the grid's form, without a browser --------------------------------------------------------------


def _post(served: Served, job: str, **fields: Any) -> httpx.Response:
    """The grid's form as a browser posts it (``sel`` may be a list)."""
    return served.api.post(f"/jobs/{job}/rows", data=fields)


def _edits(served: Served, job: str) -> list[tuple[str, int, bool]]:
    edits = served.api.get(f"/api/jobs/{job}/edits").json()["edits"]
    return [(e["op"], e["cells"], e["in_effect"]) for e in edits]


def test_grid_form_saves_the_cells_changed_then_its_operation(served: Served) -> None:
    """Cells first (a cell posted as it is is no edit), then the replace: it finds one row fixed already."""
    job = _job(served)
    answer = _post(
        served,
        job,
        **{"c-7-5": "Active", "c-11-2": "93", "c-5-6": "customer 1", "problems": "1"},
        op="replace",
        replace_column="5",
        find="IN SERVICE",
        replace="active",
        replace_rows="all",
    )
    assert answer.status_code == 303, answer.text
    location = answer.headers["location"]
    assert "saved=7%2C11" in location and "done=2" in location and "problems=1" in location
    assert _edits(served, job) == [("set", 2, True), ("replace", 11, True)]
    page = served.api.get(location).text
    assert "Rows 7, 11 saved and checked again. Done: replace &#39;IN SERVICE&#39;" in page
    assert _failed_rows(served, job) == [16, 21, 31, 41, 44]


def test_grid_form_save_is_one_operation_undone_as_a_whole(served: Served) -> None:
    """Three cells in two rows saved at once: one operation, listed with its cells; one undo."""
    job = _job(served)
    fields = {"c-7-5": "Active", "c-11-2": "93", "c-11-6": "Acme"}
    assert _post(served, job, **fields).status_code == 303
    edits = served.api.get(f"/api/jobs/{job}/edits").json()["edits"]
    assert [(e["op"], e["cells"], e["rows"]) for e in edits] == [("set", 3, 2)]
    assert edits[0]["what"] == "set 3 cells (row 7 'Status', row 11 'Inbound Bot ID', row 11 'Customer')"
    answer = _post(served, job, op="undo")
    assert "Undone: set 3 cells" in served.api.get(answer.headers["location"]).text
    assert _values(served, job, 7)[5] == "In Service" and _values(served, job, 11)[2::4] == ["", "customer 7"]
    assert _failed_rows(served, job) == PROBLEM_ROWS


def test_grid_form_undo_goes_before_the_cells_typed(served: Served) -> None:
    """Undo takes back the last saved operation, not a cell typed with it; that cell is saved after."""
    job = _job(served)
    _post(served, job, op="fill", fill_column="2", fill_value="93", fill_rows="failed")
    answer = _post(served, job, **{"c-7-5": "Active"}, op="undo")
    assert answer.status_code == 303 and "undone=1" in answer.headers["location"]
    assert _edits(served, job) == [("fill", 5, False), ("set", 1, True)]
    assert _values(served, job, 11)[2] == "" and _values(served, job, 7)[5] == "Active"


def test_grid_form_exclude_needs_rows_and_a_refusal_keeps_what_was_saved(served: Served) -> None:
    job = _job(served)
    refused = _post(served, job, **{"c-11-2": "93"}, op="exclude")
    assert refused.status_code == 409
    assert "Row 11 saved and checked again. no rows are selected" in refused.text
    assert _values(served, job, 11)[2] == "93"  # saved before the refusal, and the page says so
    refused = _post(served, job, op="replace", replace_column="5", find="nowhere", replace="x")
    assert refused.status_code == 409 and "nothing to change" in refused.text
    assert _post(served, job, sel=["41", "44"], op="exclude").status_code == 303
    assert _failed_rows(served, job) == [7, 16, 17, 21, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 37]
    assert _post(served, job, op="include:44").status_code == 303
    assert 44 in _failed_rows(served, job) and 41 not in _failed_rows(served, job)
    assert _post(served, job, **{"c-99-1": "x"}).status_code == 409  # no such row: said, not saved


def test_grid_form_cell_with_a_line_break_is_not_changed_by_posting_it(served: Served) -> None:
    """An input drops a cell's line breaks: posting the page back unchanged must not edit that cell."""
    book = openpyxl.load_workbook(served.book)
    book["DIDs"].cell(row=5, column=7).value = "customer\n1"
    book.save(served.book)
    job = _job(served)
    answer = _post(served, job, **{"c-5-6": "customer1"})
    assert answer.status_code == 303 and "nothing=1" in answer.headers["location"]
    assert _edits(served, job) == []


def test_grid_offered_to_who_may_fix_and_operations_name_them(tmp_path: Path) -> None:
    """With a users file: the operator's grid records her name; a viewer sees the rows read only."""
    users = tmp_path / "users.toml"
    olga, vic = add_user(users, "olga", Role.OPERATOR), add_user(users, "vic", Role.VIEWER)
    sandbox = create_sandbox(SandboxConfig(inventory=write_inventory(tmp_path / "inventory.json", 38)))
    settings = ServeSettings(
        connection=web_connection(sandbox), data_dir=tmp_path / "data", port=0, token=TOKEN, users_file=users
    )
    book = _carrier(tmp_path / "carrier.xlsx")
    with running_server(settings) as (url, _token, _service):
        as_olga = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {olga}"}, timeout=30)
        as_vic = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {vic}"}, timeout=30)
        with as_olga, as_vic:
            job = _job(Served(url, as_olga, book))
            assert as_olga.post(f"/jobs/{job}/rows", data={"c-7-5": "Active"}).status_code == 303
            page = as_olga.get(f"/jobs/{job}/check").text
            assert 'id="grid"' in page and "<td>olga</td>" in page
            viewed = as_vic.get(f"/jobs/{job}/check").text
            assert 'id="grid"' not in viewed and 'class="cell"' not in viewed
            assert "The rows are shown read only:" in viewed and "Active" in viewed
            assert as_vic.post(f"/jobs/{job}/rows", data={"c-11-2": "93"}).status_code == 403
            edits = as_olga.get(f"/api/jobs/{job}/edits").json()["edits"]
            assert [(e["who"], e["what"]) for e in edits] == [("olga", "set row 7, 'Status' to 'Active'")]


@pytest.mark.parametrize(
    ("cells", "refusal"),
    [
        ("x", '"cells" must be a list'),
        ([], '"cells" must be a list'),
        ([{"row": 99, "column": "Status", "value": "1"}], "row 99 is not a data row"),
        ([{"row": 7, "column": "Nowhere", "value": "1"}], "no column 'Nowhere'"),
        ([{"row": 7, "column": "Status", "value": "In Service"}], "nothing to change"),
    ],
)
def test_grid_api_set_cells_refused_with_the_reason(served: Served, cells: Any, refusal: str) -> None:
    job = _job(served)
    answer = served.api.post(f"/api/jobs/{job}/edits", json={"op": "set", "cells": cells})
    assert answer.status_code == 409 and refusal in answer.json()["error"], answer.text
    assert _edits(served, job) == []


def test_grid_api_set_cells_is_one_operation(served: Served) -> None:
    job = _job(served)
    cells = [{"row": 7, "column": "status", "value": "active"}, {"row": 11, "column": 2, "value": "93"}]
    answer = served.api.post(f"/api/jobs/{job}/edits", json={"op": "set", "cells": cells, "who": "asha"})
    assert answer.status_code == 200 and answer.json()["changed"] == [7, 11]
    assert _edits(served, job) == [("set", 2, True)] and not {7, 11} & set(_failed_rows(served, job))
