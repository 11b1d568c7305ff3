"""The whole job, top to bottom: read -> validate -> (resolve -> plan -> apply) -> results.

``validate_file`` is the offline half; ``run_import`` (in ``run.py``) adds the API half and
reuses everything here. Both return a ``RunSummary`` and never raise for bad rows, only for
run-level problems (see ``errors.py``).
"""

from __future__ import annotations

import collections
import contextlib
import datetime as dt
import gc
import itertools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .errors import InputError
from .model import RawTable, RowIssue, RowOutcome, RunInfo, Status, ValidationReport
from .reader import read_table
from .results import (
    OutcomeColumns,
    check_workbook_name,
    default_paths,
    failed_path_for,
    stamped_path,
    write_failed_rows,
    write_results,
)
from .validate import validate_table

__all__ = ["InputOptions", "RunSummary", "ValidateConfig", "load_and_validate", "validate_file"]


@dataclass(frozen=True, slots=True)
class InputOptions:
    """How to read and validate the input file."""

    path: Path
    sheet: str | None = None
    column_map: Mapping[str, str] = field(default_factory=dict)
    default_region: str | None = None

    def describe(self) -> dict[str, str]:
        """The options as text for the Summary sheet."""
        out = {"sheet": self.sheet or "(auto)", "default_region": self.default_region or "(none)"}
        if self.column_map:
            out["map"] = "; ".join(f"{h}={f}" for h, f in self.column_map.items())
        return out


@dataclass(frozen=True, slots=True)
class ValidateConfig:
    """Options of the ``validate`` command."""

    input: InputOptions
    output: Path | None = None
    failed_out: Path | None = None
    overwrite: bool = False
    """Overwrite the default output files of an earlier run instead of writing timestamped ones."""


@dataclass(frozen=True, slots=True)
class RunSummary:
    """What a run did, for the CLI's summary and for callers of the library."""

    rows: int
    counts: Mapping[Status, int]
    top_reasons: Sequence[tuple[str, int]]
    results_path: Path
    failed_path: Path | None
    exit_code: int
    notes: Sequence[str] = ()

    @property
    def failed(self) -> int:
        return self.counts.get(Status.FAILED, 0)

    def lines(self) -> list[str]:
        """A short human summary."""
        parts = [f"{s.value} {self.counts.get(s, 0)}" for s in Status if self.counts.get(s, 0)]
        out = [f"rows read: {self.rows}; " + (", ".join(parts) if parts else "nothing to do")]
        if self.top_reasons:
            out.append("most common problems:")
            out += [f"  {n} x {reason}" for reason, n in self.top_reasons]
        out += list(self.notes)
        out.append(f"results: {self.results_path}")
        if self.failed_path is not None:
            out.append(f"failed rows (fix and re-import): {self.failed_path}")
        return out


def now_text() -> str:
    """The local time as the Summary sheet shows it."""
    return dt.datetime.now().astimezone().isoformat(timespec="seconds")


def output_paths(
    input_path: Path, output: Path | None, failed_out: Path | None, *, overwrite: bool = False
) -> tuple[Path, Path]:
    """Resolve the results and failed-rows paths; refuse any that would overwrite the input.

    A path given explicitly is used as it is (overwriting). The default ``<stem>.results.xlsx``
    is not overwritten when it (or ``<stem>.failed.xlsx``) is there from an earlier run, unless
    ``overwrite``: the outputs get a timestamped name beside it instead.
    """
    default_results, default_failed = default_paths(input_path)
    results = output or default_results
    failed = failed_out or (failed_path_for(results) if output is not None else default_failed)
    if output is None and not overwrite and (default_results.exists() or default_failed.exists()):
        results = stamped_path(default_results, dt.datetime.now())
        failed = failed_out or failed_path_for(results)
    source = input_path.resolve()
    for path in (results, failed):
        if path.resolve() == source:
            raise InputError(f"{path} is the input file; choose another output path")
    if results.resolve() == failed.resolve():
        raise InputError("the results and failed-rows files must be different paths")
    check_workbook_name(results, "-o")
    check_workbook_name(failed, "--failed-out")
    return results, failed


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector for a stage that builds millions of lasting objects.

    Reading and validating a large file creates millions of containers (row lists, cells) that
    all survive; each pass of the collector over them frees nothing, and on a million rows
    those passes cost a third of the read and validate time. Reference counting still frees
    every object as usual: only reference cycles wait, until the collector is back on.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def load_and_validate(options: InputOptions) -> ValidationReport:
    """Read the input file and validate every row."""
    if not options.path.exists():
        raise InputError(f"{options.path}: no such file")
    if options.path.is_dir():
        raise InputError(f"{options.path} is a folder; give a .csv or .xlsx file")
    with collector_paused():
        table = read_table(options.path, sheet=options.sheet, extra_headers=options.column_map)
        if table.row_count == 0:
            raise InputError(
                f"{options.path.name}: the header is on row {table.source.header_row} "
                "but no data rows follow it"
            )
        return validate_table(table, column_map=options.column_map, default_region=options.default_region)


def reasons_by_row(issues: Iterable[RowIssue]) -> dict[int, list[RowIssue]]:
    """Group issues by Excel row."""
    grouped: dict[int, list[RowIssue]] = collections.defaultdict(list)
    for issue in issues:
        grouped[issue.row].append(issue)
    return grouped


def failed_outcome(row: int, issues: Sequence[RowIssue]) -> RowOutcome:
    """The outcome of a row that failed validation: every problem in one reason."""
    return RowOutcome(
        row=row,
        status=Status.FAILED,
        reason="; ".join(i.message for i in issues),
        reason_kind=issues[0].kind,
    )


_VALIDATED_ONLY = RowOutcome(
    row=0, status=Status.NOT_SENT, reason="validated only", reason_kind="validated_only"
)
"""The outcome of every valid row of a validate-only run (its row number aside)."""


def validation_outcomes(report: ValidationReport) -> OutcomeColumns:
    """One outcome per input row of a validate-only run, in input order, as columns."""
    rows = report.table.frame.index.tolist()
    count = len(rows)
    ok = _VALIDATED_ONLY
    # Shared values, not a RowOutcome per row: the valid rows all say the same thing.
    status, reason, kind = [ok.status] * count, [ok.reason] * count, [ok.reason_kind] * count
    grouped = reasons_by_row(report.issues)
    positions = report.table.frame.index.get_indexer(pd.Index(list(grouped), dtype="int64"))
    for row, position in zip(grouped, positions.tolist(), strict=True):
        if position >= 0:  # as before: an issue of a row the table does not have adds no outcome
            failed = failed_outcome(row, grouped[row])
            status[position] = failed.status
            reason[position] = failed.reason
            kind[position] = failed.reason_kind
    nothing: list[int | None] = [None] * count
    empty = [""] * count
    return OutcomeColumns(
        row=rows,
        status=status,
        action=[ok.action] * count,
        reason=reason,
        reason_kind=kind,
        did_id=nothing,
        routing_id=nothing,
        http_status=nothing,
        attempts=[ok.attempts] * count,
        current=empty,
        proposed=empty,
    )


class OutcomeTally:
    """Counts outcomes by status and keeps the failed rows."""

    def __init__(self, outcomes: OutcomeColumns) -> None:
        self.counts: collections.Counter[Status] = collections.Counter(outcomes.status)
        self.failed_rows: list[int] = list(itertools.compress(outcomes.row, outcomes.failed()))


def top_reasons(
    issues: Iterable[RowIssue], extra: Iterable[str] = (), limit: int = 5
) -> list[tuple[str, int]]:
    """The most common problem kinds with an example message shape."""
    counter: collections.Counter[str] = collections.Counter()
    for issue in issues:
        counter[_KIND_TEXT.get(issue.kind, issue.kind)] += 1
    for reason in extra:
        counter[reason] += 1
    return counter.most_common(limit)


_KIND_TEXT = {
    "scientific_notation": "DID in scientific notation (Excel lost digits)",
    "no_country_code": "DID without a country code",
    "bad_number": "not a valid phone number",
    "missing_did": "no DID on the row",
    "missing_mode": "mode missing",
    "bad_mode": "unknown mode",
    "missing_mode_id": "bot or trunk id missing for the mode",
    "id_for_unused_mode": "id filled in for a mode that does not use it",
    "bad_id": "id is not a positive whole number",
    "bad_status": "unknown status",
    "bad_uuid": "connection id is not a UUID",
    "duplicate": "duplicate DID",
    "ragged_row": "row has the wrong number of fields",
}


def write_outputs(
    table: RawTable,
    outcomes: Iterable[RowOutcome] | OutcomeColumns,
    issues: Sequence[RowIssue],
    info: RunInfo,
    results: Path,
    failed: Path,
) -> OutcomeTally:
    """Write the results workbook (streaming) and, when rows failed, the failed-rows file."""
    columns = outcomes if isinstance(outcomes, OutcomeColumns) else OutcomeColumns.from_outcomes(outcomes)
    tally = OutcomeTally(columns)
    write_results(results, table, columns, issues, info)
    if tally.failed_rows:
        write_failed_rows(failed, table, tally.failed_rows, columns.failed_reasons())
    elif failed.exists():
        failed.unlink()  # a stale file from an earlier run would mislead
    return tally


def validate_file(config: ValidateConfig) -> RunSummary:
    """Read and validate a file offline; write the results workbook.

    Returns:
        The summary; ``exit_code`` is 0 when every row is valid and 1 when any failed.

    Raises:
        InputError: the file or an option cannot be used.
    """
    started = now_text()
    results, failed = output_paths(
        config.input.path, config.output, config.failed_out, overwrite=config.overwrite
    )
    report = load_and_validate(config.input)
    info = RunInfo(
        command="validate",
        started=started,
        finished=now_text(),
        options=config.input.describe(),
    )
    tally = write_outputs(report.table, validation_outcomes(report), report.issues, info, results, failed)
    return RunSummary(
        rows=report.table.row_count,
        counts=dict(tally.counts),
        top_reasons=top_reasons(report.issues),
        results_path=results,
        failed_path=failed if tally.failed_rows else None,
        exit_code=1 if tally.failed_rows else 0,
    )
