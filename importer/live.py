"""The account's live state during a run: the inventory read once, coalesced re-reads, the client.

Shared by ``run`` and ``rollback``: both read the state once, settle unknown outcomes by
re-reading it (one read shared by the workers that ask at the same time), open their client
inside the event loop that uses it, and settle in-flight writes on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import httpx

from .api import Bot, Did, Routing, VoiceLinkClient
from .errors import ApiError, AuthError
from .limiter import RateLimiter

__all__ = [
    "ClientSettings",
    "Inventory",
    "LiveRouting",
    "index_routing",
    "open_client",
    "sending_options",
    "stop_on_signals",
]


@dataclass(slots=True)
class Inventory:
    """The account's live state, read once per run."""

    dids_by_id: dict[int, Did]
    dids_by_number: dict[str, Did]
    bots: dict[int, Bot]
    routing: dict[int, Routing]


def index_routing(routings: Sequence[Routing], dids_by_number: Mapping[str, Did]) -> dict[int, Routing]:
    """Index routing records by DID id; a record that names only its number is matched by number."""
    out: dict[int, Routing] = {}
    for r in routings:
        did_id = r.did_id
        if did_id is None and r.did_number is not None:
            did = dids_by_number.get(r.did_number)
            did_id = did.did_id if did is not None else None
        if did_id is not None:
            out[did_id] = r
    return out


class LiveRouting:
    """Re-read the routing state, sharing one read among workers that ask at the same time."""

    ROUNDS = 3
    """Rounds of the client's own read retries before the run gives up on settling."""

    def __init__(self, client: VoiceLinkClient, inventory: Inventory, backoff: float) -> None:
        self._client = client
        self._inventory = inventory
        self._backoff = backoff
        self._lock = asyncio.Lock()
        self._reads = 0
        self._fresh = 0
        """The number (in ``_reads``) of the last read that succeeded: only it may be shared."""

    async def fresh(self) -> dict[int, Routing]:
        """Return routing read after this call began.

        Raises:
            ApiError: the state could not be read in several rounds of retries.
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
            for round_ in range(1, self.ROUNDS + 1):
                try:
                    routings = await self._client.read_routing()
                    break
                except AuthError:
                    raise
                except ApiError:
                    if round_ == self.ROUNDS:
                        raise
                    await asyncio.sleep(self._backoff * 2 * round_)
            self._inventory.routing = index_routing(routings, self._inventory.dids_by_number)
            self._fresh = number
            return self._inventory.routing


@contextlib.contextmanager
def stop_on_signals(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> Iterator[None]:
    """Ctrl-C or SIGTERM: stop sending new writes, let the ones in flight settle."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - non-Unix loops
            pass
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


class ClientSettings(Protocol):
    """What opening a client needs; ``ImportConfig`` and ``RollbackConfig`` both provide it."""

    @property
    def api_key(self) -> str: ...
    @property
    def base_url(self) -> str: ...
    @property
    def requests_per_minute(self) -> int: ...
    @property
    def rate_window(self) -> float: ...
    @property
    def timeout(self) -> float: ...
    @property
    def connection_id(self) -> str | None: ...
    @property
    def concurrency(self) -> int: ...
    @property
    def retry_backoff(self) -> float: ...


def sending_options(settings: ClientSettings, *, dry_run: bool) -> dict[str, str]:
    """The options every sending command shows in its Summary sheet and journal (never the key)."""
    out = {
        "base_url": settings.base_url,
        "requests_per_minute": str(settings.requests_per_minute),
        "concurrency": str(settings.concurrency),
        "timeout": f"{settings.timeout:g}s",
        "dry_run": "yes" if dry_run else "no",
    }
    if settings.connection_id:
        out["connection_id"] = settings.connection_id
    return out


async def open_client(
    settings: ClientSettings, transport: httpx.AsyncBaseTransport | None
) -> tuple[RateLimiter, VoiceLinkClient]:
    """Open one run's limiter and client, inside the event loop that will use them."""
    limiter = RateLimiter(settings.requests_per_minute, window=settings.rate_window)
    client = VoiceLinkClient(
        settings.base_url,
        settings.api_key,
        limiter=limiter,
        transport=transport,
        timeout=settings.timeout,
        connection_id=settings.connection_id,
        max_connections=max(1, min(settings.concurrency, 16)),
        backoff=settings.retry_backoff,
    )
    return limiter, client
