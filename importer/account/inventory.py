"""Live state in a few reads: one sync, and only the reads it leaves necessary.

At 60 requests a minute every read is a second of the user's time, so a run reads:

1. one read-only sync (``POST /voicelink/sync``), which carries ``dids[]``, ``bots[]`` and
   ``routing[]``, and resolves the rows' DIDs, bots and existing routing from it;
2. where sync's ``dids[]`` is empty or a row's DID is not in it, just what is missing, the
   cheaper way: one search per number when fewer numbers are missing than the DID list has
   pages, else the pages (stopping once every row is resolved);
3. where sync's ``bots[]`` is empty and a row names a bot, the bots at the largest page size;
4. after the writes, one more sync, and only when a created row still lacks its routing id.

The page count of the DID list is known only from a page's pagination metadata. Before reading
one, the routing and DIDs sync did carry give a lower bound (each is one DID of the account);
when the missing numbers are no more than that bound, searching is cheaper whatever the count.
Otherwise the first page is read (it is the first of the pages if paging wins) and its count
decides. A search that cannot prove absence (the server ignored ``search``, or the results run
over a page) falls back to paging for that number.

A page that reports the list's ``total`` (the reference does not promise one: §5) can prove
that sync already named every DID: when the DIDs known (sync's, the routed ones, the pages')
are as many as the list holds, they are the whole list, and a number none of them has is not
the account's. Then no further page or search is read for it: 20,000 numbers a 100,000-DID
account does not own cost one page, not all 1,000. Without a total, or with a count that
disagrees, the pages are read as before. So after a sync that named DIDs, two or more numbers
it did not name read page 1 first (one read that may settle them all) instead of a search each.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from importer.account.client import DID_PAGE_SIZE, VoiceLinkClient
from importer.account.paginate import DIDS_PATH, read_bots, read_did_page, walk_pages
from importer.account.records import Bot, Connection, Did, Routing, SyncState, number_key
from importer.account.retry import SETTLE_ATTEMPTS
from importer.collector import collector_paused
from importer.model import RowOutcome, Status

__all__ = [
    "BOT_FIELDS",
    "DidIndex",
    "DidRef",
    "Inventory",
    "LiveRouting",
    "NamesADid",
    "ReadCallback",
    "ReadReport",
    "Rows",
    "collect_created_ids",
    "index_routing",
    "read_all_dids",
    "read_state",
]

ReadCallback = Callable[[str], None]
"""Told what is being read, e.g. "DIDs: page 12 of 50" (a progress line for people)."""

BOT_FIELDS = ("inbound_websocket_bot_id", "outbound_websocket_bot_id")
"""The row fields that name a bot: a bot read is needed only when a row fills one."""


class NamesADid(Protocol):
    """What the reads need of a row: the DID it names (a ``RoutingRow`` is one)."""

    @property
    def did_id(self) -> int | None: ...
    @property
    def did_number(self) -> str | None: ...


@dataclass(frozen=True, slots=True)
class DidRef:
    """A DID named by id, number or both (a rollback's journalled change)."""

    did_id: int | None = None
    did_number: str | None = None


@dataclass(frozen=True, slots=True)
class ReadReport:
    """The reads ``read_state`` made, by kind (requests sent, retries included)."""

    syncs: int = 0
    did_pages: int = 0
    did_lookups: int = 0
    bot_reads: int = 0
    unresolved: int = 0
    """Distinct DIDs of the rows that sync did not resolve (what the fallback had to find)."""
    did_list_pages: int | None = None
    """The DID list's page count, when a page of it was read."""

    def text(self) -> str:
        """E.g. '1 sync, 3 DID lookups, 1 bots read'."""
        parts = [
            _count(self.syncs, "sync", "syncs"),
            _count(self.did_pages, "DID page", "DID pages"),
            _count(self.did_lookups, "DID lookup", "DID lookups"),
            _count(self.bot_reads, "bots read", "bots reads"),
        ]
        return ", ".join(p for p in parts if p) or "no reads"


@dataclass(slots=True)
class Inventory:
    """The account's live state, read once per job (``routing`` is refreshed by re-reads)."""

    dids_by_id: dict[int, Did]
    dids_by_number: dict[str, Did]
    """Keyed by the number's digits (``records.number_key``)."""
    bots: dict[int, Bot]
    routing: dict[int, Routing]
    connection: str = ""
    """The VoiceLink connection the job uses (every request carries it)."""
    connections: tuple[Connection, ...] = ()
    """Every connection of the account (a row naming another one is told apart from a typo)."""
    reads: ReadReport = field(default_factory=ReadReport)
    """The reads that built it, for the Summary sheet."""


def index_routing(routings: Iterable[Routing], dids_by_number: Mapping[str, Did]) -> dict[int, Routing]:
    """Index routing records by DID id; a record that names only its number is matched by number."""
    out: dict[int, Routing] = {}
    for r in routings:
        did_id = r.did_id
        if did_id is None and r.did_number is not None:
            did = dids_by_number.get(number_key(r.did_number))
            did_id = did.did_id if did is not None else None
        if did_id is not None:
            out[did_id] = r
    return out


def _count(n: int, one: str, many: str) -> str:
    return "" if n == 0 else f"{n} {one if n == 1 else many}"


class DidIndex:
    """The DIDs known so far, by id and by number (digits only)."""

    def __init__(self, dids: Iterable[Did] = ()) -> None:
        self.by_id: dict[int, Did] = {}
        self.by_number: dict[str, Did] = {}
        self.add(dids)

    def add(self, dids: Iterable[Did]) -> list[tuple[str, Did]]:
        """Add DIDs not yet known (a DID already known keeps its first entry).

        Returns:
            The DIDs added, each with its number key ("" for a DID without a number).
        """
        added: list[tuple[str, Did]] = []
        for did in dids:
            if did.did_id in self.by_id:
                continue
            self.by_id[did.did_id] = did
            key = number_key(did.did_number)
            if key:
                self.by_number.setdefault(key, did)
            added.append((key, did))
        return added

    def __len__(self) -> int:
        return len(self.by_id)


def _routed_dids(routing: Iterable[Routing]) -> list[Did]:
    """The DIDs routing records name (id and number both): DIDs of the account, status unknown."""
    return [
        Did(r.did_id, r.did_number, "") for r in routing if r.did_id is not None and r.did_number is not None
    ]


def _missing(rows: Iterable[NamesADid], index: DidIndex) -> tuple[set[str], set[int]]:
    """The numbers to find, and the ids of rows that give only an id nobody has listed yet."""
    numbers: set[str] = set()
    ids: set[int] = set()
    for row in rows:
        key = number_key(row.did_number or "")
        if key:
            if key not in index.by_number:
                numbers.add(key)
        elif row.did_id is not None and row.did_id not in index.by_id:
            ids.add(row.did_id)
    return numbers, ids


def _names_a_bot(rows: Iterable[NamesADid]) -> bool:
    return any(getattr(row, name, None) is not None for row in rows for name in BOT_FIELDS)


class _Reader:
    """One read_state call: the client, what is known, the counts."""

    def __init__(self, client: VoiceLinkClient, index: DidIndex, on_read: ReadCallback | None) -> None:
        self.client = client
        self.index = index
        self.say: ReadCallback = on_read or (lambda _text: None)
        self.did_pages = 0
        self.did_lookups = 0
        self.list_pages: int | None = None
        self.list_total: int | None = None
        """The DID list's item count, when a page reported it."""
        self.paged: set[int] = set()
        """DID ids seen on the pages read (the index also holds DIDs sync named)."""
        self.numbers_left: set[str] = set()
        self.ids_left: set[int] = set()
        """What ``find`` still looks for: taken off as the DIDs that name it arrive."""

    def learn(self, dids: Iterable[Did]) -> None:
        """Index DIDs and strike what they resolve off what is still looked for."""
        # Only what arrives can resolve a number, so the cost is per DID read, not per DID
        # still missing per page (20,000 missing numbers x 1,000 pages was 20 million checks).
        for key, did in self.index.add(dids):
            self.numbers_left.discard(key)
            self.ids_left.discard(did.did_id)

    def all_found(self) -> bool:
        return not self.numbers_left and not self.ids_left

    def listed_all(self) -> bool:
        """True when the DIDs known are the whole list: as many as its reported total.

        Each DID known is one of the account's, so when they are as many as the list holds,
        no page can bring another one. More known than the total (sync naming DIDs the list
        leaves out) proves nothing: the pages are read.
        """
        return self.list_total is not None and len(self.index) == self.list_total

    def done(self) -> bool:
        """Nothing left to read: every number and id is found, or the rest are not the account's."""
        return self.all_found() or self.listed_all()

    async def lookup(self, numbers: Sequence[str]) -> set[str]:
        """Search each number; return those whose search could not prove absence."""
        done = 0
        inconclusive: set[str] = set()

        async def one(number: str) -> None:
            nonlocal done
            before = self.client.request_count
            try:
                found = await self.client.find_dids(number)
            finally:
                self.did_lookups += self.client.request_count - before
            self.learn(found.matches)
            if not found.conclusive:
                inconclusive.add(number)
            done += 1
            self.say(f"DID lookups: {done} of {len(numbers)}")

        await asyncio.gather(*(one(n) for n in numbers))
        return inconclusive

    async def page(self, page: int) -> bool:
        """Read one page of the DID list; return True when no page follows it."""
        shown = f" of {self.list_pages}" if self.list_pages else ""
        self.say(f"DIDs: page {page}{shown}")
        before = self.client.request_count
        try:
            got = await read_did_page(self.client, page)
        finally:
            self.did_pages += self.client.request_count - before
        if got.last_page is not None:
            self.list_pages = got.last_page
        if got.total is not None:
            self.list_total = got.total
        self.learn(got.dids)
        fresh = {d.did_id for d in got.dids} - self.paged
        self.paged |= fresh
        # A page with nothing new means the server ignores `page`: stop instead of looping.
        return got.last or not fresh

    async def pages_until(self, done: Callable[[], bool], start: int = 1) -> None:
        """Read pages from ``start`` until the last one, or until ``done()``."""
        await walk_pages(self.page, path=DIDS_PATH, max_pages=self.client.max_pages, start=start, until=done)

    async def find(self, numbers: set[str], ids: set[int], *, sync_listed: bool = False) -> None:
        """Read just the DIDs not known yet (``_missing``'s numbers and ids), the cheaper way.

        ``sync_listed``: sync's ``dids[]`` named DIDs, so page 1's total may prove the rest absent.
        """
        self.numbers_left, self.ids_left = set(numbers), set(ids)
        if self.all_found():
            return
        # Every DID known so far is on some page, so the list has at least this many pages.
        at_least = math.ceil(len(self.index) / DID_PAGE_SIZE)
        few = not self.ids_left and len(self.numbers_left) <= at_least
        # After a sync that named DIDs, the missing numbers are most likely not the account's
        # (typos, numbers given up): page 1 may prove that for all of them in one read, where a
        # search each costs a read each. One number costs one read either way: search it.
        probe = sync_listed and len(self.numbers_left) + len(self.ids_left) > 1
        if few and not probe and not await self.lookup(sorted(self.numbers_left)):
            return
        stop = await self.page(1)
        if stop or self.done():
            return
        pages = self.list_pages
        left = len(self.numbers_left)
        cheaper = not self.ids_left and not self.did_lookups and pages is not None and left < pages - 1
        if cheaper and not await self.lookup(sorted(self.numbers_left)):
            return
        await self.pages_until(self.done, start=2)


Rows = Sequence[NamesADid] | Callable[[], Sequence[NamesADid]]
"""What a job will touch, or how to get it: a callable is called once the sync has gone out."""


async def _sync_while(
    client: VoiceLinkClient, make_rows: Callable[[], Sequence[NamesADid]]
) -> tuple[SyncState, Sequence[NamesADid]]:
    """Send the sync, call ``make_rows`` once it is written (or done), then take the sync's answer."""
    written = asyncio.Event()
    client.on_sent = written.set
    syncing = asyncio.ensure_future(client.read_sync())
    waiting = asyncio.ensure_future(written.wait())
    try:
        try:
            # A transport without httpcore's trace (in-process ASGI) never tells: the answer ends the wait.
            await asyncio.wait((syncing, waiting), return_when=asyncio.FIRST_COMPLETED)
        finally:
            client.on_sent = None
            waiting.cancel()
        rows = make_rows()
    except BaseException:  # the rows' error, or the run cancelled: the sync is abandoned, not left running
        syncing.cancel()
        await asyncio.gather(syncing, return_exceptions=True)
        raise
    return await syncing, rows


async def read_state(
    client: VoiceLinkClient, rows: Rows, *, on_read: ReadCallback | None = None
) -> Inventory:
    """Read the live state the rows need: one sync, then only what it leaves unresolved.

    Args:
        client: The job's client, its connection already chosen (``preflight.read_inventory``).
        rows: What the job will touch: the valid rows of a file, or a rollback's DIDs; or a
            callable that makes them (reads and validates the file), called once the sync
            request is written, so that the API builds its answer (seconds for a large account)
            while the file is read. It blocks the event loop: for a run of its own (the CLI),
            not a shared loop. When it raises, the sync is abandoned and the error passed on.
        on_read: Called with a short progress text before each kind of read ("sync",
            "DIDs: page 12 of 50", "DID lookups: 3 of 10", "bots").

    Returns:
        The inventory (DIDs known, bots, routing by DID id) and, in ``reads``, the reads made.
    """
    say: ReadCallback = on_read or (lambda _text: None)
    say("sync")
    before = client.request_count
    if callable(rows):
        sync, rows = await _sync_while(client, rows)
    else:
        sync = await client.read_sync()
    syncs = client.request_count - before
    with collector_paused():  # an entry per DID of the account: no cycle to find
        index = DidIndex(sync.dids)
        # A routed DID is a DID of this connection: enough to resolve its rows when dids[] is empty.
        index.add(_routed_dids(sync.routing))
    bots: dict[int, Bot] = {b.bot_id: b for b in sync.bots}
    bot_reads = 0
    if not bots and _names_a_bot(rows):
        say("bots")
        before = client.request_count
        bots = {b.bot_id: b for b in await read_bots(client)}
        bot_reads = client.request_count - before
    numbers, ids = _missing(rows, index)
    reader = _Reader(client, index, on_read)
    await reader.find(numbers, ids, sync_listed=bool(sync.dids))
    with collector_paused():
        routing = index_routing(sync.routing, index.by_number)
    return Inventory(
        dids_by_id=dict(index.by_id),
        dids_by_number=dict(index.by_number),
        bots=bots,
        routing=routing,
        reads=ReadReport(
            syncs=syncs,
            did_pages=reader.did_pages,
            did_lookups=reader.did_lookups,
            bot_reads=bot_reads,
            unresolved=len(numbers) + len(ids),
            did_list_pages=reader.list_pages,
        ),
    )


async def read_all_dids(client: VoiceLinkClient, index: DidIndex, on_read: ReadCallback | None = None) -> int:
    """Read every page of the DID list into ``index``; return the requests sent."""
    reader = _Reader(client, index, on_read)
    await reader.pages_until(lambda: False)
    return reader.did_pages


async def collect_created_ids(
    client: VoiceLinkClient, outcomes: Mapping[int, RowOutcome]
) -> dict[int, RowOutcome]:
    """Fill in the routing ids of created rows with one sync, only if a row still lacks one.

    Create answers carry no routing id (the docs' example is ``{}``), so the ids are read back.

    Args:
        client: The run's client.
        outcomes: The rows' outcomes so far, by row.

    Returns:
        The outcomes that gained a routing id, by row (empty, and nothing read, when none lacked one).
    """
    waiting = {
        row: o
        for row, o in outcomes.items()
        if o.status is Status.SUCCEEDED and o.routing_id is None and o.did_id is not None
    }
    if not waiting:
        return {}
    # The same one sync request; read_routing skips parsing the DIDs and bots it does not need.
    by_did = {r.did_id: r for r in await client.read_routing() if r.did_id is not None}
    out: dict[int, RowOutcome] = {}
    for row, outcome in waiting.items():
        found = by_did.get(outcome.did_id) if outcome.did_id is not None else None
        if found is not None:
            out[row] = outcome._replace(routing_id=found.routing_id)
    return out


class LiveRouting:
    """Re-read the routing state, sharing one read among workers that ask at the same time.

    Unknown outcomes are settled by re-reading (``apply.apply_plan``). The read retries in the
    client's one loop (``retry.py``, the one policy), ``SETTLE_ATTEMPTS`` times: a failure here
    stops the run; when it still fails the error stands.
    """

    def __init__(self, client: VoiceLinkClient, inventory: Inventory) -> None:
        self._client = client
        self._inventory = inventory
        self._lock = asyncio.Lock()
        self._reads = 0
        self._fresh = 0
        """The number (in ``_reads``) of the last read that succeeded: only it may be shared."""

    async def fresh(self) -> dict[int, Routing]:
        """Return routing read after this call began.

        Raises:
            ApiError: the state could not be read in ``SETTLE_ATTEMPTS`` tries.
        """
        arrived = self._reads
        async with self._lock:
            # A read counted in `arrived` may have begun before the caller's write failed, so
            # only a read begun after arrival is fresh enough to share, and only if it succeeded:
            # after a failed one the routing held is stale and could call an applied write unsent.
            if self._fresh > arrived:
                return self._inventory.routing
            self._reads += 1
            number = self._reads
            routings = await self._client.read_routing(attempts=SETTLE_ATTEMPTS)
            self._inventory.routing = index_routing(routings, self._inventory.dids_by_number)
            self._fresh = number
            return self._inventory.routing
