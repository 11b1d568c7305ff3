"""The web page: server-rendered steps over ``JobService``, usable without JavaScript.

Routes (behind the same ``security.Guard`` as the API; forms post to the same origin):

    GET  /                             the jobs, and the upload form
    POST /upload                       the upload form (the API's own upload handler) -> the job
    GET  /jobs/{id}                    the job's current step
    GET  /jobs/{id}/columns  POST      sheet, default region and the column for each field
    GET  /jobs/{id}/check              counts, the rows paged on the server (?problems=1&page=2)
    POST /jobs/{id}/rows/{row}         correct cells of one row (plain form; htmx swaps the table)
    GET  /jobs/{id}/plan     POST      the dry run against the account, side by side
    GET  /jobs/{id}/send     POST      the confirmation, then live progress (SSE from the API)
    POST /jobs/{id}/cancel             stop sending; writes in flight settle
    GET  /jobs/{id}/results            per-row outcomes and the downloads
    GET  /static/...                   css, the page's script, htmx (vendored, with its licence)

Every page is whole HTML: htmx only fetches the same pages and swaps a part of them, so
each link and form also works as a plain one. Nothing here reads, validates, plans or sends:
that is ``JobService`` and ``engine``.
"""

from __future__ import annotations

import bisect
import collections
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from types import EllipsisType
from typing import Any
from urllib.parse import urlencode

import python_calamine
from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from importer import fields, words
from importer.errors import ImporterError
from importer.jobs.validate import read_input
from importer.model import Action, RawTable, RowIssue
from importer.options import human_duration
from importer.vocab import OnExisting, describe_kind
from importer.web import people
from importer.web.jobs import Job, JobError, JobService, JobStatus, in_background

__all__ = ["PAGE_SIZE", "page_routes"]

PAGE_SIZE = 50
"""Rows per page of a table: the server pages, so 10 rows or a million weigh the same."""
SAMPLES = 3
STEPS = (
    ("upload", "Upload"),
    ("columns", "Sheet and columns"),
    ("check", "Check"),
    ("plan", "Plan"),
    ("send", "Send"),
    ("results", "Results"),
)
TITLES = {f.name: f.title for f in fields.FIELDS}
BUSY = frozenset({JobStatus.VALIDATING, JobStatus.PLANNING})
SENT = frozenset({JobStatus.SENDING, JobStatus.DONE, JobStatus.CANCELLED})
RESULT_FILTERS = ("", "failed", "succeeded", "unchanged", "skipped", "not_sent")
Handler = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class Cell:
    """One cell as the check table shows it: its value and, when it is wrong, why."""

    position: int
    value: str
    issue: RowIssue | None


def _issues_of(issues: Sequence[RowIssue], row: int) -> list[RowIssue]:
    """One row's problems, from a report's issues (sorted by row)."""
    start = bisect.bisect_left(issues, row, key=lambda i: i.row)
    end = bisect.bisect_right(issues, row, lo=start, key=lambda i: i.row)
    return list(issues[start:end])


def _web_words(issue: RowIssue) -> str:
    """A row problem in the page's words (its advice names the page's controls, not CLI options)."""
    return words.render(issue, words.Surface.WEB)


def _advice(kind: str) -> str:
    """What to do about a kind of problem, in the page's words ("" when the kind has no advice)."""
    member = words.IssueKind._value2member_map_.get(kind)
    return words.render_advice(member, words.Surface.WEB) if isinstance(member, words.IssueKind) else ""


def _unread(job: Job) -> bool:
    """Its upload is being read, or could not be read and mapped: only its columns step can help.

    A job that failed while sending has ``finished`` set; one whose upload failed never has.
    """
    waits = (JobStatus.VALIDATING, JobStatus.NEEDS_SHEET)
    return job.status in waits or (job.status is JobStatus.FAILED and not job.finished)


def _sent(job: Job) -> bool:
    """Sending or ended: done, cancelled (before or while sending), or failed while sending."""
    return job.status in SENT or (job.status is JobStatus.FAILED and bool(job.finished))


def _step_of(job: Job) -> str:
    """The step a job is at, for ``/jobs/{id}``."""
    if _unread(job):
        return "columns"
    if job.status in (JobStatus.PLANNING, JobStatus.PLANNED):
        return "plan"
    if job.status is JobStatus.SENDING:
        return "send"
    if job.status in (JobStatus.DONE, JobStatus.CANCELLED, JobStatus.FAILED):
        return "results"
    return "check"


def _open_steps(job: Job) -> set[str]:
    """The steps that can be opened now (the others are shown, not linked)."""
    if _sent(job):
        return {"check", "send", "results"} if job.status is not JobStatus.SENDING else {"check", "send"}
    if _unread(job):
        return {"upload", "columns"}
    return {"upload", "columns", "check", "plan", "send"}


def _duration(seconds: float | None) -> str:
    """A duration in the library's words (``human_duration``: the CLI's plan and Summary say the same)."""
    return "working it out" if seconds is None else human_duration(seconds)


def _record(text: str) -> dict[str, Any] | None:
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


def _int(value: str | None, default: int = 1) -> int:
    try:
        return int(value or default)
    except ValueError:
        return default


def _samples(table: RawTable) -> list[list[str]]:
    head = table.frame.head(200)
    out = []
    for position in range(len(table.headers)):
        values = [str(v) for v in head[position].tolist() if str(v).strip()]
        out.append(values[:SAMPLES])
    return out


def _sheet_names(job: Job) -> list[str]:
    """The sheets of an XLSX/XLSM upload, to choose from (the reader already accepted the file)."""
    if job.source.get("format") not in ("xlsx", "xlsm"):
        return []
    try:
        book = python_calamine.CalamineWorkbook.from_path(str(job.input_path))
        return [str(m.name) for m in book.sheets_metadata]
    except Exception:  # only a convenience: the sheet can still be typed
        return []


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


def _more_options(form: Mapping[str, Any]) -> dict[str, Any] | str:
    """The options step's fields beyond sheet, region and columns (the CLI's options); a str: why not."""
    on_existing = str(form.get("on_existing") or OnExisting.UPDATE.value)
    if on_existing not in OnExisting._value2member_map_:
        return "choose what to do with a DID that already has other routing from the list"
    rate_text = str(form.get("max_error_rate") or "").strip().rstrip("%")
    rate: float | None = None
    if rate_text:
        try:
            rate = float(rate_text) / 100
        except ValueError:
            rate = -1.0
        if not 0 <= rate <= 1:
            return "the share of failed writes to stop at is a percentage from 0 to 100, or empty"
    return {
        "encoding": str(form.get("encoding") or "").strip()[:40] or None,
        "skip_hidden_rows": form.get("skip_hidden_rows") == "1",
        "on_existing": on_existing,
        "max_error_rate": rate,
    }


def page_routes(service: JobService, upload: Handler) -> list[BaseRoute]:
    """The page's routes over ``service``; ``upload`` is the API's upload handler (one code path).

    Args:
        service: The jobs.
        upload: ``POST /api/jobs``: the page's upload form hands its request to it unchanged.

    Returns:
        The routes, static files included.
    """
    templates = Environment(
        loader=PackageLoader("importer.web", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    templates.globals.update(steps=STEPS, duration=_duration, kind_label=words.issue_label)
    # Who is signed in and what their role allows (web.people): pages offer only what they may do.
    templates.globals.update(may=people.may, refusal=people.refusal, me=people.named_user)
    templates.filters["words"] = _web_words

    def render(name: str, status: int = 200, **context: Any) -> HTMLResponse:
        return HTMLResponse(templates.get_template(name).render(**context), status_code=status)

    def see(url: str) -> RedirectResponse:
        return RedirectResponse(url, status_code=303)

    def job_page(handler: Callable[[Request, Job], Awaitable[Response]]) -> Handler:
        async def endpoint(request: Request) -> Response:
            job = service.get(str(request.path_params["job_id"]))
            if job is None:
                return render("missing.html", 404, job=None)
            return await handler(request, job)

        return endpoint

    def base(job: Job, step: str, **context: Any) -> dict[str, Any]:
        return {"job": job, "snap": service.snapshot(job), "step": step, "open": _open_steps(job), **context}

    async def paged(job: Job, status: str | None, page: int) -> tuple[dict[str, Any], int, int]:
        """One page of the job's rows (``status`` filters them): the rows, the page kept in range, pages."""
        page = max(1, page)
        data = await service.rows(job, status, (page - 1) * PAGE_SIZE, PAGE_SIZE)
        pages = max(1, -(-data["total"] // PAGE_SIZE))
        if page > pages:  # past the end (fewer rows match than when the link was made): the last page
            page = pages
            data = await service.rows(job, status, (page - 1) * PAGE_SIZE, PAGE_SIZE)
        return data, page, pages

    async def with_did(job: Job, data: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The page's rows, each with its DID as the file wrote it (number, else id) for the tables.

        A row that failed validation gets its reason in the page's words, from its issues.
        """
        report = await service.report(job)
        did = report.mapping.get("did_number", report.mapping.get("did_id", 0))
        return [
            {
                **r,
                "did": r["values"][did] if did < len(r["values"]) else "",
                "reason": "; ".join(map(_web_words, issues)) if issues else r["reason"],
            }
            for r in data["rows"]
            for issues in (_issues_of(report.issues, r["row"]),)
        ]

    # -- jobs and upload ------------------------------------------------------------------

    async def index(request: Request) -> Response:
        return render("index.html", job=None, jobs=service.list())

    async def take_upload(request: Request) -> Response:
        answer = await upload(request)
        data = json.loads(bytes(answer.body))
        if answer.status_code == 201:
            return see(f"/jobs/{data['id']}/columns")
        return render("index.html", answer.status_code, job=None, jobs=service.list(), error=data["error"])

    async def home(request: Request, job: Job) -> Response:
        return see(f"/jobs/{job.id}/{_step_of(job)}")

    # -- sheet and columns ----------------------------------------------------------------

    async def read_headers(job: Job) -> tuple[RawTable | None, str]:
        """The table to map: the validated one, or read again when validation could not map it."""
        if job.report is not None or job.status in (JobStatus.VALIDATED, JobStatus.PLANNED):
            return (await service.report(job)).table, ""
        try:
            table = await in_background(read_input, job.input_options())
        except ImporterError as exc:
            return None, str(exc)
        return table, ""

    async def columns(request: Request, job: Job, error: str = "", status: int = 200) -> Response:
        if job.status in BUSY:
            return render("columns.html", **base(job, "columns", waiting=True, error=error))
        table, read_error = await read_headers(job)
        chosen: dict[str, str] = {}
        rows: list[tuple[int, str, list[str]]] = []
        if table is not None:
            by_header = {fields.header_key(h): f for h, f in job.column_map.items()}
            for header in table.headers:
                name = by_header.get(fields.header_key(header)) or fields.match_header(header)
                if name is not None and name not in chosen:
                    chosen[name] = header
            if job.mapping:
                chosen = {**chosen, **job.mapping}
            rows = [(i, h, s) for i, (h, s) in enumerate(zip(table.headers, _samples(table), strict=True))]
        return render(
            "columns.html",
            status,
            **base(
                job,
                "columns",
                waiting=False,
                error=error or read_error or job.error,
                headers=[] if table is None else list(table.headers),
                header_row=None if table is None else table.source.header_row,
                table_rows=rows,
                chosen=chosen,
                fields=fields.FIELDS,
                samples={h: s for _, h, s in rows},
                sheets=await in_background(_sheet_names, job),
            ),
        )

    async def columns_get(request: Request, job: Job) -> Response:
        return await columns(request, job)

    async def columns_post(request: Request, job: Job) -> Response:
        async with request.form(max_files=0, max_fields=64, max_part_size=4096) as form:
            sheet = str(form.get("sheet") or "").strip() or None
            picked = list(dict.fromkeys(str(v).strip() for v in form.getlist("sheets") if str(v).strip()))
            region = str(form.get("default_region") or "").strip().upper() or None
            wanted_row = str(form.get("header_row") or "").strip()
            shown = str(form.get("shown_header_row") or "").strip()
            picks = {f.name: str(form.get(f"field_{f.name}") or "") for f in fields.FIELDS}
            more = _more_options(form)
        if isinstance(more, str):
            return await columns(request, job, more, 400)
        column_map: dict[str, str] = {}
        for name, header in picks.items():
            if not header:
                continue
            if header in column_map:
                return await columns(
                    request, job, f'column "{header}" is chosen for two fields; choose it once', 400
                )
            if fields.match_header(header) != name:  # only what differs from the automatic match
                column_map[header] = name
        header_row: int | EllipsisType | None = ...  # unchanged
        if wanted_row and wanted_row != shown:
            if not wanted_row.isdigit() or int(wanted_row) < 1:
                return await columns(request, job, "the header row is a row number, like 1 or 3", 400)
            header_row = int(wanted_row)
            column_map = {}  # another header row has other names: map them once they show
        if picked:  # the sheet picker (``web.edits``' sheets): one sheet, or several as one table
            sheet, more["sheets"] = (picked[0], []) if len(picked) == 1 else (None, picked)
            if more["sheets"] != job.sheets:
                column_map, header_row = {}, None
        if sheet != job.sheet and sheet is not None:
            column_map = {}  # another sheet has other headers: start from the automatic match
            header_row = None
        try:
            await service.set_options(job, sheet, region, column_map, header_row, **more)
        except JobError as exc:
            return await columns(request, job, str(exc), 409)
        if job.status is JobStatus.VALIDATED:
            return see(f"/jobs/{job.id}/check")
        return see(f"/jobs/{job.id}/columns")

    # -- check ----------------------------------------------------------------------------

    def check_url(job: Job, problems: bool, page: int) -> str:
        query = urlencode({k: v for k, v in (("problems", "1" if problems else ""), ("page", page)) if v})
        return f"/jobs/{job.id}/check" + (f"?{query}" if query else "")

    async def check(
        request: Request, job: Job, message: str = "", status: int = 200, refused: bool = False
    ) -> Response:
        if job.status in BUSY or _unread(job):
            return see(f"/jobs/{job.id}/columns")
        problems = request.query_params.get("problems") == "1"
        page = _int(request.query_params.get("page"))
        saved = request.query_params.get("saved", "")
        if saved.isdigit() and not message:
            message = f"Row {saved} saved and checked again."
        data, page, pages = await paged(job, "failed" if problems else None, page)
        headers: list[str] = data["columns"]
        report = await service.report(job)
        titles = {
            report.table.headers[p]: TITLES[f]
            for f, p in report.mapping.items()
            if fields.header_key(report.table.headers[p]) != fields.header_key(TITLES[f])
        }
        table = []
        for item in data["rows"]:
            issues = _issues_of(report.issues, item["row"])
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

    async def check_get(request: Request, job: Job) -> Response:
        return await check(request, job)

    async def fix(request: Request, job: Job) -> Response:
        row = _int(request.path_params["row"], -1)
        async with request.form(max_files=0, max_fields=256, max_part_size=4096) as form:
            values = {k: str(v) for k, v in form.items() if isinstance(v, str)}
        problems = values.get("problems") == "1"
        page = _int(values.get("page"))
        report = await service.report(job)
        width = len(report.table.headers)
        changes: dict[int, str] = {}
        for key, value in values.items():
            if key.startswith("c") and key[1:].isdigit() and int(key[1:]) < width:
                changes[int(key[1:])] = value  # by position: two columns can share a header
        try:
            if changes:
                await service.edit(job, row, changes)
        except (JobError, LookupError) as exc:
            request.scope["query_string"] = urlencode({"problems": int(problems), "page": page}).encode()
            # htmx swaps only 2xx answers: for it the refusal is a page that says why.
            status = 200 if request.headers.get("hx-request") else 409
            return await check(Request(request.scope), job, str(exc), status, refused=True)
        return see(check_url(job, problems, page) + f"&saved={row}#row-{row}")

    # -- plan -----------------------------------------------------------------------------

    async def plan_page(request: Request, job: Job) -> Response:
        if _unread(job):
            return see(f"/jobs/{job.id}/columns")
        if job.status is JobStatus.PLANNING:
            return render("plan.html", **base(job, "plan", waiting=True))
        if _sent(job):
            return see(f"/jobs/{job.id}/{_step_of(job)}")  # a sent job's plan is history
        planned = job.status is JobStatus.PLANNED
        problems = request.query_params.get("problems") == "1"
        page = _int(request.query_params.get("page"))
        rows: list[dict[str, Any]] = []
        total = 0
        pages = 1
        if planned:
            data, page, pages = await paged(job, "failed" if problems else None, page)
            total = data["total"]
            rows = [
                {**r, "compare": _compare(r["current"], r["proposed"])} for r in await with_did(job, data)
            ]
        counts = action_counts(job)
        budget = job.budget or {}
        reads, writes = int(budget.get("reads", 0)), int(budget.get("writes", 0))
        return render(
            "plan.html",
            **base(
                job,
                "plan",
                waiting=False,
                planned=planned,
                counts=counts,
                writes=writes,
                reads=reads,
                requests=reads + writes,
                rate=service.connection.requests_per_minute,
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

    async def act(job: Job, action: Callable[[Job], Awaitable[None]], step: str, then: str) -> Response:
        """Do something to a job, then show the ``then`` step; a refusal is shown on ``step``'s page."""
        try:
            await action(job)
        except JobError as exc:
            return render("error.html", 409, **base(job, step, error=str(exc)))
        return see(f"/jobs/{job.id}/{then}")

    async def plan_post(request: Request, job: Job) -> Response:
        return await act(job, service.plan, "plan", "plan")

    # -- send and results -----------------------------------------------------------------

    async def send_page(request: Request, job: Job) -> Response:
        if _unread(job):
            return see(f"/jobs/{job.id}/columns")
        counts = action_counts(job)
        return render(
            "send.html",
            **base(
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

    async def start(request: Request, job: Job) -> Response:
        async with request.form(max_files=0, max_fields=8, max_part_size=1024) as form:
            confirmed = form.get("confirm") == "yes"
        if not confirmed:
            return render("error.html", 400, **base(job, "send", error="tick the box to confirm the send"))
        return await act(job, service.start, "send", "send")

    async def cancel(request: Request, job: Job) -> Response:
        return await act(job, service.cancel, "send", "send")

    async def results(request: Request, job: Job) -> Response:
        if not _sent(job):
            return see(f"/jobs/{job.id}/{_step_of(job)}")
        wanted = request.query_params.get("status", "")
        wanted = wanted if wanted in RESULT_FILTERS else ""
        page = _int(request.query_params.get("page"))
        rows: list[dict[str, Any]] = []
        total, pages = 0, 1
        if job.report is not None or job.rows:
            data, page, pages = await paged(job, wanted or None, page)
            total = data["total"]
            rows = await with_did(job, data)
        return render(
            "results.html",
            **base(
                job,
                "results",
                rows=rows,
                total=total,
                page=page,
                pages=pages,
                wanted=wanted,
                filters=RESULT_FILTERS,
            ),
        )

    return [
        Route("/", index, methods=["GET"]),
        Route("/upload", take_upload, methods=["POST"]),
        Route("/jobs/{job_id}", job_page(home), methods=["GET"]),
        Route("/jobs/{job_id}/columns", job_page(columns_get), methods=["GET"]),
        Route("/jobs/{job_id}/columns", job_page(columns_post), methods=["POST"]),
        Route("/jobs/{job_id}/check", job_page(check_get), methods=["GET"]),
        Route("/jobs/{job_id}/rows/{row}", job_page(fix), methods=["POST"]),
        Route("/jobs/{job_id}/plan", job_page(plan_page), methods=["GET"]),
        Route("/jobs/{job_id}/plan", job_page(plan_post), methods=["POST"]),
        Route("/jobs/{job_id}/send", job_page(send_page), methods=["GET"]),
        Route("/jobs/{job_id}/send", job_page(start), methods=["POST"]),
        Route("/jobs/{job_id}/cancel", job_page(cancel), methods=["POST"]),
        Route("/jobs/{job_id}/results", job_page(results), methods=["GET"]),
        Mount("/static", StaticFiles(packages=[("importer.web", "static")]), name="static"),
    ]
