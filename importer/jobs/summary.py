"""What a job did, for the CLI's summary and the library's callers: ``RunSummary``, its notes and
its most common problems."""

from __future__ import annotations

import collections
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from importer.account.client import VoiceLinkClient
from importer.engine.apply import Applied
from importer.engine.plan import Plan
from importer.jobs.session import NOT_CONFIRMED, skipped_by_parser
from importer.model import RawTable, RowIssue, RowOutcome, Status
from importer.read.sheets import sheet_notes
from importer.read.xlsx import describe_hidden
from importer.vocab import Action, ExitCode, describe_kind
from importer.words import Surface, issue_label, render_template

__all__ = ["RunSummary", "input_notes", "job_notes", "top_reasons"]


@dataclass(frozen=True, slots=True)
class RunSummary:
    """What a job did, for the CLI's summary and for callers of the library."""

    rows: int
    counts: Mapping[Status, int]
    top_reasons: Sequence[tuple[str, int]]
    """The most common problems, each as a label for people and how many rows had it."""
    results_path: Path
    failed_path: Path | None
    exit_code: ExitCode
    notes: Sequence[str] = ()
    outcomes: tuple[RowOutcome, ...] = ()
    """One outcome per input row, in input order (``validate_file`` leaves it empty: read its workbook)."""
    status_labels: Mapping[Status, str] = field(default_factory=dict)
    """Words for statuses where the job means more than the status's label (validate: "valid")."""
    stopped: str = ""
    """Why the job stopped before trying every write ("" when it did not stop early; "not confirmed"
    when its ``confirm`` hook declined the plan, and nothing was sent)."""
    requests: int = 0
    """Requests the job made to the API (a dry run's: the reads its send will make again)."""

    @property
    def failed(self) -> int:
        return self.counts.get(Status.FAILED, 0)

    def frame(self) -> pd.DataFrame:
        """The outcomes as a DataFrame, one row per input row (statuses and actions as their codes)."""
        columns = list(RowOutcome._fields)
        records = [[getattr(o, name) for name in columns] for o in self.outcomes]
        # StrEnum members become their plain codes, so the frame compares and saves as text.
        records = [[str(v) if isinstance(v, Status | Action) else v for v in r] for r in records]
        return pd.DataFrame.from_records(records, columns=columns)

    def lines(self) -> list[str]:
        """A short human summary (labels, never internal codes)."""
        parts = [
            f"{self.status_labels.get(s, s.label)} {self.counts.get(s, 0)}"
            for s in Status
            if self.counts.get(s, 0)
        ]
        out = [f"rows read: {self.rows}; " + (", ".join(parts) if parts else "nothing to do")]
        if self.top_reasons:
            out.append("most common problems:")
            out += [f"  {n} x {reason}" for reason, n in self.top_reasons]
        out += list(self.notes)
        out.append(f"results: {self.results_path}")
        if self.failed_path is not None:
            out.append(f"failed rows (fix and re-import): {self.failed_path}")
        return out


def input_notes(table: RawTable, skip_hidden_rows: bool = False, surface: Surface = Surface.CLI) -> list[str]:
    """Say how the input was read where the user may not expect it (printed with the summary).

    ``surface`` says whose controls the advice names (the CLI's flags, the page's fields).
    """
    notes = sheet_notes(table.sheets, table.sheets_read, surface)
    for name, text in describe_hidden(table):
        if name == "hidden rows":
            text += (
                " skipped"
                if skip_hidden_rows
                else render_template(" imported like the others ({skip_hidden_advice})", {}, surface)
            )
        notes.append(f"{name} in Excel: {text}")
    source = table.source
    if source.encoding_chosen == "detected" and not (source.encoding or "").startswith("utf"):
        notes.append(
            render_template(
                "text read as {encoding} (detected); if letters look wrong, {encoding_advice}",
                {"encoding": source.encoding or ""},
                surface,
            )
        )
    return notes


def job_notes(plan: Plan, applied: Applied, client: VoiceLinkClient, *, dry_run: bool) -> list[str]:
    """The notes every sending job has: a dry run's plan, why it stopped, what the parsers skipped."""
    out = [*applied.notes, *skipped_by_parser(client).notes]
    if applied.stop_reason and applied.stop_reason != NOT_CONFIRMED:  # that one has its own note
        out.insert(0, f"stopped: {applied.stop_reason}")
    if dry_run:
        out.insert(0, f"dry run: nothing was sent. Plan: {plan.text()}")
    return out


def top_reasons(
    issues: Iterable[RowIssue], extra: Iterable[str] = (), limit: int = 5
) -> list[tuple[str, int]]:
    """The most common problems as labels for people (validation's and the engine's kinds alike)."""
    counter: collections.Counter[str] = collections.Counter()
    for issue in issues:
        counter[issue_label(issue.kind)] += 1
    for kind in extra:
        counter[describe_kind(kind)] += 1
    return counter.most_common(limit)
