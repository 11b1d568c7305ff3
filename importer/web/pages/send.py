"""The send step: the confirmation of the plan shown, then live progress; cancelling a send."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from importer.web.jobs import Job, JobStatus
from importer.web.pages.base import PageContext, act, base, render, see, unread
from importer.web.pages.plan import action_counts, held_back


async def send_page(ctx: PageContext, request: Request, job: Job) -> Response:
    """``GET /jobs/{id}/send``: the confirmation, then live progress."""
    if unread(job):
        return see(f"/jobs/{job.id}/columns")
    counts = action_counts(job)
    return render(
        "send.html",
        **base(
            ctx,
            job,
            "send",
            confirm=job.status in (JobStatus.VALIDATED, JobStatus.PLANNED),
            counts=counts,
            writes=counts["create"] + counts["update"],
            held=held_back(job),
            held_total=job.counts.get("failed", 0),
            valid=job.counts.get("valid", 0),
        ),
    )


async def start(ctx: PageContext, request: Request, job: Job) -> Response:
    """``POST /jobs/{id}/send``: send the plan shown, once the box is ticked."""
    async with request.form(max_files=0, max_fields=8, max_part_size=1024) as form:
        confirmed = form.get("confirm") == "yes"
    if not confirmed:
        return render("error.html", 400, **base(ctx, job, "send", error="tick the box to confirm the send"))
    return await act(ctx, job, ctx.service.start, "send", "send")


async def cancel(ctx: PageContext, request: Request, job: Job) -> Response:
    """``POST /jobs/{id}/cancel``: stop sending; writes in flight settle."""
    return await act(ctx, job, ctx.service.cancel, "send", "send")
