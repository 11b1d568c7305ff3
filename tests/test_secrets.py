"""The API key never leaves the process: not in output, files, the journal or error text.

The real CLI runs in a subprocess (``python -m importer run``) against the sandbox over real
TCP, configured to accept only a distinctive key. After each scenario every file in the run's
folder (recursively, as bytes: workbook, failed rows, journal and its WAL/SHM files) and the
captured stdout/stderr are searched for the key and for its first 12 characters.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import python_calamine
from helpers import CONNECTION, REPO, did_number, wait_until, write_inventory, write_sheet

from importer.sandbox import SandboxConfig, running_sandbox

KEY = "rg_live_SECRETfuzz9f8e7d6c5b4a"
NEEDLES = (KEY.encode(), KEY[:12].encode())
ROWS = 24


@dataclass(frozen=True, slots=True)
class Done:
    """A finished CLI run."""

    code: int
    stdout: str
    stderr: str


def assert_key_absent(folder: Path, *texts: str) -> None:
    """No file under ``folder`` and none of ``texts`` holds the key or its first 12 characters."""
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes()
        blobs = [data]
        if path.suffix == ".xlsx":  # the sheet XML is deflated inside the zip
            with zipfile.ZipFile(path) as archive:
                blobs += [archive.read(name) for name in archive.namelist()]
        for blob in blobs:
            for needle in NEEDLES:
                assert needle not in blob, f"{needle!r} found in {path}"
                assert needle.decode().encode("utf-16-le") not in blob, f"{needle!r} (UTF-16) in {path}"
    for text in texts:
        for needle in NEEDLES:
            assert needle.decode() not in text


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOCOBASE_")}
    env.update(PYTHONPATH=str(REPO), VOICELINK_DEBUG="", **extra)
    return env


def run_cli(folder: Path, *args: str, key_in_env: bool = True, timeout: float = 60) -> Done:
    env = cli_env(VOCOBASE_API_KEY=KEY) if key_in_env else cli_env()
    done = subprocess.run(
        [sys.executable, "-m", "importer", "run", *args],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    return Done(done.returncode, done.stdout, done.stderr)


def summary_items(results: Path) -> dict[object, object]:
    book = python_calamine.CalamineWorkbook.from_path(str(results))
    try:
        rows = book.get_sheet_by_name("Summary").to_python()
    finally:
        book.close()
    return {row[0]: row[1] for row in rows if len(row) > 1}


@pytest.fixture
def work(tmp_path: Path) -> Iterator[Path]:
    """A run folder with a sheet of ROWS valid rows and the sandbox's inventory beside it."""
    folder = tmp_path / "run"
    folder.mkdir()
    write_sheet(folder / "sheet.csv", ROWS)
    write_inventory(tmp_path / "inventory.json", ROWS)
    yield folder
    assert_key_absent(tmp_path)


def _sandbox(tmp_path: Path, **options: object) -> SandboxConfig:
    return SandboxConfig(
        api_key=KEY, inventory=tmp_path / "inventory.json", requests_per_minute=100_000, **options
    )  # type: ignore[arg-type]


def _common(url: str) -> list[str]:
    return [
        "--base-url",
        url,
        "--yes",
        "--quiet",
        "--requests-per-minute",
        "100000",
        "--connection-id",
        CONNECTION,
    ]


@pytest.mark.slow
@pytest.mark.parametrize("dry_run", [False, True], ids=["run", "dry-run"])
def test_run_success_never_shows_the_key(work: Path, dry_run: bool) -> None:
    with running_sandbox(_sandbox(work.parent)) as (url, sandbox):
        done = run_cli(work, "sheet.csv", *_common(url), *(["--dry-run"] if dry_run else []))
        sandbox.write_state(work / "sandbox-state.json")
    assert done.code == 0, done.stderr
    assert done.stderr == ""
    assert_key_absent(work, done.stdout, done.stderr)
    assert summary_items(work / "sheet.results.xlsx")["api_key"] == "..." + KEY[-4:]
    if not dry_run:
        assert (work / "sheet.journal.sqlite").is_file()


@pytest.mark.slow
def test_run_with_row_failures_never_shows_the_key(work: Path) -> None:
    sheet = work / "sheet.csv"
    sheet.write_text(sheet.read_text(encoding="utf-8") + f"+{did_number(ROWS + 50)},9,,,1,,,active,x\r\n")
    with running_sandbox(_sandbox(work.parent)) as (url, sandbox):
        done = run_cli(work, "sheet.csv", *_common(url))
        sandbox.write_state(work / "sandbox-state.json")
    assert done.code == 1, done.stderr
    assert (work / "sheet.failed.xlsx").is_file()
    assert_key_absent(work, done.stdout, done.stderr)
    assert summary_items(work / "sheet.results.xlsx")["api_key"] == "..." + KEY[-4:]


@pytest.mark.slow
def test_run_with_a_wrong_key_never_shows_either_key(work: Path) -> None:
    wrong = "rg_live_WRONGkey000111222333"
    with running_sandbox(_sandbox(work.parent)) as (url, _sandbox_app):
        env = cli_env(VOCOBASE_API_KEY=wrong)
        proc = subprocess.run(
            [sys.executable, "-m", "importer", "run", "sheet.csv", *_common(url)],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert proc.returncode == 3, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for text in (proc.stdout, proc.stderr):
        assert wrong not in text and wrong[:12] not in text
    for path in work.rglob("*"):
        if path.is_file():
            assert wrong[:12].encode() not in path.read_bytes()
    assert_key_absent(work, proc.stdout, proc.stderr)


@pytest.mark.parametrize(
    ("fail_rate", "expected"),
    [(1.0, "Error: GET "), (0.5, "above --max-error-rate")],
    ids=["every-request-fails", "half-fail"],
)
@pytest.mark.slow
def test_run_aborted_never_shows_the_key(work: Path, fail_rate: float, expected: str) -> None:
    """fail_rate 1.0 ends the run at its first read; 0.5 lets reads through (retried) and trips the rate."""
    with running_sandbox(_sandbox(work.parent, fail_rate=fail_rate)) as (url, sandbox):
        done = run_cli(
            work,
            "sheet.csv",
            *_common(url),
            "--max-error-rate",
            "0.05",
            "--timeout",
            "2",
            "--concurrency",
            "16",
        )
        sandbox.write_state(work / "sandbox-state.json")
    assert done.code == 3, (done.stdout, done.stderr)
    assert expected in done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert_key_absent(work, done.stdout, done.stderr)


def test_assert_key_absent_finds_a_planted_key(tmp_path: Path) -> None:
    """The search itself works: a key deflated inside a workbook or in UTF-16 is found."""
    import xlsxwriter

    with xlsxwriter.Workbook(str(tmp_path / "leak.xlsx")) as book:
        book.add_worksheet().write_string(0, 0, "key " + KEY[:12])
    with pytest.raises(AssertionError, match=r"leak\.xlsx"):
        assert_key_absent(tmp_path)
    (tmp_path / "leak.xlsx").unlink()
    (tmp_path / "utf16.txt").write_bytes(KEY.encode("utf-16-le"))
    with pytest.raises(AssertionError, match=r"utf16\.txt"):
        assert_key_absent(tmp_path)
    with pytest.raises(AssertionError):
        assert_key_absent(tmp_path / "nothing-here", "stdout with " + KEY)


@pytest.mark.slow
def test_run_interrupted_by_sigint_never_shows_the_key(work: Path) -> None:
    with running_sandbox(_sandbox(work.parent, latency_ms=150)) as (url, sandbox):
        proc = subprocess.Popen(
            [sys.executable, "-m", "importer", "run", "sheet.csv", *_common(url), "--concurrency", "1"],
            cwd=work,
            env=cli_env(VOCOBASE_API_KEY=KEY),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        # Wait until writes are under way (the journal exists), then interrupt.
        try:
            wait_until(lambda: sandbox.state_snapshot().get("routing") not in (None, []), "a first write")
        except AssertionError:
            proc.kill()
            proc.communicate(timeout=60)
            raise
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
        sandbox.write_state(work / "sandbox-state.json")
    assert proc.returncode == 130, (stdout, stderr)
    assert "Traceback" not in stderr
    assert_key_absent(work, stdout, stderr)


@pytest.mark.slow
def test_api_key_flag_warns_and_never_echoes_the_key(work: Path) -> None:
    with running_sandbox(_sandbox(work.parent)) as (url, sandbox):
        done = run_cli(work, "sheet.csv", *_common(url), "--api-key", KEY, key_in_env=False)
        sandbox.write_state(work / "sandbox-state.json")
    assert done.code == 0, done.stderr
    assert "VOCOBASE_API_KEY" in done.stderr and "Warning" in done.stderr
    assert_key_absent(work, done.stdout, done.stderr)


@pytest.mark.slow
def test_exception_text_never_holds_the_key(work: Path) -> None:
    """Run-level errors built while the key is in play (bad URL, unreachable server) stay clean."""
    cases = [
        ["--base-url", "ftp://example.invalid/api/v2"],
        ["--base-url", "http://127.0.0.1:9/api/v2", "--timeout", "1"],
    ]
    for args in cases:
        done = run_cli(work, "sheet.csv", *args, "--yes", "--quiet")
        assert done.code in (2, 3), (args, done.stderr)
        assert len(done.stderr.splitlines()) == 1 and "Traceback" not in done.stderr
        assert_key_absent(work, done.stdout, done.stderr)


@pytest.mark.slow
def test_sandbox_cli_with_api_key_flag_never_echoes_it(tmp_path: Path) -> None:
    """The sandbox command prints where it listens and that a key was given, never the key."""
    state = tmp_path / "state.json"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "importer",
            "sandbox",
            "--port",
            "0",
            "--api-key",
            KEY,
            "--state-out",
            str(state),
        ],
        cwd=tmp_path,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()
    assert "listening" in first, first
    url = first.split()[-1]
    sheet = write_sheet(tmp_path / "sheet.csv", 3)
    done = run_cli(tmp_path, sheet.name, "--base-url", url, "--yes", "--quiet")
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=30)
    assert done.code in (0, 1), done.stderr
    assert state.is_file()
    assert json.loads(state.read_text(encoding="utf-8"))
    assert_key_absent(tmp_path, first + stdout, stderr, done.stdout, done.stderr)
