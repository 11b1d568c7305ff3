"""Where the output workbooks go, and saving one atomically: default and stamped names, the
failed-rows name beside a results workbook, never overwriting the input, plain save errors.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import itertools
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import xlsxwriter
import xlsxwriter.exceptions

from importer.errors import InputError, OutputError
from importer.model import RawTable

_WORKBOOK_OPTIONS = {"constant_memory": True}


def default_paths(input_path: Path) -> tuple[Path, Path]:
    """Return where the results and failed-rows workbooks go by default.

    Args:
        input_path: The imported file.

    Returns:
        ``(<dir>/<stem>.results.xlsx, <dir>/<stem>.failed.xlsx)``; neither can equal the input,
        since both end in a suffix the input's own name cannot end in.
    """
    folder, stem = input_path.parent, input_path.stem
    return folder / f"{stem}.results.xlsx", folder / f"{stem}.failed.xlsx"


def stamped_path(path: Path, when: dt.datetime) -> Path:
    """Return a free name beside ``path`` with a timestamp: ``x.results.xlsx`` -> ``x.results.<stamp>.xlsx``.

    Args:
        path: The name that is taken (``<stem>.results.xlsx``).
        when: The time to stamp (local time, to the second).

    Returns:
        ``<stem>.results.<YYYYmmdd-HHMMSS>.xlsx``, with ``-2``, ``-3``... added when that is taken too
        (the failed-rows name that goes with it, by ``failed_path_for``, must be free as well).
    """
    stem = path.name[: -len(".xlsx")] if path.name.lower().endswith(".xlsx") else path.name
    stamp = when.strftime("%Y%m%d-%H%M%S")
    for n in itertools.count(1):
        candidate = path.with_name(f"{stem}.{stamp}{'' if n == 1 else f'-{n}'}.xlsx")
        if not candidate.exists() and not failed_path_for(candidate).exists():
            return candidate
    raise AssertionError("unreachable")  # pragma: no cover


_RESULTS_NAME = re.compile(r"(?P<stem>.*)\.results(?P<stamp>\.\d{8}-\d{6}(?:-\d+)?)?\.xlsx", re.IGNORECASE)


def failed_path_for(results: Path) -> Path:
    """Return the failed-rows file that goes with a results workbook, beside it.

    Args:
        results: The results workbook.

    Returns:
        ``x.results.xlsx`` -> ``x.failed.xlsx``, ``x.results.<stamp>.xlsx`` -> ``x.failed.<stamp>.xlsx``,
        any other ``x.xlsx`` -> ``x.failed.xlsx``.
    """
    match = _RESULTS_NAME.fullmatch(results.name)
    if match:
        return results.with_name(f"{match['stem']}.failed{match['stamp'] or ''}.xlsx")
    name = results.name
    stem = name[: -len(".xlsx")] if name.lower().endswith(".xlsx") else name
    return results.with_name(f"{stem}.failed.xlsx")


def check_workbook_name(path: Path, option: str = "-o") -> None:
    """Refuse an output name that does not end in .xlsx: the tool writes only workbooks.

    Raises:
        InputError: the name ends otherwise (``out.csv`` would be a workbook named .csv).
    """
    if path.suffix.lower() != ".xlsx":
        raise InputError(
            f"{path.name}: results are always an Excel workbook; give {option} a name ending in .xlsx "
            f"(e.g. {path.with_suffix('.xlsx').name})"
        )


def _refuse_input(path: Path, table: RawTable) -> None:
    source = table.source.path
    same = path.resolve() == source.resolve()
    if not same and path.exists() and source.exists():
        same = os.path.samefile(path, source)
    if same:
        raise InputError(f"refusing to overwrite the input file {source.name}: choose another output path")


def save_problem(exc: OSError, *, replacing: bool) -> str:
    """Say in plain words why a file could not be saved (never naming a temp file).

    Args:
        exc: The error from creating the folder, writing the temp file or replacing the target.
        replacing: True when the temp file was written and only replacing the target failed, so
            the folder is writable and a refusal comes from the target file itself.
    """
    code = exc.errno
    if code in (errno.EACCES, errno.EPERM):
        if replacing:
            return "the file is locked by another program (open in Excel?) or read-only"
        return "permission denied (the folder is read-only or belongs to another user)"
    reasons = {
        errno.ENOENT: "the folder does not exist",
        errno.ENOTDIR: "a part of the path is a file, not a folder",
        errno.EEXIST: "a part of the path is a file, not a folder",
        errno.EISDIR: "a folder has that name",
        errno.EROFS: "the disk is read-only",
        errno.ENOSPC: "the disk is full",
        errno.EDQUOT: "the disk quota is used up",
        errno.ENAMETOOLONG: "the name is too long",
    }
    if code in reasons:
        return reasons[code]
    return (os.strerror(code) if code else type(exc).__name__).lower()


@contextlib.contextmanager
def atomic_workbook(path: Path) -> Iterator[Any]:
    """Yield a streaming workbook written to a temp file that replaces ``path`` once complete.

    The results, failed-rows and export workbooks are written through here, so a reader
    never sees a half-written file and a failed save leaves the earlier one in place.

    Failing to save raises ``OutputError`` naming ``path`` (the temp file is an internal detail)
    with a plain reason. The folder must exist (``jobs.outputs.check_writable`` makes it).
    """
    # Not mkstemp: its 0600 mode would stick to the final file; this name is unique enough.
    temp_name = str(path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"))
    replacing = False
    try:
        book = xlsxwriter.Workbook(temp_name, _WORKBOOK_OPTIONS)
        try:
            yield book
        finally:
            book.close()
        replacing = True
        os.replace(temp_name, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(temp_name)
        # xlsxwriter wraps the OSError of writing the file in FileCreateError.
        cause = exc.args[0] if isinstance(exc, xlsxwriter.exceptions.FileCreateError) and exc.args else exc
        if isinstance(cause, OSError):
            raise OutputError(path, save_problem(cause, replacing=replacing)) from None
        raise
