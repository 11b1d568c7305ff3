"""The results step: each row's outcome, filtered by status and paged, and the downloads."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from importer.web import people, undo
from importer.web.jobs import Job, JobError
from importer.web.pages.base import PageContext, base, int_param, paged, render, see, sent, step_of, with_did

RESULT_FILTERS = ("", "failed", "succeeded", "unchanged", "skipped", "not_sent")


async def results(ctx: PageContext, request: Request, job: Job) -> Response:
    """``GET /jobs/{id}/results``: each row's outcome, filtered and paged."""
    if not sent(job):
        return see(f"/jobs/{job.id}/{step_of(job)}")
    wanted = request.query_params.get("status", "")
    wanted = wanted if wanted in RESULT_FILTERS else ""
    page = int_param(request.query_params.get("page"))
    rows: list[dict[str, Any]] = []
    total, pages = 0, 1
    if job.report is not None or job.rows:
        data, page, pages = await paged(ctx, job, wanted or None, page)
        total = data["total"]
        rows = await with_did(ctx, job, data)
    return render(
        "results.html",
        **base(
            ctx,
            job,
            "results",
            rows=rows,
            total=total,
            page=page,
            pages=pages,
            wanted=wanted,
            filters=RESULT_FILTERS,
            **_undo(ctx, job),
        ),
    )


def _undo(ctx: PageContext, job: Job) -> dict[str, Any]:
    """What the page says about undoing: the offer (or why not), the rollback, the job undone."""
    jobs = ctx.service.jobs
    try:
        undo.check_unchanged(job, jobs)
        resume_refused = ""
    except JobError as exc:  # a rollback, or an import being undone: "send the rest" is not offered
        resume_refused = str(exc)
    return {
        "undo_refused": undo.why_not(job, jobs),
        "resume_refused": resume_refused,
        "rollback": jobs.get(job.undone_by),
        "undone": jobs.get(job.undoes),
    }


async def undo_post(ctx: PageContext, request: Request, job: Job) -> Response:
    """``POST /jobs/{id}/rollback``: "Undo this import": a rollback job, planned, then its plan step."""
    user = people.named_user()
    try:
        rollback = ctx.service.rollback(
            job, who=user.name if user else "", client=request.client.host if request.client else ""
        )
        await ctx.service.plan(rollback)
    except JobError as exc:
        return render("error.html", 409, **base(ctx, job, "results", error=str(exc)))
    return see(f"/jobs/{rollback.id}/plan")
