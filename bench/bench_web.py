"""Benchmark the web service: errors readable after an upload, memory, and idle CPU.

Usage (from the repository root, in the project's virtualenv):

    python bench/bench_web.py --rows 100000 --repeat 3

Three figures, each against a ``voicelink-import serve --sandbox`` process on loopback:

* **time to errors**: from the start of ``POST /api/jobs`` with a generated XLSX (the same
  generator as ``bench_validate.py``) until ``GET /api/jobs/{id}/rows?status=failed`` has
  answered with the failed rows, against the wall time of ``voicelink-import validate`` of the
  same file (a fresh process, as a user runs it: start, read, validate, results workbook).
  The runs alternate (web, CLI, web, ...); the table shows medians. Goal: ratio <= 0.5.
* **peak RSS** of the server process (``VmHWM``) once it holds the first of those jobs, and at
  the end (it then holds up to ``RESIDENT_TABLES`` of them). Goal: <= 600 MB holding the job.
* **idle CPU** of a fresh server holding 10 finished jobs with 10 event streams open, over
  ``--idle-seconds``. Goal: < 2 % of one core.

With ``--edits`` it measures the edit operations instead (``POST /api/jobs/{id}/edits``) on a job
of ``--edit-rows`` rows (a generated CSV whose Status and Customer columns each hold one value):
a ``set`` of one field cell (median of ``--edit-repeat``, goal <= 150 ms), a ``replace`` of the status
that touches every row (goal <= 3 s), its undo, and a ``replace`` of the customer name (a column
no field reads) on every row.

With ``--load`` it measures a team's load instead (issue 16), against one server:

* **concurrent uploads**: ``--uploads`` (30) clients each upload a ``--load-rows`` (180,000) row
  CSV at once: every job validated, none lost; the server's peak RSS (``VmHWM``). Goal: <= 1.2 GB.
* **list latency**: ``GET /api/jobs`` every 50 ms while they validate. Goal: p95 <= 100 ms. With
  it, the list's median once nothing runs (the handler's own cost), the server's CPU seconds and
  its full garbage collections (``/metrics``): while one runs every thread waits, answers too.
* **keep-alive latency**: 200 ``GET /api/jobs/{id}`` on one connection. Goal: median <= 2 ms.
* **restart mid-send**: a server sending through a sandbox process (``--rate``, the sandbox's own
  limit too) is SIGKILLed mid-send and started again on its data dir; the job ends done. Goal:
  0 answers 429 from the sandbox (the server's ``/metrics``). ``--no-restart`` leaves it out (a
  smaller loop while tuning, e.g. ``--load --no-restart --uploads 10 --load-rows 60000``).

The machine may be shared: latencies are noisy there, and a run says so only in its figures.

It prints one table and exits 0 when every goal holds, 1 otherwise. It is not a test.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))

from bench_validate import DEFAULT_OUT, generate  # noqa: E402  (a sibling script, not a package)

TOKEN = "bench-web-token-0000000000-000000000000"
SANDBOX_KEY = "rg_test_sandbox_key_0000"
LOAD_RSS_GOAL_MB = 1200.0
LIST_P95_GOAL_MS = 100.0
KEEPALIVE_GOAL_MS = 2.0
RATIO_GOAL = 0.5
RSS_GOAL_MB = 600.0
IDLE_CPU_GOAL = 2.0
TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Server:
    proc: subprocess.Popen[str]
    url: str
    client: httpx.Client


@contextmanager
def server(data: Path, api: str | None = None, rate: int = 100_000) -> Iterator[Server]:
    """A ``serve`` process: with its own in-process sandbox, or sending to the sandbox at ``api``."""
    env = {**os.environ, "VOICELINK_WEB_TOKEN": TOKEN, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "importer", "serve", "--port", "0"]
    if api is None:
        command.append("--sandbox")
    else:
        env.update(VOCOBASE_BASE_URL=api, VOCOBASE_API_KEY=SANDBOX_KEY)
    command += ["--data-dir", str(data), "--requests-per-minute", str(rate)]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    match = re.search(r"http://127\.0\.0\.1:\d+", proc.stdout.readline())
    if match is None:
        proc.kill()
        raise SystemExit("the server did not start")
    threading.Thread(target=proc.stdout.read, daemon=True).start()
    client = httpx.Client(base_url=match.group(0), headers={"Authorization": f"Bearer {TOKEN}"}, timeout=600)
    # The server listens before it prints its URL: this waits in the backlog until it is up, so the
    # timings below do not include its start.
    client.get("/api/jobs").raise_for_status()
    try:
        yield Server(proc, match.group(0), client)
    finally:
        client.close()
        proc.terminate()
        proc.wait(30)
        proc.stdout.close()


def wait_status(
    client: httpx.Client, job_id: str, statuses: set[str], poll: float = 0.02
) -> dict[str, object]:
    while True:
        job: dict[str, object] = client.get(f"/api/jobs/{job_id}").json()
        if job["status"] in statuses:
            return job
        time.sleep(poll)


def web_time_to_errors(s: Server, path: Path) -> tuple[float, int]:
    """Seconds from the upload's start until the failed rows are read; how many failed."""
    started = time.perf_counter()
    with path.open("rb") as fh:
        answer = s.client.post("/api/jobs", files={"file": (path.name, fh)})
    answer.raise_for_status()
    job_id = answer.json()["id"]
    job = wait_status(s.client, job_id, {"validated", "failed"})
    if job["status"] != "validated":
        raise SystemExit(f"validation failed: {job['error']}")
    page = s.client.get(f"/api/jobs/{job_id}/rows", params={"status": "failed", "limit": 100}).json()
    took = time.perf_counter() - started
    assert page["rows"] and all(r["status"] == "failed" for r in page["rows"])
    return took, int(page["total"])


def cli_validate(path: Path, out: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "importer", "validate", str(path), "-o", str(out / "cli.results.xlsx")],
        env=env,
        capture_output=True,
        text=True,
    )
    took = time.perf_counter() - started
    if done.returncode not in (0, 1):
        raise SystemExit(f"validate failed: {done.stderr}")
    return took


def rss_mb(pid: int, field: str = "VmHWM") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def idle_cpu(data: Path, seconds: float) -> tuple[float, int]:
    """Percent of one core used by a server with 10 finished jobs and 10 open event streams."""
    sample = REPO / "sample_data" / "carrier_routing.csv"
    with server(data) as s:
        jobs = []
        for _ in range(10):
            with sample.open("rb") as fh:
                job_id = s.client.post("/api/jobs", files={"file": (sample.name, fh)}).json()["id"]
            wait_status(s.client, job_id, {"validated"})
            s.client.post(f"/api/jobs/{job_id}/plan")  # only a planned job starts
            wait_status(s.client, job_id, {"planned"})
            s.client.post(f"/api/jobs/{job_id}/start")
            jobs.append(job_id)
        for job_id in jobs:
            wait_status(s.client, job_id, {"done", "failed", "cancelled"}, poll=0.1)
        opened = threading.Barrier(11)
        stop = threading.Event()
        events = [0]

        def watch(job_id: str) -> None:
            with (
                httpx.Client(base_url=s.url, headers={"Authorization": f"Bearer {TOKEN}"}) as c,
                c.stream("GET", f"/api/jobs/{job_id}/events", timeout=None) as stream,
            ):
                lines = stream.iter_lines()
                next(lines)
                events[0] += 1
                opened.wait()
                for _ in lines:
                    if stop.is_set():
                        break

        watchers = [threading.Thread(target=watch, args=(j,), daemon=True) for j in jobs]
        for w in watchers:
            w.start()
        opened.wait()
        time.sleep(2)  # let the first snapshots go out
        before, t0 = cpu_seconds(s.proc.pid), time.monotonic()
        time.sleep(seconds)
        used, elapsed = cpu_seconds(s.proc.pid) - before, time.monotonic() - t0
        stop.set()
        return 100 * used / elapsed, events[0]


SET_GOAL_MS = 150.0
REPLACE_GOAL_S = 3.0


def uniform_customer_csv(out: Path, rows: int) -> Path:
    """The generated carrier CSV with one status and one customer name on every row (a replace
    of either then touches every row)."""
    import csv

    source = generate(out, rows, "csv", 0.03, 1).path
    path = out / f"edits_{rows}_v2.csv"
    if not path.exists():
        with (
            source.open(newline="", encoding="utf-8") as src,
            path.open("w", newline="", encoding="utf-8") as dst,
        ):
            writer = csv.writer(dst)
            for n, row in enumerate(csv.reader(src)):
                writer.writerow(row if n == 0 else [*row[:7], "active", "Acme", *row[9:]])
    return path


def edit_latencies(out: Path, rows: int, repeat: int) -> bool:
    """Time edit operations on a job of ``rows`` rows; print them; True when the goals hold."""
    path = uniform_customer_csv(out, rows)
    with tempfile.TemporaryDirectory() as tmp, server(Path(tmp) / "data") as s:
        with path.open("rb") as fh:
            job_id = s.client.post("/api/jobs", files={"file": (path.name, fh)}).json()["id"]
        wait_status(s.client, job_id, {"validated"})
        s.client.get(f"/api/jobs/{job_id}/rows", params={"limit": 1}).raise_for_status()

        def timed(body: dict[str, object]) -> tuple[float, int]:
            started = time.perf_counter()
            answer = s.client.post(f"/api/jobs/{job_id}/edits", json=body)
            took = time.perf_counter() - started
            answer.raise_for_status()
            return took, len(answer.json()["changed"])

        first = s.client.get(f"/api/jobs/{job_id}/rows", params={"limit": 1}).json()["rows"][0]["values"][0]
        # Field cells, each checked again with its duplicates: a status, and a number made a
        # duplicate of the first row's.
        bodies = [
            {"op": "set", "row": 1000 + 37 * n, "column": "Status", "value": "inactive"}
            if n % 2
            else {"op": "set", "row": 1000 + 37 * n, "column": "TN", "value": first}
            for n in range(repeat)
        ]
        sets = [timed(body)[0] for body in bodies]
        replace, touched = timed(
            {"op": "replace", "column": "Status", "find": "ACTIVE", "replace": "1", "rows": "all"}
        )
        undo, undone = timed({"op": "undo"})
        other, others = timed(
            {"op": "replace", "column": "Customer", "find": "ACME", "replace": "Globex", "rows": "all"}
        )
    set_ms = statistics.median(sets) * 1000
    checks = [
        (f"set one cell (median of {repeat})", f"{set_ms:.0f} ms",
         set_ms <= SET_GOAL_MS, f"<= {SET_GOAL_MS:.0f} ms"),
        (f"replace a field touching {touched} rows", f"{replace:.2f} s",
         replace <= REPLACE_GOAL_S, f"<= {REPLACE_GOAL_S:.0f} s"),
        (f"undo of that replace ({undone} rows)", f"{undo:.2f} s", True, "(reported)"),
        (f"replace a non-field column, {others} rows", f"{other:.2f} s",
         other <= REPLACE_GOAL_S, f"<= {REPLACE_GOAL_S:.0f} s"),
    ]  # fmt: skip
    print(f"\nweb edit operations, {rows} rows CSV")
    for name, value, ok, goal in checks:
        print(f"  {name:<42} {value:<34} goal {goal:<12} {'PASS' if ok else 'MISS'}")
    return all(ok for _, _, ok, _ in checks)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))]


def concurrent_uploads(data: Path, path: Path, uploads: int) -> dict[str, float]:
    """``uploads`` clients upload ``path`` at once; the list polled meanwhile; then keep-alive."""
    with server(data) as s:
        ids: list[str] = []
        lost: list[str] = []

        def upload() -> None:
            with (
                httpx.Client(base_url=s.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=600) as c,
                path.open("rb") as fh,
            ):
                answer = c.post("/api/jobs", files={"file": (path.name, fh)})
            if answer.status_code == 201:
                ids.append(answer.json()["id"])
            else:
                lost.append(f"{answer.status_code} {answer.text[:200]}")

        threads = [threading.Thread(target=upload) for _ in range(uploads)]
        started = time.monotonic()
        for t in threads:
            t.start()
        latencies: list[float] = []
        after_uploads: list[float] = []  # once every upload was answered: validations only
        statuses: dict[str, str] = {}
        while True:
            uploading = any(t.is_alive() for t in threads)
            began = time.perf_counter()
            jobs = s.client.get("/api/jobs").json()["jobs"]
            latencies.append((time.perf_counter() - began) * 1000)
            if not uploading:
                after_uploads.append(latencies[-1])
            statuses = {j["id"]: j["status"] for j in jobs}
            settled = all(st not in ("validating",) for st in statuses.values())
            if not any(t.is_alive() for t in threads) and settled and len(statuses) >= len(ids):
                break
            time.sleep(0.05)
        took = time.monotonic() - started
        cpu = cpu_seconds(s.proc.pid)  # noisy wall-clock latencies: the work done is comparable
        validated = sum(1 for i in ids if statuses.get(i) == "validated")
        peak = rss_mb(s.proc.pid)
        one = ids[0] if ids else ""
        keepalive: list[float] = []
        for _ in range(200):
            began = time.perf_counter()
            s.client.get(f"/api/jobs/{one}").raise_for_status()
            keepalive.append((time.perf_counter() - began) * 1000)
        full_gcs = gc_collections(s, 2)
        idle: list[float] = []  # the same list once nothing runs: what the handler itself costs
        for _ in range(100):
            began = time.perf_counter()
            s.client.get("/api/jobs").raise_for_status()
            idle.append((time.perf_counter() - began) * 1000)
        for why in lost:
            print(f"  upload refused: {why}")
        return {
            "uploads": uploads,
            "accepted": len(ids),
            "validated": validated,
            "seconds": took,
            "cpu_seconds": cpu,
            "peak_rss_mb": peak,
            "list_p95_ms": percentile(latencies, 0.95),
            "list_median_ms": statistics.median(latencies),
            "list_n": len(latencies),
            "list_p95_validating_ms": percentile(after_uploads, 0.95) if after_uploads else float("nan"),
            "keepalive_median_ms": statistics.median(keepalive),
            "list_idle_median_ms": statistics.median(idle),
            "full_gcs": full_gcs,
        }


def gc_collections(s: Server, generation: int) -> float:
    """The server's garbage collections of ``generation`` since it started (NaN: not shown)."""
    for line in s.client.get("/metrics").text.splitlines():
        if line.startswith(f'python_gc_collections_total{{generation="{generation}"}} '):
            return float(line.rsplit(" ", 1)[1])
    return float("nan")


@contextmanager
def sandbox_process(rate: int) -> Iterator[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "importer", "sandbox", "--port", "0", "--requests-per-minute", str(rate)]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    match = re.search(r"http://127\.0\.0\.1:\d+/api/v2", proc.stdout.readline())
    if match is None:
        proc.kill()
        raise SystemExit("the sandbox did not start")
    threading.Thread(target=proc.stdout.read, daemon=True).start()
    try:
        yield match.group(0)
    finally:
        proc.terminate()
        proc.wait(30)
        proc.stdout.close()


def throttled(s: Server) -> int:
    text = s.client.get("/metrics").text
    return sum(
        int(float(line.rsplit(" ", 1)[1]))
        for line in text.splitlines()
        if line.startswith("voicelink_api_429_total{")
    )


def killed_mid_send(data: Path, rate: int) -> dict[str, float]:
    """SIGKILL a server mid-send, start it again on the same data dir: the 429s it then meets."""
    sample = REPO / "sample_data" / "carrier_routing.csv"
    with sandbox_process(rate) as api:
        with server(data, api, rate) as s:
            with sample.open("rb") as fh:
                job_id = s.client.post("/api/jobs", files={"file": (sample.name, fh)}).json()["id"]
            wait_status(s.client, job_id, {"validated"})
            s.client.post(f"/api/jobs/{job_id}/plan")
            wait_status(s.client, job_id, {"planned"}, poll=0.1)
            s.client.post(f"/api/jobs/{job_id}/start").raise_for_status()
            while True:
                job = s.client.get(f"/api/jobs/{job_id}").json()
                if int(job["progress"]["done"]) >= 3 or job["status"] != "sending":
                    break
                time.sleep(0.05)
            before = throttled(s)
            done_at_kill = int(job["progress"]["done"])
            s.proc.kill()  # SIGKILL: no shutdown, nothing saved on the way out
            s.proc.wait(30)
        with server(data, api, rate) as s:
            job = wait_status(s.client, job_id, {"done", "failed", "cancelled"}, poll=0.2)
            after = throttled(s)
    return {"429_before": before, "429_after": after, "done_at_kill": done_at_kill,
            "status_done": float(job["status"] == "done")}  # fmt: skip


def load_main(args: argparse.Namespace) -> None:
    file = generate(args.out, args.load_rows, "csv", 0.03, 1)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        up = concurrent_uploads(folder / "load", file.path, args.uploads)
        kill = (
            killed_mid_send(folder / "kill", args.rate)
            if args.restart
            else {"429_before": 0.0, "429_after": 0.0, "done_at_kill": 0.0, "status_done": 1.0}
        )
    all_in = up["validated"] == up["uploads"] == up["accepted"]
    validated = (
        f"{up['validated']:.0f} of {up['accepted']:.0f} accepted in {up['seconds']:.0f} s "
        f"(server CPU {up['cpu_seconds']:.1f} s)"
    )
    listing = (
        f"{up['list_p95_ms']:.1f} ms (median {up['list_median_ms']:.1f}, n={up['list_n']:.0f}; "
        f"after the uploads {up['list_p95_validating_ms']:.1f}; idle median {up['list_idle_median_ms']:.1f})"
    )
    killed = (
        f"{kill['429_after']:.0f} x 429 after ({kill['429_before']:.0f} before; "
        f"killed at {kill['done_at_kill']:.0f} rows)"
    )
    checks = [
        (f"{args.uploads} uploads of {args.load_rows} rows validated", validated, all_in, "all, none lost"),
        ("peak RSS of the server", f"{up['peak_rss_mb']:.0f} MB",
         up["peak_rss_mb"] <= LOAD_RSS_GOAL_MB, f"<= {LOAD_RSS_GOAL_MB:.0f} MB"),
        ("full garbage collections (all threads wait)", f"{up['full_gcs']:.0f}", True, "(reported)"),
        ("GET /api/jobs while validating, p95", listing,
         up["list_p95_ms"] <= LIST_P95_GOAL_MS, f"<= {LIST_P95_GOAL_MS:.0f} ms"),
        ("keep-alive GET /api/jobs/{id}, median", f"{up['keepalive_median_ms']:.2f} ms",
         up["keepalive_median_ms"] <= KEEPALIVE_GOAL_MS, f"<= {KEEPALIVE_GOAL_MS} ms"),
        (f"SIGKILL mid-send, restart, {args.rate}/min", killed,
         kill["429_after"] == 0 and kill["status_done"] == 1, "0 x 429, done"),
    ][: None if args.restart else -1]  # fmt: skip
    print(f"\nweb service under load ({file.invalid} invalid rows a file)")
    for name, value, ok, goal in checks:
        print(f"  {name:<42} {value:<52} goal {goal:<15} {'PASS' if ok else 'MISS'}")
    sys.exit(0 if all(ok for _, _, ok, _ in checks) else 1)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--idle-seconds", type=float, default=20.0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument(
        "--load", action="store_true", help="measure concurrent uploads and a restart instead"
    )
    parser.add_argument("--uploads", type=int, default=30, help="--load: concurrent uploads")
    parser.add_argument("--load-rows", type=int, default=180_000, help="--load: rows in each upload")
    parser.add_argument("--rate", type=int, default=20, help="--load: requests a minute, server and sandbox")
    parser.add_argument(
        "--no-restart",
        dest="restart",
        action="store_false",
        help="--load: leave out the SIGKILL and restart (about a minute), e.g. while tuning the rest",
    )
    parser.add_argument("--edits", action="store_true", help="measure the edit operations only")
    parser.add_argument("--edit-rows", type=int, default=100_000)
    parser.add_argument("--edit-repeat", type=int, default=20)
    args = parser.parse_args()
    if args.load:
        load_main(args)
    if args.edits:
        sys.exit(0 if edit_latencies(args.out, args.edit_rows, args.edit_repeat) else 1)

    file = generate(args.out, args.rows, "xlsx", 0.03, 1)
    web_times: list[float] = []
    cli_times: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        with server(folder / "data") as s:
            base_rss = rss_mb(s.proc.pid, "VmRSS")
            for n in range(args.repeat):
                took, failed = web_time_to_errors(s, file.path)
                web_times.append(took)
                if n == 0:
                    first_rss = rss_mb(s.proc.pid)
                cli_times.append(cli_validate(file.path, folder))
                print(f"  run {n + 1}: web {took:.2f} s ({failed} failed rows), CLI {cli_times[-1]:.2f} s")
            end_rss = rss_mb(s.proc.pid)
        cpu, streams = idle_cpu(folder / "idle", args.idle_seconds)

    web, cli = statistics.median(web_times), statistics.median(cli_times)
    ratio = web / cli
    checks = [
        ("time to errors, web / CLI validate", f"{web:.2f} s / {cli:.2f} s = {ratio:.2f}",
         ratio <= RATIO_GOAL, f"<= {RATIO_GOAL}"),
        ("peak RSS holding the job", f"{first_rss:.0f} MB (idle {base_rss:.0f} MB)",
         first_rss <= RSS_GOAL_MB, f"<= {RSS_GOAL_MB:.0f} MB"),
        (f"peak RSS after {args.repeat} such jobs", f"{end_rss:.0f} MB", True, "(reported)"),
        (f"idle CPU, 10 done jobs, {streams} streams", f"{cpu:.2f} % of a core",
         cpu < IDLE_CPU_GOAL, f"< {IDLE_CPU_GOAL} %"),
    ]  # fmt: skip
    print(f"\nweb service, {args.rows} rows XLSX ({file.invalid} invalid), medians of {args.repeat}")
    for name, value, ok, goal in checks:
        print(f"  {name:<42} {value:<34} goal {goal:<12} {'PASS' if ok else 'MISS'}")
    sys.exit(0 if all(ok for _, _, ok, _ in checks) else 1)


if __name__ == "__main__":
    main()
