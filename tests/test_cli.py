"""The command line: exit codes, one-line errors, the README's commands."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner

from importer.cli import main
from importer.sandbox import SANDBOX_API_KEY, SandboxConfig, running_sandbox

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "sample_data"


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "importer", *args], capture_output=True, text=True, timeout=120, env=full_env
    )


def test_readme_starts_with_the_two_commands_ci_runs() -> None:
    """The demo, then the test command CI runs; a third line may open the web page on the sandbox."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```bash\n(.*?)```", readme, re.S)
    assert block is not None and readme.index(block.group(0)) < 40
    install_demo, install_test, *page = block.group(1).strip().splitlines()
    assert install_demo.endswith("voicelink-import demo")
    assert page in ([], [page[0]]) and all(line.endswith("voicelink-import serve --sandbox") for line in page)
    test_command = install_test.split("&& ")[-1]
    assert test_command in (REPO / ".ci" / "run").read_text(encoding="utf-8")


@pytest.mark.parametrize("name", ["carrier_routing.xlsx", "carrier_routing.csv"])
def test_cli_validate_sample_reports_failures_with_exit_1(tmp_path: Path, name: str) -> None:
    sheet = shutil.copy(SAMPLE / name, tmp_path / name)
    result = CliRunner().invoke(main, ["validate", str(sheet)])
    assert result.exit_code == 1, result.output
    assert "rows read: 23" in result.output and "failed 8" in result.output
    stem = Path(name).stem
    assert (tmp_path / f"{stem}.results.xlsx").exists() and (tmp_path / f"{stem}.failed.xlsx").exists()


def test_cli_validate_clean_file_exits_0(tmp_path: Path) -> None:
    sheet = tmp_path / "ok.csv"
    sheet.write_text("DID,Inbound,Outbound\n+918011223344,mobile,only-answer\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["validate", str(sheet), "-o", str(tmp_path / "r.xlsx")])
    assert result.exit_code == 0, result.output
    assert "valid 1" in result.output and "not sent" not in result.output  # a label, never a code
    assert "not_sent" not in result.output
    assert not (tmp_path / "r.failed.xlsx").exists()


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["validate", "missing.csv"], "no such file"),
        (["validate", "{sheet}", "--map", "X=nope"], 'unknown field "nope"'),
        (["validate", "{sheet}", "-o", "{sheet}"], "is the input file"),
        (["validate", "{bad}"], "missing required column"),
        (["validate", "{zip}"], ""),
        (["validate", "{sheet}", "--default-region", "XX"], "not a known region"),
        (["run", "{sheet}", "--base-url", "ftp://x"], "no API key"),
    ],
)
@pytest.mark.slow
def test_cli_unusable_input_is_one_line_and_exit_2(tmp_path: Path, args: list[str], fragment: str) -> None:
    sheet = tmp_path / "s.csv"
    sheet.write_text("DID,Inbound,Outbound\n+918011223344,1,4\n", encoding="utf-8")
    bad = tmp_path / "bad.csv"
    bad.write_text("Name,Age\nx,1\n", encoding="utf-8")
    archive = tmp_path / "book.xlsx"
    archive.write_bytes(b"PK\x05\x06" + b"\0" * 18)
    values = {"sheet": str(sheet), "bad": str(bad), "zip": str(archive)}
    env = {k: v for k, v in os.environ.items() if k != "VOCOBASE_API_KEY"}
    result = subprocess.run(
        [sys.executable, "-m", "importer", *[a.format(**values) for a in args]],
        capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and fragment in lines[0]
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.parametrize("fmt", ["xlsx", "csv"])
def test_cli_template_matches_committed_file(tmp_path: Path, fmt: str) -> None:
    out = tmp_path / f"t.{fmt}"
    result = CliRunner().invoke(main, ["template", "--format", fmt, "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_bytes() == (REPO / "templates" / f"voicelink-routing-template.{fmt}").read_bytes()


@pytest.mark.slow
def test_cli_demo_runs_in_the_current_folder(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "importer", "demo", "--quiet"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 1, result.stderr  # run's code for "some rows failed": the sample's on purpose
    assert "succeeded 12, unchanged 1, failed 10" in result.stdout
    assert (tmp_path / "voicelink-demo.results.xlsx").exists()


@pytest.mark.slow
def test_cli_run_against_tcp_sandbox_and_key_warning(tmp_path: Path) -> None:
    sheet = shutil.copy(SAMPLE / "carrier_routing.csv", tmp_path / "c.csv")
    with running_sandbox(SandboxConfig(requests_per_minute=100_000)) as (url, sandbox):
        wrong = cli(
            "run",
            str(sheet),
            "--base-url",
            url,
            "--yes",
            "--quiet",
            env={"VOCOBASE_API_KEY": "rg_live_wrong_1234"},
        )
        assert wrong.returncode == 3 and wrong.stderr.count("\n") == 1 and "rg_live_wrong" not in wrong.stderr
        flag = cli("run", str(sheet), "--base-url", url, "--yes", "--quiet", "--api-key", SANDBOX_API_KEY)
        state = sandbox.state_snapshot()
    assert "prefer VOCOBASE_API_KEY" in flag.stderr and SANDBOX_API_KEY not in flag.stderr + flag.stdout
    assert flag.returncode == 1, flag.stderr
    assert "succeeded 12, unchanged 1, failed 10" in flag.stdout
    assert len(state["routing"]) == 13


@pytest.mark.slow
def test_cli_sandbox_serves_until_sigterm_and_writes_state(tmp_path: Path) -> None:
    out = tmp_path / "state.json"
    command = [sys.executable, "-m", "importer", "sandbox", "--port", "0", "--state-out", str(out)]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            first = proc.stdout.readline()
            url = re.search(r"(http://127\.0\.0\.1:\d+/api/v2)", first)
            assert url is not None, first
            assert SANDBOX_API_KEY in proc.stdout.readline()
            with urllib.request.urlopen(
                url.group(1).replace("/api/v2", "/_sandbox/state"), timeout=10
            ) as resp:
                assert len(json.load(resp)["routing"]) == 4
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=20)
    assert proc.returncode == 0
    assert len(json.loads(out.read_text())["routing"]) == 4


@pytest.mark.slow
def test_cli_progress_into_a_log_is_lines_not_bar_frames(tmp_path: Path) -> None:
    """stderr is a pipe here, as in CI or a log file: no carriage-return frames, a line instead."""
    result = subprocess.run(
        [sys.executable, "-m", "importer", "demo"], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert result.returncode == 1, result.stderr
    assert "\r" not in result.stderr and "sending" not in result.stderr
    # One plain line a minute (tests/test_messages.py); the demo takes seconds: none, the summary says it.
    assert " writes, " not in result.stderr
    assert "succeeded 12" in result.stdout


@pytest.mark.parametrize(
    ("output", "failed", "error"),
    [
        ("plain.xlsx", "plain.failed.xlsx", ""),
        ("x.results.xlsx", "x.failed.xlsx", ""),
        ("out.csv", "", "out.csv: results are always an Excel workbook; give -o a name ending in .xlsx"),
    ],
)
def test_cli_output_names_are_checked_and_the_failed_file_follows(
    tmp_path: Path, output: str, failed: str, error: str
) -> None:
    result = CliRunner().invoke(
        main, ["validate", str(SAMPLE / "carrier_routing.csv"), "-o", str(tmp_path / "sub" / output)]
    )
    if error:
        assert result.exit_code == 2 and error in result.output and not (tmp_path / "sub" / output).exists()
    else:
        assert result.exit_code == 1, result.output  # the sample has failing rows
        assert (tmp_path / "sub" / output).exists() and (tmp_path / "sub" / failed).exists()


def test_cli_demo_takes_any_xlsx_name(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["demo", "--quiet", "-o", str(tmp_path / "mine.xlsx")])
    assert result.exit_code == 1, result.output
    assert (tmp_path / "mine.xlsx").exists() and (tmp_path / "mine.failed.xlsx").exists()


def test_cli_default_region_uk_is_read_as_gb(tmp_path: Path) -> None:
    sheet = tmp_path / "uk.csv"
    sheet.write_text("DID,Inbound Mode,Outbound Mode\n020 7946 0958,mobile,only-answer\n", encoding="utf-8")
    result = CliRunner().invoke(
        main, ["validate", str(sheet), "--default-region", "UK", "-o", str(tmp_path / "r.xlsx")]
    )
    assert result.exit_code == 0, result.output
    assert "valid 1" in result.output


@pytest.mark.slow
def test_cli_two_did_headers_suggest_a_map_that_is_then_accepted(tmp_path: Path) -> None:
    """The first error names the columns by letter at once, and each suggestion works as given."""
    sheet = tmp_path / "twice.csv"
    sheet.write_text(
        "DID,DID,Inbound Mode,Outbound Mode\nold,+918012345678,mobile,only-answer\n", encoding="utf-8"
    )
    first = cli("validate", str(sheet), "-o", str(tmp_path / "r.xlsx"))
    assert first.returncode == 2, first.stderr
    assert first.stderr.count("\n") == 1 and "Traceback" not in first.stderr
    suggested = re.findall(r'(--map|--ignore-column) "([^"]+)"', first.stderr)
    assert suggested == [("--map", "B=did_number"), ("--ignore-column", "A")], first.stderr
    for option, value in suggested:
        again = cli("validate", str(sheet), option, value, "-o", str(tmp_path / "r.xlsx"), "--force")
        assert again.returncode == 0, (option, value, again.stderr)
        assert "valid 1" in again.stdout


@pytest.mark.slow
@pytest.mark.parametrize("content", ["+918012345678\n", "DID", "  \n\nhello;\n"])
def test_cli_one_cell_csv_is_not_a_table(tmp_path: Path, content: str) -> None:
    sheet = tmp_path / "one.csv"
    sheet.write_text(content, encoding="utf-8")
    result = cli("validate", str(sheet), "-o", str(tmp_path / "r.xlsx"))
    assert result.returncode == 2, result.stderr
    assert "holds a single cell" in result.stderr and "not a table" in result.stderr
    assert "header is on row" not in result.stderr and result.stderr.count("\n") == 1
