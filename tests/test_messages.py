"""What the tool says: API answers that are not the API, quiet and non-terminal output, connections."""

from __future__ import annotations

import io
from pathlib import Path

import click
import httpx
import pytest
from click.testing import CliRunner
from helpers import (
    CONNECTION,
    SECOND_CONNECTION,
    config_for,
    did_number,
    read_results,
    wait_until,
    write_inventory,
    write_sheet,
)
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse
from starlette.routing import Route

from importer.account.records import Connection
from importer.cli import main
from importer.cli.output import ask as cli_ask
from importer.cli.progress import progress_bar
from importer.engine.apply import Progress
from importer.engine.plan import Plan, Write
from importer.engine.resolve import connection_problem
from importer.errors import ApiError
from importer.jobs.run import run_import
from importer.options import ImportConfig, InputOptions, SendOptions
from importer.sandbox import SANDBOX_API_KEY, SandboxConfig, create_sandbox, running_sandbox
from importer.vocab import Action, ReasonKind

BODY_TEXT = "Lorem ipsum dolor sit amet " * 80
PAGE = (
    "<!DOCTYPE html><html><head><title>Welcome to\n nginx &amp; friends!</title>"
    "<style>body { width: 35em; }</style></head>"
    f"<body><h1>Welcome</h1><p>{BODY_TEXT}</p></body></html>"
)


def web_server(status: int, body: str = PAGE, html: bool = True) -> Starlette:
    """A web server that is not the API: every path answers the same page."""

    async def page(request: Request) -> PlainTextResponse | HTMLResponse:
        if html:
            return HTMLResponse(body, status_code=status)
        return PlainTextResponse(body, status_code=status)

    return Starlette(routes=[Route("/{path:path}", page, methods=["GET", "POST"])])


def run_against(app: Starlette, tmp_path: Path, base_url: str) -> ApiError:
    sheet = write_sheet(tmp_path / "sheet.csv", 2)
    config = ImportConfig(
        input=InputOptions(path=sheet),
        api_key=SANDBOX_API_KEY,
        base_url=base_url,
        journal=tmp_path / "j.sqlite",
        retry_backoff=0,
    )
    with pytest.raises(ApiError) as info:
        run_import(config, transport=httpx.ASGITransport(app=app))
    return info.value


@pytest.mark.parametrize("status", [200, 404, 500])
def test_api_answering_a_web_page_is_quoted_by_its_title(tmp_path: Path, status: int) -> None:
    message = str(run_against(web_server(status), tmp_path, "http://example.test"))
    assert "\n" not in message and len(message) < 300, message
    assert ": Welcome to nginx & friends!" in message
    assert "Lorem" not in message and "<" not in message
    if status == 500:  # a server error is not a sign of a wrong address
        assert "--base-url" not in message
    else:
        assert "check --base-url: http://example.test must be the API root, ending in /api/v2" in message


def test_api_page_without_title_is_cut_to_its_first_words(tmp_path: Path) -> None:
    app = web_server(502, f"<html><body><p>{BODY_TEXT}</p></body></html>")
    message = str(run_against(app, tmp_path, "http://example.test/api/v2"))
    excerpt = message.split("HTTP 502: ", 1)[1]
    assert excerpt.startswith("Lorem ipsum dolor sit amet Lorem") and len(excerpt) == 80, excerpt


def test_api_404_on_the_first_call_suggests_the_base_url(tmp_path: Path) -> None:
    message = str(run_against(web_server(404, "Not Found", html=False), tmp_path, "http://api.test/v2"))
    assert message == (
        "GET /telephony/connections failed after 1 attempt(s): HTTP 404: Not Found; "
        "check --base-url: http://api.test/v2 must be the API root, ending in /api/v2"
    )


@pytest.mark.parametrize("quiet", [True, False])
def test_cli_rollback_quiet_prints_the_summary_only(tmp_path: Path, quiet: bool) -> None:
    inv = write_inventory(tmp_path / "inv.json", 3)
    sheet = write_sheet(tmp_path / "sheet.csv", 3)
    with running_sandbox(SandboxConfig(inventory=inv, requests_per_minute=100_000)) as (url, _sandbox):
        imported = run_import(config_for(sheet, tmp_path, base_url=url, output=None, journal=None))
        result = CliRunner().invoke(
            main,
            ["rollback", str(imported.results_path), "--yes", *(["--quiet"] if quiet else [])],
            env={"VOCOBASE_API_KEY": SANDBOX_API_KEY, "VOCOBASE_BASE_URL": url},
        )
    assert result.exit_code == 0, result.output + result.stderr
    plan_lines = [
        line for line in result.stdout.splitlines() if line.startswith(("rollback of run", "plan:"))
    ]
    assert bool(plan_lines) is not quiet
    assert result.stdout.startswith("rows read: 3; " if quiet else "rollback of run 1")
    assert "results: " in result.stdout
    assert result.stderr == ""  # CliRunner's stderr is no terminal: no bar frames either way


def progress(done: int, failed: int = 0, eta: float | None = 780.0, total: int = 900) -> Progress:
    return Progress(done=done, total=total, succeeded=done - failed, failed=failed, eta_seconds=eta)


def test_progress_off_a_terminal_is_one_plain_line_a_minute() -> None:
    out = io.StringIO()
    now = [0.0]
    update, close = progress_bar(False, stream=out, clock=lambda: now[0])
    assert close is None
    for t, p in [
        (0, progress(0)),
        (30, progress(50)),
        (61, progress(123, 3)),
        (90, progress(200, 3, 20)),
        (125, progress(300, 4, 7300)),
        (170, progress(400, 4, None)),
    ]:
        now[0] = t
        update(p)
    assert out.getvalue() == (
        "123/900 writes, 3 failed, about 13 min left\n300/900 writes, 4 failed, about 2 h 2 min left\n"
    )


def _asked(plan: Plan, answer: str) -> tuple[bool, str]:
    """Run the confirmation prompt with ``answer`` typed; return the decision and what stderr showed."""
    decided: list[bool] = []

    @click.command()
    def ask() -> None:
        decided.append(cli_ask(plan, SendOptions(requests_per_minute=60).estimate))

    result = CliRunner().invoke(ask, input=answer)
    assert result.exit_code == 0, result.output
    return decided[0], result.stderr


@pytest.mark.parametrize(
    ("writes", "question"), [(3, "Send these 3 writes now? [y/N]"), (1, "Send this write now?")]
)
def test_prompt_asks_briefly_below_the_plan_line_with_the_cost(writes: int, question: str) -> None:
    """The cost is said once, on the plan line; the question only names the writes."""
    planned = tuple(
        Write(r, r, f"+1555000{r:04d}", Action.CREATE, None, {}, None, {}) for r in range(2, 2 + writes)
    )
    cost = SendOptions(requests_per_minute=60).cost(2, writes)
    plan = Plan(planned, (), {"create": writes}, cost=cost)
    sent, shown = _asked(plan, "n\n")
    assert sent is False
    plan_line, prompt = shown.strip().splitlines()
    assert plan_line == f"Plan: create {writes} ({cost})"
    assert "about" in cost and prompt.startswith(question)
    assert "about" not in prompt  # the duration is not repeated in the question
    assert _asked(plan, "y\n")[0] is True


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_on_a_terminal_keeps_redrawing_while_writes_wait() -> None:
    """The rate limiter may hold writes back for a minute: the elapsed time must keep moving meanwhile."""
    out = FakeTerminal()
    update, close = progress_bar(False, stream=out, tick=0.02)
    update(progress(0, total=5, eta=60))
    frames = out.getvalue().count("\r")
    # No progress is reported meanwhile: only the bar's own ticker can add frames.
    wait_until(lambda: out.getvalue().count("\r") >= frames + 5, "five redraws with no progress reported")
    close()
    assert "0/5" in out.getvalue()


def test_cli_run_off_a_terminal_writes_no_bar_frames(tmp_path: Path) -> None:
    inv = write_inventory(tmp_path / "inv.json", 5)
    sheet = write_sheet(tmp_path / "sheet.csv", 5)
    with running_sandbox(SandboxConfig(inventory=inv, requests_per_minute=100_000)) as (url, _sandbox):
        result = CliRunner().invoke(
            main,
            ["run", str(sheet), "--yes", "--requests-per-minute", "100000"],
            env={"VOCOBASE_API_KEY": SANDBOX_API_KEY, "VOCOBASE_BASE_URL": url},
        )
    assert result.exit_code == 0, result.output + result.stderr
    assert "succeeded 5" in result.stdout
    assert "\r" not in result.stderr and "sending" not in result.stderr
    assert result.stderr == ""


PRIMARY = Connection(CONNECTION, "Primary", "ACTIVE", True)
SECOND = Connection(SECOND_CONNECTION, "Second", "ACTIVE", False)
OLD = Connection("5d7e9f10-2a3b-4c5d-8e9f-0a1b2c3d4e5f", "Old", "INACTIVE", False)
UNKNOWN = "00000000-0000-4000-8000-000000000000"


@pytest.mark.parametrize(
    ("row", "kind", "expected"),
    [
        (None, None, None),
        ("", None, None),
        (CONNECTION, None, None),
        (f"  {CONNECTION.upper()} ", None, None),
        (
            UNKNOWN,
            ReasonKind.UNKNOWN_CONNECTION,
            f"connection {UNKNOWN} is not one of this account's connections (this run uses 'Primary')",
        ),
        (
            SECOND_CONNECTION,
            ReasonKind.OTHER_CONNECTION,
            f"connection {SECOND_CONNECTION} is 'Second', this run uses 'Primary'; one run serves one "
            f"connection: import this row in a run of its own with --connection-id {SECOND_CONNECTION}",
        ),
        (
            OLD.connection_id,
            ReasonKind.OTHER_CONNECTION,
            "is 'Old' (status INACTIVE), this run uses 'Primary'",
        ),
    ],
)
def test_connection_problem_tells_unknown_from_another_connection(
    row: str | None, kind: ReasonKind | None, expected: str | None
) -> None:
    found = connection_problem(row, CONNECTION, [PRIMARY, SECOND, OLD])
    if expected is None or found is None:
        assert found == expected
    else:
        assert found[0] is kind and expected in found[1]


def test_run_rows_of_other_connections_fail_with_the_connection_named(tmp_path: Path) -> None:
    inv = write_inventory(tmp_path / "inv.json", 4)
    sheet = tmp_path / "sheet.csv"
    lines = ["DID,Inbound,Outbound,Connection ID"]
    lines += [
        f"+{did_number(i)},mobile,only-answer,{c}"
        for i, c in enumerate([SECOND_CONNECTION, UNKNOWN, CONNECTION, ""])
    ]
    sheet.write_text("\n".join(lines) + "\n", encoding="utf-8")
    sandbox = create_sandbox(SandboxConfig(inventory=inv, two_connections=True))
    config = ImportConfig(
        input=InputOptions(path=sheet),
        api_key=SANDBOX_API_KEY,
        base_url="http://sandbox.test/api/v2",
        connection_id=CONNECTION,
        retry_backoff=0,
        requests_per_minute=100_000,
    )
    summary = run_import(config, transport=httpx.ASGITransport(app=sandbox.app))
    rows = {int(r["import_row"]): r for r in read_results(summary.results_path)}
    assert [rows[n]["import_status"] for n in (2, 3, 4, 5)] == ["failed", "failed", "succeeded", "succeeded"]
    assert "is 'Second', this run uses 'Primary'" in rows[2]["import_reason"]
    assert f"--connection-id {SECOND_CONNECTION}" in rows[2]["import_reason"]
    assert "is not one of this account's connections" in rows[3]["import_reason"]
