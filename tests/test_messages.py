"""What the tool says: API answers that are not the API, quiet and non-terminal output, connections."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from helpers import write_inventory, write_sheet
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse
from starlette.routing import Route

from importer.cli import main
from importer.errors import ApiError
from importer.pipeline import InputOptions
from importer.run import ImportConfig, run_import
from importer.sandbox import SANDBOX_API_KEY, SandboxConfig, running_sandbox

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
        config = ImportConfig(
            input=InputOptions(path=sheet),
            api_key=SANDBOX_API_KEY,
            base_url=url,
            requests_per_minute=100_000,
            retry_backoff=0,
        )
        imported = run_import(config)
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
    if quiet:
        assert result.stderr == ""
