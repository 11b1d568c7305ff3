"""Edit operations on a web job through a real server: set, replace, fill, exclude, include,
accept suggestions, undo; and the incremental check, which must equal a whole check."""

from __future__ import annotations

import csv
import io
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openpyxl
import pytest
from helpers import (
    Web,
    did_number,
    served_web,
    signed_in,
    wait_for_job,
    web_connection,
    write_carrier_workbook,
    write_inventory,
    write_sheet,
)

from importer.jobs.validate import read_input
from importer.options import InputOptions
from importer.sandbox import SandboxConfig, create_sandbox
from importer.web import edits as ops
from importer.web.lifecycle import JobError, JobStatus, Step, next_status
from importer.web.server import ServeSettings

TOKEN = "web-edits-token-0123456789-abcdefghijkl"


@pytest.fixture
def web(tmp_path: Path) -> Iterator[Web]:
    inventory = write_inventory(tmp_path / "inventory.json", 40)
    sandbox = create_sandbox(SandboxConfig(inventory=inventory, requests_per_minute=100_000))
    with served_web(sandbox, tmp_path / "data", token=TOKEN, max_upload_mb=1) as web:
        yield web


def _sheet(folder: Path) -> Path:
    """Rows 2-11 valid (DIDs 0..9); rows 12-14 with near-miss or wrong labels."""
    path = write_sheet(folder / "routing.csv", 10)
    with path.open("a", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["+" + did_number(10), "1", "", "", "Only Answr", "", "", "Actve", "c10"])
        w.writerow(["+" + did_number(11), "1", "", "", "4", "", "", "In Service", "c11"])
        w.writerow(["+" + did_number(12), "1", "", "", "4", "", "", "In Service", "c12"])
    return path


def _job(web: Web, path: Path) -> str:
    with path.open("rb") as fh:
        job = web.client.post("/api/jobs", files={"file": (path.name, fh)}).json()
    wait_for_job(web.client, job["id"], {"validated"})
    return str(job["id"])


def _op(web: Web, job_id: str, **body: Any) -> dict[str, Any]:
    answer = web.client.post(f"/api/jobs/{job_id}/edits", json=body)
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()
    return result


def _row(web: Web, job_id: str, row: int) -> dict[str, Any]:
    rows = web.client.get(f"/api/jobs/{job_id}/rows", params={"limit": 1000}).json()["rows"]
    return next(r for r in rows if r["row"] == row)


def test_edits_set_replace_fill_and_undo_a_bulk_operation(web: Web, tmp_path: Path) -> None:
    job_id = _job(web, _sheet(tmp_path))
    # set: a valid row's cell too
    done = _op(web, job_id, op="set", row=2, column="Customer", value="renamed")
    assert done["changed"] == [2] and done["rows"][0]["values"][8] == "renamed"
    # replace: whole cell, case-insensitive, on the failed rows
    done = _op(web, job_id, op="replace", column="Status", find="in service", replace="active", rows="failed")
    assert done["changed"] == [13, 14] and done["job"]["counts"]["failed"] == 1
    assert all(r["valid"] for r in done["rows"])
    # fill
    done = _op(web, job_id, op="fill", column="Customer", value="ours", rows=[13, 14])
    assert [r["values"][8] for r in done["rows"]] == ["ours", "ours"]
    listed = web.client.get(f"/api/jobs/{job_id}/edits").json()["edits"]
    assert [(e["op"], e["cells"], e["in_effect"]) for e in listed] == [
        ("set", 1, True),
        ("replace", 2, True),
        ("fill", 2, True),
    ]
    # undo takes back the fill, then the replace as a whole
    _op(web, job_id, op="undo")
    undone = _op(web, job_id, op="undo")
    assert undone["changed"] == [13, 14] and undone["job"]["counts"]["failed"] == 3
    assert [r["values"][7] for r in undone["rows"]] == ["In Service", "In Service"]
    assert _row(web, job_id, 2)["values"][8] == "renamed"  # the set is still in effect
    listed = web.client.get(f"/api/jobs/{job_id}/edits").json()["edits"]
    assert [e["in_effect"] for e in listed] == [True, False, False]
    assert undone["job"]["edits"] == 1
    # the single-row PATCH is one set of its cells, undone as a whole
    fixed = {"Status": "active", "Outbound Mode": "4"}
    assert web.client.patch(f"/api/jobs/{job_id}/rows/12", json=fixed).status_code == 200
    assert _row(web, job_id, 12)["values"][7] == "active"
    patched = web.client.get(f"/api/jobs/{job_id}/edits").json()["edits"][-1]
    assert patched["cells"] == 2 and patched["in_effect"]  # both cells, one operation
    assert len(web.client.get(f"/api/jobs/{job_id}/edits").json()["edits"]) == 4
    _op(web, job_id, op="undo")
    assert _row(web, job_id, 12)["values"][7] == "Actve"
    assert web.client.post(f"/api/jobs/{job_id}/edits", json={"op": "explode"}).status_code == 409
    missing = web.client.post(f"/api/jobs/{job_id}/edits", json={"op": "set", "row": 99, "column": 0})
    assert missing.status_code == 409 and "row 99" in missing.json()["error"]


def test_edits_near_miss_labels_carry_a_suggestion_that_can_be_accepted(web: Web, tmp_path: Path) -> None:
    job_id = _job(web, _sheet(tmp_path))
    issues = _row(web, job_id, 12)["issues"]
    assert {i["column"]: i.get("suggestion") for i in issues} == {"Outbound Mode": "4", "Status": "active"}
    done = _op(web, job_id, op="accept_suggestions", rows=[12])
    assert done["changed"] == [12] and done["rows"][0]["valid"]
    assert done["rows"][0]["values"][4] == "4" and done["rows"][0]["values"][7] == "active"
    assert web.client.get(f"/api/jobs/{job_id}/edits").json()["edits"][0]["cells"] == 2


def test_edits_an_excluded_row_is_never_sent(web: Web, tmp_path: Path) -> None:
    job_id = _job(web, _sheet(tmp_path))
    _op(web, job_id, op="exclude", rows=[12, 13, 14, 5])
    _op(web, job_id, op="include", rows=[5])
    done = _op(web, job_id, op="exclude", rows=[3])
    assert done["job"]["counts"]["failed"] == 0 and done["job"]["counts"]["skipped"] == 4
    row = done["rows"][0]
    assert row["status"] == "skipped" and row["reason"] == "excluded on the page"
    assert web.client.post(f"/api/jobs/{job_id}/plan").status_code == 202
    planned = wait_for_job(web.client, job_id, {"planned"})
    assert planned["planned"]["create"] == 9
    assert web.client.post(f"/api/jobs/{job_id}/start").status_code == 202
    job = wait_for_job(web.client, job_id, {"done", "cancelled", "failed"})
    assert job["status"] == "done" and job["counts"]["succeeded"] == 9
    sent = {w["did_id"] for w in web.sandbox.state_snapshot()["writes"] if w["op"] == "create"}
    assert len(sent) == 9 and 1001 not in sent  # row 3 is DID 1 (id 1001)
    assert _row(web, job_id, 3)["reason"] == "excluded on the page"


@pytest.mark.parametrize("seed", range(8))
def test_edits_incremental_check_equals_a_whole_check(tmp_path: Path, seed: int) -> None:
    """Random operations, each checked incrementally, give what a whole check of the result gives."""
    rng = random.Random(seed)
    path = write_sheet(tmp_path / "big.csv", 60)
    with path.open("a", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerow(["+" + did_number(99), "1", "", "", "4", "", "", "active", "last"])
    options = InputOptions(path=path)
    raw = read_input(options)
    report = ops.check(raw, options, (), frozenset())
    edits: list[ops.Edit] = []
    operations: list[ops.Operation] = []
    values = {
        0: ["+" + did_number(i) for i in (1, 2, 3, 70)] + ["", "12"],
        4: ["1", "2", "3", "4", "Only Answr", "9", ""],
        7: ["active", "Actve", "0", "x"],
        8: ["", "renamed", "Total: 61"],
    }
    incremental_used = 0
    for step in range(25):
        kind = rng.choice(["set", "set", "set", "exclude", "include", "undo", "replace"])
        rows = [rng.randrange(2, 63) for _ in range(rng.randint(1, 3))]
        column = rng.choice(list(values))
        body: dict[str, Any] = {
            "set": {"op": "set", "row": rows[0], "column": column, "value": rng.choice(values[column])},
            "exclude": {"op": "exclude", "rows": rows},
            "include": {"op": "include", "rows": rows},
            "undo": {"op": "undo"},
            "replace": {"op": "replace", "column": 4, "find": "4", "replace": "Only Answr", "rows": rows},
        }[kind]
        try:
            change = ops.apply_op(body, report, edits, operations, who="t", when=str(step))
        except ops.EditRefused:
            continue
        excluded = ops.excluded_rows(change.operations)
        table = ops.edited_table(report.table, edits, change.edits)
        quick = ops.recheck(report, table, options, change.touched, excluded)
        incremental_used += quick is not None
        report = ops.recheck_or_check(report, edits, change.edits, options, change.touched, excluded)
        edits, operations = list(change.edits), list(change.operations)
        whole = ops.check(raw, options, edits, excluded)
        assert report.issues == whole.issues, step
        assert [r.row for r in report.valid] == [r.row for r in whole.valid]
        assert list(report.valid) == list(whole.valid)
        assert dict(report.skipped) == dict(whole.skipped)
        assert report.did_numbers is not None and whole.did_numbers is not None
        assert report.did_numbers.to_dict() == whole.did_numbers.to_dict()
        assert report.table.frame.equals(whole.table.frame)
    assert incremental_used >= 5


def test_edits_needs_sheet_until_one_or_two_sheets_are_chosen(web: Web, tmp_path: Path) -> None:
    """Two sheets name the fields: the job waits for a choice (not failed); one or both are read."""
    path = write_carrier_workbook(tmp_path / "carrier.xlsx", stale_matches=True)
    with path.open("rb") as fh:
        job_id = web.client.post("/api/jobs", files={"file": (path.name, fh)}).json()["id"]
    job = wait_for_job(web.client, job_id, {"needs_sheet", "validated", "failed"})
    assert job["status"] == "needs_sheet", job
    assert job["candidates"] == ["Old DIDs 2023", "DIDs"]
    by_name = {s["name"]: s for s in job["sheets"]}
    assert by_name["DIDs"]["rows"] == 41 and by_name["DIDs"]["matches"]
    assert by_name["Old DIDs 2023"]["rows"] == 3 and not by_name["Lists"]["matches"]
    assert web.client.post(f"/api/jobs/{job_id}/plan").status_code == 409
    chosen = web.client.patch(f"/api/jobs/{job_id}", json={"sheets": ["DIDs"]})
    assert chosen.status_code == 200, chosen.text
    job = wait_for_job(web.client, job_id, {"validated", "failed"})
    assert job["status"] == "validated" and job["rows"] == 41 and job["options"]["sheet"] == "DIDs"
    assert job["candidates"] is None and len(job["sheets"]) == 4
    # The note about the sheet left out names the page's control, not the CLI's flags.
    note = next(n for n in job["notes"] if n.startswith("read sheet"))
    assert '"Old DIDs 2023" (3 rows with the columns: choose it among the sheets (step 2' in note, note
    assert "--" not in note
    both = web.client.patch(f"/api/jobs/{job_id}", json={"sheets": ["Old DIDs 2023", "DIDs"]})
    assert both.status_code == 200, both.text
    job = wait_for_job(web.client, job_id, {"validated", "failed"})
    assert job["status"] == "validated" and job["rows"] == 44, job
    assert job["options"]["sheets"] == ["Old DIDs 2023", "DIDs"]
    rows = web.client.get(f"/api/jobs/{job_id}/rows", params={"limit": 1000}).json()["rows"]
    assert len(rows) == 44
    assert [(r["sheet"], r["excel_row"]) for r in (rows[0], rows[3], rows[-1])] == [
        ("Old DIDs 2023", 2),
        ("DIDs", 4),
        ("DIDs", 44),
    ]


def test_edits_cancelled_job_sends_the_rest_once(tmp_path: Path) -> None:
    """Cancel mid-send: the download holds the unsent rows; resume plans the rest; each DID sent once."""
    inventory = write_inventory(tmp_path / "inventory.json", 40)
    sandbox = create_sandbox(SandboxConfig(inventory=inventory, requests_per_minute=100_000, latency_ms=60))
    settings = ServeSettings(
        connection=web_connection(sandbox), data_dir=tmp_path / "data", port=0, token=TOKEN
    )
    with signed_in(settings) as client:
        path = write_sheet(tmp_path / "routing.csv", 40)
        with path.open("rb") as fh:
            job_id = client.post("/api/jobs", files={"file": (path.name, fh)}).json()["id"]
        wait_for_job(client, job_id, {"validated"})
        assert client.post(f"/api/jobs/{job_id}/plan").status_code == 202
        wait_for_job(client, job_id, {"planned"})
        assert client.post(f"/api/jobs/{job_id}/resume").status_code == 409  # not cancelled
        client.post(f"/api/jobs/{job_id}/start")
        deadline = time.monotonic() + 20
        while len(sandbox.state_snapshot()["writes"]) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert client.post(f"/api/jobs/{job_id}/cancel").status_code == 202
        job = wait_for_job(client, job_id, {"done", "cancelled", "failed"})
        assert job["status"] == "cancelled"
        sent = job["counts"]["succeeded"]
        assert 3 <= sent < 40
        failed = client.get(f"/api/jobs/{job_id}/failed.xlsx")
        assert failed.status_code == 200
        book = openpyxl.load_workbook(io.BytesIO(failed.content), read_only=True)
        rows = list(book.worksheets[0].iter_rows(values_only=True))
        book.close()
        assert len(rows) == 1 + 40 - sent and rows[1][-2] == "not sent: cancelled"

        again = client.post(f"/api/jobs/{job_id}/resume")
        assert again.status_code == 202 and again.json()["remaining"] == 40 - sent
        job = wait_for_job(client, job_id, {"planned", "validated"})
        assert job["status"] == "planned" and job["planned"]["create"] == 40 - sent, job
        assert job["counts"]["succeeded"] == sent
        assert client.post(f"/api/jobs/{job_id}/start").status_code == 202
        job = wait_for_job(client, job_id, {"done", "cancelled", "failed"})
        assert job["status"] == "done" and job["counts"]["succeeded"] == 40, job
    creates = [w["did_id"] for w in sandbox.state_snapshot()["writes"] if w["op"] == "create"]
    assert len(creates) == 40 == len(set(creates))


def test_edits_columns_step_offers_the_sheets_with_counts(web: Web, tmp_path: Path) -> None:
    """The columns step of a needs_sheet job is a picker (no free-text box); ticking two reads both."""
    path = write_carrier_workbook(tmp_path / "carrier.xlsx", stale_matches=True)
    with path.open("rb") as fh:
        job_id = web.client.post("/api/jobs", files={"file": (path.name, fh)}).json()["id"]
    wait_for_job(web.client, job_id, {"needs_sheet"})
    assert web.client.get(f"/jobs/{job_id}").headers["location"].endswith("/columns")
    page = web.client.get(f"/jobs/{job_id}/columns").text
    assert 'name="sheets" type="checkbox" value="DIDs"' in page and "(41 rows)" in page
    assert 'value="Old DIDs 2023"' in page and "(3 rows)" in page and 'id="sheet" name="sheet"' not in page
    assert 'value="Lists"' not in page  # its header names no field
    url = str(web.client.base_url).rstrip("/")
    posted = web.client.post(
        f"/jobs/{job_id}/columns",
        data={"sheets": ["DIDs", "Old DIDs 2023"], "on_existing": "update"},
        headers={"Origin": url},
    )
    assert posted.status_code == 303, posted.text
    job = wait_for_job(web.client, job_id, {"validated", "failed"})
    assert job["status"] == "validated" and job["options"]["sheets"] == ["DIDs", "Old DIDs 2023"]
    assert job["rows"] == 44


def test_edits_incremental_check_sees_a_column_turn_wrongly_matched(tmp_path: Path) -> None:
    """Cell by cell a column's values stop fitting: once the whole check calls the column wrongly
    matched (a finding, other reasons), the operation's check says the same."""
    path = write_sheet(tmp_path / "small.csv", 12)
    options = InputOptions(path=path)
    raw = read_input(options)
    report = ops.check(raw, options, (), frozenset())
    edits: list[ops.Edit] = []
    operations: list[ops.Operation] = []
    found = False
    for n, row in enumerate(range(2, 13)):
        body = {"op": "set", "row": row, "column": "Outbound Mode", "value": f"route {n}"}
        change = ops.apply_op(body, report, edits, operations, who="t", when=str(n))
        excluded = ops.excluded_rows(change.operations)
        report = ops.recheck_or_check(report, edits, change.edits, options, change.touched, excluded)
        edits, operations = list(change.edits), list(change.operations)
        whole = ops.check(raw, options, edits, excluded)
        assert report.issues == whole.issues and report.findings == whole.findings, n
        found = found or bool(whole.findings)
    assert found


def test_edits_operations_survive_a_restart_and_undo_after_it(tmp_path: Path) -> None:
    """The operations are kept with the job: after a restart the exclusion holds and undo works."""
    inventory = write_inventory(tmp_path / "inventory.json", 40)
    sandbox = create_sandbox(SandboxConfig(inventory=inventory, requests_per_minute=100_000))
    path = _sheet(tmp_path)
    for step in ("before", "after"):
        with served_web(sandbox, tmp_path / "data", token=TOKEN) as web:
            if step == "before":
                job_id = _job(web, path)
                _op(
                    web,
                    job_id,
                    op="replace",
                    column="Status",
                    find="In Service",
                    replace="active",
                    rows="all",
                )
                _op(web, job_id, op="exclude", rows=[12])
                continue
            wait_for_job(web.client, job_id, {"validated"})
            assert _row(web, job_id, 12)["reason"] == "excluded on the page"
            assert [_row(web, job_id, r)["values"][7] for r in (13, 14)] == ["active"] * 2
            _op(web, job_id, op="undo")
            assert _row(web, job_id, 12)["status"] == "failed"
            undone = _op(web, job_id, op="undo")
            assert undone["changed"] == [13, 14] and undone["rows"][0]["values"][7] == "In Service"
            assert web.client.post(f"/api/jobs/{job_id}/edits", json={"op": "undo"}).status_code == 409


def test_lifecycle_needs_sheet_and_resume_steps() -> None:
    """A job waiting for its sheet is read again or cancelled, nothing else; a cancelled or
    stopped one plans the rest, and a busy job takes no resume."""
    assert next_status(JobStatus.VALIDATING, Step.SHEET_NEEDED) is JobStatus.NEEDS_SHEET
    assert next_status(JobStatus.NEEDS_SHEET, Step.VALIDATE) is JobStatus.VALIDATING
    assert next_status(JobStatus.NEEDS_SHEET, Step.CANCEL) is JobStatus.CANCELLED
    with pytest.raises(JobError, match="needs_sheet; a plan needs a validated job"):
        next_status(JobStatus.NEEDS_SHEET, Step.PLAN)
    assert next_status(JobStatus.CANCELLED, Step.RESUME) is JobStatus.PLANNING
    assert next_status(JobStatus.FAILED, Step.RESUME) is JobStatus.PLANNING
    with pytest.raises(JobError, match="already done"):
        next_status(JobStatus.DONE, Step.RESUME)
    with pytest.raises(JobError, match="busy"):
        next_status(JobStatus.CANCELLED, Step.RESUME, "an edit is being checked")
