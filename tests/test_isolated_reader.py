"""The capped child process that parses workbooks: it answers JSON, and the parent trusts nothing else."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import openpyxl
import pytest

from importer.errors import InputError, UnreadableFileError
from importer.read import isolated as isolated_reader
from importer.read.isolated import grid_from_json, grid_to_json, read_workbook_isolated
from importer.read.workbook import SheetGrid

REPO = Path(__file__).resolve().parent.parent
HEADER = ["DID Number", "Inbound Mode", "Outbound Mode"]


def _workbook(path: Path) -> Path:
    book = openpyxl.Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.title = "DIDs"
    sheet.append(HEADER)
    sheet.append(["918012345678", 3, 4])
    book.save(path)
    return path


@pytest.mark.slow
def test_isolated_reader_child_answers_json_not_pickle(tmp_path: Path) -> None:
    path = _workbook(tmp_path / "dids.xlsx")
    request = json.dumps(
        {"path": str(path), "name": path.name, "sheets": [], "all_sheets": False, "extra_keys": []}
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", isolated_reader._CHILD_CODE],
        input=request.encode(),
        capture_output=True,
        timeout=60,
        env=env,
        check=True,
    )
    answer = json.loads(done.stdout)
    (grid,) = answer["ok"]["grids"]
    assert grid["header"] == HEADER and grid["columns"][0] == ["918012345678"]
    assert answer["ok"]["sheets"] == [{"name": "DIDs", "rows": 1, "matches": True}]


@pytest.mark.slow
def test_isolated_reader_reads_a_workbook_and_reports_child_errors(tmp_path: Path) -> None:
    path = _workbook(tmp_path / "dids.xlsx")
    (grid,) = read_workbook_isolated(path, (), frozenset()).grids
    assert (grid.sheet, grid.header_row, grid.header) == ("DIDs", 1, tuple(HEADER))
    assert grid.columns == (["918012345678"], ["3"], ["4"])
    with pytest.raises(InputError, match="'DIDs'"):
        read_workbook_isolated(path, ("Nope",), frozenset())


def test_isolated_reader_refuses_a_pickled_answer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A child that answers with a pickle (even of a valid grid) is not believed: unpickling runs code."""
    grid = SheetGrid("DIDs", 1, 0, tuple(HEADER), ([], [], []))
    payload = pickle.dumps(("ok", grid))
    code = f"import sys; sys.stdout.buffer.write({payload!r})"
    monkeypatch.setattr(isolated_reader, "_CHILD_CODE", code)
    with pytest.raises(UnreadableFileError, match="could not be read safely"):
        read_workbook_isolated(_workbook(tmp_path / "dids.xlsx"), (), frozenset())


def test_grid_json_round_trip_keeps_any_text() -> None:
    odd = ["", "a\x00b", "line\nbreak", "\ud800", "😀", "é" * 3, '"quoted"\\']
    grid = SheetGrid("Ünïcode sheet", 7, 2, tuple(odd), (odd, list(reversed(odd))))
    assert grid_from_json(json.loads(json.dumps(grid_to_json(grid)))) == grid


@pytest.mark.parametrize(
    "data",
    [
        None,
        [],
        {"sheet": "S", "header_row": 1, "first_column": 0, "header": ["a"]},
        {"sheet": "S", "header_row": "1", "first_column": 0, "header": ["a"], "columns": [[]]},
        {"sheet": "S", "header_row": True, "first_column": 0, "header": ["a"], "columns": [[]]},
        {"sheet": "S", "header_row": 1, "first_column": 0, "header": [1], "columns": [[]]},
        {"sheet": "S", "header_row": 1, "first_column": 0, "header": ["a"], "columns": [["x", None]]},
        {"sheet": 5, "header_row": 1, "first_column": 0, "header": ["a"], "columns": [[]]},
    ],
)
def test_grid_from_json_refuses_wrong_types(data: object) -> None:
    with pytest.raises(ValueError):
        grid_from_json(data)
