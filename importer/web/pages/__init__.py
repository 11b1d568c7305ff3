"""The web page: server-rendered steps over ``JobService``, usable without JavaScript.

Routes (behind the same ``security.Guard`` as the API; forms post to the same origin):

    GET  /                             the jobs, and the upload form
    POST /upload                       the upload form (the API's own upload handler) -> the job
    GET  /jobs/{id}                    the job's current step
    GET  /jobs/{id}/columns  POST      sheet, default region and the column for each field
    GET  /jobs/{id}/check              counts, the rows paged on the server (?problems=1&page=2)
    POST /jobs/{id}/rows               the grid's form: cells changed, then one edit operation
    POST /jobs/{id}/rows/{row}         correct cells of one row (plain form)
    GET  /jobs/{id}/plan     POST      the dry run against the account, side by side
    GET  /jobs/{id}/send     POST      the confirmation, then live progress (SSE from the API)
    POST /jobs/{id}/cancel             stop sending; writes in flight settle (or a scheduled send)
    POST /jobs/{id}/approve            approve the plan shown (``approval``: four eyes)
    POST /jobs/{id}/resume             a cancelled or stopped job: plan the rows left, then the plan
    GET  /jobs/{id}/results            per-row outcomes and the downloads
    POST /jobs/{id}/rollback           "Undo this import": a rollback job (``web.undo``), planned
    POST /exports                      "Download current routing" (``web.exports``) -> the jobs page
    GET  /static/...                   css, the page's script, htmx (vendored, with its licence)

Every page is whole HTML: htmx only fetches the same pages and swaps a part of them, so
that is ``JobService`` and ``engine``.

One module per step (``upload``, ``columns``, ``check``, ``plan``, ``send``, ``results``), each
handler a module-level function over a ``PageContext``; ``base`` holds what they share (rendering,
the job lookup, where a job is, paged rows).
"""

from __future__ import annotations

from functools import partial

from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from importer.web.jobs import JobService
from importer.web.pages import check, columns, plan, results, send
from importer.web.pages import upload as upload_page
from importer.web.pages.base import PAGE_SIZE, Handler, JobHandler, PageContext, job_endpoint

__all__ = ["PAGE_SIZE", "page_routes"]


def page_routes(service: JobService, upload: Handler) -> list[BaseRoute]:
    """The page's routes over ``service``; ``upload`` is the API's upload handler (one code path).

    Args:
        service: The jobs.
        upload: ``POST /api/jobs``: the page's upload form hands its request to it unchanged.

    Returns:
        The routes, static files included.
    """
    ctx = PageContext(service, upload)

    def on_job(handler: JobHandler) -> Handler:
        return partial(job_endpoint, ctx, handler)

    return [
        Route("/", partial(upload_page.index, ctx), methods=["GET"]),
        Route("/upload", partial(upload_page.take_upload, ctx), methods=["POST"]),
        Route("/jobs/{job_id}", on_job(upload_page.home), methods=["GET"]),
        Route("/jobs/{job_id}/columns", on_job(columns.columns_get), methods=["GET"]),
        Route("/jobs/{job_id}/columns", on_job(columns.columns_post), methods=["POST"]),
        Route("/jobs/{job_id}/check", on_job(check.check_get), methods=["GET"]),
        Route("/jobs/{job_id}/rows", on_job(check.save), methods=["POST"]),
        Route("/jobs/{job_id}/rows/{row}", on_job(check.fix), methods=["POST"]),
        Route("/jobs/{job_id}/plan", on_job(plan.plan_page), methods=["GET"]),
        Route("/jobs/{job_id}/plan", on_job(plan.plan_post), methods=["POST"]),
        Route("/jobs/{job_id}/send", on_job(send.send_page), methods=["GET"]),
        Route("/jobs/{job_id}/send", on_job(send.start), methods=["POST"]),
        Route("/jobs/{job_id}/cancel", on_job(send.cancel), methods=["POST"]),
        Route("/jobs/{job_id}/approve", on_job(send.approve), methods=["POST"]),
        Route("/jobs/{job_id}/resume", on_job(plan.resume_post), methods=["POST"]),
        Route("/jobs/{job_id}/results", on_job(results.results), methods=["GET"]),
        Route("/jobs/{job_id}/rollback", on_job(results.undo_post), methods=["POST"]),
        Route("/exports", partial(upload_page.export_post, ctx), methods=["POST"]),
        Mount("/static", StaticFiles(packages=[("importer.web", "static")]), name="static"),
    ]
