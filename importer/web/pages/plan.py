"""The plan step: the dry run against the account, its counts and cost, each row side by side."""

from __future__ import annotations

import collections
import json
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from importer import words
from importer.model import Action
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


def _compare(current: str, proposed: str) -> list[tuple[str, str, str, bool]]:
    """Field by field: (field, current, proposed, changed), for the plan's side-by-side view."""
    now, then = _record(current) or {}, _record(proposed) or {}
    out = []
    for key in dict.fromkeys([*then, *now]):
        before, after = now.get(key), then.get(key)
        shown = ("" if before is None else str(before), "" if after is None else str(after))
        out.append((key, *shown, before != after))
    return out


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
            {**r, "compare": _compare(r["current"], r["proposed"])} for r in await with_did(ctx, job, data)
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
