"""Kinds carry their words: one label and template per kind, rendered per surface."""

from __future__ import annotations

import html
from pathlib import Path

import httpx
import openpyxl
import pandas as pd
import pytest
from helpers import read_results, wait_for_job, web_connection, write_inventory

from importer.jobs.outputs import write_outputs
from importer.jobs.validate import load_and_validate, validation_outcomes
from importer.model import RawTable, RowIssue, RunInfo, SourceInfo
from importer.options import InputOptions
from importer.sandbox import SandboxConfig, create_sandbox
from importer.validate.rules import validate_table
from importer.vocab import ReasonKind
from importer.web.server import ServeSettings, running_server
from importer.words import (
    CONTROLS,
    IssueKind,
    Note,
    NoteKind,
    Surface,
    WordedInputError,
    error_words,
    render,
    render_advice,
    render_note,
    render_reason,
    template_fields,
)

HEADERS = ("DID", "Inbound Mode", "Inbound Bot ID", "Outbound Mode", "Status", "Connection ID", "Customer")


def _table(
    rows: list[list[str]], headers: tuple[str, ...] = HEADERS, problems: dict[int, str] | None = None
) -> RawTable:
    frame = pd.DataFrame(rows, index=range(2, 2 + len(rows)), dtype=object)
    frame.columns = list(range(len(headers)))
    return RawTable(SourceInfo(Path("sheet.csv"), "csv", "0" * 64), headers, frame, problems or {})


def _ok(
    number: str = "+918012345678", mode: str = "1", bot: str = "", status: str = "", uuid: str = ""
) -> list[str]:
    return [number, mode, bot, "4", status, uuid, "c"]


def _every_kind_raised() -> list[RowIssue]:
    """Tables that raise every kind and variant of row problem through validation itself."""
    main = _table(
        [
            _ok(),
            _ok("9.18E+11"),
            _ok("918040000040.5"),
            _ok(bot="12.5", mode="3"),
            _ok("08012345678"),
            _ok("0999"),
            _ok("4805550123"),
            _ok("+91 80 1234 5678 office"),
            _ok("+999 1234"),
            _ok("+4912"),
            _ok("1234567"),
            _ok("+91 80 1234 5678 ext. 12"),
            _ok(""),
            _ok(mode=""),
            _ok(mode="voicemail"),
            _ok(mode="3"),
            _ok(bot="93"),
            _ok(bot="-1", mode="3"),
            _ok(status="maybe"),
            _ok(uuid="not-a-uuid"),
            _ok(),  # a duplicate of row 2
            _ok("+918012345670", bot="#N/A", mode="3"),
            _ok("+918012345671"),
        ],
        problems={24: "row 24 has 9 fields, the header 7"},
    )
    region = _table([_ok("12345")])
    absent = _table([["+918012345678", "3", "4"]], headers=("DID", "Inbound Mode", "Outbound Mode"))
    wrong = _table(
        [
            ["+91801234567" + str(i), "1", "4", state]
            for i, state in enumerate(["Ported", "In Service", "Pending", "Ported"])
        ],
        headers=("DID", "Inbound Mode", "Outbound Mode", "Status"),
    )
    issues = list(validate_table(main).issues)
    issues += validate_table(region, default_region="IN").issues
    issues += validate_table(absent).issues
    issues += validate_table(wrong).issues
    return issues


def test_words_every_kind_has_a_label_and_templates() -> None:
    for kind in IssueKind:
        assert kind.label and kind.templates and all(kind.templates.values()), kind
    for reason in ReasonKind:
        assert reason.label and reason.template, reason


def test_words_every_kind_is_raised_with_the_params_its_templates_need() -> None:
    """Introspect: each (kind, variant) validation raises supplies every field of its template."""
    issues = _every_kind_raised()
    seen: set[tuple[IssueKind, str]] = set()
    for issue in issues:
        variant = issue.params.get("variant", "")
        seen.add((issue.kind, variant))
        needed = template_fields(issue.kind.templates[variant]) - CONTROLS.keys()
        for control in template_fields(issue.kind.templates[variant]) & CONTROLS.keys():
            for surface in Surface:
                needed |= template_fields(CONTROLS[control][surface])
        assert needed <= issue.params.keys(), (issue.kind, variant, needed - issue.params.keys())
        for surface in Surface:
            assert "{" not in render(issue, surface)
    expected = {(k, v) for k in IssueKind for v in k.templates} - {(IssueKind.BAD_NUMBER, "")}
    # BAD_NUMBER's "" variant is the fallback for a phone cell whose parse left no reason.
    assert expected <= seen, expected - seen


def _sample(template: str) -> dict[str, str]:
    params = dict.fromkeys(template_fields(template), "x")
    return {**params, "region": "IN", "field": "inbound_websocket_bot_id", "column": "Phone"}


@pytest.mark.parametrize("kind", list(IssueKind))
def test_words_web_rendering_names_no_cli_flag(kind: IssueKind) -> None:
    for variant, template in kind.templates.items():
        params = {**_sample(template), "variant": variant}
        for control in template_fields(template) & CONTROLS.keys():
            params |= {
                k: "x" for t in CONTROLS[control].values() for k in template_fields(t) if k not in params
            }
        issue = RowIssue(2, "Phone", "x", kind, params)
        web = render(issue, Surface.WEB)
        assert "--" not in web, web
        assert "inbound_websocket_bot_id" not in web  # the page calls fields by their titles
    assert "--" not in render_advice(kind, Surface.WEB)


@pytest.mark.parametrize("reason", list(ReasonKind))
def test_words_web_rendering_of_reasons_names_no_cli_flag(reason: ReasonKind) -> None:
    assert "--" not in render_reason(reason, Surface.WEB)
    assert "--" not in reason.label
    assert "{" not in render_reason(reason, Surface.CLI)


def test_words_cli_names_its_flag_and_web_its_field() -> None:
    issue = validate_table(_table([_ok("08012345678")])).issues[0]
    assert "or pass --default-region IN" in render(issue, Surface.CLI)
    assert "or set the default region (step 2, Sheet and columns) to IN" in render(issue, Surface.WEB)
    assert issue.message == render(issue, Surface.CLI)
    assert render_reason(ReasonKind.HIDDEN_ROW, Surface.CLI) == "hidden in Excel (--skip-hidden-rows)"
    assert render_reason(ReasonKind.HIDDEN_ROW, Surface.WEB) == "hidden in Excel (skip hidden rows)"


def test_words_web_job_results_workbook_says_the_web_words(tmp_path: Path) -> None:
    """A web job's results.xlsx and failed rows give the page's advice, not the CLI's flags."""
    path = tmp_path / "sheet.csv"
    path.write_text("DID,Inbound Mode,Outbound Mode\n08012345678,1,4\n+918012345678,1,4\n", encoding="utf-8")
    report = load_and_validate(InputOptions(path))
    info = RunInfo(command="validate", started="", finished="", options={})
    for surface, words, flag in (
        (Surface.WEB, "set the default region (step 2, Sheet and columns) to IN", "--default-region"),
        (Surface.CLI, "pass --default-region IN", "step 2"),
    ):
        results, failed = tmp_path / f"{surface.value}.xlsx", tmp_path / f"{surface.value}.failed.xlsx"
        write_outputs(
            report.table, validation_outcomes(report), report.issues, info, results, failed, surface
        )
        reason = read_results(results)[0]["import_reason"]
        assert words in reason and flag not in reason
        errors = list(openpyxl.load_workbook(results)["Errors"].iter_rows(values_only=True))
        assert words in str(errors[1][3]) and flag not in str(errors[1][3])


TOKEN = "words-test-token-0123456789-abcdefghij"


def test_words_web_job_check_page_and_results_say_the_web_words(tmp_path: Path) -> None:
    """Through the real server: the check page and a web job's results.xlsx name the page's field."""
    inventory = write_inventory(tmp_path / "inventory.json", 5)
    sandbox = create_sandbox(SandboxConfig(inventory=inventory, requests_per_minute=100_000))
    settings = ServeSettings(
        connection=web_connection(sandbox), data_dir=tmp_path / "data", port=0, token=TOKEN, max_upload_mb=1
    )
    path = tmp_path / "national.csv"
    path.write_text(
        "DID Number,Inbound Mode,Outbound Mode\n08012345678,1,4\n+918012345678,1,4\n", encoding="utf-8"
    )
    web_words = "or set the default region (step 2, Sheet and columns) to IN"
    with (
        running_server(settings) as (url, _token, _service),
        httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30) as client,
    ):
        with path.open("rb") as fh:
            job = client.post("/api/jobs", files={"file": (path.name, fh)}).json()
        wait_for_job(client, job["id"], {"validated"})
        page = client.get(f"/jobs/{job['id']}/check?problems=1")
        assert page.status_code == 200
        text = html.unescape(page.text)
        assert web_words in text and "--default-region" not in text
        assert "What to do:" in text and "country code" in text  # the kind's advice, in the page's words
        download = client.get(f"/api/jobs/{job['id']}/results.xlsx")
        assert download.status_code == 200
        (tmp_path / "web.results.xlsx").write_bytes(download.content)
        assert client.post(f"/api/jobs/{job['id']}/plan").status_code == 202
        wait_for_job(client, job["id"], {"planned"})
        plan = html.unescape(client.get(f"/jobs/{job['id']}/plan?problems=1").text)
        assert web_words in plan and "--default-region" not in plan  # the plan's rows say the page's words
    reason = read_results(tmp_path / "web.results.xlsx")[0]["import_reason"]
    assert web_words in reason and "--default-region" not in reason


def test_words_file_notes_are_data_rendered_per_surface() -> None:
    """The wrong-match note names --ignore-column on the CLI and the page's step 2 on the web."""
    table = _table(
        [
            ["+91801234567" + str(i), "1", "4", state]
            for i, state in enumerate(["Ported", "In Service", "Pending"])
        ],
        headers=("DID", "Inbound Mode", "Outbound Mode", "Status"),
    )
    report = validate_table(table)
    (cli,) = report.notes
    (web,) = report.notes_for(Surface.WEB)
    assert '--ignore-column "Status"' in cli and "--map" in cli
    assert "--" not in web and "(step 2, Sheet and columns)" in web
    for kind in NoteKind:
        params = {**_sample(kind.template), "values": '"x"'}
        assert "--" not in render_note(Note(kind, params), Surface.WEB)


def test_words_web_job_that_cannot_be_mapped_says_the_page_words(tmp_path: Path) -> None:
    """A run-level error from validation reaches the page in its words: pick in the list, not --map."""
    inventory = write_inventory(tmp_path / "inventory.json", 5)
    sandbox = create_sandbox(SandboxConfig(inventory=inventory, requests_per_minute=100_000))
    settings = ServeSettings(
        connection=web_connection(sandbox), data_dir=tmp_path / "data", port=0, token=TOKEN, max_upload_mb=1
    )
    path = tmp_path / "unmapped.csv"
    path.write_text("Numbr,Inbound Mode,Outbound Mode\n+918012345678,1,4\n", encoding="utf-8")
    with (
        running_server(settings) as (url, _token, _service),
        httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30) as client,
    ):
        with path.open("rb") as fh:
            job = client.post("/api/jobs", files={"file": (path.name, fh)}).json()
        job = wait_for_job(client, job["id"], {"failed"})
        assert 'choose "Numbr" for DID Number in the list' in job["error"]
        assert "--" not in job["error"]
        page = html.unescape(client.get(f"/jobs/{job['id']}/columns").text)
        assert 'choose "Numbr" for DID Number in the list' in page and "--map" not in page


def test_words_run_level_errors_name_each_surface_control() -> None:
    with pytest.raises(WordedInputError) as raised:
        validate_table(_table([_ok()]), default_region="XX")
    assert str(raised.value) == '--default-region "XX" is not a known region code (e.g. IN, US, GB)'
    assert error_words(raised.value, Surface.WEB) == (
        'the default region "XX" is not a known region code (e.g. IN, US, GB)'
    )
    headers = ("DID", "Inbound Mode", "Outbound Mode", "Phone Number")
    with pytest.raises(WordedInputError) as both:
        validate_table(_table([["+918012345678", "1", "4", "+918012345679"]], headers=headers))
    assert "--map" in str(both.value) and "--" not in error_words(both.value, Surface.WEB)
