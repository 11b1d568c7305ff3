"""Time a dry run against ``validate`` of the same file, with and without numbers the account does not own.

Usage (from the repository root, in the project's virtualenv):

    python bench/bench_dryrun.py                          # 100,000 rows and DIDs, 0 % and 20 % unknown
    python bench/bench_dryrun.py --rows 20000 --repeat 3 --unknown 0.2

For each share of unknown numbers (``--unknown``), a CSV of ``--rows`` rows is generated: the
known rows name distinct DIDs of a generated account of ``--dids`` DIDs (``tests/helpers.py``'s
``write_inventory``: sync lists every DID), the unknown ones valid numbers the account does not
own, whose last 9 digits match no DID (the "did you mean" hint finds nothing: its worst case).
An in-process sandbox (rate limit raised) serves the account. Runs alternate, validate then dry
run, in this process:

* validate: ``importer.jobs.validate.validate_file`` (read, validate, results workbook, failed rows);
* dry run: ``importer.jobs.run.run_import`` with ``dry_run=True`` through the real code path (read,
  validate, pre-flight, sync of the whole account over ASGI, plan, results workbook), nothing sent.

It prints the medians and the ratio dry run / validate per share; the goal is at most 1.6. The exit
code is 0 when every ratio meets it. It is not a test: it is outside ``tests/`` and its name does
not match ``test_*.py``.
"""

from __future__ import annotations

import argparse
import csv
import gc
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent))
sys.path.insert(0, str(BENCH_DIR.parent / "tests"))  # the tests' generated accounts (helpers.py)

from helpers import desired_record, did_number, write_inventory  # noqa: E402

from importer.jobs.run import run_import  # noqa: E402  (the repository root goes on the path first)
from importer.jobs.validate import validate_file  # noqa: E402
from importer.options import ImportConfig, InputOptions, ValidateConfig, human_duration  # noqa: E402
from importer.sandbox import SANDBOX_API_KEY, SandboxConfig, create_sandbox  # noqa: E402

GOAL = 1.6
"""Dry run / validate of the same file, at most."""
COLUMNS = (
    "did_number",
    "for_inbound_call",
    "inbound_websocket_bot_id",
    "inbound_sip_trunk_id",
    "for_outbound_call",
    "outbound_websocket_bot_id",
    "outbound_sip_trunk_id",
    "status",
)


def write_sheet(path: Path, rows: int, dids: int, unknown: float, seed: int) -> int:
    """Write ``rows`` rows, ``unknown`` of them for numbers past the account's; return how many."""
    rng = random.Random(seed)
    strangers = round(rows * unknown)
    if rows - strangers > dids:
        raise SystemExit(f"--dids {dids} is fewer than the {rows - strangers} known rows")
    # Numbers past the inventory (did_number(dids + k)) are valid and differ in their last 9 digits
    # from every DID of the account, so near_match must look and find nothing.
    picks = rng.sample(range(dids), rows - strangers) + [dids + 1000 + k for k in range(strangers)]
    rng.shuffle(picks)
    with path.open("w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh)
        out.writerow(COLUMNS)
        for i in picks:
            record = desired_record(i)
            out.writerow(["+" + did_number(i), *(record.get(c, "") for c in COLUMNS[1:])])
    return strangers


def timed_validate(sheet: Path, folder: Path) -> tuple[float, float]:
    config = ValidateConfig(
        input=InputOptions(path=sheet),
        output=folder / "validate.results.xlsx",
        failed_out=folder / "validate.failed.xlsx",
        overwrite=True,
    )
    started, cpu = time.perf_counter(), time.process_time()
    validate_file(config)
    return time.perf_counter() - started, time.process_time() - cpu


def timed_dry_run(
    sheet: Path, folder: Path, transport: httpx.AsyncBaseTransport, strangers: int
) -> tuple[float, float, int]:
    """Wall and CPU seconds of one dry run, and the requests it sent (every one a read)."""
    config = ImportConfig(
        input=InputOptions(path=sheet),
        api_key=SANDBOX_API_KEY,
        base_url="http://sandbox.bench/api/v2",
        output=folder / "dryrun.results.xlsx",
        failed_out=folder / "dryrun.failed.xlsx",
        overwrite=True,
        journal=folder / "dryrun.journal.sqlite",
        requests_per_minute=10_000_000,
        retry_backoff=0,
        dry_run=True,
    )
    started, cpu = time.perf_counter(), time.process_time()
    summary = run_import(config, transport=transport)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    failed = summary.counts.get("failed", 0)
    if failed != strangers:  # every unknown number fails, and nothing else does
        raise SystemExit(f"the dry run failed {failed} rows, expected {strangers}: {summary.lines()}")
    return seconds, cpu, summary.requests


def _at_60(requests: int) -> str:
    """How long ``requests`` take at the API's 60 a minute (one a second, as bench_reads.py counts)."""
    return human_duration(requests)


def _load() -> str:
    """The 1-minute load average: on a shared machine, how much else was running."""
    return f"{os.getloadavg()[0]:.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000, help="data rows in the generated file")
    parser.add_argument("--dids", type=int, default=None, help="DIDs in the account (default: --rows)")
    parser.add_argument("--unknown", default="0,0.2", help="shares of unknown numbers, comma-separated")
    parser.add_argument("--repeat", type=int, default=3, help="measured runs of each kind (medians)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    dids = args.dids or args.rows
    print(
        f"{args.rows:,} rows (CSV), {dids:,} DIDs (sync lists every one), {args.repeat} runs each (medians); "
        f"load average {_load()}"
    )
    print("reads: the dry run's requests; at 60/min: what they take at the API's limit")
    header = (
        f"{'unknown':>8} {'validate s':>11} {'dry run s':>10} {'ratio':>6} {'goal':>5}  result "
        f"{'cpu ratio':>10} {'reads':>6} {'at 60/min':>10}   all runs (wall validate/dry run; cpu ...)"
    )
    print(header)
    print("-" * len(header))
    ok = True
    with tempfile.TemporaryDirectory(prefix="bench_dryrun_") as tmp:
        folder = Path(tmp)
        inventory = write_inventory(folder / "inventory.json", dids)
        sandbox = create_sandbox(SandboxConfig(inventory=inventory, requests_per_minute=10_000_000))
        transport = httpx.ASGITransport(app=sandbox.app)
        for share in (float(s) for s in args.unknown.split(",")):
            sheet = folder / f"sheet_{share:g}.csv"
            strangers = write_sheet(sheet, args.rows, dids, share, args.seed)
            validate: list[tuple[float, float]] = []
            dry: list[tuple[float, float]] = []
            reads = 0
            for n in range(args.repeat):
                gc.collect()
                validate.append(timed_validate(sheet, folder))
                gc.collect()
                seconds, cpu, reads = timed_dry_run(sheet, folder, transport, strangers)
                dry.append((seconds, cpu))
                print(
                    f"  {share:g} run {n + 1}: validate {validate[-1][0]:.1f} s, dry run {dry[-1][0]:.1f} s "
                    f"(cpu {validate[-1][1]:.1f} / {dry[-1][1]:.1f} s), load average {_load()}",
                    file=sys.stderr,
                    flush=True,
                )
            wall_v, wall_d = (statistics.median(t[0] for t in times) for times in (validate, dry))
            cpu_v, cpu_d = (statistics.median(t[1] for t in times) for times in (validate, dry))
            ratio = wall_d / wall_v
            passed = ratio <= GOAL
            ok &= passed
            runs = ", ".join(f"{v[0]:.1f}/{d[0]:.1f}" for v, d in zip(validate, dry, strict=True))
            cpus = ", ".join(f"{v[1]:.1f}/{d[1]:.1f}" for v, d in zip(validate, dry, strict=True))
            print(
                f"{share:>8.0%} {wall_v:>11.1f} {wall_d:>10.1f} {ratio:>6.2f} {GOAL:>5} "
                f"{'PASS' if passed else 'MISS':>7} {cpu_d / cpu_v:>10.2f} {reads:>6,} {_at_60(reads):>10}"
                f"   {runs}; cpu {cpus}",
                flush=True,
            )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
