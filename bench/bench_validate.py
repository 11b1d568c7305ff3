"""Benchmark the validate-only pipeline against the I/O floor of the same file.

Usage (from the repository root, in the project's virtualenv):

    python bench/bench_validate.py --rows 100000 --format xlsx --repeat 3
    python bench/bench_validate.py --rows 1000000 --format csv --repeat 1

Each measured run is a fresh child process (so runs cannot warm each other's caches and the
end-to-end run's peak RSS is its own). A run is timed inside the child, after imports:

* end to end: ``importer.jobs.validate.validate_file`` (read, validate, results workbook, failed file),
  with the stage times taken by thin timing wrappers around the functions the pipeline calls;
* floor: the least any validate-only run must do with the same file: read it (calamine for a
  workbook, pyarrow for CSV, cells turned into text) and stream "the same table" (the input's
  columns plus the 8 result columns ``import_status`` .. ``import_row``) with ``write_string`` into
  an xlsxwriter workbook in ``constant_memory`` mode.

The script prints one table: stage medians, end-to-end median, floor median, their ratio, the peak
RSS of the end-to-end run and PASS/MISS against the goals. It is not a test: it is outside
``tests/`` and its name does not match ``test_*.py``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
DEFAULT_OUT = BENCH_DIR / "out"
GENERATOR_VERSION = 3
"""Bump when the generated data changes, so cached inputs are made again."""

GOALS: dict[str, tuple[float, float | None]] = {
    # format: (max end-to-end / floor, max peak RSS in MB of the end-to-end run, None = no goal)
    "xlsx": (1.3, None),
    "csv": (1.5, 1536.0),
}

HEADERS = (
    "TN",
    "Inbound Routing",
    "Inbound Bot ID",
    "Inbound Trunk",
    "Outbound Routing",
    "Outbound Bot ID",
    "Outbound Trunk",
    "Status",
    "Customer",
    "Site Label",
)
# importer.output.results.RESULT_COLUMNS + ROW_COLUMN, spelled out: the floor's child process must not
# import the package (pandas and pandera would weigh on the floor it measures).
RESULT_HEADERS = (
    "import_status",
    "import_action",
    "import_reason",
    "import_did_id",
    "import_routing_id",
    "import_http_status",
    "import_attempts",
    "import_row",
)

# (country code, national length, leading national digits): national numbers never start with a
# trunk prefix, so they are what carriers export as international numbers. The digits after the
# lead are drawn again until phonenumbers calls the number valid (validation rejects numbers that
# are merely of a possible length).
_COUNTRIES = (
    ("91", 10, ("6", "7", "8", "9")),
    ("1", 10, ("212", "312", "415", "480", "617", "646", "206", "303")),
    ("44", 10, ("20", "113", "121", "161", "74", "75", "77", "78", "79")),
    ("49", 11, ("151", "152", "160", "170", "171", "172", "175", "176", "177", "178", "179")),
    ("55", 11, ("11", "21", "31", "41", "51", "61", "71", "81")),
    ("61", 9, ("2", "3", "7", "8", "4")),
    ("65", 8, ("6", "8", "9")),
    ("971", 9, ("50", "52", "54", "55", "56", "58")),
    ("33", 9, ("1", "2", "3", "4", "5", "6", "7")),
    ("27", 9, ("11", "21", "31", "60", "71", "72", "73", "74", "76", "82", "83", "84")),
)
_CUSTOMERS = ("Acme Telecom", "Globex", "Initech GmbH", "Umbrella Ltd", "Société Générale", "Tata Comm")
_SITES = ("Mumbai DC", "Frankfurt-1", "London Ops", "São Paulo", "Sydney NOC", "Singapore", "Dubai")
# Invalid-row kinds, each a way real carrier sheets go wrong.
_BAD_KINDS = (
    "scientific",
    "no_country_code",
    "bad_mode",
    "missing_bot",
    "unused_id",
    "bad_status",
    "bad_id",
    "duplicate",
    "no_did",
)


# --- data generation -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GeneratedFile:
    """A generated input file and what the floor needs to know about it."""

    path: Path
    rows: int
    invalid: int


def _phone(rng: random.Random, serial: int) -> tuple[str, str]:
    """Return (E.164 digits, the cell as a carrier writes it); unique per serial."""
    import phonenumbers

    code, length, leads = _COUNTRIES[serial % len(_COUNTRIES)]
    # The last six digits come from the serial, so numbers stay unique up to 10M rows per country.
    tail = f"{serial // len(_COUNTRIES) % 1_000_000:06d}"
    for _ in range(200):
        lead = rng.choice(leads)
        middle = "".join(rng.choice("0123456789") for _ in range(length - len(lead) - len(tail)))
        national = lead + middle + tail
        if phonenumbers.is_valid_number(phonenumbers.parse("+" + code + national)):
            break
    digits = code + national
    style = rng.random()
    if style < 0.55:
        cell = "+" + digits
    elif style < 0.85:
        cell = digits
    elif style < 0.95:
        cell = f"+{code} {national[:3]} {national[3:6]} {national[6:]}"
    else:
        cell = f"00{code}-{national[:4]}-{national[4:]}"
    return digits, cell


def _valid_row(rng: random.Random, serial: int) -> list[object]:
    _, phone = _phone(rng, serial)
    kind = serial % 4
    label = rng.random() < 0.5
    if kind == 0:
        routing: list[object] = [
            "WebSocket bot" if label else 3,
            rng.randint(90, 99),
            "",
            "only-answer" if label else 4,
            "",
            "",
        ]
    elif kind == 1:
        routing = ["mobile" if label else 1, "", "", "WebSocket bot" if label else 3, rng.randint(90, 99), ""]
    elif kind == 2:
        routing = [
            "SIP" if label else 2,
            "",
            rng.randint(1, 40),
            "SIP" if label else 2,
            "",
            rng.randint(1, 40),
        ]
    else:
        routing = ["mobile" if label else 1, "", "", "only-answer" if label else 4, "", ""]
    status = rng.choice(("active", "active", "1", "", "inactive", "yes"))
    return [phone, *routing, status, rng.choice(_CUSTOMERS), f"{rng.choice(_SITES)} #{serial % 97}"]


def _invalid_row(rng: random.Random, serial: int, nth: int, earlier_phone: object) -> list[object]:
    row = _valid_row(rng, serial)
    kind = _BAD_KINDS[nth % len(_BAD_KINDS)]
    if kind == "scientific":
        digits, _ = _phone(rng, serial)
        row[0] = f"{int(digits[:2]) / 10:.1f}{digits[2:6]}E+{len(digits) - 1}"
    elif kind == "no_country_code":
        row[0] = "0" + _phone(rng, serial)[0][2:]
    elif kind == "bad_mode":
        row[1] = "voicemail"
    elif kind == "missing_bot":
        row[1:4] = ["WebSocket bot", "", ""]
    elif kind == "unused_id":
        row[1:4] = ["mobile", 93, ""]
    elif kind == "bad_status":
        row[7] = "maybe"
    elif kind == "bad_id":
        row[1:4] = ["SIP", "", "trunk-7"]
    elif kind == "duplicate":
        row[0] = earlier_phone
    else:
        row[0] = ""
    return row


def _rows(count: int, invalid_rate: float, seed: int) -> Iterator[tuple[list[object], bool]]:
    rng = random.Random(seed)
    step = max(round(1 / invalid_rate), 2) if invalid_rate > 0 else 0
    first_phone: object = None
    for i in range(count):
        bad = step > 0 and i % step == step - 1
        row = _invalid_row(rng, i, i // step, first_phone) if bad else _valid_row(rng, i)
        if first_phone is None:
            first_phone = row[0]
        yield row, bad


def generate(out: Path, rows: int, fmt: str, invalid_rate: float, seed: int) -> GeneratedFile:
    """Write (or reuse) a carrier-style sheet of ``rows`` rows with about ``invalid_rate`` bad rows."""
    stem = f"carrier_{rows}_{fmt}_s{seed}_r{invalid_rate:g}_v{GENERATOR_VERSION}"
    path = out / f"{stem}.{fmt}"
    meta = out / f"{stem}.json"
    if path.exists() and meta.exists():
        return GeneratedFile(path, rows, json.loads(meta.read_text())["invalid"])
    out.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".part")
    invalid = 0
    if fmt == "csv":
        with partial.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(HEADERS)
            for row, bad in _rows(rows, invalid_rate, seed):
                invalid += bad
                writer.writerow(row)
    else:
        import xlsxwriter

        book = xlsxwriter.Workbook(str(partial), {"constant_memory": True})
        sheet = book.add_worksheet("DIDs")
        text = book.add_format({"num_format": "@"})
        sheet.set_column(0, 0, 18, text)  # carriers that know better format the number column as Text
        for c, header in enumerate(HEADERS):
            sheet.write_string(0, c, header)
        for r, (row, bad) in enumerate(_rows(rows, invalid_rate, seed), start=1):
            invalid += bad
            for c, value in enumerate(row):
                if isinstance(value, int):
                    sheet.write_number(r, c, value)
                elif value:
                    sheet.write_string(r, c, str(value), text if c == 0 else None)
        book.close()
    os.replace(partial, path)
    meta.write_text(json.dumps({"rows": rows, "invalid": invalid}))
    return GeneratedFile(path, rows, invalid)


# --- the measured runs (each in a child process) ----------------------------------------------------


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def child_end_to_end(path: Path, out: Path) -> dict[str, Any]:
    """Run validate_file once; time each stage through wrappers around what the pipeline calls."""
    sys.path.insert(0, str(REPO))
    import importer.jobs.outputs as outputs
    import importer.jobs.validate as pipeline
    from importer.options import InputOptions, ValidateConfig

    stages: dict[str, float] = {"read": 0.0, "validate": 0.0, "write": 0.0, "write_failed": 0.0}

    def timed(stage: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                stages[stage] += time.perf_counter() - start

        return wrapper

    # The names validate_file and write_outputs look up in their modules: wrapping them times each
    # stage of the very run.
    for module, stage, name in (
        (pipeline, "read", "read_table"),
        (pipeline, "validate", "validate_table"),
        (outputs, "write", "write_results"),
        (outputs, "write_failed", "write_failed_rows"),
    ):
        setattr(module, name, timed(stage, getattr(module, name)))
    config = ValidateConfig(
        InputOptions(path),
        output=out / f"{path.stem}.results.xlsx",
        failed_out=out / f"{path.stem}.failed.xlsx",
    )
    start = time.perf_counter()
    summary = pipeline.validate_file(config)
    total = time.perf_counter() - start
    return {
        "total": total,
        **stages,
        "rows": summary.rows,
        "failed": summary.failed,
        "rss_mb": _peak_rss_mb(),
    }


def _floor_read_xlsx(path: Path) -> tuple[list[str], list[list[str]]]:
    import python_calamine as pc

    raw = pc.CalamineWorkbook.from_path(str(path)).get_sheet_by_index(0).to_python()
    # Cells to text: what writing them with write_string needs, nothing more.
    columns = [
        [v if type(v) is str else str(int(v)) if type(v) is float and v.is_integer() else str(v) for v in col]
        for col in zip(*raw[1:], strict=True)
    ]
    return [str(h) for h in raw[0]], columns


def _floor_read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    import pyarrow as pa  # type: ignore[import-untyped]
    from pyarrow import csv as pacsv

    types = {h: pa.string() for h in HEADERS}
    table = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(column_types=types))
    return list(table.column_names), [table.column(i).to_pylist() for i in range(table.num_columns)]


def child_floor(path: Path, out: Path, fmt: str, invalid: int) -> dict[str, Any]:
    """Read the file and stream the same table (input + 8 result columns) with write_string."""
    import xlsxwriter

    start = time.perf_counter()
    headers, columns = _floor_read_xlsx(path) if fmt == "xlsx" else _floor_read_csv(path)
    read = time.perf_counter() - start
    rows = len(columns[0])
    # The result columns of a validate-only run: status, (empty action), reason, three empty ids,
    # attempts "0" and the Excel row; the generator's bad rows are spread evenly.
    step = max(rows // invalid, 1) if invalid else 0
    reason = (
        '"Inbound Routing": "voicemail" is not an inbound mode; use one of 1 mobile, 2 SIP, 3 WebSocket bot'
    )
    bad = [bool(step) and i % step == step - 1 for i in range(rows)]
    result_columns = [
        ["failed" if b else "valid" for b in bad],
        [""] * rows,
        [reason if b else "validated only" for b in bad],
        [""] * rows,
        [""] * rows,
        [""] * rows,
        ["0"] * rows,
        [str(r) for r in range(2, rows + 2)],
    ]
    table = [*columns, *result_columns]
    names = [*headers, *RESULT_HEADERS]
    start = time.perf_counter()
    book = xlsxwriter.Workbook(str(out / f"{path.stem}.floor.xlsx"), {"constant_memory": True})
    sheet = book.add_worksheet("Results")
    for c, name in enumerate(names):
        sheet.write_string(0, c, name)
    write = sheet.write_string
    for r, values in enumerate(zip(*table, strict=True), start=1):
        for c, value in enumerate(values):
            if value:
                write(r, c, value)
    book.close()
    written = time.perf_counter() - start
    return {"total": read + written, "read": read, "write": written, "rss_mb": _peak_rss_mb()}


def run_child(args: list[str], timeout: float) -> dict[str, Any]:
    """Run this script in a child process in one of its --child modes; return its JSON line."""
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=REPO,
    )
    if done.returncode != 0:
        sys.exit(f"child {args[:2]} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# --- report -------------------------------------------------------------------------------------------


def _machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs, {model}, Python {sys.version.split()[0]}"


def _median(runs: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(r[key] for r in runs))


def report(fmt: str, file: GeneratedFile, e2e: list[dict[str, Any]], floor: list[dict[str, Any]]) -> bool:
    """Print the table; return True when every goal holds."""
    max_ratio, max_rss = GOALS[fmt]
    e2e_median = _median(e2e, "total")
    floor_median = _median(floor, "total")
    ratio = e2e_median / floor_median
    rss = max(r["rss_mb"] for r in e2e)
    size = file.path.stat().st_size / 1024**2
    print(f"machine     {_machine()}")
    print(f"input       {file.path.name}: {file.rows} rows, {file.invalid} generated bad rows, {size:.1f} MB")
    print(f"runs        {len(e2e)} end-to-end, {len(floor)} floor (medians; each run a fresh process)")
    print()
    print(f"{'stage':<34}{'median s':>10}   all runs")
    lines = [
        ("read (read_table)", e2e, "read"),
        ("validate (validate_table)", e2e, "validate"),
        ("write results (incl. outcomes)", e2e, "write"),
        ("write failed rows", e2e, "write_failed"),
        ("END TO END (validate_file)", e2e, "total"),
        (f"floor read ({'calamine' if fmt == 'xlsx' else 'pyarrow'})", floor, "read"),
        ("floor write (write_string)", floor, "write"),
        ("FLOOR", floor, "total"),
    ]
    for label, runs, key in lines:
        each = " ".join(f"{r[key]:.2f}" for r in runs)
        print(f"{label:<34}{_median(runs, key):>10.2f}   {each}")
    print()
    ok = ratio <= max_ratio
    print(f"ratio end-to-end / floor   {ratio:.3f}   goal <= {max_ratio}   {'PASS' if ok else 'MISS'}")
    floor_rss = max(r["rss_mb"] for r in floor)
    if max_rss is None:
        print(f"peak RSS end-to-end        {rss:.0f} MB (floor {floor_rss:.0f} MB)   no goal")
    else:
        rss_ok = rss <= max_rss
        ok = ok and rss_ok
        print(
            f"peak RSS end-to-end        {rss:.0f} MB (floor {floor_rss:.0f} MB)   "
            f"goal <= {max_rss:.0f} MB   {'PASS' if rss_ok else 'MISS'}"
        )
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--format", choices=("xlsx", "csv"), default="xlsx")
    parser.add_argument("--repeat", type=int, default=3, help="measured runs of each kind (medians)")
    parser.add_argument("--invalid-rate", type=float, default=0.03, help="share of generated bad rows")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="folder for generated and written files"
    )
    parser.add_argument("--timeout", type=float, default=1200.0, help="seconds allowed per child run")
    parser.add_argument("--child", choices=("e2e", "floor"), help=argparse.SUPPRESS)
    parser.add_argument("--input", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--invalid", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child == "e2e":
        print(json.dumps(child_end_to_end(args.input, args.out)))
        return
    if args.child == "floor":
        print(json.dumps(child_floor(args.input, args.out, args.format, args.invalid)))
        return

    started = time.perf_counter()
    file = generate(args.out, args.rows, args.format, args.invalid_rate, args.seed)
    print(f"input ready in {time.perf_counter() - started:.1f} s: {file.path}", file=sys.stderr)
    common = ["--input", str(file.path), "--out", str(args.out), "--format", args.format]
    e2e: list[dict[str, Any]] = []
    floor: list[dict[str, Any]] = []
    # Interleaved, so a slow spell of a noisy machine hits both kinds alike.
    for n in range(args.repeat):
        e2e.append(run_child(["--child", "e2e", *common], args.timeout))
        floor.append(run_child(["--child", "floor", *common, "--invalid", str(file.invalid)], args.timeout))
        last = f"end-to-end {e2e[-1]['total']:.2f} s, floor {floor[-1]['total']:.2f} s"
        print(f"run {n + 1}/{args.repeat}: {last}", file=sys.stderr)
    ok = report(args.format, file, e2e, floor)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
