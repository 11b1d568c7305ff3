"""The check step: counts, the rows paged on the server with each wrong cell's reason, and row fixes."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response

from importer import fields, words
from importer.model import RowIssue
from importer.web.jobs import Job, JobError, JobStatus
from importer.web.pages.base import BUSY, PageContext, base, int_param, issues_of, paged, render, see, unread

TITLES = {f.name: f.title for f in fields.FIELDS}


@dataclass(frozen=True, slots=True)
class Cell:
    """One cell as the check table shows it: its value and, when it is wrong, why."""

    position: int
    value: str
    issue: RowIssue | None


def _advice(kind: str) -> str:
    """What to do about a kind of problem, in the page's words ("" when the kind has no advice)."""
    member = words.IssueKind._value2member_map_.get(kind)
    return words.render_advice(member, words.Surface.WEB) if isinstance(member, words.IssueKind) else ""


def check_url(job: Job, problems: bool, page: int) -> str:
    """The check page at ``page``, only the rows with problems when ``problems``."""
    query = urlencode({k: v for k, v in (("problems", "1" if problems else ""), ("page", page)) if v})
    return f"/jobs/{job.id}/check" + (f"?{query}" if query else "")


async def check(
    ctx: PageContext, request: Request, job: Job, message: str = "", status: int = 200, refused: bool = False
) -> Response:
    """The check page, with ``message`` said above the table (``refused``: an edit that was not taken)."""
    if job.status in BUSY or unread(job):
        return see(f"/jobs/{job.id}/columns")
    problems = request.query_params.get("problems") == "1"
    page = int_param(request.query_params.get("page"))
    saved = request.query_params.get("saved", "")
    if saved.isdigit() and not message:
        message = f"Row {saved} saved and checked again."
    data, page, pages = await paged(ctx, job, "failed" if problems else None, page)
    headers: list[str] = data["columns"]
    report = await ctx.service.report(job)
    titles = {
        report.table.headers[p]: TITLES[f]
        for f, p in report.mapping.items()
        if fields.header_key(report.table.headers[p]) != fields.header_key(TITLES[f])
    }
    table = []
    for item in data["rows"]:
        issues = issues_of(report.issues, item["row"])
        by_column = {x.column: x for x in issues}
        pairs = enumerate(zip(headers, item["values"], strict=True))
        cells = [Cell(i, v, by_column.get(h)) for i, (h, v) in pairs]
        loose = [x for x in issues if x.column not in headers]
        table.append({"row": item["row"], "cells": cells, "loose": loose, "item": item})
    kinds = sorted(job.problems.items(), key=lambda kv: -kv[1])
    editable = job.status in (JobStatus.VALIDATED, JobStatus.PLANNED)
    return render(
        "check.html",
        status,
        **base(
            ctx,
            job,
            "check",
            problems=problems,
            page=page,
            pages=pages,
            total=data["total"],
            headers=headers,
            titles=titles,
            table=table,
            kinds=kinds,
            hints=[(k, text) for k, _ in kinds if (text := _advice(k))],
            editable=editable,
            message=message,
            failed_edit=refused,
        ),
    )


async def check_get(ctx: PageContext, request: Request, job: Job) -> Response:
    """``GET /jobs/{id}/check``."""
    return await check(ctx, request, job)


async def fix(ctx: PageContext, request: Request, job: Job) -> Response:
    """``POST /jobs/{id}/rows/{row}``: correct cells of one row, then the check page again."""
    row = int_param(request.path_params["row"], -1)
    async with request.form(max_files=0, max_fields=256, max_part_size=4096) as form:
        values = {k: str(v) for k, v in form.items() if isinstance(v, str)}
    problems = values.get("problems") == "1"
    page = int_param(values.get("page"))
    report = await ctx.service.report(job)
    width = len(report.table.headers)
    changes: dict[int, str] = {}
    for key, value in values.items():
        if key.startswith("c") and key[1:].isdigit() and int(key[1:]) < width:
            changes[int(key[1:])] = value  # by position: two columns can share a header
    try:
        if changes:
            await ctx.service.edit(job, row, changes)
    except (JobError, LookupError) as exc:
        request.scope["query_string"] = urlencode({"problems": int(problems), "page": page}).encode()
        # htmx swaps only 2xx answers: for it the refusal is a page that says why.
        status = 200 if request.headers.get("hx-request") else 409
        return await check(ctx, Request(request.scope), job, str(exc), status, refused=True)
    return see(check_url(job, problems, page) + f"&saved={row}#row-{row}")
