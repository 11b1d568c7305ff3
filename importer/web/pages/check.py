"""The check step: disjoint counts, problem chips, and the fixing grid.

The grid is the rows paged on the server, every cell an input (editable without JavaScript too),
each wrong cell with its reason. One form (``POST /jobs/{id}/rows``) carries the cells changed and
at most one operation of ``web.edits`` (a bulk replace or fill, accept suggestions, exclude,
include, undo): the same job layer as ``POST /api/jobs/{id}/edits``, so the page and the API
cannot disagree. ``page.js`` adds the keyboard, the unsaved-cell marks and sends only the cells
changed; it never adds a way to change a job that the form does not have.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response

from importer import fields, words
from importer.model import RowIssue, ValidationReport
from importer.vocab import ReasonKind, Status
from importer.web import people
from importer.web.edits import Operation, suggestion
from importer.web.jobs import Job, JobError, JobStatus
from importer.web.pages.base import (
    BUSY,
    PAGE_SIZE,
    PageContext,
    base,
    int_param,
    issues_of,
    paged,
    render,
    see,
    unread,
)

TITLES = {f.name: f.title for f in fields.FIELDS}
MAX_FORM_FIELDS = 20_000
"""The grid's form: a page of cells, the cells changed on other pages, the bulk tools."""
OPERATIONS_SHOWN = 50
SUGGESTED = frozenset({words.IssueKind.BAD_MODE, words.IssueKind.BAD_STATUS})
"""The kinds of problem that can carry a suggested label (``web.edits.suggestion``)."""


@dataclass(frozen=True, slots=True)
class View:
    """Which rows the check page shows: all, only those with problems, or one kind of problem."""

    problems: bool = False
    kind: str = ""
    page: int = 1

    def _filters(self) -> dict[str, str]:
        pairs = (("problems", "1" if self.problems or self.kind else ""), ("kind", self.kind))
        return {k: v for k, v in pairs if v}

    def url(self, job: Job, **extra: str | int) -> str:
        """The check page showing this view (``extra``: more query parameters)."""
        query = urlencode({**self._filters(), **{k: v for k, v in {"page": self.page, **extra}.items() if v}})
        return f"/jobs/{job.id}/check" + (f"?{query}" if query else "")

    def page_url(self, job: Job) -> str:
        """This view's URL up to its page number, for the pager to add it."""
        query = urlencode(self._filters())
        return f"/jobs/{job.id}/check?" + (f"{query}&" if query else "") + "page="


def view_of(values: Mapping[str, str]) -> View:
    """The view a query string or the grid's hidden fields name."""
    kind = values.get("kind", "")
    kind = kind if kind in words.IssueKind._value2member_map_ else ""
    return View(values.get("problems") == "1" or bool(kind), kind, max(1, int_param(values.get("page"))))


@dataclass(frozen=True, slots=True)
class Cell:
    """One cell as the grid shows it: its value, why it is wrong, what it most likely means."""

    position: int
    value: str
    issue: RowIssue | None
    suggestion: str | None
    edited: bool
    """Corrected on the page (an edit in effect)."""


@dataclass(frozen=True, slots=True)
class GridRow:
    """One row of the grid: its cells and which one of the disjoint counts it is in."""

    row: int
    state: str
    """"problem" (in the file), "account" (the plan's), "excluded", "left_out" or "valid"."""
    cells: tuple[Cell, ...]
    faults: tuple[tuple[str, int], ...]
    """The columns at fault: (header, position), each a link to its cell."""
    loose: tuple[RowIssue, ...]
    """Problems of no column shown (a required column the file does not have)."""
    reason: str
    edited: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Counts:
    """Every row counted once: the parts add up to ``rows``."""

    rows: int
    valid: int
    problems: int
    account: int
    """Valid rows the plan found failing against the account (0 before a plan)."""
    excluded: int
    left_out: int
    """Rows the reader left out (hidden rows, footers)."""
    planned: bool


def counts_of(job: Job, report: ValidationReport) -> Counts:
    """The check's counts, disjoint: a row with problems in the file is not also an account failure."""
    failed = report.failed_rows
    excluded = {r for r, k in report.skipped.items() if k is ReasonKind.EXCLUDED and r not in failed}
    left_out = {r for r in report.skipped if r not in failed and r not in excluded}
    account = sum(
        1
        for r, o in job.outcomes.items()
        if o.status is Status.FAILED and r not in failed and r not in report.skipped
    )
    rows = job.rows
    planned = bool(job.planned) or job.status is not JobStatus.VALIDATED
    valid = rows - len(failed) - account - len(excluded) - len(left_out)
    return Counts(rows, valid, len(failed), account, len(excluded), len(left_out), planned)


def _advice(kind: str) -> str:
    """What to do about a kind of problem, in the page's words ("" when the kind has no advice)."""
    member = words.IssueKind._value2member_map_.get(kind)
    return words.render_advice(member, words.Surface.WEB) if isinstance(member, words.IssueKind) else ""


def check_url(job: Job, problems: bool, page: int) -> str:
    """The check page at ``page``, only the rows with problems when ``problems``."""
    return View(problems, "", page).url(job)


def _kind_rows(report: ValidationReport, kind: str) -> list[int]:
    """The rows with a problem of ``kind``, in order."""
    return sorted({i.row for i in report.issues if str(i.kind) == kind})


def _view_rows(report: ValidationReport, view: View) -> list[int] | None:
    """The rows a filtered view pages over, in order (None: every row, as the table holds them)."""
    if view.kind:
        return _kind_rows(report, view.kind)
    if view.problems:
        return sorted(report.failed_rows)
    return None


async def _page_of(ctx: PageContext, job: Job, view: View) -> tuple[list[dict[str, Any]], int, View]:
    """The rows of one page of ``view``, how many rows it has in all, and the view kept in range."""
    if not view.kind:
        data, page, _ = await paged(ctx, job, "failed" if view.problems else None, view.page)
        return data["rows"], data["total"], dataclasses.replace(view, page=page)
    rows = _kind_rows(await ctx.service.report(job), view.kind)
    pages = max(1, -(-len(rows) // PAGE_SIZE))
    page = min(view.page, pages)
    shown = rows[(page - 1) * PAGE_SIZE : page * PAGE_SIZE]
    return await ctx.service.row_items(job, shown), len(rows), dataclasses.replace(view, page=page)


def _grid_row(item: Mapping[str, Any], headers: Sequence[str], report: ValidationReport) -> GridRow:
    row = int(item["row"])
    issues = issues_of(report.issues, row)
    by_column: dict[str, RowIssue] = {}
    for x in issues:
        by_column.setdefault(x.column, x)
    edited = set(item["edited"])
    cells = tuple(
        Cell(i, v, x, _suggested(x) if x else None, h in edited)
        for i, (h, v) in enumerate(zip(headers, item["values"], strict=True))
        for x in (by_column.get(h),)
    )
    faults = tuple((h, headers.index(h)) for h in by_column if h in headers)
    skipped = report.skipped.get(row)
    if issues:
        state = "problem"
    elif skipped is ReasonKind.EXCLUDED:
        state = "excluded"
    elif skipped is not None:
        state = "left_out"
    elif item["status"] == "failed":
        state = "account"
    else:
        state = "valid"
    loose = tuple(x for x in issues if x.column not in headers)
    return GridRow(row, state, cells, faults, loose, str(item["reason"]), tuple(item["edited"]))


def _suggested(issue: RowIssue) -> str | None:
    """What a near-miss label most likely means, as the page says it ("4 (only-answer)")."""
    fix = suggestion(issue)
    direction = issue.params.get("direction", "")
    modes = next((m for d, m in fields.MODES.items() if d.value == direction), None)
    if fix is None or modes is None or not fix.isdigit() or int(fix) not in modes:
        return fix
    return f"{fix} ({modes[int(fix)].label})"


def _needs(report: ValidationReport) -> dict[int, dict[str, int]]:
    """For each mode column: the spellings of a mode that needs an id, and that id's column.

    ``page.js`` reads it: a mode typed in makes the id cell it needs the next to fill, at once.
    """
    out: dict[int, dict[str, int]] = {}
    for direction, field in fields.MODE_FIELD.items():
        if field not in report.mapping:
            continue
        spellings: dict[str, int] = {}
        for mode in fields.MODES[direction].values():
            if mode.requires is not None and mode.requires in report.mapping:
                for spelling in (str(mode.number), mode.label, *mode.aliases):
                    spellings[fields.header_key(spelling)] = report.mapping[mode.requires]
        if spellings:
            out[report.mapping[field]] = spellings
    return out


def _choices(report: ValidationReport) -> dict[int, str]:
    """The datalist each mode or status column offers (its id in the page)."""
    out = {report.mapping[f]: f"list-{d.value}" for d, f in fields.MODE_FIELD.items() if f in report.mapping}
    if "status" in report.mapping:
        out[report.mapping["status"]] = "list-status"
    return out


def _message(job: Job, values: Mapping[str, str]) -> str:
    """What the last form did, told from the job's own records (never text from the URL)."""
    said = []
    saved = [r for r in values.get("saved", "").split(",") if r.isdigit()]
    if saved:
        said.append(f"Row{'s' if len(saved) > 1 else ''} {', '.join(saved)} saved and checked again.")
    by_id = {o.id: o for o in job.operations}
    done = by_id.get(int_param(values.get("done"), 0))
    if done is not None:
        cells = f": {done.cells} cell{'s' if done.cells != 1 else ''} changed" if done.cells else ""
        said.append(f"Done: {done.what}{cells}.")
    undone = by_id.get(int_param(values.get("undone"), 0))
    if undone is not None:
        said.append(f"Undone: {undone.what}.")
    if values.get("nothing"):
        said.append("Nothing to save: no cell differs from what it holds.")
    return " ".join(said)


async def check(
    ctx: PageContext, request: Request, job: Job, message: str = "", status: int = 200, refused: bool = False
) -> Response:
    """The check page, with ``message`` said above the table (``refused``: an edit that was not taken)."""
    if job.status in BUSY or unread(job):
        return see(f"/jobs/{job.id}/columns")
    query = request.query_params
    view = view_of(query)
    message = message or _message(job, query)
    items, total, view = await _page_of(ctx, job, view)
    report = await ctx.service.report(job)
    headers = list(report.table.headers)
    titles = {
        report.table.headers[p]: TITLES[f]
        for f, p in report.mapping.items()
        if fields.header_key(report.table.headers[p]) != fields.header_key(TITLES[f])
    }
    table = [_grid_row(item, headers, report) for item in items]
    focus = int_param(query.get("focus"), 0)
    target = next((r for r in table if r.row == focus), None)
    kinds = sorted(job.problems.items(), key=lambda kv: -kv[1])
    fixable = job.status in (JobStatus.VALIDATED, JobStatus.PLANNED)
    # The grid is offered to whom the Guard lets post it (a viewer sees the rows, read only).
    editable = fixable and people.may("FIX", job.uploaded_by)
    operations = list(reversed(job.operations))
    last = next((o.id for o in operations if not o.undone), None)
    return render(
        "check.html",
        status,
        **base(
            ctx,
            job,
            "check",
            view=view,
            problems=view.problems,
            page=view.page,
            pages=max(1, -(-total // PAGE_SIZE)),
            pageurl=view.page_url(job),
            total=total,
            headers=headers,
            titles=titles,
            table=table,
            counts=counts_of(job, report),
            kinds=kinds,
            kind_urls={k: View(True, k).url(job) for k, _ in kinds},
            problems_url=View(True).url(job),
            hints=[(k, text) for k, _ in kinds if (text := _advice(k))],
            editable=editable,
            plannable=fixable,
            read_only=people.refusal("FIX", job.uploaded_by) if fixable and not editable else "",
            message=message,
            failed_edit=refused,
            focus=f"c-{target.row}-{_first_fault(target)}" if target else "",
            needs=_needs(report),
            choices=_choices(report),
            modes={d.value: fields.mode_labels(d) for d in fields.Direction},
            statuses=list(fields.STATUS_LABELS.values()),
            suggestions=any(k in SUGGESTED for k in job.problems),
            operations=operations[:OPERATIONS_SHOWN],
            earlier=max(0, len(operations) - OPERATIONS_SHOWN),
            last_op=last,
            who=_who_label,
        ),
    )


def _first_fault(row: GridRow) -> int:
    return row.faults[0][1] if row.faults else 0


def _who_label(operation: Operation) -> str:
    return operation.who or "the token's user"


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
        return await _refused(ctx, request, job, View(problems, "", page), str(exc))
    return see(check_url(job, problems, page) + f"&saved={row}#row-{row}")


async def _refused(ctx: PageContext, request: Request, job: Job, view: View, message: str) -> Response:
    """The check page saying why an edit was not taken (409; 200 for htmx, which swaps only 2xx)."""
    request.scope["query_string"] = view.url(job).partition("?")[2].encode()
    status = 200 if request.headers.get("hx-request") else 409
    return await check(ctx, Request(request.scope), job, message, status, refused=True)


def _cell_changes(report: ValidationReport, values: Mapping[str, str]) -> list[dict[str, Any]]:
    """The grid's cells whose text differs from the table's now, as a ``set`` operation's cells.

    Raises:
        LookupError: a cell names a row or column the table does not have.
    """
    frame = report.table.frame
    width = len(report.table.headers)
    out = []
    for key, value in values.items():
        parts = key.split("-")
        if len(parts) != 3 or parts[0] != "c" or not (parts[1].isdigit() and parts[2].isdigit()):
            continue
        row, position = int(parts[1]), int(parts[2])
        if position >= width or row not in frame.index:
            raise LookupError(f"row {row} is not a data row of this file")
        # A browser drops line breaks from an input's value: a cell holding one is not changed by that.
        if str(frame.at[row, position]).replace("\r", "").replace("\n", "") != value:
            out.append({"row": row, "column": position, "value": value})
    return sorted(out, key=lambda b: (b["row"], b["column"]))


def _operation(op: str, values: Mapping[str, str], selected: list[int]) -> dict[str, Any] | None:
    """The one operation besides undo the grid's button asked for (None: only save the cells).

    Raises:
        JobError: it needs selected rows and none are, or names no column.
    """
    name, _, row = op.partition(":")

    def rows(scope: str) -> Any:
        if scope != "selected":
            return scope
        if not selected:
            raise JobError("no rows are selected: tick the rows first, or choose all or failed rows")
        return selected

    def column(key: str) -> int:
        if not values.get(key, "").isdigit():
            raise JobError("choose a column")
        return int(values[key])

    if name in ("exclude", "include"):
        return {"op": name, "rows": [int(row)] if row.isdigit() else rows("selected")}
    if name == "replace":
        scope = values.get("replace_rows", "all")
        return {
            "op": "replace",
            "column": column("replace_column"),
            "find": values.get("find", ""),
            "replace": values.get("replace", ""),
            "rows": rows(scope if scope in ("all", "failed", "selected") else "all"),
        }
    if name == "fill":
        scope = values.get("fill_rows", "failed")
        return {
            "op": "fill",
            "column": column("fill_column"),
            "value": values.get("fill_value", ""),
            "rows": rows(scope if scope in ("failed", "selected") else "failed"),
        }
    if name == "accept":
        return {"op": "accept_suggestions", "rows": "failed"}
    return None


def _next_problem(report: ValidationReport, view: View, after: int) -> tuple[int, int] | None:
    """The next row with a problem after row ``after`` (from the top past the last), and its page."""
    rows = _view_rows(report, view)
    wanted = rows if rows is not None else sorted(report.failed_rows)
    if not wanted:
        return None
    row = wanted[bisect.bisect_right(wanted, after) % len(wanted)]
    if rows is not None:
        position = bisect.bisect_left(rows, row)
    else:
        position = int(report.table.frame.index.get_loc(row))  # type: ignore[arg-type]
    return row, position // PAGE_SIZE + 1


async def save(ctx: PageContext, request: Request, job: Job) -> Response:
    """``POST /jobs/{id}/rows``: the grid's form: the cells changed, then its one operation.

    The cells are saved first (each a ``set``, undoable), so a bulk fix or an exclusion never
    drops what was typed; undo goes first instead (it takes back what was saved before).
    """
    async with request.form(max_files=0, max_fields=MAX_FORM_FIELDS, max_part_size=4096) as form:
        values = {k: v for k, v in form.items() if isinstance(v, str)}
        selected = [int(v) for v in form.getlist("sel") if isinstance(v, str) and v.isdigit()]
    view = view_of(values)
    who = user.name if (user := people.named_user()) is not None else ""
    report = await ctx.service.report(job)
    query: dict[str, str | int] = {}
    try:
        sets = _cell_changes(report, values)
        asked = values.get("op", "save")
        if asked == "undo":
            undone = next((o.id for o in reversed(job.operations) if not o.undone), 0)
            await ctx.service.apply_op(job, [{"op": "undo"}], who=who)
            query["undone"] = undone
        if sets:  # one operation: one undo takes the whole save back
            saved = await ctx.service.apply_op(job, [{"op": "set", "cells": sets}], who=who, quiet=True)
            query["saved"] = ",".join(map(str, saved))
        op = None if asked == "undo" else _operation(asked, values, selected)
        if op is not None:
            await ctx.service.apply_op(job, [op], who=who)
            query["done"] = job.operations[-1].id
    except (JobError, LookupError) as exc:
        # What was saved before the refusal stays saved: the page says both.
        said = _message(job, {k: str(v) for k, v in query.items()})
        return await _refused(ctx, request, job, view, f"{said} {exc}".strip())
    if not query:
        query["nothing"] = 1
    report = await ctx.service.report(job)
    after = max((b["row"] for b in sets), default=0) if "saved" in query else 0
    found = _next_problem(report, view, after) if "saved" in query else None
    if found is not None:
        row, page = found
        view = dataclasses.replace(view, page=page)
        query["focus"] = row
    url = view.url(job, **query)
    return see(url + (f"#row-{query['focus']}" if "focus" in query else ""))
