"""Count the requests a run sends: reads (live state) and writes, against the in-process sandbox.

Usage (from the repository root, in the project's virtualenv):

    python bench/bench_reads.py                      # 5,000 and 100,000 DIDs x 10 and 1,000 rows
    python bench/bench_reads.py --dids 5000 --rows 10 --routed 0

For each inventory size, file size and sync kind (full: sync carries dids[] and bots[]; lean:
routing[] only), a fresh sandbox serves a generated account; ``run_import`` imports a generated
file whose rows name DIDs spread over the whole inventory (about ``--routed`` of them already
routed, differently: updates; the rest creates). The sandbox's own request counters give the
reads (every request but the routing writes) and the writes.

Goals: full sync at most 3 reads (connections, sync, the closing sync); lean sync at most
min(unresolved rows, pages of the DID list) + 4, where unresolved rows are the rows whose DID
sync did not name (it names routed DIDs in routing[]). "before" is what reading every page of
DIDs, the bots and sync twice cost (pages + 4). The exit code is 0 when every goal holds.
It is not a test: it is outside ``tests/`` and its name does not match ``test_*.py``.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent))
sys.path.insert(0, str(BENCH_DIR.parent / "tests"))  # the tests' generated accounts (helpers.py)

from helpers import desired_record, write_inventory  # noqa: E402
from sheets import write_sheet  # noqa: E402  (bench/: the file generator bench_dryrun shares)

from importer.jobs.run import run_import  # noqa: E402  (the repository root goes on the path first)
from importer.options import ImportConfig, InputOptions, human_duration  # noqa: E402
from importer.sandbox import SANDBOX_API_KEY, SandboxConfig, create_sandbox  # noqa: E402

PAGE = 100
"""The DID list's page size the importer asks for (and the sandbox's cap)."""
WRITE_PREFIX = "POST /voicelink/call-routing"


@dataclass(frozen=True, slots=True)
class Result:
    dids: int
    rows: int
    sync: str
    unresolved: int
    pages: int
    counts: dict[str, int]
    seconds: float

    @property
    def writes(self) -> int:
        return sum(n for k, n in self.counts.items() if k.startswith(WRITE_PREFIX))

    @property
    def reads(self) -> int:
        return sum(n for k, n in self.counts.items() if not k.startswith(WRITE_PREFIX))

    @property
    def goal(self) -> int:
        return 3 if self.sync == "full" else min(self.unresolved, self.pages) + 4

    def read(self, key: str) -> int:
        return self.counts.get(key, 0)


def measure(dids: int, rows: int, sync: str, routed_share: float, seed: int, folder: Path) -> Result:
    rng = random.Random(seed)
    routed = set(rng.sample(range(dids), round(dids * routed_share)))
    picks = rng.sample(range(dids), rows)
    inv = folder / f"inventory_{dids}.json"
    if not inv.exists():
        # Routed differently from what the sheet asks (i + 1's record), so routed rows are updates.
        write_inventory(inv, dids, existing={i: desired_record(i + 1) for i in sorted(routed)})
    sheet = folder / f"sheet_{dids}_{rows}.csv"
    write_sheet(sheet, picks)
    sandbox = create_sandbox(
        SandboxConfig(inventory=inv, requests_per_minute=10_000_000, lean_sync=sync == "lean")
    )
    config = ImportConfig(
        input=InputOptions(path=sheet),
        api_key=SANDBOX_API_KEY,
        base_url="http://sandbox.bench/api/v2",
        output=folder / f"results_{dids}_{rows}_{sync}.xlsx",
        journal=folder / f"journal_{dids}_{rows}_{sync}.sqlite",
        requests_per_minute=10_000_000,
        retry_backoff=0,
    )
    started = time.perf_counter()
    summary = run_import(config, transport=httpx.ASGITransport(app=sandbox.app))
    seconds = time.perf_counter() - started
    if summary.exit_code != 0:
        raise SystemExit(f"the run of {rows} rows against {dids} DIDs ({sync}) failed: {summary.lines()}")
    counts = dict(sandbox.state_snapshot()["request_counts"])
    unresolved = 0 if sync == "full" else len(set(picks) - routed)
    return Result(dids, rows, sync, unresolved, math.ceil(dids / PAGE), counts, seconds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dids", default="5000,100000", help="inventory sizes, comma-separated")
    parser.add_argument("--rows", default="10,1000", help="file sizes, comma-separated")
    parser.add_argument("--sync", default="full,lean", help="sync kinds: full, lean or both")
    parser.add_argument("--routed", type=float, default=0.6, help="share of the DIDs already routed")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    header = (
        f"{'DIDs':>8} {'rows':>5} {'sync':>4} {'unres.':>6} {'pages':>5} | {'conn':>4} {'sync':>4} "
        f"{'DIDs':>4} {'bots':>4} {'READS':>5} {'goal':>5} {'before':>6} | {'writes':>6} "
        f"{'at 60/min':>14} {'run s':>6}  result"
    )
    print(f"routed share {args.routed:g}, seed {args.seed}; requests counted by the sandbox")
    print(header)
    print("-" * len(header))
    ok = True
    with tempfile.TemporaryDirectory(prefix="bench_reads_") as tmp:
        for dids in (int(n) for n in args.dids.split(",")):
            for rows in (int(n) for n in args.rows.split(",")):
                for sync in args.sync.split(","):
                    r = measure(dids, rows, sync, args.routed, args.seed, Path(tmp))
                    passed = r.reads <= r.goal
                    ok &= passed
                    at_rate = human_duration((r.reads + r.writes) * 60 / 60)
                    print(
                        f"{r.dids:>8,} {r.rows:>5} {r.sync:>4} {r.unresolved:>6} {r.pages:>5} | "
                        f"{r.read('GET /telephony/connections'):>4} {r.read('POST /voicelink/sync'):>4} "
                        f"{r.read('GET /voicelink/dids/purchased'):>4} {r.read('GET /voicelink/bots'):>4} "
                        f"{r.reads:>5} {r.goal:>5} {r.pages + 4:>6} | {r.writes:>6} {at_rate:>14} "
                        f"{r.seconds:>6.1f}  {'PASS' if passed else 'MISS'}",
                        flush=True,
                    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
