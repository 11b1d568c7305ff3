"""Durable import jobs: one folder each under ``<data-dir>/jobs/<random id>/``, a queue per key.

A job's folder holds everything it needs to carry on after a restart::

    input/<name>      the upload as received (never changed)
    edits.json        cell corrections, applied to the table after reading
    journal.sqlite    the engine's journal (what was sent, what came back)
    plan.json         the plan shown (its writes, settled rows, counts, cost) and its inputs' fingerprint
    results.xlsx      the results workbook (plan.results.xlsx for a plan), failed.xlsx

Its record (status, options, who uploaded it, counts) and the per-row outcomes of its last plan
or send live in ``<data-dir>/jobs.sqlite`` (``web.store``); a record that cannot be read is
listed as damaged, with its reason, and every other job is served.

Jobs that send through one key run one at a time in that key's ``Lane`` and share its rate
limiter; the others wait and report their place. A job found ``sending`` at start goes back
into its lane and the engine resumes it from its journal. A server shutting down stops its
sends the way Ctrl-C stops the CLI (writes in flight settle) but leaves them ``sending``, so
the next start resumes them; only the user's cancel makes a job ``cancelled``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import enum
import hashlib
import json
import os
import re
import secrets
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import EllipsisType
from typing import Any, TypeVar

from importer import words
from importer.account.limiter import RateLimiter
from importer.engine.journal import Journal
from importer.engine.plan import Plan, plan_from_dict, plan_to_dict, writes_fingerprint
from importer.errors import ImporterError
from importer.jobs.session import now_text
from importer.jobs.validate import failed_outcome, read_input, reasons_by_row, skipped_outcome
from importer.model import Action, RowIssue, RowOutcome, Status, ValidationReport
from importer.options import InputOptions
from importer.output.results import write_failed_rows
from importer.read.sheets import SheetChoiceNeeded
from importer.vocab import OnExisting, ReasonKind
from importer.web import edits as ops
from importer.web import engine, observe, ratememory
from importer.web.audit import AuditLog
from importer.web.engine import Connection, Edit, SendProgress
from importer.web.store import DamagedRecord, JobStore, decode_list, decode_object, full_disk

__all__ = ["Job", "JobService", "JobStatus", "safe_name"]

JOB_ID = re.compile(r"[0-9a-f]{24}")
RESIDENT_TABLES = 3
"""Validated tables kept in memory; others are read again from their folder when asked for."""


class JobStatus(enum.StrEnum):
    """Where a job is; ``failed`` means the job itself could not go on (``error`` says why)."""

    VALIDATING = "validating"
    VALIDATED = "validated"
    NEEDS_SHEET = "needs_sheet"
    """Several sheets name the fields and none was chosen: the user picks (``sheet_list``)."""
    PLANNING = "planning"
    PLANNED = "planned"
    SENDING = "sending"
    DONE = "done"
    CANCELLED = "cancelled"
    FAILED = "failed"


MORE_OPTIONS = frozenset(
    {"sheets", "encoding", "skip_hidden_rows", "ignore_columns", "on_existing", "max_error_rate"}
)
EDITABLE = frozenset({JobStatus.VALIDATED, JobStatus.PLANNED})
FINISHED = frozenset({JobStatus.DONE, JobStatus.CANCELLED, JobStatus.FAILED})
KEEPS_OUTCOMES = frozenset({JobStatus.DONE, JobStatus.CANCELLED})
"""States whose per-row outcomes are in the store (written when the send ended); a planned
job's are its plan's (plan.json)."""
PLAN_AGAIN = "plan it again (“Check against my account”), review the plan, then start"

NO_PROGRESS: Mapping[str, Any] = {
    "done": 0,
    "total": 0,
    "succeeded": 0,
    "failed": 0,
    "eta_seconds": None,
    "paused_seconds": 0,
}
"""A job's progress before its send reports any (the send's reports carry every one of these)."""

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(name: str, suffix: str = "") -> str:
    """A file name that is safe on disk and in a Content-Disposition header."""
    stem = _UNSAFE.sub("_", Path(name.replace("\\", "/")).name).strip(" .") or "upload"
    stem = stem[:80]
    if suffix and not stem.lower().endswith(suffix):
        stem = Path(stem).stem[:80] + suffix
    return stem


class JobError(Exception):
    """A request a job cannot take in its state; the API answers 409 with the message."""


@dataclass(slots=True)
class Job:
    """One import job: what its stored record holds, plus what lives only while the server runs."""

    id: str
    folder: Path
    file: str
    upload: str
    created: str
    status: JobStatus = JobStatus.VALIDATING
    error: str = ""
    sheet: str | None = None
    sheets: list[str] = field(default_factory=list)
    """Several sheets chosen, read as one table (each row names its sheet); [] : ``sheet``."""
    sheet_list: list[dict[str, Any]] = field(default_factory=list)
    """Every visible sheet of a workbook as the reader surveyed it: name, rows, matches."""
    header_row: int | None = None
    """The header's Excel row when the user chose it; None: where the reader found it."""
    default_region: str | None = None
    column_map: dict[str, str] = field(default_factory=dict)
    encoding: str | None = None
    skip_hidden_rows: bool = False
    ignore_columns: list[str] = field(default_factory=list)
    on_existing: str = OnExisting.UPDATE.value
    max_error_rate: float | None = None
    uploaded_by: str = ""
    client: str = ""
    rows: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    problems: dict[str, int] = field(default_factory=dict)
    progress: dict[str, Any] = field(default_factory=dict)
    plan: str = ""
    planned: dict[str, Any] = field(default_factory=dict)
    """The plan shown, as counts (``plan_summary``), with its inputs' and writes' fingerprints."""
    notes: list[str] = field(default_factory=list)
    """How the upload was read and what the last plan or send noted (``RunSummary.notes``)."""
    budget: dict[str, float | int] = field(default_factory=dict)
    """After a plan: the reads and writes a send will make and the time the rate limit needs."""
    stopped: str = ""
    columns: list[str] = field(default_factory=list)
    mapping: dict[str, str] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)
    finished: str = ""
    # -- runtime only --
    report: ValidationReport | None = None
    shown: Plan | None = None
    """The plan shown (plan.json), read with the table."""
    resuming: bool = False
    """Found sending at start: the send the user confirmed goes on from its journal."""
    outcomes: dict[int, RowOutcome] = field(default_factory=dict)
    edits: list[Edit] = field(default_factory=list)
    operations: list[ops.Operation] = field(default_factory=list)
    """The edit operations (``web.edits``), in operations.json; ``edits`` holds their cells."""
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    cancel: asyncio.Event = field(default_factory=asyncio.Event)
    interrupted: bool = False
    """Stopped by a server shutdown: stays ``sending`` and resumes on the next start."""
    version: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    queue_position: int | None = None
    view: tuple[int, list[str], dict[int, list[RowIssue]]] | None = None
    """Per-row statuses and issues for paging, as of ``version``."""

    STORED = (
        *("id", "file", "upload", "created", "status", "error", "sheet", "default_region", "column_map"),
        *("uploaded_by", "client", "rows", "counts", "problems", "progress", "plan", "budget", "stopped"),
        *("columns", "mapping", "source", "finished", "header_row", "planned", "notes"),
        *("encoding", "skip_hidden_rows", "ignore_columns", "on_existing", "max_error_rate"),
        *("sheets", "sheet_list"),
    )

    @property
    def input_path(self) -> Path:
        return self.folder / "input" / self.upload

    def input_options(self) -> InputOptions:
        return InputOptions(
            path=self.input_path,
            sheets=tuple(self.sheets) or ((self.sheet,) if self.sheet else ()),
            column_map=dict(self.column_map),
            default_region=self.default_region,
            encoding=self.encoding,
            skip_hidden_rows=self.skip_hidden_rows,
            ignore_columns=tuple(self.ignore_columns),
            header_row=self.header_row,
        )

    def inputs_fingerprint(self) -> str:
        """A digest of everything a plan depends on besides the account: the upload, the
        corrections and every option. A plan is sent only while this is what it was."""
        inputs = {
            "sha256": self.source.get("sha256"),
            "edits": [dataclasses.asdict(e) for e in self.edits],
            **({"excluded": sorted(excluded)} if (excluded := ops.excluded_rows(self.operations)) else {}),
            "options": {
                "sheet": self.sheet,
                **({"sheets": self.sheets} if self.sheets else {}),
                "header_row": self.header_row,
                "default_region": self.default_region,
                "map": self.column_map,
                "encoding": self.encoding,
                "skip_hidden_rows": self.skip_hidden_rows,
                "ignore_columns": self.ignore_columns,
                "on_existing": self.on_existing,
                "max_error_rate": self.max_error_rate,
            },
        }
        return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()

    def stored(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.STORED}

    def touch(self) -> None:
        """Wake everyone watching this job (event streams) after a change."""
        self.version += 1
        self.view = None
        self.changed.set()
        self.changed = asyncio.Event()

    async def wait_change(self, seen: int, timeout: float) -> bool:
        """Wait until the job changed after version ``seen``; False on timeout."""
        if self.version != seen:
            return True
        try:
            async with asyncio.timeout(timeout):
                await self.changed.wait()
        except TimeoutError:
            return False
        return True


T = TypeVar("T")


async def in_background(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run blocking work (reading, validating, writing a workbook) in a daemon thread.

    Not ``asyncio.to_thread``: the loop's executor is joined when the server exits, so a
    shutdown would wait for a long validation. Work abandoned this way is safe to drop: the
    job is validated again on the next start, and workbooks are replaced atomically.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(ok: bool, value: Any) -> None:
        if future.done():
            return
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)

    def work() -> None:
        try:
            result: Any = fn(*args, **kwargs)
            ok = True
        except BaseException as exc:  # handed to the awaiting task, which decides
            result, ok = exc, False
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits
            loop.call_soon_threadsafe(settle, ok, result)

    threading.Thread(target=work, name="voicelink-web-work", daemon=True).start()
    return await future


def _write_json(path: Path, data: Any) -> None:
    """Write JSON atomically: a crash leaves the old file or the new one, never half of one."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        json.dump(data, fh, ensure_ascii=False)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _write_edits(folder: Path, edits: Sequence[Edit], operations: Sequence[ops.Operation]) -> None:
    """Keep a job's cell edits and operations (a bulk one can hold 100,000 edits: no ``asdict``)."""
    names = Edit.__slots__
    for name, data in (
        ("edits.json", [{n: getattr(e, n) for n in names} for e in edits]),
        ("operations.json", [dataclasses.asdict(o) for o in operations]),
    ):
        tmp = folder / (name + ".tmp")
        tmp.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
        with tmp.open("rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, folder / name)


def _outcome_dict(o: RowOutcome) -> dict[str, Any]:
    return {name: getattr(o, name) for name in RowOutcome.__slots__}


def _outcome_from(d: Mapping[str, Any]) -> RowOutcome:
    values = dict(d)
    values["status"] = Status(values["status"])
    values["action"] = Action(values["action"])
    return RowOutcome(**values)


def _reason(exc: BaseException) -> str:
    """An error in a few words, for a damaged job's reason or a log line (no traceback)."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def damaged_entry(job_id: str, reason: str) -> dict[str, Any]:
    """A damaged job as the jobs list shows it: the shape of a snapshot, ``error`` saying why."""
    return {
        "id": job_id,
        "status": "damaged",
        "file": "",
        "created": "",
        "finished": None,
        "uploaded_by": "",
        "rows": 0,
        "counts": {},
        "problems": {},
        "progress": dict(NO_PROGRESS),
        "queue_position": None,
        "error": reason,
        "stopped": None,
        "plan": None,
        "budget": None,
        "options": {},
        "source": {},
        "columns": [],
        "mapping": {},
        "edits": 0,
    }


def _import_folder(store: JobStore, folder: Path) -> None:
    """Take a job kept in job.json and outcomes.json (before the database) into the store, once.

    A file that cannot be read makes the job damaged, with the reason; the files are left as they are.
    """
    damaged: str | None = None
    try:
        raw = (folder / "job.json").read_bytes()
    except OSError as exc:
        raw, damaged = b"", f"job.json cannot be read: {_reason(exc)}"
    outcomes = folder / "outcomes.json"
    if damaged is None and outcomes.is_file():
        try:
            rows = [_outcome_from(o) for o in decode_list(outcomes.read_bytes(), "outcomes.json")]
            store.put_outcomes(folder.name, [_outcome_dict(o) for o in rows])
        except DamagedRecord as exc:
            damaged = str(exc)
        except (OSError, KeyError, ValueError, TypeError) as exc:
            damaged = f"outcomes.json has a missing or wrong entry ({_reason(exc)})"
    if damaged is None:
        try:
            decode_object(raw, "job.json")
        except DamagedRecord as exc:
            damaged = str(exc)
    store.put_raw(folder.name, raw, damaged)


def plan_summary(plan: Plan) -> dict[str, Any]:
    """What the plan and Send pages state about a plan, kept in job.json (no table needed)."""
    actions = collections.Counter(w.action for w in plan.writes)
    held = collections.Counter(
        o.reason_kind or "failed" for o in plan.outcomes if o.action in (Action.FAIL, Action.SKIP)
    )
    return {
        "create": actions[Action.CREATE],
        "update": actions[Action.UPDATE],
        "unchanged": sum(1 for o in plan.outcomes if o.action is Action.UNCHANGED),
        "writes": len(plan.writes),
        "held": dict(held),
        "writes_fingerprint": writes_fingerprint(plan),
    }


def _read_plan(path: Path) -> Plan:
    return plan_from_dict(json.loads(path.read_text(encoding="utf-8"))["plan"])


def _journal_has_runs(path: Path) -> bool:
    if not path.exists():
        return False
    journal = Journal.open(path)
    try:
        return bool(journal.runs())
    finally:
        journal.close()


def _read_and_check(
    options: InputOptions, edits: Sequence[Edit], excluded: frozenset[int]
) -> ValidationReport:
    return ops.check(read_input(options), options, edits, excluded)


def _validated_only(row: int) -> RowOutcome:
    """A valid row of a job not planned yet (the CLI's ``validate`` says the same of it)."""
    return RowOutcome(
        row=row, status=Status.NOT_SENT, reason="valid; not sent yet", reason_kind="validated_only"
    )


class Lane:
    """The jobs sending through one key: one limiter, one job at a time, the others queued."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.limiter: RateLimiter = engine.make_limiter(connection)
        self.waiting: collections.deque[Job] = collections.deque()
        self.running: Job | None = None
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def positions(self) -> None:
        for n, job in enumerate(self.waiting, start=1):
            if job.queue_position != n:
                job.queue_position = n
                job.touch()


class JobService:
    """Every job of the server: create, validate, edit, plan, send, cancel, resume."""

    def __init__(self, data_dir: Path, connection: Connection) -> None:
        self.root = data_dir / "jobs"
        self.root.mkdir(parents=True, exist_ok=True)
        self.store = JobStore(data_dir)
        self.damaged: dict[str, str] = {}
        """Jobs whose record cannot be read: id -> why. Listed, never served, never deleted."""
        self.events = observe.JobEvents()
        self.audit_log = AuditLog(data_dir)  # who did what, when, from where (web.audit)
        self.events.listeners.append(self.audit_log.job_event)
        self.connection = connection
        self.jobs: dict[str, Job] = {}
        self.lanes: dict[str, Lane] = {}
        self.closing = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._resident: collections.OrderedDict[str, None] = collections.OrderedDict()

    # -- lifecycle --------------------------------------------------------------------------

    async def load(self) -> None:
        """Load the jobs on disk; resume what a stop interrupted."""
        self.root.mkdir(parents=True, exist_ok=True)
        for folder in sorted(self.root.iterdir()):
            if (
                JOB_ID.fullmatch(folder.name)
                and (folder / "job.json").is_file()
                and not self.store.has(folder.name)
            ):
                try:
                    _import_folder(self.store, folder)  # a job from before the database: taken in once
                except (OSError, sqlite3.Error) as exc:  # e.g. a full disk: tried again on the next start
                    self.damaged[folder.name] = (
                        f"could not be taken into {self.store.path.name}: {_reason(exc)}"
                    )
        for stored in self.store.jobs():
            try:
                if stored.record is None:
                    raise DamagedRecord(stored.damaged or "unreadable")
                job = self._load(self.root / stored.id, stored.record)
            except DamagedRecord as exc:
                self.damaged[stored.id] = str(exc)
                continue
            except (OSError, ValueError, KeyError, TypeError) as exc:
                self.damaged[stored.id] = f"the job record has a missing or wrong field ({_reason(exc)})"
                continue
            self.jobs[job.id] = job
            self.events.seen(job)
        for job_id, reason in self.damaged.items():
            observe.log_damaged(job_id, reason)
        # The key's window as the last run left it, before anything here sends (ratememory).
        ratememory.remember(self.store, engine.lane_key(self.connection), self._lane().limiter)
        for job in self.jobs.values():
            if job.status is JobStatus.VALIDATING:
                self._spawn(self._validate(job))
            elif job.status is JobStatus.PLANNING:
                job.status = JobStatus.VALIDATED  # a plan is only a read: plan again when asked
                self._drop_plan(job)
                self._save(job)
            elif job.status is JobStatus.SENDING:
                job.stopped = ""
                job.resuming = True
                self._enqueue(job)

    def begin_shutdown(self) -> None:
        """Stop taking work: close event streams, stop sends (writes in flight settle)."""
        if self.closing.is_set():
            return
        self.closing.set()
        for lane in self.lanes.values():
            for job in (*lane.waiting, *([lane.running] if lane.running else [])):
                job.interrupted = True
                job.cancel.set()
        for job in self.jobs.values():
            job.touch()

    async def stop(self, timeout: float = 4.0) -> None:
        """Wait for sends to settle (at most ``timeout`` seconds), then stop every task."""
        self.begin_shutdown()
        lanes = [lane.task for lane in self.lanes.values() if lane.task is not None]
        for lane in self.lanes.values():
            lane.wake.set()
        if lanes:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await asyncio.gather(*lanes, return_exceptions=True)
        for task in [*lanes, *self._tasks]:
            task.cancel()
        await asyncio.gather(*lanes, *self._tasks, return_exceptions=True)

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- storage ----------------------------------------------------------------------------

    def _load(self, folder: Path, data: Mapping[str, Any]) -> Job:
        if data.get("id") != folder.name:
            raise DamagedRecord("the job record names another job")
        values = {k: data[k] for k in Job.STORED if k in data}
        values["status"] = JobStatus(values["status"])
        job = Job(folder=folder, **values)
        edits = folder / "edits.json"
        if edits.is_file():
            try:
                job.edits = [Edit(**e) for e in decode_list(edits.read_bytes(), "edits.json")]
            except TypeError as exc:
                raise DamagedRecord(f"edits.json has a wrong entry ({_reason(exc)})") from None
        operations = folder / "operations.json"
        if operations.is_file():
            try:
                listed = decode_list(operations.read_bytes(), "operations.json")
                job.operations = [ops.operation_from(o) for o in listed]
            except (TypeError, ValueError) as exc:
                raise DamagedRecord(f"operations.json has a wrong entry ({_reason(exc)})") from None
        return job  # its outcomes are read with its table, when first needed

    def _save(self, job: Job) -> None:
        """Store the job's record (one transaction) and tell whoever watches (streams, log, metrics)."""
        # A send begins: the plan's outcomes are no longer true (a job cancelled while queued has none).
        begins = job.status is JobStatus.SENDING and self.events.last.get(job.id) != JobStatus.SENDING.value
        try:
            self.store.put(job.id, job.stored(), drop_outcomes=begins)
        except Exception as exc:  # full disk, failing disk, or a bug: never a job stuck where it was
            # The disk is full (or failing): the job cannot go on, and says why; the server goes on.
            reason = ("the server's disk is full" if full_disk(exc) else "the job could not be saved") + (
                f": {_reason(exc)}"
            )
            observe.log_storage_error(job.id, reason)
            # A sending job goes on: its journal, not this record, is what a resume trusts.
            if job.status not in (JobStatus.FAILED, JobStatus.SENDING):
                job.status, job.error = JobStatus.FAILED, reason
                job.finished = job.finished or now_text()
        self.events.saved(job)
        job.touch()

    async def _save_outcomes(self, job: Job) -> None:
        outcomes = [_outcome_dict(o) for o in job.outcomes.values()]  # taken on the loop; written in a thread
        try:
            await in_background(self.store.put_outcomes, job.id, outcomes)
        except (OSError, sqlite3.Error) as exc:
            observe.log_storage_error(job.id, f"the outcomes could not be saved: {_reason(exc)}")

    def create(
        self,
        upload: Path,
        *,
        file: str,
        stored_name: str,
        sheet: str | None,
        default_region: str | None,
        column_map: Mapping[str, str],
        uploaded_by: str,
        client: str,
    ) -> Job:
        """Take an upload (moved into the job's folder) and start validating it in the background."""
        job_id = secrets.token_hex(12)
        folder = self.root / job_id
        (folder / "input").mkdir(parents=True)
        job = Job(
            id=job_id,
            folder=folder,
            file=file,
            upload=stored_name,
            created=now_text(),
            sheet=sheet,
            default_region=default_region,
            column_map=dict(column_map),
            uploaded_by=uploaded_by,
            client=client,
        )
        try:
            os.replace(upload, job.input_path)
            self.store.put(job.id, job.stored())
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)  # this request's own folder, never answered
            raise
        self.jobs[job_id] = job
        self.events.saved(job)
        self._spawn(self._validate(job))
        return job

    def get(self, job_id: str) -> Job | None:
        return self.jobs.get(job_id) if JOB_ID.fullmatch(job_id) else None

    # -- validation and the table in memory -------------------------------------------------

    async def _load_report(self, job: Job) -> ValidationReport:
        """Read the upload, apply the edits, validate (in a thread): the CLI's reader and validator."""
        options = job.input_options()

        excluded = ops.excluded_rows(job.operations)
        report = await in_background(_read_and_check, options, tuple(job.edits), excluded)
        if not job.outcomes and job.status in KEEPS_OUTCOMES:
            job.outcomes = await in_background(self._saved_outcomes, job.id)
        shown = job.folder / "plan.json"
        if job.shown is None and job.planned and shown.is_file():
            job.shown = await in_background(_read_plan, shown)
            if job.status is JobStatus.PLANNED and not job.outcomes:
                job.outcomes = {o.row: o for o in job.shown.dry_run()}
        job.report = report
        self._keep_resident(job)
        return report

    def _keep_resident(self, job: Job) -> None:
        self._resident[job.id] = None
        self._resident.move_to_end(job.id)
        busy = {JobStatus.VALIDATING, JobStatus.PLANNING, JobStatus.SENDING}
        while len(self._resident) > RESIDENT_TABLES:
            for job_id in self._resident:
                other = self.jobs[job_id]
                if other is not job and other.status not in busy and not other.lock.locked():
                    other.report = None
                    other.shown = None  # in plan.json; read again with the table
                    if other.status in (*KEEPS_OUTCOMES, JobStatus.PLANNED):
                        other.outcomes = {}  # saved in the store or plan.json; read again with the table
                    other.view = None
                    del self._resident[job_id]
                    break
            else:
                return

    async def report(self, job: Job) -> ValidationReport:
        """The job's validated table, read again from its folder if it was let go."""
        if job.report is not None:
            if job.id in self._resident:
                self._resident.move_to_end(job.id)
            return job.report
        async with job.lock:
            if job.report is None:
                await self._load_report(job)
        assert job.report is not None
        return job.report

    def _summarise(self, job: Job, report: ValidationReport) -> None:
        table = report.table
        job.rows = table.row_count
        job.columns = list(table.headers)
        job.mapping = {f: table.headers[i] for f, i in report.mapping.items()}
        src = table.source
        job.source = {
            "format": src.format,
            "sheet": src.sheet,
            "header_row": src.header_row,
            "encoding": src.encoding,
            "sha256": src.sha256,
        }
        job.problems = dict(collections.Counter(i.kind for i in report.issues))
        job.notes = engine.input_notes(report, job.input_options())
        self._count(job)

    def _count(self, job: Job) -> None:
        report = job.report
        if report is None:
            return
        invalid = len(report.failed_rows)
        counts = collections.Counter(o.status.value for o in job.outcomes.values())
        counts[Status.FAILED.value] += invalid
        # Rows left out on purpose (excluded on the page, hidden, footers) are skipped from the start.
        counts[Status.SKIPPED.value] += sum(1 for row in report.skipped if row not in job.outcomes)
        counts[Status.NOT_SENT.value] += max(0, job.rows - sum(counts.values()))
        job.counts = {s.value: counts.get(s.value, 0) for s in Status}
        job.counts["valid"] = job.rows - invalid

    def _drop_plan(self, job: Job) -> None:
        """Forget the plan shown: its inputs changed (or it was never finished)."""
        job.plan, job.budget, job.planned, job.shown = "", {}, {}, None
        for name in ("plan.json", "plan.results.xlsx", "plan.failed.xlsx"):
            (job.folder / name).unlink(missing_ok=True)

    async def _keep_plan(self, job: Job, plan: Plan, requests: int) -> None:
        """Keep the plan shown with the job (plan.json), with the fingerprint of its inputs."""
        job.shown = plan
        job.outcomes = {o.row: o for o in plan.dry_run()}
        job.planned = {**plan_summary(plan), "inputs": job.inputs_fingerprint()}
        job.plan = plan.text()
        job.budget = engine.send_budget(self.connection, plan, requests)
        data = {"inputs": job.planned["inputs"], "plan": plan_to_dict(plan)}
        await in_background(_write_json, job.folder / "plan.json", data)

    async def _validate(self, job: Job) -> None:
        job.status = JobStatus.VALIDATING
        job.error = ""
        job.outcomes = {}
        self._drop_plan(job)
        self._save(job)
        try:
            async with job.lock:
                report = await self._load_report(job)
        except SheetChoiceNeeded as exc:  # not a failure: the user picks (``set_options``)
            job.status, job.error = JobStatus.NEEDS_SHEET, words.error_words(exc, words.Surface.WEB)
            job.sheet_list = [dataclasses.asdict(sheet) for sheet in exc.sheets]
            job.report = None
        except ImporterError as exc:
            job.status, job.error = JobStatus.FAILED, words.error_words(exc, words.Surface.WEB)
            job.report = None
        except Exception as exc:  # a bug must not leave the job validating for ever
            job.status, job.error = JobStatus.FAILED, engine.clean_error(exc)
            job.report = None
        else:
            self._summarise(job, report)
            job.sheet_list = [dataclasses.asdict(sheet) for sheet in report.table.sheets]
            job.status = JobStatus.VALIDATED
        self._save(job)

    async def set_options(
        self,
        job: Job,
        sheet: str | None,
        default_region: str | None,
        column_map: Mapping[str, str],
        header_row: int | EllipsisType | None = ...,
        **more: Any,
    ) -> None:
        """Read the upload again with other options (edits are kept); any plan is dropped.

        ``header_row`` is the header's Excel row (None: where the reader finds it); left out, it
        stays as it was, unless the sheet changes (another sheet starts from the reader's choice).
        ``more``: any of ``encoding``, ``skip_hidden_rows``, ``ignore_columns``, ``on_existing``,
        ``max_error_rate`` (left out: unchanged).
        """
        sent = (job.folder / "journal.sqlite").exists()
        if (
            job.status not in (*EDITABLE, JobStatus.FAILED, JobStatus.NEEDS_SHEET)
            or sent
            or job.lock.locked()
        ):
            raise JobError(f"the job is {job.status.value}; options can change only before sending")
        if not isinstance(header_row, EllipsisType):
            job.header_row = header_row
        elif sheet != job.sheet or more.get("sheets", job.sheets) != job.sheets:
            job.header_row = None
        job.sheet, job.default_region, job.column_map = sheet, default_region, dict(column_map)
        for name, value in more.items():
            if name not in MORE_OPTIONS:
                raise JobError(f"no option {name!r}")
            setattr(job, name, value)
        await self._validate(job)

    # -- edits ------------------------------------------------------------------------------

    async def edit(
        self, job: Job, row: int, changes: Mapping[str, str] | Mapping[int, str], *, who: str = ""
    ) -> None:
        """Correct cells of one row and validate again; the upload is never changed.

        A cell is named by its header text, the field it maps to, or its column's position (the
        page's form: headers can repeat or be blank). Each changed cell is one ``set``
        operation (``apply_op``), undoable.

        Raises:
            JobError: the job is not editable now, or a column or row is unknown.
        """
        report = await self.report(job)
        if row not in report.table.frame.index:
            raise LookupError(f"row {row} is not a data row of this file")
        bodies = [{"op": "set", "row": row, "column": c, "value": v} for c, v in changes.items()]
        await self.apply_op(job, bodies, who=who, quiet=True)

    async def apply_op(
        self, job: Job, bodies: Sequence[Mapping[str, Any]], *, who: str, quiet: bool = False
    ) -> list[int]:
        """Apply edit operations (``web.edits``) in order, check the rows they touched, save.

        Returns the rows changed. ``quiet``: a cell set to what it holds is no error.

        Raises:
            JobError: the job is not editable now, or an operation cannot be applied.
        """
        if job.status not in EDITABLE:
            raise JobError(f"the job is {job.status.value}; rows can be edited only before sending")
        report = await self.report(job)
        async with job.lock:
            if job.status not in EDITABLE:
                raise JobError(f"the job is {job.status.value}; rows can be edited only before sending")
            report = job.report or report  # another operation may have ended while this one waited
            edits, operations, touched = list(job.edits), list(job.operations), set[int]()
            for body in bodies:
                try:
                    # In a thread: a bulk operation builds an edit per cell (100,000 cost ~0.5 s).
                    change = await in_background(
                        ops.apply_op, body, report, edits, operations, who=who, when=now_text()
                    )
                except ops.EditRefused as exc:
                    if quiet and str(exc).startswith("nothing to change"):
                        continue
                    raise JobError(str(exc)) from None
                edits, operations = list(change.edits), list(change.operations)
                touched |= change.touched
            if not touched:
                return []
            options = job.input_options()
            excluded = ops.excluded_rows(operations)
            fresh = await in_background(
                ops.recheck_or_check, report, job.edits, edits, options, touched, excluded
            )
            job.edits, job.operations = edits, operations
            await in_background(_write_edits, job.folder, edits, operations)
            job.report = fresh
            job.outcomes = {}
            self._drop_plan(job)
            job.status = JobStatus.VALIDATED
            self._summarise(job, fresh)
            self._save(job)
            return sorted(touched)

    # -- plan and send ----------------------------------------------------------------------

    def _lane(self) -> Lane:
        key = engine.lane_key(self.connection)
        lane = self.lanes.get(key)
        if lane is None:
            lane = self.lanes[key] = Lane(self.connection)
            lane.task = asyncio.create_task(self._lane_worker(lane))
        return lane

    def audit(self, job: Job) -> dict[str, str]:
        """Summary lines about the job: who uploaded it, from where, and every edit."""
        out = {"uploaded_by": job.uploaded_by or "(not given)", "client": job.client, "web job": job.id}
        for n, edit in enumerate(job.edits, start=1):
            out[f"edit {n}"] = edit.text()
        if job.header_row is not None:
            out["header row"] = f"{job.header_row} (chosen on the web page)"
        out.update(self.audit_log.summary(job.id))  # uploaded, planned, approved, started by
        return out

    async def plan(self, job: Job) -> None:
        """Run the dry run against the live state (in the background)."""
        if job.status not in EDITABLE:
            raise JobError(f"the job is {job.status.value}; a plan needs a validated job")
        job.status, job.error = JobStatus.PLANNING, ""
        self._save(job)
        self._spawn(self._plan(job))

    async def _plan(self, job: Job) -> None:
        try:
            report = await self.report(job)
            run = await engine.run_job(
                self.connection,
                report,
                job.input_options(),
                dry_run=True,
                journal_path=None,
                results=job.folder / "plan.results.xlsx",
                failed=job.folder / "plan.failed.xlsx",
                limiter=self._lane().limiter,
                cancel=asyncio.Event(),
                on_existing=OnExisting(job.on_existing),
                max_error_rate=job.max_error_rate,
                audit=self.audit(job),
            )
            if run.plan is None:
                raise ImporterError(run.stop_reason or "no plan was made")
            await self._keep_plan(job, run.plan, run.requests)
        except Exception as exc:
            # A plan is only reads: the job stays usable and says why the plan did not happen.
            self._drop_plan(job)
            job.status, job.error = JobStatus.VALIDATED, "plan failed: " + engine.clean_error(exc)
            self._save(job)
            return
        job.notes = list(run.notes)
        job.status = JobStatus.PLANNED
        self._count(job)
        self._save(job)

    async def start(self, job: Job) -> None:
        """Queue the job for sending on its key's lane."""
        # A job that failed while sending (key rejected, API unreachable) may start again: the
        # engine resumes it from its journal, so nothing confirmed is sent twice.
        # Only the plan shown is sent: from ``planned``, while its inputs are what they were.
        retry = job.status is JobStatus.FAILED and (job.folder / "journal.sqlite").exists()
        if job.status is not JobStatus.PLANNED and not retry:
            raise JobError(f"the job is {job.status.value} and has no plan to send: {PLAN_AGAIN}")
        if not job.planned:
            raise JobError(f"the job has no plan to send: {PLAN_AGAIN}")
        if job.planned.get("inputs") != job.inputs_fingerprint():
            raise JobError(f"the file, its corrections or its options changed since the plan: {PLAN_AGAIN}")
        if self.closing.is_set():
            raise JobError("the server is shutting down")
        job.status, job.error = JobStatus.SENDING, ""
        job.resuming = False
        job.outcomes = {}
        job.progress = {}
        self._save(job)
        self._enqueue(job)

    def _enqueue(self, job: Job) -> None:
        lane = self._lane()
        lane.waiting.append(job)
        lane.positions()
        lane.wake.set()

    async def resume(self, job: Job) -> int:
        """Plan the rows a cancelled or stopped send left, against the live state; ``planned`` next.

        The job's journal stays: the rows it confirmed are found as asked and show as done; the
        user reviews the plan and starts it (``start``), which sends only what is still needed.
        Returns the rows not sent yet.

        Raises:
            JobError: the job is not cancelled or stopped.
        """
        stopped = job.status is JobStatus.FAILED and (job.folder / "journal.sqlite").exists()
        if job.status is not JobStatus.CANCELLED and not stopped:
            raise JobError(
                f"the job is {job.status.value}; only a cancelled or stopped job can send the rest"
            )
        report = await self.report(job)  # its saved outcomes too
        done = {r: o for r, o in job.outcomes.items() if o.status is Status.SUCCEEDED}
        left = report.table.row_count - len(report.failed_rows) - len(report.skipped) - len(done)
        job.status, job.error, job.stopped, job.finished = JobStatus.PLANNING, "", "", ""
        self._save(job)
        self._spawn(self._plan_rest(job, done))
        return max(0, left)

    async def _plan_rest(self, job: Job, done: Mapping[int, RowOutcome]) -> None:
        await self._plan(job)
        if job.status is JobStatus.PLANNED:  # sent by this job before: done, not "unchanged"
            for row, outcome in done.items():
                planned = job.outcomes.get(row)
                if planned is not None and planned.action is Action.UNCHANGED:
                    job.outcomes[row] = outcome
            self._count(job)
            job.touch()

    async def cancel(self, job: Job) -> None:
        """Cancel: a queued or idle job at once, a sending one once its writes in flight settle."""
        if job.status in FINISHED:
            raise JobError(f"the job is already {job.status.value}")
        for lane in self.lanes.values():
            if job in lane.waiting:
                lane.waiting.remove(job)
                lane.positions()
                job.queue_position = None
                self._finish(job, JobStatus.CANCELLED, "cancelled before sending started")
                return
        if job.status is JobStatus.SENDING:
            job.cancel.set()
            job.touch()
            return
        if job.status in (JobStatus.VALIDATING, JobStatus.PLANNING):
            raise JobError(f"the job is {job.status.value}; cancel it once that is done")
        self._finish(job, JobStatus.CANCELLED, "cancelled before sending")

    def _finish(self, job: Job, status: JobStatus, stopped: str = "", error: str = "") -> None:
        job.status, job.stopped, job.error = status, stopped, error
        job.finished = now_text()
        self._count(job)
        self._save(job)

    async def _lane_worker(self, lane: Lane) -> None:
        while not self.closing.is_set():
            if not lane.waiting:
                lane.wake.clear()
                await lane.wake.wait()
                continue
            job = lane.waiting.popleft()
            job.queue_position = None
            lane.positions()
            lane.running = job
            try:
                await self._send(job, lane)
            finally:
                lane.running = None

    async def _send(self, job: Job, lane: Lane) -> None:
        job.cancel = asyncio.Event()
        if self.closing.is_set():
            return
        job.touch()
        last_touch = 0.0

        def progress(p: SendProgress) -> None:
            nonlocal last_touch
            for outcome in p.outcomes:
                job.outcomes[outcome.row] = outcome
            job.progress = {
                "done": p.done,
                "total": p.total,
                "succeeded": p.succeeded,
                "failed": p.failed,
                "eta_seconds": None if p.eta_seconds is None else round(p.eta_seconds, 1),
                "paused_seconds": round(lane.limiter.paused_for, 1),
            }
            # Counting every row costs a pass over the outcomes: at most a few times a second.
            now = time.monotonic()
            if now - last_touch >= 0.2 or p.done == p.total:
                last_touch = now
                self._count(job)
                job.touch()

        try:
            report = await self.report(job)
            if job.status is not JobStatus.SENDING:
                return
            self._summarise(job, report)
            run = await engine.run_job(
                self.connection,
                report,
                job.input_options(),
                dry_run=False,
                journal_path=job.folder / "journal.sqlite",
                results=job.folder / "results.xlsx",
                failed=job.folder / "failed.xlsx",
                limiter=lane.limiter,
                cancel=job.cancel,
                on_existing=OnExisting(job.on_existing),
                max_error_rate=job.max_error_rate,
                # A send the server resumes was confirmed before it stopped: its journal, not
                # the plan's writes, says what is left (some of them landed already).
                shown_writes=None if job.resuming else job.planned.get("writes_fingerprint"),
                on_progress=progress,
                audit=self.audit(job),
            )
            if run.refused and run.plan is not None:
                await self._plan_changed(job, report, run.plan, run.requests)
                return
        except Exception as exc:
            if job.interrupted:
                return  # the next start resumes it from its journal
            self._finish(job, JobStatus.FAILED, error=engine.clean_error(exc))
            return
        job.notes = list(run.notes)
        job.outcomes = dict(run.outcomes)
        await self._save_outcomes(job)
        if job.interrupted:
            self._count(job)
            job.stopped = "server stopped; resumes on the next start"
            self._save(job)
            return
        if job.cancel.is_set():
            self._finish(job, JobStatus.CANCELLED, "cancelled")
        elif run.exit_code == 3:
            self._finish(job, JobStatus.FAILED, run.stop_reason, error=run.stop_reason)
        else:
            self._finish(job, JobStatus.DONE, run.stop_reason)

    async def _plan_changed(self, job: Job, report: ValidationReport, plan: Plan, requests: int) -> None:
        """The account changed since the plan was shown: nothing was sent; show the new plan."""
        for name in ("results.xlsx", "failed.xlsx"):  # they say "not confirmed": not this job's result
            (job.folder / name).unlink(missing_ok=True)
        journal = job.folder / "journal.sqlite"
        if not await in_background(_journal_has_runs, journal):  # nothing was ever sent: still editable
            for suffix in ("", "-wal", "-shm"):
                journal.with_name(journal.name + suffix).unlink(missing_ok=True)
        self._drop_plan(job)
        await self._keep_plan(job, plan, requests)
        job.notes = engine.input_notes(report, job.input_options())
        job.progress = {}
        job.status = JobStatus.PLANNED
        job.error = (
            "the account changed since the plan was shown, so nothing was sent: this is the plan "
            "against the account as it is now; review it and start again"
        )
        self._count(job)
        self._save(job)

    # -- views ------------------------------------------------------------------------------

    def snapshot(self, job: Job) -> dict[str, Any]:
        """The job as the API and every event show it (never the key or a path on the server)."""
        return {
            "id": job.id,
            "status": job.status.value,
            "file": job.file,
            "created": job.created,
            "finished": job.finished or None,
            "uploaded_by": job.uploaded_by,
            "rows": job.rows,
            "counts": job.counts,
            "problems": job.problems,
            "progress": {**NO_PROGRESS, **job.progress},
            "queue_position": job.queue_position,
            "error": job.error or None,
            "stopped": job.stopped or None,
            "plan": job.plan or None,
            "planned": {k: v for k, v in job.planned.items() if k not in ("inputs", "writes_fingerprint")}
            or None,
            "budget": job.budget or None,
            "notes": job.notes,
            "sheets": job.sheet_list,
            "candidates": [s["name"] for s in job.sheet_list if s["matches"] and s["rows"]]
            if job.status is JobStatus.NEEDS_SHEET
            else None,
            "options": {
                "sheet": job.sheet,
                "sheets": job.sheets,
                "header_row": job.header_row,
                "default_region": job.default_region,
                "map": [f"{h}={f}" for h, f in job.column_map.items()],
                "encoding": job.encoding,
                "skip_hidden_rows": job.skip_hidden_rows,
                "ignore_columns": job.ignore_columns,
                "on_existing": job.on_existing,
                "max_error_rate": job.max_error_rate,
            },
            "source": job.source,
            "columns": job.columns,
            "mapping": job.mapping,
            "edits": len(job.edits),
        }

    async def rows(self, job: Job, status: str | None, offset: int, limit: int) -> dict[str, Any]:
        """One page of rows with their values, status and reasons (filtered by status)."""
        report = await self.report(job)
        frame = report.table.frame
        index = frame.index.tolist()
        if job.view is None or job.view[0] != job.version:
            failed_rows = report.failed_rows
            statuses = [
                Status.FAILED.value
                if row in failed_rows
                else (
                    o.status.value
                    if (o := job.outcomes.get(row))
                    else (Status.SKIPPED.value if row in report.skipped else Status.NOT_SENT.value)
                )
                for row in index
            ]
            job.view = (job.version, statuses, reasons_by_row(report.issues))
        _, statuses, issues = job.view
        if status:
            wanted = set(status.split(","))
            valid = "valid" in wanted  # not a status: the rows without issues, whatever their status
            positions = [
                i for i, s in enumerate(statuses) if s in wanted or (valid and index[i] not in issues)
            ]
        else:
            positions = list(range(len(index)))
        page = positions[offset : offset + limit]
        items = self._items(job, report, [(i, index[i], statuses[i]) for i in page], issues)
        return {
            "job": job.id,
            "columns": list(report.table.headers),
            "total": len(positions),
            "offset": offset,
            "limit": limit,
            "rows": items,
        }

    def _items(
        self,
        job: Job,
        report: ValidationReport,
        page: Sequence[tuple[int, int, str]],
        issues: Mapping[int, list[RowIssue]],
    ) -> list[dict[str, Any]]:
        """The rows at ``page`` (position, row, status) with their values, outcome and issues."""
        edited = collections.defaultdict(set)
        shown = {row for _, row, _ in page}
        for e in job.edits:
            if e.row in shown:
                edited[e.row].add(e.header)
        items = []
        frame = report.table.frame
        unplanned = job.status in (JobStatus.VALIDATING, JobStatus.VALIDATED, JobStatus.PLANNING)
        for i, row, status in page:
            values = [str(v) for v in frame.iloc[i].tolist()]
            row_issues = issues.get(row, [])
            # One outcome per row, as the library's results say it (``run.every_row``).
            outcome = (
                failed_outcome(row, row_issues)
                if row_issues
                else job.outcomes.get(row)
                or skipped_outcome(report, row)
                or (_validated_only(row) if unplanned else None)
                or RowOutcome(
                    row=row, status=Status.NOT_SENT, reason="not sent", reason_kind=ReasonKind.NOT_SENT
                )
            )
            items.append(
                {
                    "row": row,
                    "values": values,
                    "status": status,
                    "valid": not row_issues,
                    "action": outcome.action.value,
                    "reason": outcome.reason,
                    "reason_kind": str(outcome.reason_kind),
                    "issues": [
                        {"column": x.column, "value": x.value, "message": x.message, "kind": x.kind}
                        | ({"suggestion": hint} if (hint := ops.suggestion(x)) else {})
                        for x in row_issues
                    ],
                    "did_id": outcome.did_id,
                    "routing_id": outcome.routing_id,
                    "current": outcome.current,
                    "proposed": outcome.proposed,
                    "edited": sorted(edited.get(row, ())),
                    **dict(zip(("sheet", "excel_row"), report.table.origin(row), strict=True)),
                }
            )
        return items

    async def row_items(self, job: Job, rows: Sequence[int]) -> list[dict[str, Any]]:
        """Some rows as ``rows`` pages them, without building the whole table's view."""
        report = await self.report(job)
        index = report.table.frame.index
        wanted = set(rows)
        issues = reasons_by_row(i for i in report.issues if i.row in wanted)
        page = []
        for row in rows:
            status = (
                Status.FAILED.value
                if row in issues
                else (
                    o.status.value
                    if (o := job.outcomes.get(row))
                    else (Status.SKIPPED.value if row in report.skipped else Status.NOT_SENT.value)
                )
            )
            page.append((int(index.get_loc(row)), row, status))  # type: ignore[arg-type]
        return self._items(job, report, page, issues)

    async def workbook(self, job: Job, kind: str) -> Path | None:
        """The results (``kind`` "results") or failed-rows workbook: final, or a snapshot now."""
        name = "results.xlsx" if kind == "results" else "failed.xlsx"
        if kind == "failed" and job.stopped and (job.status in (JobStatus.CANCELLED, JobStatus.FAILED)):
            return await self._failed_and_unsent(job)
        if job.status in (JobStatus.DONE, JobStatus.CANCELLED) and (job.folder / "results.xlsx").is_file():
            path = job.folder / name
            return path if path.is_file() else None
        if job.status is JobStatus.PLANNED and (job.folder / "plan.results.xlsx").is_file():
            path = job.folder / ("plan." + name)
            return path if path.is_file() else None
        if job.status in (JobStatus.VALIDATING, JobStatus.FAILED) and job.report is None:
            return None
        report = await self.report(job)
        unplanned = job.status in (JobStatus.VALIDATED, JobStatus.FAILED) and not job.outcomes
        outcomes = None if unplanned else engine.row_outcomes(report, job.outcomes)
        results = job.folder / "snapshot.results.xlsx"
        failed = job.folder / "snapshot.failed.xlsx"
        command = {
            JobStatus.SENDING: "web (snapshot while sending)",
            JobStatus.PLANNED: "web (dry run)",
        }.get(job.status, "web (validate)")
        audit = {"started": job.created, **self.audit(job)}
        # One snapshot at a time per job: two downloads must not write one file together.
        async with job.lock:
            await in_background(
                engine.write_results,
                report,
                outcomes,
                command=command,
                options=job.input_options().describe(),
                audit=audit,
                connection=self.connection,
                results=results,
                failed=failed,
            )
        path = results if kind == "results" else failed
        return path if path.is_file() else None

    async def _failed_and_unsent(self, job: Job) -> Path | None:
        """A cancelled or stopped job's failed rows and the rows it did not send, with their reasons."""
        report = await self.report(job)
        rows, reasons = [], {}
        for outcome in engine.row_outcomes(report, job.outcomes):
            if outcome.status in (Status.FAILED, Status.NOT_SENT):
                rows.append(outcome.row)
                reasons[outcome.row] = outcome.reason
        if not rows:
            return None
        path = job.folder / "snapshot.unsent.xlsx"
        async with job.lock:
            await in_background(write_failed_rows, path, report.table, rows, reasons)
        return path

    def list(self) -> list[dict[str, Any]]:
        """Every job, newest first, then the damaged ones (status ``damaged``, ``error`` says why)."""
        jobs = [self.snapshot(j) for j in sorted(self.jobs.values(), key=lambda j: j.created, reverse=True)]
        return jobs + [damaged_entry(job_id, reason) for job_id, reason in sorted(self.damaged.items())]

    def _saved_outcomes(self, job_id: str) -> dict[int, RowOutcome]:
        try:
            return {o.row: o for o in map(_outcome_from, self.store.outcomes(job_id) or [])}
        except (DamagedRecord, KeyError, ValueError, TypeError) as exc:
            raise ImporterError(f"the saved outcomes of this job cannot be read: {_reason(exc)}") from None


def _column_position(headers: Sequence[str], mapping: Mapping[str, int], column: str | int) -> int:
    """A column named by its position, its header text or the field it maps to."""
    if isinstance(column, int):
        if 0 <= column < len(headers):
            return column
        raise JobError(f"no column at position {column} in this file")
    if column in headers:
        return headers.index(column)
    if column in mapping:
        return mapping[column]
    raise JobError(f"no column {column!r} in this file")
