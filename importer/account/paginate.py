"""The one page walker: reading a list endpoint page by page, and knowing when to stop.

Only ``page``/``per_page`` are documented (API reference §5). A page's metadata (Laravel-style
``current_page``, ``per_page``, ``total``, ``last_page``, beside the list or in a ``meta`` object)
is read when present; without it a page shorter (or longer) than asked for is the last one. A
page that brings nothing new means the server ignores ``page``, and a list of more than
``max_pages`` pages is an error rather than a read that never ends.

Used for the DID list (``inventory.py`` reads only the pages a job needs; export reads them all)
and the bots.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from importer.account.client import DID_PAGE_SIZE, VoiceLinkClient
from importer.account.records import Bot, DidPage, as_int, decode_bot, decode_did, find_list, objects
from importer.errors import ApiError

__all__ = ["BOT_PAGE_SIZE", "DIDS_PATH", "Page", "read_bots", "read_did_page", "read_page", "walk_pages"]

BOT_PAGE_SIZE = 1000  # the documented maximum for /voicelink/bots
DIDS_PATH = "voicelink/dids/purchased"
BOTS_PATH = "voicelink/bots"


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a list endpoint: its items that are JSON objects, and whether it is the last."""

    number: int
    items: tuple[Mapping[str, Any], ...]
    last_page: int | None
    """The list's page count from the metadata (``last_page``, else ``total``/``per_page``)."""
    last: bool
    """True when no page follows this one."""
    total: int | None = None
    """The list's item count, when the metadata reports it (``total``)."""


async def read_page(client: VoiceLinkClient, path: str, page: int, per_page: int) -> Page:
    """Read one page of a list endpoint (a non-object item is skipped with a warning).

    Args:
        client: The job's client.
        path: The endpoint, e.g. ``voicelink/dids/purchased``.
        page: The page number, from 1.
        per_page: The page size asked for (the server may send fewer, or ignore it).

    Raises:
        ApiError: the answer holds no list.
    """
    payload = await client.read("GET", path, params={"page": page, "per_page": per_page})
    found = find_list(payload)
    if found is None:
        raise ApiError(f"GET /{path} page {page}: the response holds no list")
    items, meta = found
    size = as_int(meta.get("per_page")) or per_page
    total = as_int(meta.get("total"))
    last_page = as_int(meta.get("last_page"))
    if last_page is None and total is not None and size > 0:
        last_page = max(1, math.ceil(total / size))
    current = as_int(meta.get("current_page"))
    last = (
        not items
        or (current is not None and current != page)
        or (last_page is not None and page >= last_page)
        # Shorter: the last page. Longer: the server ignored per_page and sent everything.
        or (last_page is None and len(items) != size)
    )
    items_here = tuple(objects(items, f"GET /{path} page {page}", client.warnings))
    return Page(page, items_here, last_page, last, total if total is not None and total >= 0 else None)


async def walk_pages(
    step: Callable[[int], Awaitable[bool]],
    *,
    path: str,
    max_pages: int,
    start: int = 1,
    until: Callable[[], bool] = lambda: False,
) -> None:
    """Call ``step(page)`` from ``start`` until it says that page was the last, or ``until()``.

    Args:
        step: Reads one page and keeps what it needs; returns True when no page follows (the
            page's ``last``, or nothing new on it).
        path: The endpoint, for the error.
        max_pages: Pages read at most.
        start: The first page to read (a caller that has read page 1 already starts at 2).
        until: Asked after each page; True stops early (everything wanted is found).

    Raises:
        ApiError: more than ``max_pages`` pages.
    """
    for number in range(start, max_pages + 1):
        if await step(number) or until():
            return
    raise ApiError(f"GET /{path}: more than {max_pages} pages; stopping rather than reading forever")


async def read_did_page(client: VoiceLinkClient, page: int, per_page: int = DID_PAGE_SIZE) -> DidPage:
    """Read one page of the purchased DIDs; its metadata tells how many pages there are.

    Returns:
        The page's DIDs (items without a usable id skipped with a warning), whether it is the
        last, and the list's DID count when the server reports it.
    """
    got = await read_page(client, DIDS_PATH, page, per_page)
    where = f"GET /{DIDS_PATH} page {page}"
    dids = tuple(
        did
        for item in got.items
        if (did := decode_did(item, where, client.warnings, need_number=False)) is not None
    )
    return DidPage(page, dids, got.last_page, got.last, got.total)


async def read_bots(client: VoiceLinkClient) -> list[Bot]:
    """Read every page of the WebSocket bots, at the largest page size.

    Returns:
        The bots, each once; a bot without a status counts as active (the API's default).
    """
    bots: dict[int, Bot] = {}

    async def step(number: int) -> bool:
        got = await read_page(client, BOTS_PATH, number, BOT_PAGE_SIZE)
        fresh = False
        for item in got.items:
            bot = decode_bot(item, f"GET /{BOTS_PATH}", client.warnings)
            if bot is not None and bot.bot_id not in bots:
                bots[bot.bot_id] = bot
                fresh = True
        return got.last or not fresh

    await walk_pages(step, path=BOTS_PATH, max_pages=client.max_pages)
    return list(bots.values())
