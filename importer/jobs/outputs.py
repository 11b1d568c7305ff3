"""Where a job's workbooks go and how they are written: paths checked before anything is sent,
a fallback when the results cannot be saved where asked (writes were sent: never lose the record)."""

from __future__ import annotations

import collections
import contextlib
import datetime as dt
import errno
import gc
import itertools
import os
import pickle
import signal
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

from importer.errors import InputError, OutputError, ResultsNotSavedError
from importer.model import RawTable, RowIssue, RowOutcome, RunInfo, Status
from importer.output.failed import write_failed_rows
from importer.output.paths import (
    check_workbook_name,
    default_paths,
    failed_path_for,
    save_problem,
    stamped_path,
)
from importer.output.results import OutcomeColumns, in_words, write_results
from importer.words import Surface

__all__ = [
    "OutcomeTally",
    "check_writable",
    "default_journal_path",
    "output_paths",
    "save_with_fallback",
    "write_outputs",
]


def output_paths(
    input_path: Path, output: Path | None, failed_out: Path | None, *, overwrite: bool = False
) -> tuple[Path, Path]:
    """Resolve the results and failed-rows paths; refuse any that would overwrite the input.

    A path given explicitly is used as it is (overwriting). The default ``<stem>.results.xlsx``
    is not overwritten when it (or ``<stem>.failed.xlsx``) is there from an earlier run, unless
    ``overwrite``: the outputs get a timestamped name beside it instead. The failed-rows file
    follows the results' name (``x.results.xlsx`` -> ``x.failed.xlsx``, ``name.xlsx`` ->
    ``name.failed.xlsx``).

    Raises:
        InputError: a path is the input, both are the same, or a name does not end in .xlsx.
    """
    default_results, default_failed = default_paths(input_path)
    results = output or default_results
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


def check_writable(*paths: Path) -> None:
    """Refuse, before anything is sent, an output that cannot be written (its folder is made).

    Raises:
        OutputError: the folder cannot be made or written, or the file is a folder or locked.
    """
    for path in paths:
        replacing = False
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.is_dir():
                raise IsADirectoryError(errno.EISDIR, "it is a folder")
            # The writer writes a temp file beside the target, then renames it over the target.
            probe = path.with_name(f".{path.name}.{os.getpid()}.probe")
            os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            probe.unlink()
            if path.exists():
                replacing = True
                with path.open("r+b"):  # a file open in Excel (Windows) refuses this
                    pass
        except OSError as exc:
            raise OutputError(path, save_problem(exc, replacing=replacing)) from None


T = TypeVar("T")


def fallback_paths(path: Path) -> list[Path]:
    """Where a results file goes when its own path fails: beside it, here, the temp folder (timestamped)."""
    now = dt.datetime.now()
    folders = (path.parent, Path.cwd(), Path(tempfile.gettempdir()))
    return [stamped_path(folder / path.name, now) for folder in folders]


def save_with_fallback(save: Callable[[Path], T], path: Path) -> tuple[T, Path, str]:
    """Save to ``path``, else to the first fallback that works (writes were sent: never lose the record).

    Returns:
        What ``save`` returned, where it saved, and a note for the summary ("" when ``path`` worked).

    Raises:
        ResultsNotSavedError: no fallback could be written either.
    """
    try:
        return save(path), path, ""
    except (OutputError, OSError) as first:
        why = first.reason if isinstance(first, OutputError) else save_problem(first, replacing=False)
        for alt in fallback_paths(path):
            with contextlib.suppress(OutputError, OSError):
                note = f"the results could not be saved to {path} ({why}); saved to {alt} instead"
                return save(alt), alt, note
        tried = ", ".join(str(p) for p in fallback_paths(path))
        raise ResultsNotSavedError(
            f"the writes were sent and journalled, but the results could not be saved to {path} ({why}) "
            f"nor to {tried}"
        ) from None


def default_journal_path(results: Path, input_path: Path) -> Path:
    """The journal sits beside the results: <stem>.journal.sqlite."""
    return results.with_name(input_path.stem + ".journal.sqlite")


class OutcomeTally:
    """Counts outcomes by status and keeps the failed rows."""

    def __init__(self, outcomes: OutcomeColumns) -> None:
        self.counts: collections.Counter[Status] = collections.Counter(outcomes.status)
        self.failed_rows: list[int] = list(itertools.compress(outcomes.row, outcomes.failed()))


def write_outputs(
    table: RawTable,
    outcomes: Iterable[RowOutcome] | OutcomeColumns,
    issues: Sequence[RowIssue],
    info: RunInfo,
    results: Path,
    failed: Path,
    surface: Surface = Surface.CLI,
    *,
    apart: bool = False,
) -> OutcomeTally:
    """Write the results workbook (streaming) and, when rows failed, the failed-rows file.

    ``surface`` says whose words the reasons are in: a web job's files use the page's. ``apart``
    (a process of its own: the CLI) writes the failed-rows file in a forked process meanwhile.
    """
    columns = outcomes if isinstance(outcomes, OutcomeColumns) else OutcomeColumns.from_outcomes(outcomes)
    columns = in_words(columns, issues, surface)
    tally = OutcomeTally(columns)

    def write_failed() -> None:
        write_failed_rows(failed, table, tally.failed_rows, columns.failed_reasons())

    if tally.failed_rows and apart and hasattr(os, "fork"):
        with _written_apart(write_failed, failed):
            write_results(results, table, columns, issues, info, surface)
        return tally
    write_results(results, table, columns, issues, info, surface)
    if tally.failed_rows:
        write_failed()
    elif failed.exists():
        failed.unlink()  # a stale file from an earlier run would mislead
    return tally


@contextlib.contextmanager
def _written_apart(write: Callable[[], None], path: Path) -> Iterator[None]:
    """Run ``write`` (it saves ``path``) in a forked process while the body runs, then wait for it.

    Both files are written at once on two cores; what is written is the same as one after the
    other. The child's save error is raised here as the parent's own would be; a child that
    could not tell (killed, crashed) is written again here. When the body fails, the file the
    child saved is removed: written one after the other, it would not have been written.
    """
    reading, writing = os.pipe()
    with warnings.catch_warnings():
        # Python 3.12+ warns of a fork in a process with threads. The CLI's other threads are
        # idle (the event loop waiting in select, the executor's workers on their queue), and
        # the child only writes one file and leaves with os._exit.
        warnings.filterwarnings("ignore", message=".*fork", category=DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: write, say how it went, and leave without the parent's clean-up
        try:
            os.close(reading)
            _child_signals()
            gc.freeze()  # the parent's objects: never walked, so their pages stay shared
            try:
                write()
                told = ("saved", "")
            except OutputError as exc:
                told = ("refused", exc.reason)
            os.write(writing, pickle.dumps(told))
        finally:
            os._exit(0)
    os.close(writing)
    try:
        yield
    except BaseException:
        if _child_said(reading, pid)[0] == "saved":
            with contextlib.suppress(OSError):
                path.unlink()
        raise
    said, reason = _child_said(reading, pid)
    if said == "refused":
        raise OutputError(path, reason)
    if said != "saved":
        write()


def _child_said(reading: int, pid: int) -> tuple[str, str]:
    """Wait for the child; what it said (("", "") when it ended without saying)."""
    with os.fdopen(reading, "rb") as pipe:
        data = pipe.read()  # until the child's end closes: it has exited
    os.waitpid(pid, 0)
    try:
        kind, reason = pickle.loads(data) if data else ("", "")
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError):
        return "", ""
    return str(kind), str(reason)


def _child_signals() -> None:
    """A forked child's signals: Ctrl-C interrupts it, TERM ends it, none reaches the parent's loop."""
    with contextlib.suppress(ValueError, OSError):
        signal.set_wakeup_fd(-1)  # the parent's event loop's: a signal here must not wake it
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
