"""The plan step: the dry run against the account, its counts and cost, each row side by side."""

from __future__ import annotations

import collections
import json
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from importer import fields, words
from importer.model import Action, Status
from importer.vocab import describe_kind
from importer.web.jobs import Job, JobStatus
from importer.web.pages.base import (
    PageContext,
    act,
    base,
    int_param,
    paged,
    render,
    see,
    sent,
    step_of,
    unread,
    with_did,
)


def _record(text: str) -> dict[str, Any] | None:
    """A routing record from its JSON text; None when there is none."""
    try:
        value = json.loads(text) if text else None
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def field_label(key: str) -> str:
    """A routing record's key in the page's words: "Outbound" for a mode, else the field's title.

    The titles and mode labels are ``fields``' (the one source of truth); a key no field has
    (an API extra) reads as itself.
    """
    direction = fields.DIRECTION_OF.get(key)
    if direction is not None:
        return direction.value.capitalize()
    field = fields.FIELD_BY_NAME.get(key)
    return key if field is None else field.title


def value_words(key: str, value: object) -> str:
    """A record's value with its label and code: "WebSocket bot (3)", "active (1)"; "" when none."""
    if value is None or value == "":
        return ""
    direction = fields.DIRECTION_OF.get(key)
    labels: dict[int, str] = (
        {n: m.label for n, m in fields.MODES[direction].items()}
        if direction is not None
        else (fields.STATUS_LABELS if key == "status" else {})
    )
    label = labels.get(value) if isinstance(value, int) and not isinstance(value, bool) else None
    return f"{label} ({value})" if label else str(value)


def _compare(current: str, proposed: str) -> list[tuple[str, str, str, bool]]:
    """Field by field, in the page's words: (label, current, proposed, changed), side by side."""
    now, then = _record(current) or {}, _record(proposed) or {}
    out = []
    for key in dict.fromkeys([*then, *now]):
        before, after = now.get(key), then.get(key)
        out.append((field_label(key), value_words(key, before), value_words(key, after), before != after))
    return out


def changes(compare: list[tuple[str, str, str, bool]]) -> str:
    """What an update changes, as one line: "Outbound: WebSocket bot (3) → SIP (2); ..."."""
    return "; ".join(f"{k}: {now or '—'} → {then or '—'}" for k, now, then, changed in compare if changed)


def action_words(action: str, status: str) -> str:
    """A plan row's action by its label ("leave unchanged"), else its status's ("not sent")."""
    member = Action._value2member_map_.get(action) if action else Status._value2member_map_.get(status)
    return member.label if isinstance(member, Action | Status) else (action or status).replace("_", " ")


def action_counts(job: Job) -> dict[str, int]:
    """The plan shown, as its counts: stored with the job, so a restart or eviction keeps them."""
    return {
        a.value: int(job.planned.get(a.value, 0)) for a in (Action.CREATE, Action.UPDATE, Action.UNCHANGED)
    }


def held_back(job: Job) -> list[tuple[str, int]]:
    """Rows that will not be sent, by why: the check's problems and the plan's failures."""
    kinds: collections.Counter[str] = collections.Counter(
        {words.issue_label(k): v for k, v in job.problems.items()}
    )
    for kind, n in job.planned.get("held", {}).items():
        kinds[describe_kind(kind)] += n
    return kinds.most_common()


async def plan_page(ctx: PageContext, request: Request, job: Job) -> Response:
    """``GET /jobs/{id}/plan``: the plan, or a wait while it is made."""
    if unread(job):
        return see(f"/jobs/{job.id}/columns")
    if job.status is JobStatus.PLANNING:
        return render("plan.html", **base(ctx, job, "plan", waiting=True))
    if sent(job):
        return see(f"/jobs/{job.id}/{step_of(job)}")  # a sent job's plan is history
    planned = job.status is JobStatus.PLANNED
    problems = request.query_params.get("problems") == "1"
    page = int_param(request.query_params.get("page"))
    rows: list[dict[str, Any]] = []
    total = 0
    pages = 1
    if planned:
        data, page, pages = await paged(ctx, job, "failed" if problems else None, page)
        total = data["total"]
        rows = [
            {
                **r,
                "compare": (compare := _compare(r["current"], r["proposed"])),
                "changes": changes(compare) if r["action"] == Action.UPDATE else "",
                "action_words": action_words(r["action"], r["status"]),
            }
            for r in await with_did(ctx, job, data)
        ]
    counts = action_counts(job)
    budget = job.budget or {}
    reads, writes = int(budget.get("reads", 0)), int(budget.get("writes", 0))
    return render(
        "plan.html",
        **base(
            ctx,
            job,
            "plan",
            waiting=False,
            planned=planned,
            counts=counts,
            writes=writes,
            reads=reads,
            requests=reads + writes,
            rate=ctx.service.connection.requests_per_minute,
            seconds=float(budget.get("seconds", 0)),
            held=held_back(job),
            held_total=job.counts.get("failed", 0),
            held_in_file=job.rows - job.counts.get("valid", job.rows),
            held_by_account=sum(int(n) for n in job.planned.get("held", {}).values()),
            rows=rows,
            total=total,
            page=page,
            pages=pages,
            problems=problems,
        ),
    )


async def plan_post(ctx: PageContext, request: Request, job: Job) -> Response:
    """``POST /jobs/{id}/plan``: plan the job against the account."""
    return await act(ctx, job, ctx.service.plan, "plan", "plan")


async def resume_post(ctx: PageContext, request: Request, job: Job) -> Response:
    """``POST /jobs/{id}/resume``: a cancelled or stopped job plans what is left; its plan is shown.

    The plan reads the live state, so rows this job already sent show as done and only what is
    still needed is sent once the user confirms it on the send step.
    """

    async def plan_the_rest(job: Job) -> None:
        await ctx.service.resume(job)

    return await act(ctx, job, plan_the_rest, "results", "plan")
