"""What an operator sees: one log line per job event, and the numbers ``GET /metrics`` shows.

Job events are told from the job's status as it is saved: ``created``, ``validated``,
``planned``, ``started``, ``done``, ``failed``, ``cancelled``; each log line names the job and
its uploader (text, or one JSON object per line with ``--log-format json``). The key is never in
a line or a metric: a key is named by its fingerprint (``engine.lane_key``, a hash).
"""

from __future__ import annotations

import enum
import gc
import json
import logging
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from importer.web.jobs import Job

__all__ = [
    "JobEvents",
    "KeyFigures",
    "LogFormat",
    "configure_logging",
    "log_damaged",
    "log_storage_error",
    "render_metrics",
]

LOGGER = logging.getLogger("importer.web")

_EVENTS = {
    "validating": "",  # a (re)validation beginning is not an event of its own; its end is
    "validated": "validated",
    "planning": "",
    "planned": "planned",
    "sending": "started",
    "done": "done",
    "failed": "failed",
    "cancelled": "cancelled",
}


class LogFormat(enum.StrEnum):
    """How the server's log lines are written (``--log-format``)."""

    TEXT = "text"
    JSON = "json"


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created)),
            "level": record.levelname.lower(),
            "message": record.getMessage(),
        }
        line.update(getattr(record, "fields", {}))
        return json.dumps(line, ensure_ascii=False)


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created))
        return f"{stamp} {record.levelname.lower()} {record.getMessage()}"


def formatter(log_format: LogFormat) -> logging.Formatter:
    """The formatter for ``log_format``."""
    return _JsonFormatter() if log_format is LogFormat.JSON else _TextFormatter()


def configure_logging(log_format: LogFormat, stream: IO[str] | None = None) -> logging.Handler:
    """Send the service's log lines to ``stream`` (stderr) in ``log_format``, replacing an earlier call's."""
    for old in [h for h in LOGGER.handlers if getattr(h, "voicelink", False)]:
        LOGGER.removeHandler(old)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter(log_format))
    handler.voicelink = True  # type: ignore[attr-defined]
    LOGGER.addHandler(handler)
    LOGGER.setLevel(logging.INFO)
    LOGGER.propagate = False
    return handler


def _log(level: int, message: str, **fields: Any) -> None:
    LOGGER.log(level, message, extra={"fields": fields})


def log_damaged(job_id: str, reason: str) -> None:
    """A job whose record cannot be read (listed as damaged, kept as it is)."""
    _log(logging.WARNING, f"job {job_id} damaged: {reason}", event="damaged", job=job_id, reason=reason)


def log_storage_error(job_id: str, reason: str) -> None:
    """A write to the data dir failed (full disk, failing disk)."""
    _log(logging.ERROR, f"job {job_id or '-'}: {reason}", event="storage_error", job=job_id, reason=reason)


@dataclass(slots=True)
class JobEvents:
    """Tells job events from saved statuses, logs them and keeps the counts ``/metrics`` shows."""

    clock: Callable[[], float] = time.monotonic
    last: dict[str, str] = field(default_factory=dict)
    validating_since: dict[str, float] = field(default_factory=dict)
    events: Counter[str] = field(default_factory=Counter)
    validation_seconds: float = 0.0
    validations: int = 0
    listeners: list[Callable[[str, Job], None]] = field(default_factory=list)
    """Told of each event as it is logged (the audit records, notifications); a listener must not block."""

    def seen(self, job: Job) -> None:
        """A job found at start: its status is where it is, not an event."""
        self.last[job.id] = job.status.value
        if job.status.value == "validating":
            self.validating_since[job.id] = self.clock()

    def saved(self, job: Job) -> None:
        """A job was saved: log and count the event its new status is, if it is a new one."""
        status = job.status.value
        before = self.last.get(job.id)
        if before == status:
            return
        self.last[job.id] = status
        if before is None:
            self._emit("created", job)
        if status == "validating":
            self.validating_since[job.id] = self.clock()
        elif job.id in self.validating_since:
            self.validation_seconds += self.clock() - self.validating_since.pop(job.id)
            self.validations += 1
        name = _EVENTS.get(status, "")
        if name:
            self._emit(name, job)

    def _emit(self, name: str, job: Job) -> None:
        self.events[name] += 1
        fields: dict[str, Any] = {"event": name, "job": job.id, "uploaded_by": job.uploaded_by}
        if job.error:
            fields["error"] = job.error
        who = job.uploaded_by or "(not given)"
        extra = f": {job.error}" if job.error and name == "failed" else ""
        level = logging.WARNING if name == "failed" else logging.INFO
        _log(level, f"job {job.id} {name} (uploaded by {who}){extra}", **fields)
        for listener in self.listeners:
            try:
                listener(name, job)
            except Exception as exc:  # a listener's fault (full disk, a bug) never stops the job
                _log(
                    logging.ERROR, f"job {job.id}: a {name} listener failed: {exc!r}", event="listener_error"
                )

    def emit(self, name: str, job: Job) -> None:
        """An event that is not a status (e.g. ``needs-approval``, ``scheduled``): logged, counted, told."""
        self._emit(name, job)


@dataclass(frozen=True, slots=True)
class KeyFigures:
    """One key's numbers: its fingerprint (never the key), requests, 429s, jobs waiting to send."""

    fingerprint: str
    requests: int
    throttled: int
    waiting: int
    sending: int


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render_metrics(
    statuses: Iterable[str],
    row_counts: Iterable[Mapping[str, int]],
    keys: Iterable[KeyFigures],
    events: JobEvents,
) -> str:
    """The Prometheus text format (version 0.0.4) of the server's figures.

    Args:
        statuses: Every job's status (``damaged`` for one that cannot be read).
        row_counts: Every job's row counts by status.
        keys: Each key's figures.
        events: The job events seen since start.
    """
    by_status = Counter(statuses)
    rows: Counter[str] = Counter()
    for counts in row_counts:
        rows.update({k: v for k, v in counts.items() if k in ("succeeded", "unchanged", "skipped", "failed")})
    out = [
        "# HELP voicelink_jobs Jobs by status.",
        "# TYPE voicelink_jobs gauge",
        *(f'voicelink_jobs{{status="{_label(s)}"}} {n}' for s, n in sorted(by_status.items())),
        "# HELP voicelink_rows Rows of every job by outcome (succeeded: sent and confirmed).",
        "# TYPE voicelink_rows gauge",
        *(
            f'voicelink_rows{{status="{s}"}} {rows.get(s, 0)}'
            for s in ("succeeded", "unchanged", "skipped", "failed")
        ),
        "# HELP voicelink_queue_length Jobs waiting, by queue.",
        "# TYPE voicelink_queue_length gauge",
        f'voicelink_queue_length{{queue="validation"}} {by_status.get("validating", 0)}',
    ]
    figures = list(keys)
    for k in figures:
        out.append(f'voicelink_queue_length{{queue="send",key="{_label(k.fingerprint)}"}} {k.waiting}')
    out += [
        "# HELP voicelink_api_requests_total API requests sent, per key.",
        "# TYPE voicelink_api_requests_total counter",
    ]
    out += [f'voicelink_api_requests_total{{key="{_label(k.fingerprint)}"}} {k.requests}' for k in figures]
    out += [
        "# HELP voicelink_api_429_total 429 answers from the API, per key.",
        "# TYPE voicelink_api_429_total counter",
    ]
    out += [f'voicelink_api_429_total{{key="{_label(k.fingerprint)}"}} {k.throttled}' for k in figures]
    out += [
        "# HELP voicelink_job_events_total Job events since start.",
        "# TYPE voicelink_job_events_total counter",
        *(
            f'voicelink_job_events_total{{event="{e}"}} {events.events.get(e, 0)}'
            for e in sorted(set(_EVENTS.values()) - {""} | {"created"})
        ),
        "# HELP voicelink_validation_seconds Time spent validating uploads (and revalidating after changes).",
        "# TYPE voicelink_validation_seconds summary",
        f"voicelink_validation_seconds_sum {events.validation_seconds:.3f}",
        f"voicelink_validation_seconds_count {events.validations}",
    ]
    return "\n".join(out + _collector()) + "\n"


def _collector() -> list[str]:
    """The garbage collector's figures: while it runs, every thread waits (answers too)."""
    stats = gc.get_stats()
    return [
        "# HELP python_gc_collections_total Collections of each generation (2: a full one) since start.",
        "# TYPE python_gc_collections_total counter",
        *(f'python_gc_collections_total{{generation="{n}"}} {s["collections"]}' for n, s in enumerate(stats)),
        "# HELP python_gc_objects_collected_total Objects a collection of each generation freed.",
        "# TYPE python_gc_objects_collected_total counter",
        *(
            f'python_gc_objects_collected_total{{generation="{n}"}} {s["collected"]}'
            for n, s in enumerate(stats)
        ),
        "# HELP python_gc_frozen_objects Objects kept out of every collection (loaded at start: gc.freeze).",
        "# TYPE python_gc_frozen_objects gauge",
        f"python_gc_frozen_objects {gc.get_freeze_count()}",
    ]
