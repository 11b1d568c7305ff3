"""Change windows: send a planned job at a time, as a maintenance window asks.

``POST /api/jobs/{id}/start`` with ``{"at": "<ISO 8601 time with its zone>"}`` schedules the send
(``scheduled``; again with another time: moved; ``/cancel``: cancelled). The time, who set it and
the fingerprint of the plan shown are in the job's record (``Job.schedule``), so a restart keeps
them. One task (``Scheduler.run``) wakes at the next due time (at most ``poll`` seconds apart)
and, for each job due:

1. plans again against the live state (``scheduled`` -> ``planning``, the job service's own plan);
2. if the plan writes what was shown (same fingerprint) and, under ``--require-approval``, its
   approval still holds, starts it: the normal ``start`` into the key's lane, the one send path;
3. otherwise stops it as ``failed``, saying why; nothing is sent.

A job found more than ``MISSED_AFTER`` past its time (the server was not running then) is not
sent outside its window: it fails, saying so, and is scheduled again by a person.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, tzinfo
from typing import TYPE_CHECKING

from importer.web.lifecycle import JobError, JobStatus, Step, next_status
from importer.web.sending import check_plan_shown

if TYPE_CHECKING:
    from importer.web.jobs import JobService
    from importer.web.records import Job

__all__ = ["POLL_SECONDS", "Scheduler", "parse_at", "scheduled_at", "utc_now", "utc_text"]

POLL_SECONDS = 1.0
"""The longest the scheduler sleeps: a job starts within this (and a plan's time) of its time."""
MISSED_AFTER = timedelta(minutes=15)
"""How late a send may still start: a change window is a promise about when the account changes."""
EXAMPLE = "e.g. 2026-01-31T22:00:00+01:00 or 2026-01-31T21:00:00Z"


def utc_now() -> datetime:
    return datetime.now(UTC)


def utc_text(moment: datetime) -> str:
    """A time as the records keep it: UTC, seconds, ``Z``."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_at(text: object, now: datetime, zone: tzinfo | None = None) -> datetime:
    """The time a send is asked for, in UTC.

    Args:
        text: ISO 8601, with its zone (``Z``, ``+01:00``).
        now: The time now (a time not after it is refused).
        zone: The zone of a time given without one (the page's form); None: a zone is required.

    Raises:
        ValueError: not a time, no zone, or not in the future (one line, for a 400).
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f'"at" must be an ISO 8601 time with its zone, {EXAMPLE}')
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f'"at" is not an ISO 8601 time: {text.strip()[:40]!r}; {EXAMPLE}') from None
    if moment.tzinfo is None:
        if zone is None:
            raise ValueError(f'"at" has no zone: {text.strip()[:40]!r}; add one, {EXAMPLE}')
        moment = moment.replace(tzinfo=zone)
    moment = moment.astimezone(UTC)
    if moment.microsecond:  # kept in whole seconds: never before the time asked for
        moment = moment.replace(microsecond=0) + timedelta(seconds=1)
    if moment <= now:
        raise ValueError(
            f"{utc_text(moment)} is not in the future (now {utc_text(now)}): choose a later time"
        )
    return moment


def scheduled_at(job: Job) -> str | None:
    """When a scheduled job sends (UTC ISO), for its snapshot; None when it is not scheduled."""
    return str(job.schedule.get("at")) if job.status is JobStatus.SCHEDULED and job.schedule else None


RESTARTED_WHEN_DUE = (
    "the server stopped while the scheduled send was being planned again, so nothing was sent: "
    "plan it again, review and start or schedule it"
)


class Scheduler:
    """The scheduled jobs of one service and the task that starts them when due."""

    def __init__(
        self, service: JobService, clock: Callable[[], datetime] = utc_now, poll: float = POLL_SECONDS
    ) -> None:
        self.service = service
        self.clock = clock
        self.poll = poll
        self.wake = asyncio.Event()

    def schedule(self, job: Job, moment: datetime, who: str) -> None:
        """Schedule (or move) the send of the plan shown to ``moment``.

        Raises:
            JobError: the job has no plan to send (or it is stale), needs approval, or cannot be
                scheduled in its state.
        """
        service = self.service
        to = next_status(job.status, Step.SCHEDULE, job.busy)
        check_plan_shown(job, service.require_approval, service.closing)
        job.schedule = {
            "at": utc_text(moment),
            "by": who,
            "fingerprint": job.planned.get("writes_fingerprint", ""),
            "writes": int(job.planned.get("writes", 0)),
        }
        job.status, job.error = to, ""
        service._save(job)
        service.events.emit("scheduled", job)
        self.wake.set()

    async def run(self) -> None:
        """Start each scheduled job when its time comes, until the service closes."""
        service = self.service
        for job in list(service.jobs.values()):  # a restart while a due job was planning again
            if job.schedule.get("due") and job.status is not JobStatus.SCHEDULED:
                job.schedule = {}
                if job.status is JobStatus.VALIDATED:  # its plan was dropped at load: say so, send nothing
                    service._finish(job, Step.FAIL, error=RESTARTED_WHEN_DUE)
        while not service.closing.is_set():
            now = self.clock()
            wait = self.poll
            for job in list(service.jobs.values()):
                if job.status is not JobStatus.SCHEDULED or not job.schedule:
                    continue
                at = datetime.fromisoformat(str(job.schedule["at"]))
                if now - at > MISSED_AFTER:
                    missed = (
                        f"its time ({utc_text(at)}) passed while the server was not running, so nothing was "
                        "sent outside its window: plan it again and schedule it"
                    )
                    service._finish(job, Step.FAIL, error=missed)
                elif at <= now and not job.busy:
                    # Taken now, before anything awaits: a start or cancel meanwhile is refused.
                    job.status = next_status(job.status, Step.DUE)
                    job.schedule = {**job.schedule, "due": "yes"}
                    service._save(job)
                    service.events.emit("due", job)
                    service._spawn(self._due(job))
                else:
                    wait = min(wait, max(0.0, (at - now).total_seconds()))
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self.wake.wait()

    async def _due(self, job: Job) -> None:
        """Plan again against the live state; send if it is the plan shown, else fail saying why."""
        service = self.service
        shown = dict(job.schedule)
        await service._plan(job)  # planning -> planned (or validated, saying why the plan failed)
        if service.closing.is_set() and job.status is JobStatus.PLANNED:
            # The server stops meanwhile: scheduled again, for the next start to take up at once.
            job.status, job.schedule = next_status(job.status, Step.SCHEDULE), {**shown, "due": ""}
            service._save(job)
            return
        job.schedule = {}
        if job.status is JobStatus.PLANNED and job.planned.get("writes_fingerprint") == shown["fingerprint"]:
            try:
                await service.start(job)
            except JobError as exc:
                service._finish(job, Step.FAIL, error=f"the scheduled send did not start: {exc}")
            return
        if job.status is JobStatus.PLANNED:
            now = int(job.planned.get("writes", 0))
            reason = (
                f"the plan changed since it was approved/scheduled: {shown.get('writes', 0)} writes were "
                f"shown, {now} now (the account or the file's rows changed); nothing was sent: "
                "plan it again, review and start or schedule it"
            )
        elif job.status is JobStatus.VALIDATED:
            reason = f"the plan at the scheduled time failed, so nothing was sent: {job.error or 'no plan'}"
        else:
            return  # cancelled or stopped meanwhile: it says so itself
        service._finish(job, Step.FAIL, error=reason)
