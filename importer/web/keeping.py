"""A job kept: its record in the store and its files in its folder, loaded at start, saved on change.

A job's folder, ``<data-dir>/jobs/<random id>/``, holds everything it needs to carry on after a
restart::

    input/<name>      the upload as received (never changed)
    edits.json        cell corrections, applied to the table after reading
    operations.json   the edit operations (``web.edits``) that made them, with their undos
    journal.sqlite    the engine's journal (what was sent, what came back)
    plan.json         the plan shown (its writes, settled rows, counts, cost) and its inputs' fingerprint
    results.xlsx      the results workbook (plan.results.xlsx for a plan), failed.xlsx

Its record (status, options, who uploaded it, counts) and the per-row outcomes of its last plan
or send live in ``<data-dir>/jobs.sqlite`` (``web.store``); a record that cannot be read is
listed as damaged, with its reason, and every other job is served. These are plain functions
over the store and the job; ``JobService`` (``web.jobs``) calls them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from importer.engine.plan import Plan
from importer.errors import ImporterError
from importer.jobs.session import now_text
from importer.model import RowOutcome
from importer.web import edits as ops
from importer.web import engine, observe
from importer.web.engine import Connection, Edit
from importer.web.lifecycle import JobStatus
from importer.web.records import (
    JOB_ID,
    Job,
    import_folder,
    keep_plan_file,
    outcome_dict,
    outcome_from,
    reason_of,
)
from importer.web.store import DamagedRecord, JobStore, decode_list, full_disk
from importer.web.work import in_background


def load_jobs(root: Path, store: JobStore) -> tuple[list[Job], dict[str, str]]:
    """Every job on disk, and the damaged ones (id -> why); old ``job.json`` folders are taken in once."""
    damaged: dict[str, str] = {}
    for folder in sorted(root.iterdir()):
        if JOB_ID.fullmatch(folder.name) and (folder / "job.json").is_file() and not store.has(folder.name):
            try:
                import_folder(store, folder)  # a job from before the database: taken in once
            except (OSError, sqlite3.Error) as exc:  # e.g. a full disk: tried again on the next start
                damaged[folder.name] = f"could not be taken into {store.path.name}: {reason_of(exc)}"
    jobs: list[Job] = []
    for stored in store.jobs():
        try:
            if stored.record is None:
                raise DamagedRecord(stored.damaged or "unreadable")
            job = load_job(root / stored.id, stored.record)
        except DamagedRecord as exc:
            damaged[stored.id] = str(exc)
            continue
        except (OSError, ValueError, KeyError, TypeError) as exc:
            damaged[stored.id] = f"the job record has a missing or wrong field ({reason_of(exc)})"
            continue
        jobs.append(job)
    return jobs, damaged


def load_job(folder: Path, data: Mapping[str, Any]) -> Job:
    """The job of a stored record, with its edits and operations (its outcomes come with its table)."""
    if data.get("id") != folder.name:
        raise DamagedRecord("the job record names another job")
    values = {k: data[k] for k in Job.STORED if k in data}
    values["status"] = JobStatus(values["status"])
    job = Job(folder=folder, **values)
    edits = folder / "edits.json"
    if edits.is_file():
        try:
            job.edits = [Edit(**e) for e in decode_list(edits.read_bytes(), "edits.json")]
        except TypeError as exc:
            raise DamagedRecord(f"edits.json has a wrong entry ({reason_of(exc)})") from None
    operations = folder / "operations.json"
    if operations.is_file():
        try:
            listed = decode_list(operations.read_bytes(), "operations.json")
            job.operations = [ops.operation_from(o) for o in listed]
        except (TypeError, ValueError) as exc:
            raise DamagedRecord(f"operations.json has a wrong entry ({reason_of(exc)})") from None
    return job  # its outcomes are read with its table, when first needed


def put_new(store: JobStore, job: Job, upload: Path | None = None) -> None:
    """Store a new job's first record, its ``upload`` moved into its folder first; if either
    fails, the folder goes (nobody was told of the job)."""
    try:
        if upload is not None:
            os.replace(upload, job.input_path)
        store.put(job.id, job.stored())
    except BaseException:
        shutil.rmtree(job.folder, ignore_errors=True)  # this request's own folder, never answered
        raise


def save(store: JobStore, events: observe.JobEvents, job: Job) -> None:
    """Store the job's record (one transaction) and tell whoever watches (streams, log, metrics)."""
    # A send begins: the plan's outcomes are no longer true (a job cancelled while queued has none).
    begins = job.status is JobStatus.SENDING and events.last.get(job.id) != JobStatus.SENDING.value
    try:
        store.put(job.id, job.stored(), drop_outcomes=begins)
    except Exception as exc:  # full disk, failing disk, or a bug: never a job stuck where it was
        # The disk is full (or failing): the job cannot go on, and says why; the server goes on.
        reason = ("the server's disk is full" if full_disk(exc) else "the job could not be saved") + (
            f": {reason_of(exc)}"
        )
        observe.log_storage_error(job.id, reason)
        # A sending job goes on: its journal, not this record, is what a resume trusts.
        if job.status not in (JobStatus.FAILED, JobStatus.SENDING):
            job.status, job.error = JobStatus.FAILED, reason
            job.finished = job.finished or now_text()
    events.saved(job)
    job.touch()


async def save_outcomes(store: JobStore, job: Job) -> None:
    """Store the per-row outcomes of the job's send (in a thread); a failure is logged."""
    outcomes = list(
        job.outcomes.values()
    )  # taken on the loop (the send adds to it); turned into rows in a thread
    try:
        await in_background(lambda: store.put_outcomes(job.id, [outcome_dict(o) for o in outcomes]))
    except (OSError, sqlite3.Error) as exc:
        observe.log_storage_error(job.id, f"the outcomes could not be saved: {reason_of(exc)}")


def saved_outcomes(store: JobStore, job_id: str) -> dict[int, RowOutcome]:
    """The per-row outcomes stored when the job's send ended (blocking: a thread)."""
    try:
        return {o.row: o for o in map(outcome_from, store.outcomes(job_id) or [])}
    except (DamagedRecord, KeyError, ValueError, TypeError) as exc:
        raise ImporterError(f"the saved outcomes of this job cannot be read: {reason_of(exc)}") from None


def write_edits(folder: Path, edits: Sequence[Edit], operations: Sequence[ops.Operation]) -> None:
    """Keep a job's cell edits and operations (a bulk one can hold 100,000 edits: no ``asdict``)."""
    names = Edit.__slots__
    for name, data in (
        ("edits.json", [{n: getattr(e, n) for n in names} for e in edits]),
        ("operations.json", [dataclasses.asdict(o) for o in operations]),
    ):
        tmp = folder / (name + ".tmp")
        tmp.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
        with tmp.open("rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, folder / name)


def drop_plan(job: Job) -> None:
    """Forget the plan shown: its inputs changed (or it was never finished)."""
    job.plan, job.budget, job.planned, job.shown = "", {}, {}, None
    job.approval = {}  # an approval is for one plan (``web.approval``)
    for name in ("plan.json", "plan.results.xlsx", "plan.failed.xlsx"):
        (job.folder / name).unlink(missing_ok=True)


async def keep_plan(job: Job, plan: Plan, requests: int, connection: Connection) -> None:
    """Keep the plan shown with the job (plan.json), with the fingerprint of its inputs."""
    inputs = job.inputs_fingerprint()
    # A plan of a big file is a pass over every row: in a thread, never on the event loop.
    summary, text, outcomes = await in_background(keep_plan_file, plan, inputs, job.folder / "plan.json")
    job.shown = plan
    job.outcomes = outcomes
    job.planned = {**summary, "inputs": inputs}
    job.plan = text
    job.budget = engine.send_budget(connection, plan, requests)
