"""The columns step: sheet and header row, default region, the column for each field, more options."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import EllipsisType
from typing import Any

import python_calamine
from starlette.requests import Request
from starlette.responses import Response

from importer import fields
from importer.errors import ImporterError
from importer.jobs.validate import read_input
from importer.model import RawTable
from importer.vocab import OnExisting
from importer.web.jobs import Job, JobError, JobStatus, in_background
from importer.web.mappings import Remembered
from importer.web.pages.base import BUSY, PageContext, base, render, see

SAMPLES = 3


def _samples(table: RawTable) -> list[list[str]]:
    """The first few non-empty values of each column, to recognise it by."""
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


async def read_headers(ctx: PageContext, job: Job) -> tuple[RawTable | None, str]:
    """The table to map: the validated one, or read again when validation could not map it."""
    if job.report is not None or job.status in (JobStatus.VALIDATED, JobStatus.PLANNED):
        return (await ctx.service.report(job)).table, ""
    try:
        table = await in_background(read_input, job.input_options())
    except ImporterError as exc:
        return None, str(exc)
    return table, ""


def mapped_from(ctx: PageContext, job: Job, headers: Sequence[str]) -> Remembered | None:
    """The earlier job whose mapping this one took for its header row (``web.mappings``), while it
    is still mapped that way; None when the user's own choice or the automatic match is in use."""
    found = ctx.service.mappings.recall(headers)
    if found is None or found.job == job.id or not found.column_map:
        return None
    keys = {fields.header_key(h): f for h, f in job.column_map.items()}
    return found if keys == {fields.header_key(h): f for h, f in found.column_map.items()} else None


async def columns(
    ctx: PageContext, request: Request, job: Job, error: str = "", status: int = 200
) -> Response:
    """The columns page, with ``error`` said above the form when there is one."""
    if job.status in BUSY:
        return render("columns.html", **base(ctx, job, "columns", waiting=True, error=error))
    table, read_error = await read_headers(ctx, job)
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
            ctx,
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
            mapped_from=None if table is None else await in_background(mapped_from, ctx, job, table.headers),
        ),
    )


async def columns_get(ctx: PageContext, request: Request, job: Job) -> Response:
    """``GET /jobs/{id}/columns``."""
    return await columns(ctx, request, job)


async def columns_post(ctx: PageContext, request: Request, job: Job) -> Response:
    """``POST /jobs/{id}/columns``: the options chosen; the job is read and checked again."""
    async with request.form(max_files=0, max_fields=64, max_part_size=4096) as form:
        sheet = str(form.get("sheet") or "").strip() or None
        picked = list(dict.fromkeys(str(v).strip() for v in form.getlist("sheets") if str(v).strip()))
        region = str(form.get("default_region") or "").strip().upper() or None
        wanted_row = str(form.get("header_row") or "").strip()
        shown = str(form.get("shown_header_row") or "").strip()
        picks = {f.name: str(form.get(f"field_{f.name}") or "") for f in fields.FIELDS}
        more = _more_options(form)
    if isinstance(more, str):
        return await columns(ctx, request, job, more, 400)
    column_map: dict[str, str] = {}
    for name, header in picks.items():
        if not header:
            continue
        if header in column_map:
            return await columns(
                ctx, request, job, f'column "{header}" is chosen for two fields; choose it once', 400
            )
        if fields.match_header(header) != name:  # only what differs from the automatic match
            column_map[header] = name
    remap = True  # the columns chosen are for the headers the page showed: remembered for them
    header_row: int | EllipsisType | None = ...  # unchanged
    if wanted_row and wanted_row != shown:
        if not wanted_row.isdigit() or int(wanted_row) < 1:
            return await columns(ctx, request, job, "the header row is a row number, like 1 or 3", 400)
        header_row = int(wanted_row)
        column_map, remap = {}, False  # another header row has other names: map them once they show
    if picked:  # the sheet picker (``web.edits``' sheets): one sheet, or several as one table
        sheet, more["sheets"] = (picked[0], []) if len(picked) == 1 else (None, picked)
        if more["sheets"] != job.sheets:
            column_map, header_row, remap = {}, None, False
    if sheet != job.sheet and sheet is not None:
        column_map = {}  # another sheet has other headers: start from the automatic match
        header_row, remap = None, False
    seen = (await read_headers(ctx, job))[0] if remap else None  # before the job reads it again
    try:
        await ctx.service.set_options(job, sheet, region, column_map, header_row, **more)
    except JobError as exc:
        return await columns(ctx, request, job, str(exc), 409)
    if seen is not None:  # a later file with this header row is mapped the same way
        await in_background(ctx.service.mappings.remember, seen.headers, column_map, job.id, job.file)
    if job.status is JobStatus.VALIDATED:
        return see(f"/jobs/{job.id}/check")
    return see(f"/jobs/{job.id}/columns")
