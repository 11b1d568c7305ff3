"""The runs a journal records, for people: what ``voicelink-import history`` prints.

``run_history`` finds the journal the way ``rollback`` does (``rollback.locate_run``) and
returns typed records (``records.RunHistory``); ``history_lines`` lays them out as a table.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from importer.engine.records import RunHistory
from importer.errors import InputError
from importer.jobs.rollback import locate_run
from importer.jobs.session import open_journal
from importer.vocab import Status

__all__ = ["HISTORY_COLUMNS", "RunLog", "history_lines", "run_history"]

HISTORY_COLUMNS = (
    "run",
    "started (UTC)",
    "finished (UTC)",
    "who",
    "command",
    "input",
    "sha256",
    "rows",
    "rolled back",
)
_INPUT_WIDTH = 32
"""Long input names are cut to keep one run on one line."""


@dataclass(frozen=True, slots=True)
class RunLog:
    """A journal's runs, oldest first, and the run the results workbook asked about (if any)."""

    journal: Path
    runs: tuple[RunHistory, ...]
    current: int | None = None


def run_history(source: Path | str) -> RunLog:
    """List the runs of the journal ``source`` is (or that its results workbook points to).

    Args:
        source: A journal, or a results workbook (a run's or a rollback's).

    Returns:
        Every run the journal records, oldest first, with its counts and rollbacks.

    Raises:
        InputError: no such file, no journal where the workbook says, or not a journal.
    """
    journal_path, current, _ = locate_run(Path(source), rollback_results=True)
    if not journal_path.exists():
        raise InputError(f"no journal at {journal_path} (pass the journal instead)")
    journal = open_journal(journal_path, claim=False)  # reading only: a live run may hold the claim
    try:
        return RunLog(journal.path, tuple(journal.history()), current)
    finally:
        journal.close()


def _when(text: str | None) -> str:
    """'2026-11-27T17:40:01.123+00:00' -> '2026-11-27 17:40:01'."""
    return "" if text is None else text[:19].replace("T", " ")


def _rows(h: RunHistory) -> str:
    """'succeeded 3, not sent 2': rows per status, by label, in the results' order."""
    known = {s.value: s for s in Status}
    order = list(known)
    ranked = sorted(h.counts.items(), key=lambda kv: order.index(kv[0]) if kv[0] in known else len(order))
    parts = [f"{known[name].label if name in known else name} {n}" for name, n in ranked if n]
    if h.no_outcome:
        parts.append(f"no outcome {h.no_outcome}")
    return ", ".join(parts) or "none"


def _partly(rollback: RunHistory | None) -> bool:
    """A rollback that stopped, or left rows failed, skipped or not sent, undid only part."""
    if rollback is None or rollback.run.finished is None:
        return True
    return any(rollback.counts.get(s, 0) for s in ("failed", "skipped", "not_sent"))


def _rolled_back(h: RunHistory, by_id: dict[int, RunHistory]) -> str:
    if h.is_rollback:
        return "undoes " + ", ".join(map(str, h.rollback_of)) if h.rollback_of else ""
    if not h.rolled_back_by:
        return "no" if h.changed or h.no_outcome else "-"
    return "by " + ", ".join(
        f"run {i}" + (" (partly)" if _partly(by_id.get(i)) else "") for i in h.rolled_back_by
    )


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def history_lines(log: RunLog) -> list[str]:
    """The runs as a table for people: one line per run, and a heading.

    Args:
        log: What ``run_history`` returned.

    Returns:
        The lines, without newlines.
    """
    if not log.runs:
        return [f"journal {log.journal}: no runs yet"]
    by_id = {h.run.run_id: h for h in log.runs}
    table = [list(HISTORY_COLUMNS)]
    for h in log.runs:
        r = h.run
        who = "@".join(p for p in (r.audit.get("os_user", ""), r.audit.get("host", "")) if p)
        table.append(
            [
                f"{r.run_id}{'*' if r.run_id == log.current else ''}",
                _when(r.started),
                _when(r.finished) or "unfinished",
                who or "?",
                r.command,
                _cut(r.input_name, _INPUT_WIDTH),
                r.input_sha256.removeprefix("rollback:")[:12],
                _rows(h),
                _rolled_back(h, by_id),
            ]
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(HISTORY_COLUMNS))]
    lines = [f"journal {log.journal}: {len(log.runs)} runs"]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in table]
    if log.current is not None:
        lines.append(f"* the run of the results workbook given (run {log.current})")
    if any(h.run.finished is None for h in log.runs):
        lines.append("unfinished: killed, or still running; a resume of the same input settles its writes")
    return lines
