"""The rate limit remembers across a restart: each key's recent request times kept in the store.

The API counts a key's requests in a sliding window whatever the server does; a server that
starts again with an empty window would send a window's worth at once and draw 429s. So:

- when a request is about to leave and the kept record is a second old, or a tenth of the limit
  has left since it was written, the limiter's recent request times are written again, the one
  about to leave among them; the record also says how many more may leave before the next
  write (a tenth of the limit);
- a clean stop writes them once more, with none left unsaved;
- the next start counts the kept times again; after an unclean stop (SIGKILL, power loss) it
  also counts the requests that may have left unsaved, as if sent a second after the record.
  So a restarted server never counts fewer requests in the window than the API does.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterable

from importer.account.limiter import RateLimiter
from importer.web import observe
from importer.web.store import JobStore

__all__ = ["SAVE_EVERY", "remember", "restore", "save", "save_all"]

SAVE_EVERY = 1.0
"""Seconds between writes while requests leave."""


def batch(limiter: RateLimiter) -> int:
    """Requests that may leave between two writes: a tenth of the limit (at least one)."""
    return max(1, limiter.limit // 10)


def save(
    store: JobStore, key: str, limiter: RateLimiter, *, unsaved: int, wall: Callable[[], float] = time.time
) -> None:
    """Write the key's recent request times (wall clock); a failed write is logged, never raised."""
    now = wall()
    try:
        store.put_rate(key, [now - age for age in limiter.recent()], now, unsaved)
    except (OSError, sqlite3.Error) as exc:
        observe.log_storage_error("", f"the rate limit window could not be kept: {exc}")


def restore(
    store: JobStore, key: str, limiter: RateLimiter, *, wall: Callable[[], float] = time.time
) -> None:
    """Count the kept request times of ``key`` in ``limiter`` (and those an unclean stop left unsaved)."""
    kept = store.rate(key)
    if kept is None:
        return
    stamps, saved, unsaved = kept
    now = wall()
    latest = min(now, saved + SAVE_EVERY)  # the latest an unsaved request can have left
    limiter.remember([now - s for s in stamps] + [now - latest] * unsaved)


def remember(
    store: JobStore, key: str, limiter: RateLimiter, *, wall: Callable[[], float] = time.time
) -> None:
    """Restore the key's window into ``limiter`` and keep it written while requests leave."""
    restore(store, key, limiter, wall=wall)
    last = float("-inf")
    since = 0
    size = batch(limiter)

    def on_take(taken: RateLimiter) -> None:
        nonlocal last, since
        since += 1
        now = wall()
        if now - last >= SAVE_EVERY or since >= size:
            last, since = now, 0
            save(store, key, taken, unsaved=size, wall=wall)

    limiter.on_take = on_take


def save_all(store: JobStore, limiters: Iterable[tuple[str, RateLimiter]]) -> None:
    """A clean stop: write every key's window, with nothing left unsaved."""
    for key, limiter in limiters:
        save(store, key, limiter, unsaved=0)
