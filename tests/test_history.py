"""`history`: the runs a journal records (when, who, input, counts, rolled back or not)."""

from __future__ import annotations

import getpass
import socket
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from helpers import write_inventory
from test_rollback import BASE, N, existing, interrupted_then_resumed, undo_config

from importer.cli import main
from importer.engine.journal import Journal
from importer.errors import InputError
from importer.jobs.history import history_lines, run_history
from importer.jobs.rollback import rollback_run
from importer.sandbox import SANDBOX_API_KEY, SandboxConfig, create_sandbox, running_sandbox


def stopped_resumed_rolled_back(tmp: Path) -> Path:
    """Run 1 stopped after 2 writes, run 2 resumed it, run 3 rolled both back; the results of run 2."""
    sandbox = create_sandbox(SandboxConfig(inventory=write_inventory(tmp / "inv.json", N, existing())))
    _, resumed = interrupted_then_resumed(tmp, sandbox)
    rollback_run(undo_config(resumed.results_path), transport=httpx.ASGITransport(app=sandbox.app))
    return resumed.results_path


def test_history_records_counts_changes_and_rollbacks(tmp_path: Path) -> None:
    results = stopped_resumed_rolled_back(tmp_path)
    log = run_history(results)
    assert log.journal == tmp_path / "sheet.journal.sqlite" and log.current == 2
    first, second, undo = log.runs
    assert [h.run.command for h in log.runs] == ["run", "run", "rollback"]
    assert dict(first.counts) == {"succeeded": 2, "unchanged": 1, "skipped": 0, "failed": 0, "not_sent": 3}
    assert dict(second.counts)["succeeded"] == 3 and dict(second.counts)["unchanged"] == 3
    assert (first.changed, second.changed, undo.changed) == (2, 3, 4)
    assert first.rolled_back_by == second.rolled_back_by == (3,)
    assert undo.rollback_of == (1, 2) and undo.rolled_back_by == ()
    assert first.run.input_sha256 == second.run.input_sha256


def test_history_table_says_when_who_what_and_rolled_back(tmp_path: Path) -> None:
    results = stopped_resumed_rolled_back(tmp_path)
    lines = history_lines(run_history(results))
    sha = run_history(results).runs[0].run.input_sha256[:12]
    assert lines[0] == f"journal {tmp_path / 'sheet.journal.sqlite'}: 3 runs"
    assert lines[1].split()[:3] == ["run", "started", "(UTC)"]
    one, two, three = lines[2:5]
    who = f"{getpass.getuser()}@{socket.gethostname()}"
    for line in (one, two, three):
        assert who in line and sha in line
    assert one.startswith("1 ") and "sheet.csv" in one
    assert "succeeded 2, unchanged 1, not sent 3" in one and "by run 3" in one
    assert two.startswith("2* ") and "succeeded 3, unchanged 3" in two and "by run 3" in two
    assert "rollback" in three and "undoes 1, 2" in three and "succeeded 4, unchanged 1" in three
    assert lines[5] == "* the run of the results workbook given (run 2)"
    # the rollback's own workbook finds the same journal, and marks the rollback's run
    from_rollback = run_history(tmp_path / "sheet.rollback.xlsx")
    assert from_rollback.current == 3 and from_rollback.runs == run_history(results).runs
    assert history_lines(from_rollback)[4].startswith("3* ")


def test_history_shows_a_killed_run_as_unfinished(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    with Journal.open(path) as journal:
        killed = journal.start_run(
            input_sha256="c" * 64,
            input_name="carrier.xlsx",
            command="run",
            audit={"os_user": "ops", "host": "box"},
            options={},
        )
        journal.record_sending(killed, 2, "id:1", "create", {"did_id": 1, "for_inbound_call": 4}, None)
        journal.record_sending(killed, 3, "id:2", "update", {"for_inbound_call": 4}, {"for_inbound_call": 1})
        journal.record_outcome(
            killed, 3, status="succeeded", action="update", reason="", did_id=2, routing_id=9,
            http_status=200, attempts=1,
        )  # fmt: skip
    (h,) = run_history(path).runs
    assert h.run.finished is None and h.no_outcome == 1 and dict(h.counts) == {"succeeded": 1}
    assert h.changed == 1 and h.rolled_back_by == ()
    line = history_lines(run_history(path))[2]
    assert line.split()[:2] == ["1", "20" + h.run.started[2:10]]
    assert "unfinished" in line and "ops@box" in line and "cccccccccccc " in line
    assert "succeeded 1, no outcome 1" in line and line.endswith("no")


@pytest.mark.parametrize(
    ("name", "fragment"),
    [("missing.results.xlsx", "no such file"), ("notes.txt", "cannot be read as a results workbook")],
)
def test_history_unusable_source_is_an_input_error(tmp_path: Path, name: str, fragment: str) -> None:
    (tmp_path / "notes.txt").write_text("hello", encoding="utf-8")
    with pytest.raises(InputError, match=fragment):
        run_history(tmp_path / name)


def test_cli_history_prints_the_table_and_one_line_errors(tmp_path: Path) -> None:
    results = stopped_resumed_rolled_back(tmp_path)
    out = CliRunner().invoke(main, ["history", str(results)])
    assert out.exit_code == 0, out.output
    assert out.output.splitlines() == history_lines(run_history(results))
    missing = CliRunner().invoke(main, ["history", str(tmp_path / "nope.sqlite")])
    assert (
        missing.exit_code == 2 and missing.output.startswith("Error: ") and "no such file" in missing.output
    )
    (tmp_path / "sheet.journal.sqlite").rename(tmp_path / "moved.sqlite")
    lost = CliRunner().invoke(main, ["history", str(results)])
    assert lost.exit_code == 2 and "no journal at" in lost.output and "sheet.journal.sqlite" in lost.output


def test_cli_rollback_run_id_is_repeatable(tmp_path: Path) -> None:
    inv = write_inventory(tmp_path / "inv.json", N, existing=existing())
    with running_sandbox(SandboxConfig(inventory=inv, requests_per_minute=100_000)) as (url, sandbox):
        interrupted_then_resumed(tmp_path, sandbox)
        env = {"VOCOBASE_API_KEY": SANDBOX_API_KEY, "VOCOBASE_BASE_URL": url}
        journal = str(tmp_path / "sheet.journal.sqlite")
        both = CliRunner().invoke(
            main, ["rollback", journal, "--run-id", "1", "--run-id", "2", "--dry-run"], env=env
        )
        one = CliRunner().invoke(main, ["rollback", journal, "--run-id", "2", "--dry-run"], env=env)
    assert both.exit_code == 0 and one.exit_code == 0, both.output + one.output
    assert (
        "rollback of runs 1, 2 (sheet.csv) from" in both.output
        and "plan: restore 2, deactivate 2" in both.output
    )
    assert (
        "rollback of run 2 (sheet.csv) from" in one.output and "plan: restore 0, deactivate 2" in one.output
    )
    assert BASE not in both.output
