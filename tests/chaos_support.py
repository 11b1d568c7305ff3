"""Support for the chaos suite: seeded cases, CLI runs that get killed, invariant checks, the table.

A *case* is a sheet plus the inventory it runs against: good rows (new DIDs, DIDs whose routing
already equals the row, DIDs whose routing differs) and bad rows that must end failed without
touching their DID. A *scenario* is one or more runs of a case against one sandbox; ``check``
compares the sandbox's state before and after every run with the last run's workbook and
returns a ``Verdict`` whose ``problems`` must be empty.
"""

from __future__ import annotations

import collections
import csv
import itertools
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openpyxl
from helpers import (
    REPO,
    desired_record,
    did_number,
    read_results,
    routing_fields,
    write_inventory,
    write_sheet,
)

from importer.sandbox import SANDBOX_API_KEY, Sandbox

State = dict[str, Any]

FINAL = frozenset({"succeeded", "unchanged", "skipped", "failed"})
DONE = frozenset({"succeeded", "unchanged", "skipped"})
DONE_EARLIER = "done in an earlier run at "
SETTLED_ON_RESUME = "sent by an interrupted run"
WRITE_PATHS = ("POST /voicelink/call-routing", "POST /voicelink/call-routing/{routing_id}")


@dataclass(frozen=True, slots=True)
class Case:
    """A sheet, its inventory and what the end state must be."""

    sheet: Path
    inventory: Path
    rows: tuple[int, ...]
    """Every Excel row of the sheet (header row 1)."""
    good: Mapping[int, int]
    """Excel row -> DID id, for rows that must end routed exactly as they say."""
    bad: tuple[int, ...]
    """Rows that must end failed."""
    desired: Mapping[int, dict[str, int]]
    """DID id -> the routing its good row asks for."""
    initial: Mapping[int, dict[str, int]]
    """DID id -> routing before any run."""
    untouched: frozenset[int]
    """DIDs only bad rows name: their routing must never change."""

    @property
    def planned_writes(self) -> int:
        """Writes a clean run sends: good rows whose DID is not already routed as asked."""
        return sum(self.initial.get(did) != self.desired[did] for did in self.good.values())


def make_case(folder: Path, n: int, seed: int) -> Case:
    """Write a seeded case of ``n`` good rows and four bad ones into ``folder``.

    About a fifth of the good rows' DIDs are already routed as asked (unchanged), a fifth are
    routed differently (update), the rest have no routing (create). The bad rows: a duplicate
    of the first row's DID, an unknown inbound mode, a DID the account does not own, and an
    inactive bot.
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    existing: dict[int, dict[str, int]] = {0: desired_record(0), 1: desired_record(2)}
    for i in range(2, n):
        draw = rng.random()
        if draw < 0.2:
            existing[i] = desired_record(i)
        elif draw < 0.4:
            existing[i] = desired_record(i + 1)
    inventory = write_inventory(folder / "inventory.json", n + 2, existing)
    sheet = write_sheet(folder / "sheet.csv", n)
    bad_lines = [
        ["+" + did_number(0), "1", "", "", "3", "94", "", "active", "duplicate of row 2"],
        ["+" + did_number(n), "9", "", "", "4", "", "", "active", "no such inbound mode"],
        ["+918099999999", "1", "", "", "4", "", "", "active", "not this account's DID"],
        ["+" + did_number(n + 1), "3", "95", "", "4", "", "", "active", "inactive bot"],
    ]
    with sheet.open("a", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows(bad_lines)
    good = {i + 2: 1000 + i for i in range(n)}
    return Case(
        sheet=sheet,
        inventory=inventory,
        rows=tuple(range(2, n + 2 + len(bad_lines))),
        good=good,
        bad=tuple(range(n + 2, n + 2 + len(bad_lines))),
        desired={1000 + i: desired_record(i) for i in range(n)},
        initial={1000 + i: record for i, record in existing.items()},
        untouched=frozenset({1000 + n, 1000 + n + 1}),
    )


# -- reading the sandbox and the workbook ---------------------------------------------------


def routing_by_did(state: State) -> dict[int, dict[str, int]]:
    return {int(r["did_id"]): routing_fields(r) for r in state["routing"]}


def writes_sent(state: State) -> int:
    return sum(state["request_counts"].get(p, 0) for p in WRITE_PATHS)


def create_attempts(state: State) -> collections.Counter[str]:
    return collections.Counter({str(k): int(v) for k, v in state["create_attempts"].items()})


def status_count(state: State, status: int) -> int:
    return int(state["status_counts"].get(str(status), 0))


def new_writes(before: State, after: State) -> list[dict[str, Any]]:
    """The write log entries made between two snapshots."""
    return list(after["writes"][len(before["writes"]) :])


def read_summary_counts(path: Path) -> dict[str, int]:
    """The Summary sheet's "Rows by status" section."""
    book = openpyxl.load_workbook(path, read_only=True)
    try:
        lines = list(book["Summary"].iter_rows(values_only=True))
    finally:
        book.close()
    out: dict[str, int] = {}
    section = ""
    for line in lines:
        name, value = [*line, None, None][:2]
        if value is None:
            section = str(name)
        elif section == "Rows by status":
            out[str(name)] = int(value)
    return out


# -- the verdict ------------------------------------------------------------------------------


@dataclass(slots=True)
class Verdict:
    """What one scenario did and everything it got wrong."""

    scenario: str
    rows: int
    runs: int = 0
    writes_sent: int = 0
    duplicates: int = 0
    lost: int = 0
    conflicts: int = 0
    """Creates answered 409: a re-send that raced its own earlier, still queued, request."""
    idle_updates: int = 0
    """Updates applied that changed nothing (the same race, on an update)."""
    faults: int = 0
    kills: int = 0
    """SIGKILLs that landed while the importer ran."""
    seconds: float = 0.0
    note: str = ""
    problems: list[str] = field(default_factory=list)

    def problem(self, text: str) -> None:
        self.problems.append(text)


def check(
    case: Case, snapshots: Sequence[State], results: Path, verdict: Verdict, *, races: bool = False
) -> Verdict:
    """Check the invariants of a scenario and fill in the verdict's counts.

    Args:
        case: What was run.
        snapshots: The sandbox's state before the first run and after each run (len = runs + 1).
        results: The last run's results workbook.
        verdict: The verdict to fill in (its scenario name and timing are the caller's).
        races: Whether a request delayed past the client's timeout *before* being applied is
            injected; its re-send may then meet a 409 or repeat an update (see the README).

    Returns:
        The verdict; ``problems`` lists every broken invariant, one line each.
    """
    first, last = snapshots[0], snapshots[-1]
    verdict.runs = len(snapshots) - 1
    verdict.writes_sent = writes_sent(last) - writes_sent(first)
    verdict.faults = len(last["faults"]) - len(first["faults"])
    _check_duplicates(case, snapshots, verdict, races)
    rows = read_results(results)
    by_row = _check_workbook(case, rows, results, verdict)
    _check_routing(case, first, last, by_row, verdict, races)
    _check_counts(case, snapshots[-2], last, by_row, verdict)
    return verdict


def _check_duplicates(case: Case, snapshots: Sequence[State], verdict: Verdict, races: bool) -> None:
    """Count duplicates: a DID with over one applied create, or a create sent for a DID already routed."""
    creates = collections.Counter(
        int(w["did_id"]) for w in new_writes(snapshots[0], snapshots[-1]) if w["op"] == "create"
    )
    for did, n in sorted(creates.items()):
        if n > 1:
            verdict.duplicates += n - 1
            verdict.problem(f"DID {did}: {n} creates applied")
    for before, after in itertools.pairwise(snapshots):
        routed = set(routing_by_did(before))
        sent = create_attempts(after) - create_attempts(before)
        for key, n in sorted(sent.items()):
            if key.isdigit() and int(key) in routed:
                verdict.duplicates += n
                verdict.problem(f"DID {key}: {n} create(s) sent though its routing already existed")
    verdict.conflicts = status_count(snapshots[-1], 409) - status_count(snapshots[0], 409)
    if verdict.conflicts and not races:
        verdict.problem(f"{verdict.conflicts} create(s) answered 409: sent for a DID already routed")


def _check_workbook(
    case: Case, rows: list[dict[str, Any]], results: Path, verdict: Verdict
) -> dict[int, dict[str, Any]]:
    seen = collections.Counter(int(r["import_row"]) for r in rows)
    by_row = {int(r["import_row"]): r for r in rows}
    for row in case.rows:
        status = by_row[row]["import_status"] if row in by_row else None
        if seen[row] != 1 or status not in FINAL or not by_row[row]["import_reason"]:
            verdict.lost += 1
            verdict.problem(f"row {row}: in the workbook {seen[row]} time(s), status {status!r}")
    extra = sorted(set(seen) - set(case.rows))
    if extra:
        verdict.problem(f"rows {extra} are in the workbook but not in the sheet")
    summary = read_summary_counts(results)
    counted = collections.Counter(str(r["import_status"]) for r in rows)
    if {k: v for k, v in summary.items() if v} != dict(counted):
        verdict.problem(f"Summary counts {summary} differ from the Results sheet {dict(counted)}")
    for row in case.bad:
        if row in by_row and by_row[row]["import_status"] != "failed":
            verdict.problem(f"bad row {row} ended {by_row[row]['import_status']!r}, not failed")
    return by_row


def _check_routing(
    case: Case,
    first: State,
    last: State,
    by_row: Mapping[int, Mapping[str, Any]],
    verdict: Verdict,
    races: bool,
) -> None:
    routing = routing_by_did(last)
    for row, did in sorted(case.good.items()):
        outcome = by_row.get(row)
        status = outcome["import_status"] if outcome else None
        reason = str(outcome["import_reason"]) if outcome else ""
        as_asked = routing.get(did) == case.desired[did]
        if status in DONE and not as_asked:
            verdict.lost += 1
            verdict.problem(f"row {row}: workbook says {status} but DID {did} is routed {routing.get(did)}")
        elif status not in DONE:
            verdict.problem(f"row {row}: ended {status!r} ({reason}); DID {did} routed {routing.get(did)}")
        if status == "skipped" and not reason.startswith(DONE_EARLIER):
            verdict.problem(f"row {row}: skipped for another reason than an earlier run: {reason}")
    before = routing_by_did(first)
    for did in sorted(case.untouched):
        if routing.get(did) != before.get(did):
            verdict.problem(f"DID {did} of a bad row changed: {before.get(did)} -> {routing.get(did)}")
    # Exactly once: one applied change per DID that needed one over the whole scenario.
    changes = collections.Counter(
        int(w["did_id"]) for w in new_writes(first, last) if w["op"] == "create" or w["changed"]
    )
    idle = collections.Counter(
        int(w["did_id"]) for w in new_writes(first, last) if w["op"] == "update" and not w["changed"]
    )
    for did, desired in sorted(case.desired.items()):
        needed = int(case.initial.get(did) != desired)
        if changes[did] != needed:
            verdict.problem(f"DID {did}: {changes[did]} applied change(s), expected {needed}")
        if idle[did] and not races:
            verdict.problem(f"DID {did}: {idle[did]} update(s) re-sent that changed nothing")
    verdict.idle_updates = sum(idle.values())


def _check_counts(
    case: Case, before: State, after: State, by_row: Mapping[int, Mapping[str, Any]], verdict: Verdict
) -> None:
    """The last run's succeeded creates/updates are exactly the sandbox's applied writes of that run."""
    applied = {
        op: {int(w["did_id"]) for w in new_writes(before, after) if w["op"] == op and (w["changed"])}
        for op in ("create", "update")
    }
    claimed: dict[str, set[int]] = {"create": set(), "update": set()}
    for row, did in case.good.items():
        outcome = by_row.get(row)
        if (
            outcome is not None
            and outcome["import_status"] == "succeeded"
            and outcome["import_action"] in claimed
            and SETTLED_ON_RESUME not in str(outcome["import_reason"])
        ):
            claimed[str(outcome["import_action"])].add(did)
    for op in ("create", "update"):
        if applied[op] != claimed[op]:
            verdict.problem(
                f"{op}s: sandbox applied {sorted(applied[op])}, workbook claims {sorted(claimed[op])}"
            )


# -- running the CLI and killing it ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CliRun:
    """A finished CLI process."""

    returncode: int
    stdout: str
    stderr: str
    seconds: float


def cli_command(case: Case, url: str, folder: Path, *, concurrency: int = 4) -> list[str]:
    return [
        sys.executable,
        "-m",
        "importer",
        "run",
        str(case.sheet),
        "--base-url",
        url,
        "--yes",
        "--quiet",
        "--timeout",
        "1",
        "--requests-per-minute",
        "100000",
        "--concurrency",
        str(concurrency),
        "--journal",
        str(folder / "run.journal.sqlite"),
        "-o",
        str(folder / "out.results.xlsx"),
    ]


def run_cli(
    command: list[str],
    folder: Path,
    sandbox: Sandbox,
    *,
    trigger: Callable[[State], bool] | None = None,
    delay: float = 0.0,
    sig: signal.Signals = signal.SIGKILL,
    timeout: float = 60.0,
) -> tuple[CliRun, bool]:
    """Run the CLI; once ``trigger`` holds for the sandbox's state, wait ``delay`` and send ``sig``.

    Returns:
        The finished run and whether the signal was sent before the process ended by itself.
    """
    env = {**os.environ, "VOCOBASE_API_KEY": SANDBOX_API_KEY, "PYTHONPATH": str(REPO)}
    env.pop("VOICELINK_DEBUG", None)
    out_path, err_path = folder / "cli.stdout", folder / "cli.stderr"
    started = time.monotonic()
    signalled = False
    with out_path.open("w") as out, err_path.open("w") as err:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        try:
            deadline = started + timeout
            while trigger is not None and proc.poll() is None and time.monotonic() < deadline:
                if trigger(sandbox.state_snapshot()):
                    if delay:
                        time.sleep(delay)
                    if proc.poll() is None:
                        proc.send_signal(sig)
                        signalled = True
                    break
                time.sleep(0.003)
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    run = CliRun(proc.returncode, out_path.read_text(), err_path.read_text(), time.monotonic() - started)
    return run, signalled


_UNSETTLED = re.compile(r"not applied after \d+ attempts \((.*)\); the live state")


def early_give_ups(results: Path, max_unknown: int) -> list[str]:
    """Rows that gave up on a write before ``max_unknown`` unknown outcomes (5xx, no answer)."""
    out = []
    for r in read_results(results):
        found = _UNSETTLED.match(str(r["import_reason"]))
        if found and len(found.group(1).split("; ")) < max_unknown:
            out.append(f"row {r['import_row']} gave up early: {r['import_reason']}")
    return out


def wait_quiet(sandbox: Sandbox, settle: float = 0.15, limit: float = 30.0) -> State:
    """Wait until the sandbox has had no new request for ``settle`` seconds; return its state.

    A killed client's requests may still be inside the sandbox (its latency comes before the
    write is applied), so the state is read only once they have landed. A sandbox still busy
    after ``limit`` seconds fails the test: its state would not be the final one.
    """
    end = time.monotonic() + limit
    state = sandbox.state_snapshot()
    while time.monotonic() < end:
        time.sleep(settle)
        again = sandbox.state_snapshot()
        if again["request_counts"] == state["request_counts"] and again["writes"] == state["writes"]:
            return again
        state = again
    raise AssertionError(f"the sandbox still took requests {limit:g} s after the client ended")


# -- the table ---------------------------------------------------------------------------------

COLUMNS = (
    "scenario",
    "rows",
    "runs",
    "writes sent",
    "duplicates",
    "rows lost",
    "409 races",
    "no-op updates",
    "faults",
    "seconds",
    "note",
)


def table(verdicts: Sequence[Verdict]) -> str:
    """Render the verdicts as a plain-text table with a totals line."""
    lines = [
        (
            v.scenario,
            str(v.rows),
            str(v.runs),
            str(v.writes_sent),
            str(v.duplicates),
            str(v.lost),
            str(v.conflicts),
            str(v.idle_updates),
            str(v.faults),
            f"{v.seconds:.1f}",
            v.note,
        )
        for v in verdicts
    ]
    lines.append(
        (
            f"TOTAL ({len(verdicts)} scenarios)",
            str(sum(v.rows for v in verdicts)),
            str(sum(v.runs for v in verdicts)),
            str(sum(v.writes_sent for v in verdicts)),
            str(sum(v.duplicates for v in verdicts)),
            str(sum(v.lost for v in verdicts)),
            str(sum(v.conflicts for v in verdicts)),
            str(sum(v.idle_updates for v in verdicts)),
            str(sum(v.faults for v in verdicts)),
            f"{sum(v.seconds for v in verdicts):.1f}",
            "",
        )
    )
    widths = [max(len(c), *(len(line[i]) for line in lines)) for i, c in enumerate(COLUMNS)]

    def fmt(cells: Sequence[str]) -> str:
        return " | ".join(
            c.ljust(w) if i in (0, len(cells) - 1) else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    rule = "-+-".join("-" * w for w in widths)
    return "\n".join([fmt(COLUMNS), rule, *(fmt(line) for line in lines[:-1]), rule, fmt(lines[-1])])
