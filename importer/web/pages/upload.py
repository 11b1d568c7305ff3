"""The first step: the jobs, the upload form, and ``/jobs/{id}`` sending a job on to its step."""

from __future__ import annotations

import json

from starlette.requests import Request
from starlette.responses import Response

from importer.web.jobs import Job
from importer.web.pages.base import PageContext, render, see, step_of


async def index(ctx: PageContext, request: Request) -> Response:
    """``GET /``: the jobs, and the upload form."""
    return render("index.html", job=None, jobs=ctx.service.list())


async def take_upload(ctx: PageContext, request: Request) -> Response:
    """``POST /upload``: the API's own upload handler, then the job's columns step."""
    answer = await ctx.upload(request)
    data = json.loads(bytes(answer.body))
    if answer.status_code == 201:
        return see(f"/jobs/{data['id']}/columns")
    return render("index.html", answer.status_code, job=None, jobs=ctx.service.list(), error=data["error"])


async def home(ctx: PageContext, request: Request, job: Job) -> Response:
    """``GET /jobs/{id}``: the step the job is at."""
    return see(f"/jobs/{job.id}/{step_of(job)}")
