"""What a job is and how its files are kept: the record (``Job``), its folder's files, the plan shown.

``JobService`` (``web.jobs``) holds the jobs and moves them; these are the values and the
blocking file work it hands to its worker threads.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from importer.engine.journal import Journal
from importer.engine.plan import Plan, plan_from_dict, plan_to_dict, writes_fingerprint
from importer.model import Action, RowIssue, RowOutcome, Status, ValidationReport
from importer.options import InputOptions
from importer.vocab import OnExisting
from importer.web import edits as ops
from importer.web.engine import Edit
from importer.web.lifecycle import JobError, JobStatus
from importer.web.store import DamagedRecord, JobStore, decode_list, decode_object

JOB_ID = re.compile(r"[0-9a-f]{24}")
RESIDENT_TABLES = 3
"""Validated tables kept in memory; others are read again from their folder when asked for."""


MORE_OPTIONS = frozenset(
    {"sheets", "encoding", "skip_hidden_rows", "ignore_columns", "on_existing", "max_error_rate"}
)
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


class JobDamaged(Exception):
    """A job whose files on the server cannot be read again (the API answers 410 with the message)."""


def safe_name(name: str, suffix: str = "") -> str:
    """A file name that is safe on disk and in a Content-Disposition header."""
    stem = _UNSAFE.sub("_", Path(name.replace("\\", "/")).name).strip(" .") or "upload"
    stem = stem[:80]
    if suffix and not stem.lower().endswith(suffix):
        stem = Path(stem).stem[:80] + suffix
    return stem


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
    planned_by: str = ""
    """Who asked for the plan shown (four eyes: someone else approves it, ``web.approval``)."""
    approval: dict[str, str] = field(default_factory=dict)
    """Who approved which plan, when: ``by``, ``at``, ``fingerprint`` ({}: none)."""
    schedule: dict[str, Any] = field(default_factory=dict)
    """A change window (``web.windows``): ``at`` (UTC), ``by``, the plan's ``fingerprint`` and ``writes``."""
    mapped_from: dict[str, str] = field(default_factory=dict)
    """The earlier job whose mapping this upload took (``web.mappings``): ``job``, ``file``; {} once
    the user maps the columns themselves, or when nothing was remembered."""
    kind: str = "import"
    """``import`` (an upload), or ``rollback`` (``web.undo``: it puts back what ``undoes`` changed)."""
    undoes: str = ""
    """A rollback job's original job."""
    undone_by: str = ""
    """An import's latest rollback job (a cancelled or failed one may be followed by another)."""
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
    """Its place in the line: for a worker (``WorkQueue``) or for its key's lane (``Lane``)."""
    busy: str = ""
    snapshot_of: str = ""
    """The state of the job its snapshot workbooks were built for (built again once it changes)."""
    """Work under way besides the status (a row edit being checked): nothing else begins meanwhile."""
    view: tuple[int, list[str], dict[int, list[RowIssue]]] | None = None
    """Per-row statuses and issues for paging, as of ``version``."""

    STORED = (
        *("id", "file", "upload", "created", "status", "error", "sheet", "default_region", "column_map"),
        *("uploaded_by", "client", "rows", "counts", "problems", "progress", "plan", "budget", "stopped"),
        *("columns", "mapping", "source", "finished", "header_row", "planned", "notes"),
        *("encoding", "skip_hidden_rows", "ignore_columns", "on_existing", "max_error_rate"),
        *("sheets", "sheet_list", "planned_by", "approval", "schedule", "mapped_from"),
        *("kind", "undoes", "undone_by"),
    )

    @property
    def input_path(self) -> Path:
        return self.folder / "input" / self.upload

    @property
    def journal_path(self) -> Path:
        """The engine's journal of this job's sends; it exists once a send began."""
        return self.folder / "journal.sqlite"

    def sent_something(self) -> bool:
        """A send began (its journal exists): options are fixed, a failure retries or resumes."""
        return self.journal_path.exists()

    def resumable(self) -> bool:
        """A send that ended early: cancelled, or failed while sending; the rest can still be sent.

        Never a rollback job (``web.undo``): a new rollback of its import covers what is left."""
        return self.kind != "rollback" and (
            self.status is JobStatus.CANCELLED or (self.status is JobStatus.FAILED and self.sent_something())
        )

    def remaining(self) -> int:
        """Valid rows a cancelled or stopped send left to do (not done, not left out), from the counts.

        Rows that failed validation stay failed until corrected; a valid row that failed or was not
        sent is still to do: ``JobService.resume`` plans it again against the live state. The page's
        "Send the remaining N rows" and the API's ``remaining`` are this one number.
        """
        invalid = self.rows - self.counts.get("valid", self.rows)
        return max(0, self.counts.get("not_sent", 0) + self.counts.get("failed", 0) - invalid)

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


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically: a crash leaves the old file or the new one, never half of one."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        json.dump(data, fh, ensure_ascii=False)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def outcome_dict(o: RowOutcome) -> dict[str, Any]:
    return {name: getattr(o, name) for name in RowOutcome._fields}


def outcome_from(d: Mapping[str, Any]) -> RowOutcome:
    values = dict(d)
    values["status"] = Status(values["status"])
    values["action"] = Action(values["action"])
    return RowOutcome(**values)


def reason_of(exc: BaseException) -> str:
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


def import_folder(store: JobStore, folder: Path) -> None:
    """Take a job kept in job.json and outcomes.json (before the database) into the store, once.

    A file that cannot be read makes the job damaged, with the reason; the files are left as they are.
    """
    damaged: str | None = None
    try:
        raw = (folder / "job.json").read_bytes()
    except OSError as exc:
        raw, damaged = b"", f"job.json cannot be read: {reason_of(exc)}"
    outcomes = folder / "outcomes.json"
    if damaged is None and outcomes.is_file():
        try:
            rows = [outcome_from(o) for o in decode_list(outcomes.read_bytes(), "outcomes.json")]
            store.put_outcomes(folder.name, [outcome_dict(o) for o in rows])
        except DamagedRecord as exc:
            damaged = str(exc)
        except (OSError, KeyError, ValueError, TypeError) as exc:
            damaged = f"outcomes.json has a missing or wrong entry ({reason_of(exc)})"
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


def dry_run_outcomes(plan: Plan) -> dict[int, RowOutcome]:
    return {o.row: o for o in plan.dry_run()}


def keep_plan_file(plan: Plan, inputs: str, path: Path) -> tuple[dict[str, Any], str, dict[int, RowOutcome]]:
    """Write plan.json; return the plan's summary, its text and its outcomes (blocking: a thread)."""
    write_json(path, {"inputs": inputs, "plan": plan_to_dict(plan)})
    return plan_summary(plan), plan.text(), dry_run_outcomes(plan)


def read_plan(path: Path) -> Plan:
    return plan_from_dict(json.loads(path.read_text(encoding="utf-8"))["plan"])


def journal_has_runs(path: Path) -> bool:
    if not path.exists():
        return False
    journal = Journal.open(path)
    try:
        return bool(journal.runs())
    finally:
        journal.close()


def validated_only(row: int) -> RowOutcome:
    """A valid row of a job not planned yet (the CLI's ``validate`` says the same of it)."""
    return RowOutcome(
        row=row, status=Status.NOT_SENT, reason="valid; not sent yet", reason_kind="validated_only"
    )


def column_position(headers: Sequence[str], mapping: Mapping[str, int], column: str | int) -> int:
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
