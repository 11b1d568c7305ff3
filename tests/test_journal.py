"""The SQLite journal: what re-runs learn from it, crash safety, threads, and no key on disk."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from importer.engine.journal import Journal

ROOT = Path(__file__).resolve().parents[1]
SHA = "a" * 64
OTHER_SHA = "b" * 64
BODY = {
    "did_id": 812,
    "for_inbound_call": 1,
    "for_outbound_call": 3,
    "outbound_websocket_bot_id": 93,
    "status": 1,
}
BEFORE = {"for_inbound_call": 1, "for_outbound_call": 4, "status": 1}
FAKE_KEY = "rg_live_Zx9Qw8Er7Ty6Ui5Op4"


def _start(journal: Journal, sha: str = SHA) -> int:
    return journal.start_run(
        input_sha256=sha,
        input_name="dids.xlsx",
        command="apply",
        audit={"user": "ops", "key": "…Op4"},
        options={"workers": "4"},
    )


def _outcome(journal: Journal, run: int, row: int, status: str, action: str = "update") -> None:
    journal.record_outcome(
        run, row, status=status, action=action, reason="", did_id=812, routing_id=5,
        http_status=200 if status == "succeeded" else None, attempts=1,
    )  # fmt: skip


def test_journal_open_sets_wal_and_full_sync(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path / "sub" / "journal.sqlite")
    try:
        mode = journal._db.execute("PRAGMA journal_mode").fetchone()[0]
        sync = journal._db.execute("PRAGMA synchronous").fetchone()[0]
    finally:
        journal.close()
    assert (mode, sync) == ("wal", 2)


def test_journal_full_cycle_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    with Journal.open(path) as journal:
        run = _start(journal)
        journal.record_sending(run, 2, "id:812", "update", BODY, BEFORE)
        _outcome(journal, run, 2, "succeeded")
        journal.record_sending(run, 3, "num:918011223344", "create", {**BODY, "did_id": 813}, None)
        _outcome(journal, run, 4, "unchanged", action="unchanged")
        _outcome(journal, run, 5, "failed", action="create")
        journal.finish_run(run, {"succeeded": 1, "unchanged": 1, "failed": 1})

    with Journal.open(path) as journal:
        confirmed = journal.confirmed(SHA)
        in_flight = journal.in_flight(SHA)
        changes = journal.changes(run)
        runs = journal.runs()

    assert sorted(confirmed) == [2, 4]
    assert confirmed[2].status == "succeeded" and confirmed[2].action == "update"
    assert (confirmed[2].did_id, confirmed[2].routing_id, confirmed[2].run_id) == (812, 5, run)
    assert list(in_flight) == [3]
    assert in_flight[3].did_key == "num:918011223344" and in_flight[3].action == "create"
    assert in_flight[3].body["did_id"] == 813 and in_flight[3].before is None
    assert [(c.row, c.action, dict(c.before or {}), dict(c.body), c.settled) for c in changes] == [
        (2, "update", BEFORE, BODY, True)
    ]
    assert runs[0].counts == {"succeeded": 1, "unchanged": 1, "failed": 1}
    assert runs[0].audit == {"user": "ops", "key": "…Op4"}


# Each step: (run number, row 2's event). The expected answer is (confirmed?, in flight?).
@pytest.mark.parametrize(
    ("steps", "confirmed", "in_flight"),
    [
        ([(1, "send"), (1, "succeeded")], True, False),
        ([(1, "send")], False, True),
        ([(1, "send"), (2, "not_sent")], False, True),  # an aborted re-run does not hide a lost write
        ([(1, "send"), (2, "skipped")], False, True),
        ([(1, "send"), (2, "unchanged")], True, False),  # settled by re-reading
        ([(1, "send"), (1, "succeeded"), (2, "skipped")], True, False),  # resume skip keeps the success
        ([(1, "send"), (1, "succeeded"), (2, "send")], False, True),  # forced re-send crashed
        ([(1, "send"), (1, "succeeded"), (2, "send"), (2, "failed")], False, False),
        ([(1, "send"), (1, "send"), (1, "succeeded")], True, False),  # 409 -> update in the same run
        ([(1, "send"), (1, "send")], False, True),
        ([(1, "failed"), (2, "send"), (2, "succeeded")], True, False),
    ],
)
def test_journal_deciding_entry_table(
    tmp_path: Path, steps: list[tuple[int, str]], confirmed: bool, in_flight: bool
) -> None:
    with Journal.open(tmp_path / "j.sqlite") as journal:
        runs: dict[int, int] = {}
        for number, event in steps:
            run = runs.setdefault(number, _start(journal))
            if event == "send":
                journal.record_sending(run, 2, "id:812", "update", BODY, BEFORE)
            else:
                _outcome(journal, run, 2, event)
        assert (2 in journal.confirmed(SHA), 2 in journal.in_flight(SHA)) == (confirmed, in_flight)
        assert journal.confirmed(OTHER_SHA) == {} and journal.in_flight(OTHER_SHA) == {}


def test_journal_changes_filters_by_run_and_lists_unsettled_on_request(tmp_path: Path) -> None:
    with Journal.open(tmp_path / "j.sqlite") as journal:
        first = _start(journal)
        journal.record_sending(first, 2, "id:812", "update", BODY, BEFORE)
        _outcome(journal, first, 2, "succeeded")
        second = _start(journal, OTHER_SHA)
        journal.record_sending(second, 2, "id:900", "create", {**BODY, "did_id": 900}, None)
        _outcome(journal, second, 2, "succeeded", action="create")
        journal.record_sending(second, 3, "id:901", "create", {**BODY, "did_id": 901}, None)
        journal.record_sending(second, 4, "id:902", "create", {**BODY, "did_id": 902}, None)
        _outcome(journal, second, 4, "failed", action="create")

        everything = [(c.run_id, c.row) for c in journal.changes()]
        only_second = [(c.run_id, c.row, c.did_key) for c in journal.changes(second)]
        unsettled = [(c.row, c.settled) for c in journal.changes(second, include_unsettled=True)]

    assert everything == [(first, 2), (second, 2)]
    assert only_second == [(second, 2, "id:900")]
    assert unsettled == [(2, True), (3, False)]


def test_journal_is_safe_from_worker_threads(tmp_path: Path) -> None:
    with Journal.open(tmp_path / "j.sqlite") as journal:
        run = _start(journal)

        def work(base: int) -> None:
            for row in range(base, base + 40):
                journal.record_sending(run, row, f"id:{row}", "create", {"did_id": row}, None)
                _outcome(journal, run, row, "succeeded", action="create")

        threads = [threading.Thread(target=work, args=(2 + 40 * i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        confirmed = journal.confirmed(SHA)
        changes = journal.changes(run)

    assert sorted(confirmed) == list(range(2, 2 + 240))
    # each outcome settled its own row's write, never another thread's
    assert sorted(c.row for c in changes) == sorted(confirmed)
    assert all(c.body["did_id"] == c.row for c in changes)


_CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from importer.engine.journal import Journal

    journal = Journal.open(Path(sys.argv[1]))
    run = journal.start_run(input_sha256="c" * 64, input_name="x.csv", command="apply", audit={}, options={})
    row = 2
    while True:
        journal.record_sending(run, row, f"id:{row}", "create", {"did_id": row, "pad": "x" * 2000}, None)
        journal.record_outcome(run, row, status="succeeded", action="create", reason="", did_id=row,
                               routing_id=row + 10_000, http_status=200, attempts=1)
        print(row, flush=True)
        row += 1
    """
)


@pytest.mark.slow
def test_journal_outcomes_survive_sigkill_mid_write(tmp_path: Path) -> None:
    """Kill a writer with SIGKILL while it records in a loop; every reported outcome is readable."""
    path = tmp_path / "j.sqlite"
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(path)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert child.stdout is not None
    reported: list[int] = []
    try:
        for line in child.stdout:
            reported.append(int(line))
            if len(reported) >= 150:
                break
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL

    check = sqlite3.connect(path)
    try:
        assert check.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        check.close()
    with Journal.open(path) as journal:
        confirmed = journal.confirmed("c" * 64)
        in_flight = journal.in_flight("c" * 64)
    assert set(reported) <= set(confirmed)
    assert all(confirmed[row].routing_id == row + 10_000 for row in reported)
    # Whatever the kill interrupted is at most one write still in flight, never a half row.
    assert len(in_flight) <= 1
    assert set(in_flight).isdisjoint(confirmed)
    assert sorted(set(confirmed) | set(in_flight)) == list(range(2, 2 + len(confirmed) + len(in_flight)))


def test_journal_never_stores_a_key(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    with Journal.open(path) as journal:
        run = journal.start_run(
            input_sha256=SHA,
            input_name="dids.xlsx",
            command=f"apply --api-key {FAKE_KEY}",
            audit={"key_last4": FAKE_KEY[-4:], "header": f"Authorization: Bearer {FAKE_KEY}"},
            options={"api_key": FAKE_KEY},
        )
        journal.record_sending(run, 2, "id:812", "update", {**BODY, "note": FAKE_KEY}, {"raw": [FAKE_KEY]})
        journal.record_outcome(
            run, 2, status="failed", action="update", reason=f"echoed {FAKE_KEY}", did_id=812,
            routing_id=None, http_status=400, attempts=1,
        )  # fmt: skip
        shown = [repr(journal), repr(journal.changes()), repr(journal.in_flight(SHA)), repr(journal.runs())]
        runs = journal.runs()
    data = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert FAKE_KEY.encode() not in data
    assert FAKE_KEY[8:].encode() not in data  # not even the random part
    assert not any(FAKE_KEY in text for text in shown)
    assert runs[0].audit == {"key_last4": "i5Op4"[-4:], "header": "Authorization: Bearer [masked]"}


@pytest.mark.slow
def test_journal_claim_refuses_a_second_live_writer_and_frees_on_kill(tmp_path: Path) -> None:
    """Two runs must not write one journal at once; a killed run must not block the resume."""
    import subprocess
    import sys

    from importer.errors import InputError

    path = tmp_path / "j.journal.sqlite"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from pathlib import Path; from importer.engine.journal import Journal; "
         "j = Journal.open(Path(sys.argv[1])); j.claim(); print('claimed', flush=True); time.sleep(60)",
         str(path)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "claimed"
        with (
            Journal.open(path) as journal,
            pytest.raises(InputError, match="another run is using the journal"),
        ):
            journal.claim()
        holder.kill()
        holder.wait(timeout=10)
        with Journal.open(path) as journal:
            journal.claim()  # the kill released the OS lock at once
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.wait(timeout=10)
        if holder.stdout is not None:
            holder.stdout.close()


def _write(
    journal: Journal, run: int, row: int, did: int, body: dict[str, int], status: str = "succeeded"
) -> None:
    journal.record_sending(run, row, f"id:{did}", "update", body, BEFORE)
    journal.record_outcome(
        run,
        row,
        status=status,
        action="update",
        reason="",
        did_id=did,
        routing_id=7,
        http_status=200,
        attempts=1,
    )


def _rollback(journal: Journal, of: str) -> int:
    return journal.start_run(
        input_sha256=f"rollback:{SHA}", input_name="rollback", command="rollback",
        audit={"rollback_of_run": of}, options={},
    )  # fmt: skip


def test_timeline_tells_what_is_left_to_roll_back(tmp_path: Path) -> None:
    """Run 1 and run 2 (another input) write DID 812; run 3 rolls back run 2, run 4 run 1: nothing
    left. A run 5 of a third input writes DID 813 after a rollback of it wrote there: that one is left."""
    with Journal.open(tmp_path / "j.sqlite") as journal:
        one, two = _start(journal), _start(journal, OTHER_SHA)
        _write(journal, one, 2, 812, {**BEFORE, "status": 1})
        _write(journal, two, 5, 812, BODY)
        assert journal.timeline().left_runs() == (two,)  # run 1's write is under run 2's
        _write(journal, three := _rollback(journal, str(two)), 5, 812, {**BEFORE, "status": 1})
        assert journal.timeline().left_runs() == (one,)
        _write(journal, _rollback(journal, str(one)), 2, 812, BEFORE)
        timeline = journal.timeline()
        assert timeline.left_runs() == ()
        assert timeline.nothing_left("j.sqlite") == (
            "nothing left to roll back in j.sqlite: every change was rolled back already "
            "(run 1 by run 4, run 2 by run 3)"
        )
        fates = {key[0]: fate for key, fate in timeline.fates().items()}
        assert fates[two].rolled_back_by == three and fates[two].overwritten is None
        # The tool's own rollback of another run is told apart from an import over the row.
        five = _start(journal, "c" * 64)
        _write(journal, five, 2, 813, BODY)
        _write(journal, six := _rollback(journal, str(one)), 3, 813, BEFORE)
        fate = {key[0]: f for key, f in journal.timeline().fates().items()}[five]
        assert (
            fate.overwritten is not None and fate.overwritten.run_id == six and fate.overwritten_by_rollback
        )
        assert journal.timeline().left_runs() == ()
