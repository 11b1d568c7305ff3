"""The first step: the jobs, the upload form, and ``/jobs/{id}`` sending a job on to its step."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from importer.web import people
from importer.web.exports import ExportBusy
from importer.web.jobs import Job
from importer.web.pages.base import PageContext, render, see, step_of

EXPORTS_SHOWN = 5
"""The newest exports the jobs page lists (the API lists every one kept)."""


def _exports(ctx: PageContext) -> list[dict[str, Any]]:
    return [e.shown() for e in ctx.service.exports.list()[:EXPORTS_SHOWN]]


async def index(ctx: PageContext, request: Request) -> Response:
    """``GET /``: the jobs, the upload form and "Download current routing"."""
    return render("index.html", job=None, jobs=ctx.service.list(), exports=_exports(ctx))


async def export_post(ctx: PageContext, request: Request) -> Response:
    """``POST /exports``: "Download current routing" starts an export; the jobs page shows it."""
    user = people.named_user()
    try:
        ctx.service.exports.start(user.name if user else "")
    except ExportBusy as exc:
        return render(
            "index.html", 409, job=None, jobs=ctx.service.list(), exports=_exports(ctx), error=str(exc)
        )
    return see("/#routing")


async def take_upload(ctx: PageContext, request: Request) -> Response:
    """``POST /upload``: the API's own upload handler, then the job's columns step."""
    answer = await ctx.upload(request)
    data = json.loads(bytes(answer.body))
    if answer.status_code == 201:
        return see(f"/jobs/{data['id']}/columns")
    return render(
        "index.html",
        answer.status_code,
        job=None,
        jobs=ctx.service.list(),
        exports=_exports(ctx),
        error=data["error"],
    )


async def home(ctx: PageContext, request: Request, job: Job) -> Response:
    """``GET /jobs/{id}``: the step the job is at."""
    return see(f"/jobs/{job.id}/{step_of(job)}")
