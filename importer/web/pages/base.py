"""What every step's page shares: the context, rendering, the job lookup, where a job is, paged rows."""

from __future__ import annotations

import bisect
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from importer import words
from importer.model import RowIssue
from importer.options import human_duration
from importer.web import people
from importer.web.jobs import Job, JobError, JobService, JobStatus
from importer.web.undo import ROLLBACK

PAGE_SIZE = 50
"""Rows per page of a table: the server pages, so 10 rows or a million weigh the same."""
STEPS = (
    ("upload", "Upload"),
    ("columns", "Sheet and columns"),
    ("check", "Check"),
    ("plan", "Plan"),
    ("send", "Send"),
    ("results", "Results"),
)
BUSY = frozenset({JobStatus.VALIDATING, JobStatus.PLANNING})
SENT = frozenset({JobStatus.SENDING, JobStatus.DONE, JobStatus.CANCELLED})
Handler = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class PageContext:
    """What the page's handlers work over: the jobs, and the API's upload handler (one code path)."""

    service: JobService
    upload: Handler


JobHandler = Callable[[PageContext, Request, Job], Awaitable[Response]]


def issues_of(issues: Sequence[RowIssue], row: int) -> list[RowIssue]:
    """One row's problems, from a report's issues (sorted by row)."""
    start = bisect.bisect_left(issues, row, key=lambda i: i.row)
    end = bisect.bisect_right(issues, row, lo=start, key=lambda i: i.row)
    return list(issues[start:end])


def web_words(issue: RowIssue) -> str:
    """A row problem in the page's words (its advice names the page's controls, not CLI options)."""
    return words.render(issue, words.Surface.WEB)


def unread(job: Job) -> bool:
    """Its upload is being read, or could not be read and mapped: only its columns step can help.

    A job that failed while sending has ``finished`` set; one whose upload failed never has.
    """
    waits = (JobStatus.VALIDATING, JobStatus.NEEDS_SHEET)
    return job.status in waits or (job.status is JobStatus.FAILED and not job.finished)


def sent(job: Job) -> bool:
    """Sending or ended: done, cancelled (before or while sending), or failed while sending."""
    return job.status in SENT or (job.status is JobStatus.FAILED and bool(job.finished))


def step_of(job: Job) -> str:
    """The step a job is at, for ``/jobs/{id}``."""
    if job.kind == ROLLBACK and job.status is JobStatus.VALIDATED:
        return "plan"  # a rollback has no file to map or check: its rows come with its plan
    if unread(job):
        return "columns"
    if job.status in (JobStatus.PLANNING, JobStatus.PLANNED):
        return "plan"
    if job.status in (JobStatus.SENDING, JobStatus.SCHEDULED):
        return "send"
    if job.status in (JobStatus.DONE, JobStatus.CANCELLED, JobStatus.FAILED):
        return "results"
    return "check"


def _open_steps(job: Job) -> set[str]:
    """The steps that can be opened now (the others are shown, not linked)."""
    if sent(job):
        return {"check", "send", "results"} if job.status is not JobStatus.SENDING else {"check", "send"}
    if unread(job):
        return {"upload", "columns"}
    return {"upload", "columns", "check", "plan", "send"}


def _duration(seconds: float | None) -> str:
    """A duration in the library's words (``human_duration``: the CLI's plan and Summary say the same)."""
    return "working it out" if seconds is None else human_duration(seconds)


def int_param(value: str | None, default: int = 1) -> int:
    """A number from a query or form field; ``default`` when it is missing or not a number."""
    try:
        return int(value or default)
    except ValueError:
        return default


def _environment() -> Environment:
    templates = Environment(
        loader=PackageLoader("importer.web", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    templates.globals.update(steps=STEPS, duration=_duration, kind_label=words.issue_label)
    # Who is signed in and what their role allows (web.people): pages offer only what they may do.
    templates.globals.update(may=people.may, refusal=people.refusal, me=people.named_user)
    templates.filters["words"] = web_words
    return templates


_TEMPLATES = _environment()


def render(name: str, status: int = 200, **context: Any) -> HTMLResponse:
    """The template ``name`` rendered with ``context``, as an HTML answer."""
    return HTMLResponse(_TEMPLATES.get_template(name).render(**context), status_code=status)


def see(url: str) -> RedirectResponse:
    """Send the browser on to ``url`` (after a form, a GET: reloading does not post again)."""
    return RedirectResponse(url, status_code=303)


async def job_endpoint(ctx: PageContext, handler: JobHandler, request: Request) -> Response:
    """Find the job the path names and hand it to ``handler``; a page that says so when there is none."""
    job = ctx.service.get(str(request.path_params["job_id"]))
    if job is None:
        return render("missing.html", 404, job=None)
    return await handler(ctx, request, job)


def base(ctx: PageContext, job: Job, step: str, **context: Any) -> dict[str, Any]:
    """What every step's template takes: the job, its snapshot, the step, the steps open."""
    return {"job": job, "snap": ctx.service.snapshot(job), "step": step, "open": _open_steps(job), **context}


async def act(
    ctx: PageContext, job: Job, action: Callable[[Job], Awaitable[None]], step: str, then: str
) -> Response:
    """Do something to a job, then show the ``then`` step; a refusal is shown on ``step``'s page."""
    try:
        await action(job)
    except JobError as exc:
        return render("error.html", 409, **base(ctx, job, step, error=str(exc)))
    return see(f"/jobs/{job.id}/{then}")


async def paged(ctx: PageContext, job: Job, status: str | None, page: int) -> tuple[dict[str, Any], int, int]:
    """One page of the job's rows (``status`` filters them): the rows, the page kept in range, pages."""
    page = max(1, page)
    data = await ctx.service.rows(job, status, (page - 1) * PAGE_SIZE, PAGE_SIZE)
    pages = max(1, -(-data["total"] // PAGE_SIZE))
    if page > pages:  # past the end (fewer rows match than when the link was made): the last page
        page = pages
        data = await ctx.service.rows(job, status, (page - 1) * PAGE_SIZE, PAGE_SIZE)
    return data, page, pages


async def with_did(ctx: PageContext, job: Job, data: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The page's rows, each with its DID as the file wrote it (number, else id) for the tables.

    A row that failed validation gets its reason in the page's words, from its issues.
    """
    report = await ctx.service.report(job)
    did = report.mapping.get("did_number", report.mapping.get("did_id", 0))
    return [
        {
            **r,
            "did": r["values"][did] if did < len(r["values"]) else "",
            "reason": "; ".join(map(web_words, issues)) if issues else r["reason"],
        }
        for r in data["rows"]
        for issues in (issues_of(report.issues, r["row"]),)
    ]
