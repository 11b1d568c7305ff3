"""Four eyes: with ``serve --require-approval`` a plan is sent only once someone else approved it.

Someone other than the user who planned the job, with the approver (or admin) role, approves
the plan shown (``POST /api/jobs/{id}/approve``). The approval names who, when, and what: the
fingerprint of the plan's writes (``engine.plan.writes_fingerprint``) together with the inputs it
was made from (upload, corrections, every option: ``Job.inputs_fingerprint``). It holds only
while the job's plan has that fingerprint, so nothing has to remember to void it:

* an edit or an options change drops the plan (and the approval with it);
* planning again holds it only when the new plan writes exactly the same (and the planner is
  still not the approver); other writes are another fingerprint;
* a send that finds the account changed shows the new plan instead (another fingerprint).

A start (or a schedule, ``web.windows``) without an approval that holds is refused (409).
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

from importer.web.lifecycle import JobError, JobStatus
from importer.web.people import Role, User, signed_in

if TYPE_CHECKING:
    from importer.web.observe import JobEvents
    from importer.web.records import Job

__all__ = ["ApprovalRefused", "approve", "asker", "fields", "holding", "needs_approval_event", "refusal"]


class ApprovalRefused(Exception):
    """This user may not approve this plan (the API answers 403 with the message)."""


def asker() -> str:
    """Who the request being answered is from (the Guard sets it per request)."""
    return signed_in.get().name


def plan_fingerprint(job: Job) -> str:
    """The plan shown and the inputs it was made from, as one digest ("" when there is no plan)."""
    if not job.planned:
        return ""
    what = [job.planned.get("writes_fingerprint"), job.planned.get("inputs")]
    return hashlib.sha256(json.dumps(what).encode()).hexdigest()


def holding(job: Job) -> dict[str, str] | None:
    """The job's approval if it is for the plan shown now (and not by its planner), else None."""
    given = job.approval
    if not given or given.get("by") == job.planned_by:
        return None
    now = plan_fingerprint(job)
    return dict(given) if now and given.get("fingerprint") == now else None


def approve(job: Job, user: User, when: str) -> None:
    """Approve the plan shown by ``user`` at ``when`` (the caller saves the job).

    Raises:
        ApprovalRefused: the user's role cannot approve, or they planned it themselves.
        JobError: the job is not planned (nothing to approve), or busy.
    """
    if user.role.rank < Role.APPROVER.rank:
        raise ApprovalRefused(f"your role {user.role.value} cannot approve a plan; ask an approver")
    if job.status is not JobStatus.PLANNED or not job.planned:
        raise JobError(f"the job is {job.status.value}; only a planned job can be approved")
    if job.busy:
        raise JobError(f"the job is busy: {job.busy}; try again once that is done")
    if user.name == job.planned_by:
        raise ApprovalRefused(
            f"you ({user.name}) planned this job: someone other than you must approve it (four eyes)"
        )
    job.approval = {"by": user.name, "at": when, "fingerprint": plan_fingerprint(job)}


def refusal(job: Job, required: bool) -> str:
    """Why the job cannot start for want of an approval ("" when it may)."""
    if not required or holding(job) is not None:
        return ""
    return f"needs approval by someone other than {job.planned_by or '(unknown)'}"


def fields(job: Job, required: bool) -> dict[str, Any]:
    """What the snapshot says of the plan's approval."""
    held = holding(job)
    return {
        "planned_by": job.planned_by or None,
        "approval": held,
        "needs_approval": required and held is None and job.status is JobStatus.PLANNED,
    }


def needs_approval_event(events: JobEvents, name: str, job: Job) -> None:
    """A ``JobEvents`` listener: a plan made under ``--require-approval`` tells "needs-approval".

    Not for a scheduled job planning again when due: its window decides (``web.windows``).
    """
    if name == "planned" and not job.schedule.get("due") and holding(job) is None:
        events.emit("needs-approval", job)
