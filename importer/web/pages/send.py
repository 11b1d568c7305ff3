"""The send step: the confirmation of the plan shown, its approval, a change window, then live
progress; cancelling a send (or a scheduled one)."""

from __future__ import annotations

import zoneinfo
from datetime import datetime, tzinfo

from starlette.requests import Request
from starlette.responses import Response

from importer.web import windows
from importer.web.approval import ApprovalRefused
from importer.web.jobs import Job, JobError, JobStatus
from importer.web.pages.base import PageContext, act, base, render, see, unread
from importer.web.pages.plan import action_counts, held_back
from importer.web.security import user_of


def server_zone() -> tzinfo:
    """The server's zone now (a time typed without JavaScript is taken in it, and shown in it)."""
    zone = datetime.now().astimezone().tzinfo
    assert zone is not None  # astimezone() always gives one
    return zone


def _in_server_zone(utc: str | None) -> str:
    if not utc:
        return ""
    return datetime.fromisoformat(utc).astimezone(server_zone()).strftime("%Y-%m-%d %H:%M:%S %Z")


async def send_page(ctx: PageContext, request: Request, job: Job) -> Response:
    """``GET /jobs/{id}/send``: the confirmation, the approval, a change window, then live progress."""
    if unread(job):
        return see(f"/jobs/{job.id}/columns")
    counts = action_counts(job)
    snap = ctx.service.snapshot(job)
    return render(
        "send.html",
        **base(
            ctx,
            job,
            "send",
            confirm=job.status in (JobStatus.VALIDATED, JobStatus.PLANNED),
            scheduled=job.status is JobStatus.SCHEDULED,
            counts=counts,
            writes=counts["create"] + counts["update"],
            held=held_back(job),
            held_total=job.counts.get("failed", 0),
            valid=job.counts.get("valid", 0),
            server_zone=datetime.now(server_zone()).strftime("%Z (UTC%z)"),
            scheduled_local=_in_server_zone(snap["scheduled_at"]),
        ),
    )


def _zone(name: str) -> tzinfo:
    """The browser's zone (its IANA name, filled in by send.js), else the server's."""
    if name:
        try:
            return zoneinfo.ZoneInfo(name)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            pass
    return server_zone()


async def start(ctx: PageContext, request: Request, job: Job) -> Response:
    """``POST /jobs/{id}/send``: send the plan shown once the box is ticked, now or at a time.

    A time ("Send at", ``when=at``) schedules the send, or moves a scheduled one.
    """
    async with request.form(max_files=0, max_fields=8, max_part_size=1024) as form:
        confirmed = form.get("confirm") == "yes"
        at = str(form.get("at") or "") if form.get("when") == "at" else None
        zone = str(form.get("zone") or "")
    if not confirmed:
        return render("error.html", 400, **base(ctx, job, "send", error="tick the box to confirm the send"))
    if at is None:
        return await act(ctx, job, ctx.service.start, "send", "send")
    try:
        moment = windows.parse_at(at, ctx.service.scheduler.clock(), _zone(zone))
    except ValueError as exc:
        return render("error.html", 400, **base(ctx, job, "send", error=str(exc)))
    try:
        ctx.service.scheduler.schedule(job, moment, user_of(request.scope).name)
    except JobError as exc:
        return render("error.html", 409, **base(ctx, job, "send", error=str(exc)))
    return see(f"/jobs/{job.id}/send")


async def approve(ctx: PageContext, request: Request, job: Job) -> Response:
    """``POST /jobs/{id}/approve``: approve the plan shown (someone other than its planner)."""
    try:
        await ctx.service.approve(job, user_of(request.scope))
    except ApprovalRefused as exc:
        return render("error.html", 403, **base(ctx, job, "send", error=str(exc)))
    except JobError as exc:
        return render("error.html", 409, **base(ctx, job, "send", error=str(exc)))
    return see(f"/jobs/{job.id}/send")


async def cancel(ctx: PageContext, request: Request, job: Job) -> Response:
    """``POST /jobs/{id}/cancel``: stop sending (writes in flight settle), or drop a scheduled send."""
    return await act(ctx, job, ctx.service.cancel, "send", "send")
