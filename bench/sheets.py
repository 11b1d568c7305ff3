"""The generated files the request and dry-run benchmarks share: an account's DIDs as a routing sheet.

Both ``bench_reads.py`` and ``bench_dryrun.py`` import the file they run from here, so the two
measure the same kind of sheet. The account itself is ``tests/helpers.py``'s ``write_inventory``
(DID ``i`` is ``did_number(i)``, id ``1000 + i``); each row asks ``desired_record(i)``.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent))
sys.path.insert(0, str(BENCH_DIR.parent / "tests"))  # the tests' generated accounts (helpers.py)

from helpers import SHEET_FIELDS, desired_record, did_number  # noqa: E402

__all__ = ["COLUMNS", "write_sheet"]

COLUMNS = SHEET_FIELDS


def write_sheet(path: Path, picks: list[int]) -> None:
    """Write a CSV with one row per DID index of ``picks``, each asking ``desired_record``.

    An index past the account's DIDs names a valid number the account does not own.
    """
    with path.open("w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh)
        out.writerow(COLUMNS)
        for i in picks:
            record = desired_record(i)
            out.writerow(["+" + did_number(i), *(record.get(c, "") for c in COLUMNS[1:])])
