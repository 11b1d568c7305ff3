"""Run the workbook reader in a child process with memory and CPU caps and a wall-clock timeout.

Formats whose parsers are less hardened (.xls, .xlsb, .ods) are parsed in a child, so a hostile
file can crash or exhaust only the child. The child answers with JSON (the cells are text), never
a pickle: unpickling what a process that just parsed a hostile file wrote would let that file run
code in the parent. A sheet choice the child cannot make (``SheetChoiceNeeded``) crosses as data.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeGuard

from importer.errors import ImporterError, InputError, UnreadableFileError
from importer.read.sheets import SheetChoiceNeeded, SheetInfo
from importer.read.workbook import SheetGrid, WorkbookRead, calamine_failure, read_workbook

CHILD_MEMORY_BYTES = 2 * 1024**3
CHILD_TIMEOUT_SECONDS = 60.0


def _limit_child() -> None:
    """Cap the child's memory and CPU so a hostile file cannot take the machine with it."""
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (CHILD_MEMORY_BYTES, CHILD_MEMORY_BYTES))
    cpu = int(CHILD_TIMEOUT_SECONDS) + 5
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 5))


def _child_main() -> None:
    """Read one workbook named on stdin and write the outcome to stdout as JSON."""
    request = json.loads(sys.stdin.read())
    outcome: dict[str, object]
    try:
        found = read_workbook(
            Path(request["path"]),
            request["sheets"],
            frozenset(request["extra_keys"]),
            all_sheets=request["all_sheets"],
        )
        outcome = {"ok": workbook_to_json(found)}
    except SheetChoiceNeeded as error:
        sheets = [sheet_to_json(s) for s in error.sheets]
        outcome = {"error": {"kind": "SheetChoiceNeeded", "message": str(error), "sheets": sheets}}
    except ImporterError as error:
        outcome = {"error": {"kind": type(error).__name__, "message": str(error)}}
    except BaseException as error:  # PanicException derives from BaseException
        message = str(calamine_failure(request["name"], error))
        outcome = {"error": {"kind": "UnreadableFileError", "message": message}}
    # ensure_ascii: any text calamine hands over (lone surrogates included) encodes and decodes back.
    sys.stdout.write(json.dumps(outcome, separators=(",", ":")))
    sys.stdout.flush()


def grid_to_json(grid: SheetGrid) -> dict[str, object]:
    """Return a SheetGrid as JSON-ready data (the child's answer)."""
    return {
        "sheet": grid.sheet,
        "header_row": grid.header_row,
        "first_column": grid.first_column,
        "header": list(grid.header),
        "columns": list(grid.columns),
    }


def sheet_to_json(sheet: SheetInfo) -> dict[str, object]:
    return {"name": sheet.name, "rows": sheet.rows, "matches": sheet.matches}


def sheet_from_json(data: object) -> SheetInfo:
    """Rebuild a SheetInfo from the child's JSON, checking every type.

    Raises:
        ValueError: The data is not a sheet's survey.
    """
    if not isinstance(data, dict):
        raise ValueError("the sheet is not an object")
    name, rows, matches = data.get("name"), data.get("rows"), data.get("matches")
    if not (isinstance(name, str) and type(rows) is int and rows >= 0 and type(matches) is bool):
        raise ValueError("the sheet's fields have the wrong types")
    return SheetInfo(name, rows, matches)


def workbook_to_json(found: WorkbookRead) -> dict[str, object]:
    """Return a WorkbookRead as JSON-ready data (the child's answer)."""
    return {
        "sheets": [sheet_to_json(s) for s in found.sheets],
        "grids": [grid_to_json(g) for g in found.grids],
    }


def workbook_from_json(data: object) -> WorkbookRead:
    """Rebuild a WorkbookRead from the child's JSON, checking every type.

    Raises:
        ValueError: The data is not a workbook's survey and grids.
    """
    if not isinstance(data, dict) or not isinstance(data.get("sheets"), list):
        raise ValueError("the workbook is not an object with sheets")
    grids = data.get("grids")
    if not isinstance(grids, list):
        raise ValueError("the workbook has no grids")
    return WorkbookRead(tuple(map(sheet_from_json, data["sheets"])), tuple(map(grid_from_json, grids)))


def grid_from_json(data: object) -> SheetGrid:
    """Rebuild a SheetGrid from the child's JSON, checking every type (the child is not trusted).

    Raises:
        ValueError: The data is not a grid of text.
    """
    if not isinstance(data, dict):
        raise ValueError("the grid is not an object")
    sheet, header_row, first_column = data.get("sheet"), data.get("header_row"), data.get("first_column")
    header, columns = data.get("header"), data.get("columns")
    if not (
        isinstance(sheet, str)
        and type(header_row) is int
        and type(first_column) is int
        and _is_text_list(header)
        and isinstance(columns, list)
        and all(_is_text_list(column) for column in columns)
    ):
        raise ValueError("the grid's fields have the wrong types")
    return SheetGrid(sheet, header_row, first_column, tuple(header), tuple(columns))


def _is_text_list(value: object) -> TypeGuard[list[str]]:
    return isinstance(value, list) and all(type(cell) is str for cell in value)


def _outcome(stdout: bytes, name: str) -> WorkbookRead | ImporterError:
    """Decode the child's answer: the workbook read, or the error it reported.

    Raises:
        ValueError: The answer is not one the child writes.
    """
    answer = json.loads(stdout)
    if isinstance(answer, dict) and set(answer) == {"ok"}:
        return workbook_from_json(answer["ok"])
    error = answer.get("error") if isinstance(answer, dict) and set(answer) == {"error"} else None
    if not (isinstance(error, dict) and isinstance(error.get("message"), str)):
        raise ValueError("the answer is neither a workbook nor an error")
    if error.get("kind") == "SheetChoiceNeeded" and isinstance(error.get("sheets"), list):
        return SheetChoiceNeeded(name, [sheet_from_json(s) for s in error["sheets"]])
    error_class: Callable[[str], ImporterError] = (
        InputError if error.get("kind") == "InputError" else UnreadableFileError
    )
    return error_class(error["message"])


_CHILD_CODE = "from importer.read.isolated import _limit_child, _child_main\n_limit_child()\n_child_main()\n"


def read_workbook_isolated(
    path: Path,
    wanted: Sequence[str],
    extra_keys: frozenset[str],
    *,
    all_sheets: bool = False,
    timeout: float = CHILD_TIMEOUT_SECONDS,
) -> WorkbookRead:
    """Run ``read_workbook`` in a child process with a memory cap and a wall-clock timeout.

    Args:
        path: The workbook.
        wanted: As for ``read_workbook``.
        extra_keys: As for ``read_workbook``.
        all_sheets: As for ``read_workbook``.
        timeout: Seconds before the child is killed.

    Returns:
        The child's WorkbookRead; a crash, kill or timeout of the child becomes UnreadableFileError.
    """
    unsafe = UnreadableFileError(
        f"{path.name} could not be read safely (the reader crashed, ran out of memory or time); "
        "open it in Excel and save as .xlsx"
    )
    package_root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
    # Thread pools reserve address space per thread; keep the child small under its memory cap.
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "RAYON_NUM_THREADS"):
        env[var] = "1"
    env["RUST_BACKTRACE"] = "0"
    request = json.dumps(
        {
            "path": str(path),
            "name": path.name,
            "sheets": list(wanted),
            "all_sheets": all_sheets,
            "extra_keys": sorted(extra_keys),
        }
    )
    try:
        done = subprocess.run(
            [sys.executable, "-c", _CHILD_CODE],
            input=request.encode(),
            capture_output=True,
            timeout=timeout,
            env=env,
            check=False,
        )
    except (subprocess.TimeoutExpired, OSError):
        raise unsafe from None
    if done.returncode != 0 or not done.stdout:
        raise unsafe
    try:
        outcome = _outcome(done.stdout, path.name)
    except (ValueError, RecursionError):  # JSONDecodeError is a ValueError
        raise unsafe from None
    if isinstance(outcome, ImporterError):
        raise outcome
    return outcome


if __name__ == "__main__":  # pragma: no cover - the child entry point is _CHILD_CODE
    _limit_child()
    _child_main()
