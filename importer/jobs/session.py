"""What every sending job does around its plan: open the journal and the session, ask, send, audit.

A job (``run.py``, ``rollback.py``) is one straight-line coroutine; the pieces here are the steps
it shares with the other: :func:`open_journal` (claimed for a real run, read-only for a dry run),
:func:`open_session` (the client, the pre-flight and the live state; closed on leaving),
:func:`approve` and :func:`send_plan` (confirm, then ``apply.apply_plan`` as a new journal run,
with Ctrl-C and SIGTERM caught by :func:`stop_on_signals`), and :func:`run_sync`, which runs a
job from synchronous code and asks its ``confirm`` hook while no event loop runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import getpass
import signal
import socket
import sqlite3
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import httpx

from importer.account.client import VoiceLinkClient
from importer.account.inventory import Inventory, LiveRouting, Rows
from importer.account.limiter import RateLimiter
from importer.account.preflight import ClientSettings, open_client, read_inventory
from importer.engine.apply import Applied, ProgressCallback, apply_plan
from importer.engine.journal import Journal
from importer.engine.plan import History, Plan
from importer.errors import InputError
from importer.model import MACHINE_FACTS, RunFacts, RunInfo
from importer.options import ConnectOptions
from importer.vocab import ReasonKind

__all__ = [
    "NOT_CONFIRMED",
    "Ask",
    "Confirm",
    "ParserNotes",
    "Session",
    "approve",
    "ask_in_loop",
    "audit_of",
    "history_of",
    "job_audit",
    "journal_for",
    "key_fingerprint",
    "now_text",
    "open_journal",
    "open_session",
    "priced",
    "run_info",
    "run_sync",
    "send_if_confirmed",
    "send_plan",
    "skipped_by_parser",
    "stop_on_signals",
]

R = TypeVar("R")

NOT_CONFIRMED = "not confirmed"
"""The stop reason of a job whose plan its ``confirm`` hook declined (nothing was sent)."""


def now_text() -> str:
    """The local time as the Summary sheet shows it."""
    return dt.datetime.now().astimezone().isoformat(timespec="seconds")


# -- the journal -----------------------------------------------------------------------


def open_journal(path: Path, *, claim: bool, read_only: bool = False) -> Journal:
    """Open a journal: claimed for this process's writes, or read-only (a dry run, ``history``).

    A read-only journal is opened by SQLite in read-only mode: nothing can be written to it, and
    opening it takes no claim, so a dry run can read the journal of a run still going.

    Raises:
        InputError: it cannot be opened, or another live run holds it.
    """
    try:
        if read_only:
            uri = path.resolve().as_uri() + "?mode=ro"
            db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False, timeout=30.0)
            journal = Journal(db, path)
            journal.runs()  # a file that is not a journal fails here, not halfway through the plan
        else:
            journal = Journal.open(path)
    except (OSError, ValueError, sqlite3.Error) as exc:  # sqlite3.DatabaseError: not a journal
        raise InputError(f"cannot open the journal {path}: {exc}") from None
    if claim and not read_only:
        try:
            journal.claim()
        except InputError:
            journal.close()
            raise
    return journal


@contextlib.contextmanager
def journal_for(path: Path, *, dry_run: bool) -> Iterator[Journal | None]:
    """The journal of a job: claimed for a real one; read-only for a dry run, None if there is none yet."""
    if dry_run and not path.exists():
        yield None
        return
    journal = open_journal(path, claim=not dry_run, read_only=dry_run)
    try:
        yield journal
    finally:
        journal.close()


def history_of(journal: Journal | None, sha256: str) -> History:
    """What earlier runs of this input did: the rows they confirmed and the writes a crash left in flight."""
    if journal is None:
        return History()
    return History(journal.confirmed(sha256), journal.in_flight(sha256))


# -- the session -----------------------------------------------------------------------


def key_fingerprint(key: str) -> str:
    """The only part of a key that may be shown: its last four characters."""
    return "..." + key[-4:] if len(key) > 8 else "(hidden)"


def audit_of(settings: ClientSettings, connection: str) -> dict[str, str]:
    """Who and where, for the Summary sheet and the journal (never the key itself)."""
    try:
        user = getpass.getuser()
    except Exception:  # getpass raises various errors when no user name can be found
        user = "(unknown)"
    return {
        "os_user": user,
        "host": socket.gethostname(),
        "api_key": key_fingerprint(settings.api_key),
        "connection": connection,
        "base_url": settings.base_url,
    }


@dataclass(frozen=True, slots=True)
class Session:
    """A job's connection to the account: the client, its limiter, the state read at the start."""

    client: VoiceLinkClient
    limiter: RateLimiter
    inventory: Inventory
    audit: Mapping[str, str]


@contextlib.asynccontextmanager
async def open_session(
    config: ConnectOptions,
    transport: httpx.AsyncBaseTransport | None,
    limiter: RateLimiter | None = None,
    *,
    rows: Rows = (),
    used_before: str | None = None,
) -> AsyncIterator[Session]:
    """Open the client and read the account's state the rows need (``preflight.read_inventory``).

    The client is closed on leaving; what the session read (its audit, the client's request
    count and warnings) stays readable after.
    """
    limiter, client = await open_client(config, transport, limiter)
    async with client:
        inventory = await read_inventory(
            client, config.connection_id, used_before=used_before, rows=rows, on_read=config.on_read
        )
        audit = {**audit_of(config, inventory.connection), "reads": inventory.reads.text()}
        yield Session(client, limiter, inventory, audit)


def priced(plan: Plan, config: ConnectOptions, session: Session) -> Plan:
    """The plan with its cost: the reads done so far, the writes and their time at the rate."""
    return replace(plan, cost=config.cost(session.client.request_count, len(plan.writes)))


# -- confirm and send ------------------------------------------------------------------

Confirm = Callable[[Plan], bool]
Ask = Callable[[Confirm, Plan], Awaitable[bool]]
"""How a job asks its ``confirm`` hook: in the running loop (:func:`ask_in_loop`), or by
:func:`run_sync` with no loop running (so Ctrl-C at a prompt is a plain KeyboardInterrupt)."""


async def ask_in_loop(confirm: Confirm, plan: Plan) -> bool:
    """Ask ``confirm`` right here, in the running event loop (the async jobs, a web service)."""
    return confirm(plan)


async def approve(plan: Plan, config: ConnectOptions, ask: Ask) -> bool:
    """Ask ``config.confirm`` with the plan when there is something to send (never for a dry run)."""
    if config.dry_run or not plan.writes or config.confirm is None:
        return True
    return await ask(config.confirm, plan)


async def send_plan(
    plan: Plan,
    *,
    approved: bool,
    session: Session,
    journal: Journal | None,
    config: ConnectOptions,
    start_run: Callable[[Journal, Session], int],
    cancel: asyncio.Event | None,
    on_progress: ProgressCallback | None,
) -> tuple[Applied, int]:
    """Send an approved plan as a new journal run; for a dry run or a declined plan, say what was not.

    Returns:
        Every row's outcome (the plan's settled ones first) and the journal's run id (0: none
        started, for a dry run or a plan not confirmed).
    """
    if config.dry_run:
        return Applied(plan.dry_run()), 0
    if not approved:
        # Declining is a choice, not a failure: exit 0, and the summary says nothing was sent.
        outcomes = plan.not_sent("not sent: not confirmed", ReasonKind.NOT_CONFIRMED)
        notes = ("nothing sent: the plan was not confirmed",)
        return Applied(plan.outcomes + outcomes, NOT_CONFIRMED, notes=notes), 0
    if journal is None:  # only a dry run goes without one (``journal_for``)
        raise RuntimeError("a job that sends has a journal")
    run_id = start_run(journal, session)
    own_cancel, abandon = cancel or asyncio.Event(), asyncio.Event()
    # A caller with its own cancel event (a web service) owns the process's signals: taking
    # SIGTERM from its server, then removing the handler, would leave it deaf to SIGTERM.
    signals = stop_on_signals(own_cancel, abandon) if cancel is None else contextlib.nullcontext()
    with signals:
        applied = await apply_plan(
            plan,
            client=session.client,
            live=LiveRouting(session.client, session.inventory),
            journal=journal,
            run_id=run_id,
            options=config,
            cancel=own_cancel,
            abandon=abandon,
            on_progress=on_progress,
            limiter=session.limiter,
            cancel_reason="interrupted" if cancel is None else "cancelled",
        )
    return Applied(
        plan.outcomes + applied.outcomes, applied.stop_reason, applied.exit_code, applied.notes
    ), run_id


async def send_if_confirmed(
    plan: Plan,
    *,
    session: Session,
    journal: Journal | None,
    config: ConnectOptions,
    ask: Ask,
    start_run: Callable[[Journal, Session], int],
    cancel: asyncio.Event | None,
    on_progress: ProgressCallback | None,
) -> tuple[Plan, Applied, int]:
    """Price a job's plan, show it (``on_plan``), ask ``confirm``, send it: every job's steps after planning.

    Returns:
        The plan with its cost (the report states it), every row's outcome and the journal's run id
        (0: none started).
    """
    plan = priced(plan, config, session)
    if config.on_plan is not None:
        config.on_plan(plan)
    approved = await approve(plan, config, ask)
    applied, run_id = await send_plan(
        plan,
        approved=approved,
        session=session,
        journal=journal,
        config=config,
        start_run=start_run,
        cancel=cancel,
        on_progress=on_progress,
    )
    return plan, applied, run_id


@contextlib.contextmanager
def stop_on_signals(cancel: asyncio.Event, abandon: asyncio.Event | None = None) -> Iterator[None]:
    """Ctrl-C or SIGTERM set ``cancel`` (no new writes; those sent settle); a second one ``abandon``."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    loop = asyncio.get_running_loop()

    def stop() -> None:
        if cancel.is_set() and abandon is not None:
            abandon.set()
        cancel.set()

    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop)
            installed.append(sig)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - non-Unix loops
            pass
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


# -- what every job reports ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ParserNotes:
    """What the client's parsers skipped, for the summary's notes and the Summary sheet."""

    notes: tuple[str, ...] = ()
    audit: Mapping[str, str] = field(default_factory=dict)


def skipped_by_parser(client: VoiceLinkClient, shown: int = 3) -> ParserNotes:
    """Report the DIDs, bots and routing records the client could not use (``client.warnings``)."""
    warnings = client.warnings
    if not warnings:
        return ParserNotes()
    note = f"note: {len(warnings)} item(s) the API listed could not be used and were skipped: " + "; ".join(
        warnings[:shown]
    )
    if len(warnings) > shown:
        note += f" (and {len(warnings) - shown} more: see the Summary sheet)"
    return ParserNotes((note,), {"skipped from the API's lists": "; ".join(warnings)})


def job_audit(
    session: Session, plan: Plan, applied: Applied, journal: Journal | None, run_id: int
) -> dict[str, str]:
    """The Summary sheet's audit lines every job has: who, where, the plan, the journal's run."""
    return {
        **session.audit,
        "plan": plan.text(),
        **({"stopped": applied.stop_reason} if applied.stop_reason else {}),
        **(
            {"journal": str(journal.path.resolve()), "journal run": str(run_id)}
            if journal is not None and run_id
            else {}
        ),
        **skipped_by_parser(session.client).audit,
    }


def run_info(
    command: str,
    config: ConnectOptions,
    started: str,
    audit: Mapping[str, str],
    facts: RunFacts = MACHINE_FACTS,
) -> RunInfo:
    """The Summary sheet's run lines: the command (marked for a dry run), times, options, audit."""
    return RunInfo(
        command=command + (" (dry run)" if config.dry_run else ""),
        started=started,
        finished=now_text(),
        options=config.describe(),
        audit=audit,
        facts=facts,
    )


# -- running a job from synchronous code -----------------------------------------------


def run_sync(job: Callable[[Ask], Coroutine[Any, Any, R]], async_name: str) -> R:
    """Run a job from synchronous code, asking its ``confirm`` hook while no event loop runs.

    The job runs in one event loop until it asks; the loop then stops while ``confirm`` runs, so
    Ctrl-C at a prompt is a plain KeyboardInterrupt (nothing sent; the job is cancelled, which
    closes its client and journal), while during the send Ctrl-C only sets the cancel event.

    Args:
        job: The job, given how to ask (``job(ask)`` makes its coroutine).
        async_name: The job's async function, named in the error for a caller inside a loop.

    Raises:
        InputError: an event loop is already running in this thread (use ``async_name``).
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise InputError(
            f"an event loop is already running here (a notebook?): use `await {async_name}(...)` instead"
        )
    with asyncio.Runner() as runner:
        loop = runner.get_loop()
        asked: asyncio.Future[tuple[Confirm, Plan]] = loop.create_future()
        answer: asyncio.Future[bool] = loop.create_future()

        async def ask(confirm: Confirm, plan: Plan) -> bool:
            asked.set_result((confirm, plan))
            return await answer

        main = loop.create_task(job(ask))

        async def until_asked() -> None:
            watched: set[asyncio.Future[Any]] = {main, asked}
            await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)

        finished: list[R] = []

        async def finish() -> None:
            # The result stays off the runner's task: Python 3.11's Runner.run reprs that task on
            # its way out (signal.getsignal), and a 100,000-row summary's repr takes a second.
            finished.append(await main)

        runner.run(until_asked())  # Ctrl-C here: the runner cancels `main` on closing
        if asked.done() and not main.done():
            confirm, plan = asked.result()
            answer.set_result(confirm(plan))  # no loop runs: a KeyboardInterrupt leaves at once
        runner.run(finish())
        return finished[0]
