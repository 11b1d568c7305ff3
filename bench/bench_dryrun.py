"""Time `run --dry-run` against `validate` of one file as a user runs them (with unknown numbers or not).

Usage (from the repository root, in the project's virtualenv):

    python bench/bench_dryrun.py                          # 100,000 rows and DIDs, 0 % and 20 % unknown
    python bench/bench_dryrun.py --rows 20000 --repeat 3 --unknown 0.2

For each share of unknown numbers (``--unknown``), a CSV of ``--rows`` rows is generated
(``bench/sheets.py``): the known rows name distinct DIDs of a generated account of ``--dids`` DIDs
(``tests/helpers.py``'s ``write_inventory``: sync lists every DID), the unknown ones valid numbers
the account does not own, whose last 9 digits match no DID (the "did you mean" hint finds nothing:
its worst case).

What is measured: the real API is remote, so the sandbox runs in its own process
(``voicelink-import sandbox`` on a loopback port, rate limit raised), and each measured command is
the CLI a user types, in a fresh child process, alternating, validate then dry run:

* validate: ``python -m importer validate FILE`` (read, validate, results workbook, failed rows);
* dry run: ``python -m importer run FILE --dry-run --quiet`` against the loopback sandbox (read,
  validate, pre-flight, sync of the whole account over TCP, plan, results workbook, failed rows),
  nothing sent; the script checks that exactly the unknown rows failed.

Per command it takes the wall time (start to exit, as the user waits) and the importer process's
CPU (user + system of the child, every thread; ``os.wait4``); for the dry run also the sandbox
process's CPU over the same span (``/proc``: the server's side, which the real API pays) and the
requests it received. The goal is judged on the wall medians: dry run / validate at most 1.6.
``--code before=PATH,after=PATH`` times several source trees in turn (each command run with
``PYTHONPATH`` set to the tree), so a change is measured against its base under the same load.
The exit code is 0 when every ratio meets it. It is not a test: it is outside ``tests/`` and its
name does not match ``test_*.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent))
sys.path.insert(0, str(BENCH_DIR.parent / "tests"))  # the tests' generated accounts (helpers.py)

from helpers import write_inventory  # noqa: E402
from sheets import write_sheet  # noqa: E402  (bench/: the file generator bench_reads shares)

from importer.options import human_duration  # noqa: E402  (the repository root goes on the path first)
from importer.sandbox import SANDBOX_API_KEY  # noqa: E402

GOAL = 1.6
"""Dry run / validate of the same file (wall-clock medians), at most."""
RATE = 10_000_000
"""Requests a minute allowed by the sandbox and asked by the importer: the times are work, not waiting."""
CLI = [sys.executable, "-m", "importer"]
_FAILED = re.compile(r"\bfailed (\d+)")


@dataclass(frozen=True, slots=True)
class Timing:
    """One measured command: wall seconds, the importer's CPU seconds, the sandbox's CPU seconds."""

    wall: float
    cpu: float
    server_cpu: float = 0.0


def picks(rows: int, dids: int, unknown: float, seed: int) -> tuple[list[int], int]:
    """The DID indexes of the rows (``unknown`` of them past the account's), and how many are unknown."""
    rng = random.Random(seed)
    strangers = round(rows * unknown)
    if rows - strangers > dids:
        raise SystemExit(f"--dids {dids} is fewer than the {rows - strangers} known rows")
    # Numbers past the inventory (did_number(dids + k)) are valid and differ in their last 9 digits
    # from every DID of the account, so near_match must look and find nothing.
    chosen = rng.sample(range(dids), rows - strangers) + [dids + 1000 + k for k in range(strangers)]
    rng.shuffle(chosen)
    return chosen, strangers


def _proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) a running process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed(args: list[str], env: dict[str, str], server: int | None, cwd: Path) -> tuple[Timing, int, str]:
    """Run one CLI command in ``cwd`` to its end; return its timing, exit code and output."""
    server_before = _proc_cpu(server) if server is not None else 0.0
    started = time.perf_counter()
    child = subprocess.Popen(
        args, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert child.stdout is not None
    output = child.stdout.read()  # until the child closes it, i.e. exits
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)  # reaped here; keep Popen from waiting again
    server_cpu = _proc_cpu(server) - server_before if server is not None else 0.0
    return Timing(wall, usage.ru_utime + usage.ru_stime, server_cpu), child.returncode, output


def request_count(state_url: str) -> int:
    """Requests the sandbox has received so far (every /api/v2 request)."""
    with urllib.request.urlopen(state_url, timeout=120) as answer:  # loopback only
        return sum(json.load(answer)["request_counts"].values())


def start_sandbox(inventory: Path) -> tuple[subprocess.Popen[str], str]:
    """Start ``voicelink-import sandbox`` on a free loopback port; return it and its base URL."""
    server = subprocess.Popen(
        [*CLI, "sandbox", "--port", "0", "--inventory", str(inventory), "--requests-per-minute", str(RATE)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None
    for line in server.stdout:
        if line.startswith("VoiceLink sandbox listening: "):
            return server, line.split(": ", 1)[1].strip()
    server.wait(10)
    raise SystemExit(f"the sandbox did not start (exit {server.returncode})")


def _load() -> str:
    """The 1-minute load average: on a shared machine, how much else was running."""
    return f"{os.getloadavg()[0]:.1f}"


def _median(times: list[Timing], part: str) -> float:
    return statistics.median(getattr(t, part) for t in times)


def _trees(text: str) -> dict[str, Path]:
    """``--code`` as names and source trees: "branch=.,main=/tmp/main" (a bare path is named by itself)."""
    out: dict[str, Path] = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        name, _, path = item.rpartition("=")
        tree = Path(path).resolve()
        if not (tree / "importer" / "__init__.py").is_file():
            raise SystemExit(f"--code {item}: {tree} holds no importer/ package")
        out[name or path] = tree
    return out


def _commands(sheet: Path, folder: Path, tag: str) -> tuple[list[str], list[str]]:
    """The validate and dry-run command lines for ``sheet``, their outputs in ``folder``."""
    validate = [*CLI, "validate", str(sheet), "--force", "-o", str(folder / f"v{tag}.results.xlsx")]
    validate += ["--failed-out", str(folder / f"v{tag}.failed.xlsx")]
    dry = [
        *CLI,
        "run",
        str(sheet),
        "--dry-run",
        "--quiet",
        "--force",
        "-o",
        str(folder / f"d{tag}.results.xlsx"),
    ]
    dry += ["--failed-out", str(folder / f"d{tag}.failed.xlsx"), "--journal", str(folder / f"d{tag}.sqlite")]
    return validate, [*dry, "--requests-per-minute", str(RATE)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000, help="data rows in the generated file")
    parser.add_argument("--dids", type=int, default=None, help="DIDs in the account (default: --rows)")
    parser.add_argument("--unknown", default="0,0.2", help="shares of unknown numbers, comma-separated")
    parser.add_argument("--repeat", type=int, default=3, help="measured runs of each kind (medians)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--code",
        default=str(BENCH_DIR.parent),
        help="source trees to time, NAME=PATH comma-separated (e.g. before=/tmp/main,after=.), "
        "taken in turn in each repetition; default this one",
    )
    args = parser.parse_args(argv)
    dids = args.dids or args.rows
    trees = _trees(args.code)
    print(
        f"{args.rows:,} rows (CSV), {dids:,} DIDs (sync lists every one), {args.repeat} runs each (medians); "
        f"load average {_load()}"
    )
    print(
        "measured: the CLI commands `validate FILE` and `run FILE --dry-run` in fresh processes, the\n"
        "sandbox in its own process on loopback TCP. wall = as the user waits; goal: dry run / validate "
        f"<= {GOAL}\nas the ratio of the medians and as pairs (the median of each run's dry run over the "
        "validate just before it);\ncpu = the importer process (user + system); server cpu = the sandbox's "
        "during the dry run; reads = its requests"
    )
    for name, tree in trees.items():
        print(f"code {name}: {tree}")
    header = (
        f"{'unknown':>8} {'code':>8} {'validate s':>11} {'dry run s':>10} {'ratio':>6} {'pairs':>6} "
        f"{'goal':>5}  result "
        f"{'cpu v':>6} {'cpu d':>6} {'cpu ratio':>9} {'server cpu':>10} {'reads':>6} {'at 60/min':>10}"
    )
    print(header)
    print("-" * len(header))
    ok = True
    with tempfile.TemporaryDirectory(prefix="bench_dryrun_") as tmp:
        folder = Path(tmp)
        inventory = write_inventory(folder / "inventory.json", dids)
        server, base_url = start_sandbox(inventory)
        state_url = base_url.rsplit("/api/v2", 1)[0] + "/_sandbox/state"
        env = {**os.environ, "VOCOBASE_BASE_URL": base_url, "VOCOBASE_API_KEY": SANDBOX_API_KEY}
        env.pop("VOCOBASE_CONNECTION_ID", None)
        try:
            for share in (float(s) for s in args.unknown.split(",")):
                sheet = folder / f"sheet_{share:g}.csv"
                chosen, strangers = picks(args.rows, dids, share, args.seed)
                write_sheet(sheet, chosen)
                validate: dict[str, list[Timing]] = {name: [] for name in trees}
                dry: dict[str, list[Timing]] = {name: [] for name in trees}
                reads: dict[str, int] = {}
                for n in range(args.repeat):
                    for k, (name, tree) in enumerate(trees.items()):
                        # `python -m` puts the working folder first on the path, then PYTHONPATH:
                        # the tree's importer is found before the installed one.
                        tree_env = {**env, "PYTHONPATH": str(tree)}
                        validate_cmd, dry_cmd = _commands(sheet, folder, str(k))
                        timing, code, output = timed(validate_cmd, tree_env, None, tree)
                        if code != 0:
                            raise SystemExit(f"validate ({name}) exited {code}:\n{output}")
                        validate[name].append(timing)
                        before = request_count(state_url)
                        timing, code, output = timed(dry_cmd, tree_env, server.pid, tree)
                        reads[name] = request_count(state_url) - before
                        found = _FAILED.search(output)
                        failed = int(found.group(1)) if found else 0
                        if failed != strangers or code not in (0, 1):  # exactly the unknown rows fail
                            what = f"the dry run ({name}, exit {code}) failed {failed} rows, not {strangers}"
                            raise SystemExit(f"{what}:\n{output}")
                        dry[name].append(timing)
                        v = validate[name][-1]
                        print(
                            f"  {share:g} {name} run {n + 1}: validate {v.wall:.1f} s, "
                            f"dry run {timing.wall:.1f} s "
                            f"(cpu {v.cpu:.1f} / {timing.cpu:.1f} s, server {timing.server_cpu:.1f} s), "
                            f"load average {_load()}",
                            file=sys.stderr,
                            flush=True,
                        )
                for name in trees:
                    wall_v, wall_d = _median(validate[name], "wall"), _median(dry[name], "wall")
                    cpu_v, cpu_d = _median(validate[name], "cpu"), _median(dry[name], "cpu")
                    ratio = wall_d / wall_v
                    # Each dry run follows its validate: their ratio is taken at one speed of the
                    # machine, which on a shared one drifts by a third between runs.
                    pairs = statistics.median(
                        d.wall / v.wall for v, d in zip(validate[name], dry[name], strict=True)
                    )
                    passed = ratio <= GOAL and pairs <= GOAL
                    ok &= passed
                    print(
                        f"{share:>8.0%} {name:>8} {wall_v:>11.1f} {wall_d:>10.1f} {ratio:>6.2f} "
                        f"{pairs:>6.2f} {GOAL:>5} {'PASS' if passed else 'MISS':>7} "
                        f"{cpu_v:>6.1f} {cpu_d:>6.1f} "
                        f"{cpu_d / cpu_v:>9.2f} "
                        f"{_median(dry[name], 'server_cpu'):>10.1f} {reads[name]:>6,} "
                        f"{human_duration(reads[name]):>10}",
                        flush=True,
                    )
        finally:
            server.terminate()
            server.wait(30)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
