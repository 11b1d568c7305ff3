"""One state machine per job: every status change is a (status, step) pair in ``TRANSITIONS``.

A step that is not in the table is refused with a reason (the API answers 409), so two requests
racing each other cannot leave a job half in one state and half in another: a row edit that is
being checked holds the job (``busy``), and nothing that begins work (a plan, a send, an options
change, another edit, a cancel) is taken until it is done. Steps that end work (``VALIDATED``,
``PLANNED``, ``SENT``...) are what the work itself reports and are never refused for ``busy``.

A change window (``web.windows``): a planned job is ``scheduled`` for a time; it can be moved
(scheduled again) or cancelled; when due it plans again (``planning``) and, if the plan is the
one shown, starts through the normal lane; a user may also start it at once.
"""

from __future__ import annotations

import enum

__all__ = ["TRANSITIONS", "JobError", "JobStatus", "Step", "next_status"]


class JobStatus(enum.StrEnum):
    """Where a job is; ``failed`` means the job itself could not go on (``error`` says why)."""

    VALIDATING = "validating"
    VALIDATED = "validated"
    NEEDS_SHEET = "needs_sheet"
    """Several sheets name the fields and none was chosen: the user picks (``sheet_list``)."""
    PLANNING = "planning"
    PLANNED = "planned"
    SCHEDULED = "scheduled"
    """Its send waits for a time (``scheduled_at``): a change window."""
    SENDING = "sending"
    DONE = "done"
    CANCELLED = "cancelled"
    FAILED = "failed"


class JobError(Exception):
    """A request a job cannot take in its state; the API answers 409 with the message."""


class Step(enum.StrEnum):
    """What happens to a job: a request that begins work, or work that ends."""

    VALIDATE = "validate"
    """Read and check the upload (again): on upload, an options change, a restart."""
    VALIDATED = "validated"
    SHEET_NEEDED = "sheet needed"
    """Several sheets name the fields: the user chooses (a sheets option) before anything else."""
    EDIT = "edit"
    """A corrected row was checked again: any plan is dropped."""
    PLAN = "plan"
    PLANNED = "planned"
    PLAN_FAILED = "plan failed"
    """A plan is only reads: the job stays validated and says why."""
    START = "start"
    SCHEDULE = "schedule"
    """Send the plan shown at a time (again: move the time)."""
    DUE = "due"
    """A scheduled job's time came: plan again against the live state before sending."""
    RETRY = "retry"
    """Start again a send that failed (its journal says what landed)."""
    PLAN_CHANGED = "plan changed"
    """The account changed since the plan was shown: nothing sent, the new plan shown."""
    SENT = "sent"
    RESUME = "resume"
    """Plan again the rows a cancelled or stopped send left (its journal stays)."""
    CANCEL = "cancel"
    FAIL = "fail"


S, J = Step, JobStatus
TRANSITIONS: dict[tuple[JobStatus, Step], JobStatus] = {
    (J.VALIDATING, S.VALIDATE): J.VALIDATING,
    (J.VALIDATING, S.VALIDATED): J.VALIDATED,
    (J.VALIDATING, S.SHEET_NEEDED): J.NEEDS_SHEET,
    (J.VALIDATING, S.FAIL): J.FAILED,
    (J.VALIDATED, S.VALIDATE): J.VALIDATING,
    (J.VALIDATED, S.EDIT): J.VALIDATED,
    (J.VALIDATED, S.PLAN): J.PLANNING,
    (J.VALIDATED, S.CANCEL): J.CANCELLED,
    (J.VALIDATED, S.FAIL): J.FAILED,
    (J.NEEDS_SHEET, S.VALIDATE): J.VALIDATING,
    (J.NEEDS_SHEET, S.CANCEL): J.CANCELLED,
    (J.PLANNING, S.PLANNED): J.PLANNED,
    (J.PLANNING, S.PLAN_FAILED): J.VALIDATED,
    (J.PLANNING, S.FAIL): J.FAILED,
    (J.PLANNED, S.VALIDATE): J.VALIDATING,
    (J.PLANNED, S.EDIT): J.VALIDATED,
    (J.PLANNED, S.PLAN): J.PLANNING,
    (J.PLANNED, S.START): J.SENDING,
    (J.PLANNED, S.CANCEL): J.CANCELLED,
    (J.PLANNED, S.FAIL): J.FAILED,
    (J.PLANNED, S.SCHEDULE): J.SCHEDULED,
    (J.SCHEDULED, S.SCHEDULE): J.SCHEDULED,
    (J.SCHEDULED, S.DUE): J.PLANNING,
    (J.SCHEDULED, S.START): J.SENDING,
    (J.SCHEDULED, S.CANCEL): J.CANCELLED,
    (J.SCHEDULED, S.FAIL): J.FAILED,
    (J.SENDING, S.SENT): J.DONE,
    (J.SENDING, S.CANCEL): J.CANCELLED,
    (J.SENDING, S.PLAN_CHANGED): J.PLANNED,
    (J.SENDING, S.FAIL): J.FAILED,
    (J.FAILED, S.VALIDATE): J.VALIDATING,
    (J.FAILED, S.RETRY): J.SENDING,
    (J.FAILED, S.RESUME): J.PLANNING,
    (J.FAILED, S.PLAN): J.PLANNING,
    (J.CANCELLED, S.RESUME): J.PLANNING,
    (J.FAILED, S.FAIL): J.FAILED,
}
"""(from status, step) -> to status. A done job takes no step; a cancelled one only ``resume``."""

BEGINS_WORK = frozenset({S.VALIDATE, S.EDIT, S.PLAN, S.START, S.SCHEDULE, S.DUE, S.RETRY, S.RESUME, S.CANCEL})
"""Steps a request asks for: refused while the job is busy with other work."""

_REFUSALS: dict[Step, str] = {
    S.VALIDATE: "options can change only before sending",
    S.EDIT: "rows can be edited only before sending",
    S.PLAN: "a plan needs a validated job",
    S.START: "nothing can start now",
    S.SCHEDULE: "only a planned job can be scheduled",
    S.DUE: "only a scheduled job comes due",
    S.RETRY: "nothing can start now",
    S.RESUME: "only a cancelled or stopped job can send the rest",
    S.CANCEL: "it cannot be cancelled now",
}


def next_status(status: JobStatus, to_do: Step, busy: str = "") -> JobStatus:
    """The status ``to_do`` leads to from ``status`` (the caller sets it, or only checks).

    Args:
        status: Where the job is.
        to_do: The step asked for.
        busy: What the job is doing besides its status (e.g. a row edit being checked); empty: nothing.

    Raises:
        JobError: the step is not taken from this status, or the job is busy.
    """
    if busy and to_do in BEGINS_WORK:
        raise JobError(f"the job is busy: {busy}; try again once that is done")
    to = TRANSITIONS.get((status, to_do))
    if to is None:
        if status in (J.DONE, J.CANCELLED) or (to_do is S.CANCEL and status is J.FAILED):
            raise JobError(f"the job is already {status.value}")
        if to_do is S.CANCEL and status in (J.VALIDATING, J.PLANNING):
            raise JobError(f"the job is {status.value}; cancel it once that is done")
        raise JobError(f"the job is {status.value}; {_REFUSALS.get(to_do, f'no {to_do.value} now')}")
    return to
